import CFuse
import Glibc
import Logging

/// A mounted FUSE session serving one `SecretFilesystem`.
///
/// Lifecycle: `mount` (the kernel starts answering for the mountpoint), then
/// `run` (blocks serving requests on a pool of threads until the filesystem is
/// unmounted or the process gets SIGINT/SIGTERM/SIGHUP), then the session
/// unmounts and tears down.
public final class FuseSession: @unchecked Sendable {
    // @unchecked: `session` is set in init and cleared only by `close`, after
    // the serving loop and the StoreWatcher (the one other thread that calls
    // in, through `invalidate`; libfuse's notify calls are thread-safe) stopped.
    private let filesystem: SecretFilesystem
    private var session: OpaquePointer?
    private var args = fuse_args()
    private var operations: fuse_lowlevel_ops
    public let mountpoint: String

    public struct MountError: Error, CustomStringConvertible {
        public let description: String
        public let hint: String?
        /// The options were refused (a usage error), not the mount.
        public var badOptions = false
    }

    /// Creates the session and mounts it. `fuseOptions` are `-o` options for
    /// libfuse (allow_other, fsname, ...).
    public init(filesystem: SecretFilesystem, mountpoint: String, fuseOptions: [String], debug: Bool) throws {
        self.filesystem = filesystem
        self.mountpoint = mountpoint
        self.operations = makeOperations()

        var argv = ["secretfs"]
        if !fuseOptions.isEmpty { argv += ["-o", fuseOptions.joined(separator: ",")] }
        if debug { argv.append("-d") }
        // fuse_args owns its argv when `allocated` is set; build it by hand
        // (FUSE_ARGS_INIT is a macro) and let fuse_opt_free_args free it.
        args = fuse_args(argc: 0, argv: nil, allocated: 0)
        for a in argv { fuse_opt_add_arg(&args, a) }

        let userdata = Unmanaged.passUnretained(filesystem).toOpaque()
        guard let se = fuse_session_new(&args, &operations, MemoryLayout<fuse_lowlevel_ops>.size, userdata) else {
            fuse_opt_free_args(&args)
            // libfuse has printed which option it did not know, on stderr.
            throw MountError(description: "libfuse refused the mount options \(fuseOptions.joined(separator: ","))",
                             hint: "see the FUSE options in mount.fuse3(8), and secretfs's own under 'secretfs mount --help'",
                             badOptions: true)
        }
        session = se
        guard fuse_set_signal_handlers(se) == 0 else {
            fuse_session_destroy(se)
            fuse_opt_free_args(&args)
            throw MountError(description: "cannot install signal handlers", hint: nil)
        }
        guard fuse_session_mount(se, mountpoint) == 0 else {
            fuse_remove_signal_handlers(se)
            fuse_session_destroy(se)
            fuse_opt_free_args(&args)
            session = nil
            throw MountError(description: "cannot mount on \(mountpoint)",
                             hint: "check that it is an empty directory that is not already mounted (is /dev/fuse available?)")
        }
    }

    /// Serves requests until unmounted or signalled. Returns libfuse's status.
    public func run(maxThreads: UInt32 = 10) -> Int32 {
        guard let se = session else { return -1 }
        let cfg = fuse_loop_cfg_create()
        fuse_loop_cfg_set_clone_fd(cfg, 0)
        fuse_loop_cfg_set_max_threads(cfg, maxThreads)
        defer { fuse_loop_cfg_destroy(cfg) }
        return fuse_session_loop_mt(se, cfg)
    }

    /// Asks the loop to stop (from another thread); the kernel connection is
    /// dropped by `close`.
    public func requestExit() {
        if let se = session { fuse_session_exit(se) }
    }

    /// Drops what the kernel caches for these names and inodes (and the
    /// directory's own attributes), so the next `ls` or `stat` asks again.
    /// Never call this from a request handler or with the filesystem's lock
    /// held: the kernel may wait for requests in flight on the directory.
    public func invalidate(_ changes: SecretFilesystem.StoreChanges) {
        guard let se = session else { return }
        for name in changes.names {
            _ = name.withCString { fuse_lowlevel_notify_inval_entry(se, 1, $0, strlen($0)) }
        }
        for ino in changes.inodes { _ = fuse_lowlevel_notify_inval_inode(se, ino, 0, 0) }
        _ = fuse_lowlevel_notify_inval_inode(se, 1, 0, 0)
    }

    /// Unmounts (if still mounted) and frees the session.
    public func close() {
        guard let se = session else { return }
        fuse_session_unmount(se)
        fuse_remove_signal_handlers(se)
        fuse_session_destroy(se)
        fuse_opt_free_args(&args)
        session = nil
    }

    deinit { close() }
}
