# Sourced by the scripts that build the product (demo, install, the
# benchmarks): the one place that says how a release binary of secretfs is
# built.
#
#   build_release [SCRATCH]   builds, then prints the binary's path
#
# The Swift runtime and standard library are linked statically
# (--static-swift-stdlib). A dynamically linked Swift binary spends most of its
# start in the dynamic loader, relocating libswiftCore, Foundation Essentials
# and their friends in every process: `secretfs --version` took 8-9 ms against
# 4-5 ms static on the same machine (BENCHMARKS.md, "Resolver"), and every
# `secretfs resolve`, `secretfs run` and mount pays the same. The binary then
# needs no Swift toolchain on the host it is installed on, only the Debian
# libraries it links (libsodium, libsqlite3, libfuse3, libyaml; libpq is
# opened only for a shared store).
#
# Linked by lld (shipped with the Swift toolchain) rather than the default
# gold, for two things gold cannot do:
#   -z pack-relative-relocs  the binary's 41,000 relative relocations as a
#                            DT_RELR table of 8 KB instead of a 960 KB
#                            .rela.dyn, which the loader reads whole in every
#                            process (960 KB of each mount's resident memory);
#                            needs glibc 2.36 (Debian 12)
#   --no-export-dynamic      the toolchain's static-stdlib link flags export
#                            every symbol of the program (300 KB of dynamic
#                            symbol tables, also read at start); nothing loads
#                            secretfs as a library or looks its symbols up
# BENCHMARKS.md ("Filesystem", resident memory) has the figures.
RELEASE_FLAGS=(-c release --static-swift-stdlib
               -Xswiftc -use-ld=lld
               -Xlinker -z -Xlinker pack-relative-relocs
               -Xlinker --no-export-dynamic)
build_release() {
    local scratch=()
    [ -n "${1:-}" ] && scratch=(--scratch-path "$1")
    swift build "${RELEASE_FLAGS[@]}" "${scratch[@]}" --product secretfs >&2 || return 1
    echo "$(swift build "${RELEASE_FLAGS[@]}" "${scratch[@]}" --show-bin-path)/secretfs"
}
