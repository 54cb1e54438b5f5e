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
#
# --disable-local-rpath drops the RUNPATH $ORIGIN that SwiftPM gives every
# executable (for libraries built beside it; secretfs has none): with it the
# loader looked for libsodium, libsqlite3 and the rest in the binary's own
# directory first (a dozen failed opens each at every start), and a library
# dropped beside a copy of the binary would have been loaded into the mount,
# which runs as root when mount(8) starts it.
#
# libstdc++, which the static Swift runtime needs, is linked statically too
# when GCC's archive is there (g++ brings it): as a shared library it was most
# of the dynamic loader's work in every process, 2,000 of its 3,900 symbol
# relocations resolved by name at each start (a static Swift "hello" starts in
# 1.9 ms instead of 2.5, /bin/true 0.9). The toolchain's link flags name
# -lstdc++ themselves, so a directory searched before the system's holds a
# libstdc++.so that is a linker script naming the archive.
RELEASE_FLAGS=(-c release --static-swift-stdlib --disable-local-rpath
               -Xswiftc -use-ld=lld
               -Xlinker -z -Xlinker pack-relative-relocs
               -Xlinker --no-export-dynamic)
build_release() {
    local scratch=() dir=.build flags=("${RELEASE_FLAGS[@]}")
    [ -n "${1:-}" ] && scratch=(--scratch-path "$1") && dir="$1"
    local archive
    archive=$(gcc -print-file-name=libstdc++.a 2>/dev/null || true)
    if [ -f "$archive" ]; then
        mkdir -p "$dir/static-libstdc++"
        [ "$(cat "$dir/static-libstdc++/libstdc++.so" 2>/dev/null)" = "INPUT($archive)" ] \
            || echo "INPUT($archive)" > "$dir/static-libstdc++/libstdc++.so"
        flags+=(-Xswiftc "-L$(cd "$dir/static-libstdc++" && pwd)")
    else
        echo "build_release: no libstdc++.a (install g++); linking libstdc++ dynamically" >&2
    fi
    swift build "${flags[@]}" "${scratch[@]}" --product secretfs >&2 || return 1
    local bin
    bin="$(swift build "${flags[@]}" "${scratch[@]}" --show-bin-path)/secretfs"
    # What the flags above promise, checked on the binary (readelf comes
    # with the compiler's binutils).
    if command -v readelf >/dev/null 2>&1; then
        local dynamic
        dynamic=$(readelf -d "$bin")
        if grep -qE 'RPATH|RUNPATH' <<<"$dynamic"; then
            echo "build_release: $bin has a library search path of its own:" >&2
            grep -E 'RPATH|RUNPATH' <<<"$dynamic" >&2
            return 1
        fi
        if [ -f "$archive" ] && grep -q 'libstdc++' <<<"$dynamic"; then
            echo "build_release: $bin still loads libstdc++ as a shared library" >&2
            return 1
        fi
    fi
    echo "$bin"
}
