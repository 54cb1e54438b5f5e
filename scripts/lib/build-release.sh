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
build_release() {
    local scratch=()
    [ -n "${1:-}" ] && scratch=(--scratch-path "$1")
    swift build -c release --static-swift-stdlib "${scratch[@]}" --product secretfs >&2 || return 1
    echo "$(swift build -c release --static-swift-stdlib "${scratch[@]}" --show-bin-path)/secretfs"
}
