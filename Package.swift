// swift-tools-version:6.0
import PackageDescription

// One target per layer; the dependency arrows only point down this list.
//   C modules (CFuse, CSodium, CSQLite, CShims)  libc / Debian libraries
//   SecretfsNames      the one naming rule (names are bytes)
//   SecretfsPOSIX      thin libc layer: errno text, EINTR retry, O_NOFOLLOW opens,
//                      the monotonic clock, a sleep another thread can end,
//                      the directory-trust check (store and runtime directories)
//   SecureMemory       locked, wiped buffers for keys and values
//   SecretfsStore      the encrypted store (envelope encryption, audit) on one
//                      DatabaseConnection: embedded SQLite or shared PostgreSQL
//   SecretfsFS         FUSE low-level adapter: the write-only directory contract
//   SecretfsProtocol   privileged-socket wire format, server and client
//   SecretfsInject     JavaScript tokenizer + rewriter, flow/config documents
//   SecretfsRedact     multi-pattern streaming redaction
//   SecretfsResolver   resolve one-shot and the resolver daemon
//   secretfs           the thin command-line interface
let package = Package(
    name: "secretfs",
    products: [
        .executable(name: "secretfs", targets: ["secretfs"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        // Tests only: an independent YAML reader, to check what the flow rewriter writes.
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
    ],
    targets: [
        .systemLibrary(name: "CFuse", pkgConfig: "fuse3",
                       providers: [.apt(["libfuse3-dev"])]),
        .systemLibrary(name: "CSodium", pkgConfig: "libsodium",
                       providers: [.apt(["libsodium-dev"])]),
        .systemLibrary(name: "CSQLite", providers: [.apt(["libsqlite3-dev"])]),
        .systemLibrary(name: "CYAML", pkgConfig: "yaml-0.1", providers: [.apt(["libyaml-dev"])]),
        // libpq, for the shared store (docs/deployment.md says why libpq).
        // libpq's header only: the library is opened when a shared store is
        // first used (SecretfsStore/LibPQ.swift says why).
        .systemLibrary(name: "CPostgres", providers: [.apt(["libpq-dev"])]),
        .target(name: "CShims"),
        .target(name: "SecretfsPOSIX", dependencies: ["CShims"]),

        .target(name: "SecretfsNames"),
        .target(name: "SecureMemory", dependencies: ["CSodium"]),
        .target(name: "SecretfsStore", dependencies: [
            "CSQLite", "CPostgres", "CSodium", "SecretfsNames", "SecretfsPOSIX", "SecureMemory",
            .product(name: "Logging", package: "swift-log"),
        ]),
        .target(name: "SecretfsFS", dependencies: [
            "CFuse", "CShims", "SecretfsNames", "SecretfsPOSIX", "SecretfsStore", "SecureMemory",
            .product(name: "Logging", package: "swift-log"),
        ]),
        .target(name: "SecretfsProtocol", dependencies: [
            "CShims", "SecretfsNames", "SecretfsPOSIX", "SecureMemory", "SecretfsStore",
            .product(name: "Logging", package: "swift-log"),
        ]),
        // The flow reader uses libyaml's event API only: Debian's libyaml
        // directly, not a Swift YAML package, whose Foundation (and ICU)
        // would cost every process start and every mount's memory.
        .target(name: "SecretfsInject", dependencies: ["CYAML", "SecretfsNames", "SecureMemory"]),
        .target(name: "SecretfsRedact", dependencies: ["SecureMemory"]),
        .target(name: "SecretfsResolver", dependencies: [
            "SecretfsNames", "SecretfsPOSIX", "SecretfsProtocol", "SecretfsInject", "SecretfsRedact", "SecureMemory",
            .product(name: "Logging", package: "swift-log"),
        ]),
        .executableTarget(name: "secretfs", dependencies: [
            "CShims", "SecretfsNames", "SecretfsPOSIX", "SecretfsStore", "SecretfsFS", "SecretfsProtocol",
            "SecretfsResolver", "SecretfsRedact", "SecureMemory",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ]),

        // Helpers shared by the test targets (spawning processes, seeded RNG).
        .target(name: "SecretfsTestSupport", path: "Tests/SecretfsTestSupport"),
        .testTarget(name: "SecretfsStoreTests", dependencies: ["SecretfsStore", "SecretfsPOSIX"]),
        .testTarget(name: "SecretfsInjectTests", dependencies: ["SecretfsInject", "SecretfsNames", "SecretfsTestSupport", "SecureMemory",
                                                                .product(name: "Yams", package: "Yams")]),
        .testTarget(name: "SecretfsRedactTests", dependencies: ["SecretfsRedact", "SecretfsTestSupport"]),
        .testTarget(name: "SecretfsProtocolTests", dependencies: ["CShims", "SecretfsProtocol", "SecretfsNames", "SecretfsStore", "SecureMemory", "SecretfsTestSupport", "SecretfsPOSIX"]),
        .testTarget(name: "SecretfsResolverTests", dependencies: ["SecretfsResolver", "SecretfsStore", "SecretfsProtocol", "SecureMemory", "SecretfsTestSupport", "SecretfsPOSIX"]),
        // Real mounts for the mount and hostile-input tests: a temp store, the binary, shell commands.
        .target(name: "SecretfsMountSupport", dependencies: ["SecretfsStore", "SecretfsFS", "SecureMemory", "SecretfsTestSupport"],
                path: "Tests/SecretfsMountSupport"),
        // Mount tests drive the real `secretfs` binary; depending on it makes
        // `swift build --build-tests` build it beside the test bundle.
        .testTarget(name: "SecretfsMountTests", dependencies: ["CSQLite", "SecretfsStore", "SecretfsFS", "secretfs", "SecretfsMountSupport", "SecretfsTestSupport", "SecretfsPOSIX"]),
        // Every finding of the trust-boundaries review, as an attacker would try it.
        .testTarget(name: "SecretfsHostileInputTests", dependencies: ["CShims", "CSQLite", "SecretfsStore", "SecretfsFS", "SecretfsProtocol", "secretfs",
                                                                       "SecretfsMountSupport", "SecretfsTestSupport"]),
        // The Node.js client (clients/node) and runner (examples/node-runner) under `node`, against a real daemon and mount.
        .testTarget(name: "SecretfsNodeClientTests", dependencies: ["secretfs", "SecretfsMountSupport", "SecretfsTestSupport"]),
        // One PostgreSQL store, two hosts: propagation, concurrent writers, server crashes
        // and outages, store copy, and what the database sees (a real cluster from scripts/test).
        .testTarget(name: "SecretfsSharedStoreTests", dependencies: ["secretfs", "SecretfsStore", "SecretfsMountSupport", "SecretfsTestSupport"]),
        // Install, the mount(8) helper, the systemd units and the completions, driven through the
        // real mount, umount, systemd-analyze, bash, zsh and fish.
        .testTarget(name: "SecretfsOperationsTests", dependencies: ["secretfs", "SecretfsMountSupport", "SecretfsTestSupport"]),
    ]
)
