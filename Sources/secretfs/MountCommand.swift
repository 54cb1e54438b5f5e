import ArgumentParser
import CShims
import Glibc
import Logging
import SecretfsFS
import SecretfsNames
import SecretfsPOSIX
import SecretfsProtocol
import SecretfsStore

struct MountCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mount",
        abstract: "Mount a project as a directory of write-only secrets.",
        discussion: """
            Returns once the mount answers; the mount process keeps running in the background, \
            logging to RUNTIME_DIR/PROJECT.log, until `secretfs umount` or `fusermount3 -u`. \
            With -f it stays in the foreground and logs to stderr.

            Mount options (-o, comma separated; besides these, only the kernel's
            mount flags: ro, nosuid, nodev, noexec, noatime, sync and the like):
              group=GROUP          members of GROUP (name or gid) may use it too
              keep_newline         keep the newline echo adds (default: drop one)
              strict_modes         chmod, chown, touch fail with EPERM (default:
                                   they succeed and change nothing)
              max_size=BYTES       largest value (default 64K; suffixes K, M)
              cache_timeout=SEC    kernel cache of names, attributes (default 1)
              staging_timeout=SEC  drop a staging (.NAME) file closed this long
                                   (default 600; 0: never)
            """)

    @OptionGroup var global: GlobalOptions

    @Argument(help: "The project to mount.", completion: .projectNames) var project: String
    @Argument(help: "An empty directory to mount it on.", completion: .directory) var mountpoint: String

    @Flag(name: [.customShort("f"), .long], help: "Stay in the foreground; log to stderr.")
    var foreground = false

    @Option(name: .customShort("o"), help: ArgumentHelp("Mount options (see above).", valueName: "options"))
    var options: [String] = []

    @Option(help: ArgumentHelp("A uid (or user name) allowed on the privileged socket besides the mount's owner; repeatable.", valueName: "uid"))
    var resolverUid: [String] = []

    @Option(help: ArgumentHelp("A group whose members are allowed on the privileged socket; repeatable.", valueName: "group"))
    var resolverGroup: [String] = []

    @Option(help: ArgumentHelp("Close a privileged-socket connection idle this many seconds (clients reconnect; default 30).", valueName: "seconds"))
    var socketIdleTimeout: Double?
    var idleTimeout: Double { socketIdleTimeout ?? 30 }

    @Flag(help: "Log every FUSE request (libfuse debug output; names only, never values).")
    var debug = false

    func validate() throws {
        try validateProjectName(project)
        _ = try parsedOptions()
        _ = try resolverPolicy()
        guard idleTimeout > 0, idleTimeout <= 86400 else {
            throw ValidationError("--socket-idle-timeout needs more than 0 and at most 86400 seconds")
        }
    }

    /// The kernel's generic mount flags that libfuse (3.14, Debian 12) takes,
    /// the only options handed to it: each was mounted with here. The other
    /// atime flags, lazytime and symfollow are "unknown option(s)" to it.
    static let kernelMountFlags: Set<String> = [
        "ro", "rw", "nosuid", "suid", "nodev", "dev", "noexec", "exec", "sync", "async", "dirsync", "atime", "noatime",
    ]

    /// Splits `-o` into secretfs's own options and the ones for libfuse.
    func parsedOptions() throws -> MountOptions {
        var result = MountOptions()
        for item in options.flatMap({ $0.split(separator: ",").map(String.init) }) where !item.isEmpty {
            let (key, value) = splitOption(item)
            switch key {
            case "group":
                guard let value, let gid = lookupGroup(value) else {
                    throw ValidationError("-o group needs an existing group name or gid, got '\(value ?? "")'")
                }
                result.group = gid
            case "keep_newline":
                result.keepTrailingNewline = true
            case "strict_modes":
                result.strictModes = true
            case "max_size":
                guard let value, let n = parseSize(value), n >= 1, n <= 16 << 20 else {
                    throw ValidationError("-o max_size needs a size from 1 to 16M (e.g. 65536, 64K, 1M), got '\(value ?? "")'")
                }
                result.sizeLimit = n
            case "cache_timeout":
                guard let value, let t = Double(value), t >= 0, t <= 3600 else {
                    throw ValidationError("-o cache_timeout needs seconds from 0 to 3600, got '\(value ?? "")'")
                }
                result.cacheTimeout = t
            case "staging_timeout":
                guard let value, let t = Double(value), t >= 0, t <= 7 * 86400 else {
                    throw ValidationError("-o staging_timeout needs seconds from 0 (never) to 604800, got '\(value ?? "")'")
                }
                result.stagingTimeout = t == 0 ? nil : t
            case "allow_other", "default_permissions", "allow_root":
                throw ValidationError("-o \(key) is decided by secretfs: without -o group only the mount's owner may enter; with -o group=GROUP its members may too, and the kernel enforces the mode bits")
            case "writeback_cache":
                throw ValidationError("-o writeback_cache is refused: the kernel would read write-only files back")
            case _ where value == nil && Self.kernelMountFlags.contains(key):
                result.fuseOptions.append(item)
            default:
                // Only the value-less mount flags above go on to libfuse: its
                // parser unescapes `\x` and `\NNN`, so 'allow\_other' would pass
                // a check of the text and reach the kernel as allow_other, and
                // fsname= or subtype= would rename the mount. The value is not
                // repeated: it may be a store URL mistyped, with a password.
                throw ValidationError("-o \(Wire.printable(String(key.prefix(64)))) is not a mount option secretfs knows "
                                      + "(its own: group=, keep_newline, strict_modes, max_size=, cache_timeout=, staging_timeout=; "
                                      + "the kernel's: \(Self.kernelMountFlags.sorted().joined(separator: ", ")))")
            }
        }
        return result
    }

    func resolverPolicy() throws -> (uids: [uid_t], gids: [gid_t]) {
        var uids: [uid_t] = []
        for u in resolverUid {
            guard let uid = lookupUser(u) else { throw ValidationError("--resolver-uid: no user '\(u)'") }
            uids.append(uid)
        }
        var gids: [gid_t] = []
        for g in resolverGroup {
            guard let gid = lookupGroup(g) else { throw ValidationError("--resolver-group: no group '\(g)'") }
            gids.append(gid)
        }
        return (uids, gids)
    }

    func run() throws {
        let target = absolute(mountpoint)
        if foreground {
            try serve(mountpoint: target, daemonized: GlobalOptions.environment("SECRETFS_DAEMONIZED") == "1")
        } else {
            try startInBackground(mountpoint: target)
        }
    }

    // MARK: The parent: start the mount process and wait until it answers

    private func startInBackground(mountpoint target: String) throws {
        // Checked here too (the mount process checks again): readiness below
        // is "a FUSE mount appeared at the target", which an existing mount
        // there would fake.
        let target = try checkMountpoint(target)
        let runtime = try global.ensureRuntimeDirectory()
        let logPath = runtime.logFile(project)
        // A log this start creates and nothing writes to (the mount failed
        // before it logged: a project that does not exist, say) goes again.
        let logExisted = access(logPath, F_OK) == 0
        let logFD = try runtime.openLog(project: project)
        defer { close(logFD) }
        func removeLogIfUnused() {
            var st = stat()
            if !logExisted && fstat(logFD, &st) == 0 && st.st_size == 0 { unlink(logPath) }
        }
        var pipeFDs: [Int32] = [0, 0]
        guard secretfs_pipe_cloexec(&pipeFDs) == 0 else { throw Failure("pipe: \(String(cString: strerror(errno)))") }

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, logFD, 1)
        posix_spawn_file_actions_adddup2(&actions, pipeFDs[1], 2)
        // Nothing else of the caller's: a descriptor the shell left open
        // (`3>&1 | cat`, a flock(1) lock, an ssh session's pipe) would be
        // held for as long as the mount runs, and the pipeline would never
        // see its end.
        let closing = secretfs_spawn_add_closefrom(&actions, 3)
        guard closing == 0 else {
            close(pipeFDs[0]); close(pipeFDs[1])
            removeLogIfUnused()
            throw Failure("cannot prepare the mount process: \(String(cString: strerror(closing)))", exit: .mountProblem)
        }
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        posix_spawnattr_setsigmask(&attr, &noSignals)
        // A session of its own: the mount survives the terminal that started it.
        posix_spawnattr_setflags(&attr, secretfs_spawn_setsid_flag() | Int16(POSIX_SPAWN_SETSIGMASK))

        let exe = selfExecutable()
        var args = [exe] + Array(CommandLine.arguments.dropFirst()) + ["--foreground"]
        // The child resolves the same relative paths from the same directory.
        args = args.map { $0 }
        var env = environmentList().filter { !$0.hasPrefix("SECRETFS_DAEMONIZED=") }
        env.append("SECRETFS_DAEMONIZED=1")
        var pid: pid_t = 0
        let rc = withCStrings(args) { argv in
            withCStrings(env) { envp in posix_spawn(&pid, exe, &actions, &attr, argv, envp) }
        }
        close(pipeFDs[1])
        guard rc == 0 else {
            close(pipeFDs[0])
            removeLogIfUnused()
            throw Failure("cannot start the mount process: \(String(cString: strerror(rc)))", exit: .mountProblem)
        }

        // The child writes errors to the pipe, and closes it (by moving its
        // stderr to the log) once it is mounted.
        var collected: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = read(pipeFDs[0], &buf, buf.count)
            if n > 0 { collected += buf[0..<n]; continue }
            if n < 0 && errno == EINTR { continue }
            break
        }
        close(pipeFDs[0])
        let message = String(decoding: collected, as: UTF8.self)

        // Either the child exited (failure) or it is mounted.
        let deadline = monotonicSeconds() + 10
        while monotonicSeconds() < deadline {
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid {
                removeLogIfUnused()
                writeStderr(message)
                let code = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 1
                Glibc.exit(code == 0 ? Exit.mountProblem.rawValue : code)
            }
            if mountAnswers(at: target) {
                writeStderr(message)
                writeStdout("mounted project \(project) at \(target) (pid \(pid), log \(logPath))\n")
                return
            }
            usleep(10_000)
        }
        kill(pid, SIGTERM)
        throw Failure("the mount process did not become ready within 10 s", hint: "see \(logPath)", exit: .mountProblem)
    }

    // MARK: The mount process itself

    private func serve(mountpoint target: String, daemonized: Bool) throws {
        _ = secretfs_unblock_all_signals()
        let logger = makeLogger(debug: debug)
        // The mount process is the only one holding key material: refuse to
        // run it where a core dump or ptrace could expose that.
        if secretfs_harden_process() != 0 {
            throw Failure("cannot disable core dumps and ptrace for the mount process: \(String(cString: strerror(errno)))",
                          exit: .mountProblem)
        }
        var mountOptions = try parsedOptions()
        let policy = try resolverPolicy()

        warnIfLockedMemoryIsShort(mountOptions, logger: logger)
        let target = try checkMountpoint(target)
        let store = try global.openStore()
        let vault = try store.openProject(project)
        store.discardMasterKey()
        // Concurrent closes share one sync of the WAL (GroupCommit.swift);
        // each still returns only once its value is durable.
        try store.enableGroupCommit()
        // One mount per project per store: a second one (through another
        // runtime directory) would never hear of the first one's changes
        // and its resolvers would serve stale values.
        guard let claim = try store.claimMount(of: project) else {
            throw Failure("project '\(project)' is already mounted from the store \(global.storeDirectory)",
                          hint: "a project has one mount per store (a second would not hear of the first's changes, and its resolvers would serve stale values); use the existing mount, or unmount it first ('secretfs status' lists a runtime directory's mounts)",
                          exit: .mountProblem)
        }
        defer { withExtendedLifetime(claim) {} }
        let runtime = try global.ensureRuntimeDirectory()
        let lockFD = try runtime.acquire(project: project, mountpoint: target, store: global.storeIdentity)
        defer { runtime.release(project: project, fd: lockFD) }

        if mountOptions.group != nil && getuid() != 0 && !fuseConfAllowsOther() {
            throw Failure("-o group needs allow_other, which /etc/fuse.conf does not allow for non-root users",
                          hint: "add user_allow_other to /etc/fuse.conf, or mount as root", exit: .mountProblem)
        }
        var fuseOptions = ["fsname=secretfs:\(project)", "subtype=secretfs"]
        // Strangers are refused by the kernel, not only by us. Without a
        // group only the mounting uid may enter (no allow_other: the kernel
        // refuses every other uid, inotify and cached stat included). With a
        // group, allow_other lets its members in, and default_permissions
        // makes the kernel enforce the mode bits we report (0770 directory,
        // 0220 files) on every path it answers without asking us.
        if mountOptions.group != nil { fuseOptions += ["allow_other", "default_permissions"] }
        fuseOptions += mountOptions.fuseOptions
        mountOptions.fuseOptions = fuseOptions

        let filesystem = try SecretFilesystem(vault: vault, options: mountOptions, logger: logger)
        let session: FuseSession
        do {
            session = try FuseSession(filesystem: filesystem, mountpoint: target, fuseOptions: fuseOptions, debug: debug)
        } catch let e as FuseSession.MountError {
            throw Failure(e.description, hint: e.hint, exit: e.badOptions ? .usage : .mountProblem)
        }
        // The privileged socket: without --resolver-uid, the mount's owner's uid is allowed.
        var limits = ServerLimits()
        limits.idleTimeout = idleTimeout
        let server = PrivilegedSocketServer(vault: vault, socketPath: runtime.socketPath(project),
                                            policy: SocketPolicy(uids: policy.uids, gids: policy.gids),
                                            limits: limits, logger: logger)
        do {
            try server.start()
        } catch {
            session.close()
            throw Failure(error.description, hint: error.hint, exit: .socketProblem)
        }
        filesystem.onChange = { [server] names in server.notifyChanged(names) }
        // Changes made outside this mount (restore, undelete, purge) reach
        // the listing, the kernel's caches and the socket's watchers.
        let watcher = StoreWatcher(filesystem: filesystem, invalidate: { [session] in session.invalidate($0) })
        if !watcher.start() { logger.warning("cannot start the store watcher: changes made outside this mount show only after a remount") }
        _ = chdir("/")
        if daemonized {
            // Ready: from now on stderr is the log file (already our stdout),
            // which closes the parent's pipe and lets it return.
            dup2(1, 2)
        }
        logger.info("mounted", metadata: ["project": "\(project)", "mountpoint": "\(target)",
                                          "secrets": "\(filesystem.secretCount)", "pid": "\(getpid())",
                                          "socket": "\(server.socketPath)"])
        // Under a Type=notify unit (secretfs@.service) this process is the
        // one systemd watches: READY=1 once the mount answers, STOPPING=1 as
        // soon as the loop ends (SIGTERM or an unmount). A daemonized mount
        // process reports to the parent that started it, never to systemd.
        let notifier = daemonized ? nil : ServiceNotifier.fromEnvironment()
        let readiness: MountReadiness?
        do {
            readiness = try MountReadiness.watch(target, notifier: notifier, status: "serving project \(project) at \(target)")
        } catch {
            server.stop()
            session.close()
            throw error
        }
        let rc = session.run()
        watcher.stop()
        readiness?.finish()
        notifier?.send("STOPPING=1\nSTATUS=unmounting \(target)")
        server.stop()   // closes connections, unlinks the socket
        session.close()
        logger.info("unmounted", metadata: ["project": "\(project)", "status": "\(rc)"])
    }

    /// Each write handle holds at least two locked pages (a 4 KiB buffer and
    /// libsodium's canary); a value being written holds up to the size limit.
    /// Past RLIMIT_MEMLOCK libsodium still allocates, but the pages may be
    /// swapped: say so at start rather than silently.
    private func warnIfLockedMemoryIsShort(_ options: MountOptions, logger: Logger) {
        guard geteuid() != 0 else { return }   // root's CAP_IPC_LOCK ignores the limit
        var limit = rlimit()
        // RLIMIT_MEMLOCK is 8 on Linux (the macro does not reach Swift).
        guard getrlimit(__rlimit_resource_t(8), &limit) == 0, limit.rlim_cur != rlim_t.max else { return }
        let needed = UInt64(options.maxWriteHandlesPerUID) * 8192 + UInt64(options.sizeLimit) * 2 + (1 << 20)
        guard UInt64(limit.rlim_cur) < needed else { return }
        let message = "RLIMIT_MEMLOCK (ulimit -l) is \(limit.rlim_cur / 1024) KiB, less than the \(needed / 1024) KiB "
            + "that \(options.maxWriteHandlesPerUID) open write handles may lock; past it, values may reach swap"
        // Before the mount is ready the log goes to `secretfs mount`'s stderr, after it to PROJECT.log.
        logger.warning("\(message)", metadata: ["hint": "raise it (ulimit -l, or LimitMEMLOCK= in a systemd unit)"])
    }

    /// Checks the mountpoint and returns the path to mount on: the same
    /// directory with every symlink resolved.
    ///
    /// The mountpoint is trusted as the store is (TrustedDirectory): it and
    /// every directory above it owned by the caller or root, no ancestor
    /// writable by others bar a sticky root-owned one. Otherwise whoever
    /// could write an ancestor (or owns the mountpoint, in a sticky /tmp)
    /// could swap it for a symlink between this check and mount(2), and a
    /// mount started by root would land on a directory of their choosing.
    /// The mountpoint's own mode bits are not checked: the mount covers them.
    private func checkMountpoint(_ target: String) throws -> String {
        let directory: TrustedDirectory
        do {
            directory = try TrustedDirectory.open(target, checkingOwnMode: false)
        } catch {
            switch error.problem {
            case .system(ENOENT):
                throw Failure("mountpoint \(target) does not exist", hint: "create it with mkdir -p \(target)", exit: .mountProblem)
            case .notADirectory:
                let at = error.path == target ? "" : " (\(error.path) is not)"
                throw Failure("mountpoint \(target) is not a directory\(at)",
                              hint: "mount on an existing, empty directory (mkdir DIR)", exit: .mountProblem)
            case .system(ENOTCONN):
                // A FUSE mount whose process died stays until it is unmounted.
                throw Failure("cannot use mountpoint \(target): \(error)",
                              hint: "a mount whose process is gone is still there: unmount it (secretfs umount \(target), "
                                  + "or fusermount3 -u \(target)), then mount again", exit: .mountProblem)
            case .system:
                throw Failure("cannot use mountpoint \(target): \(error)",
                              hint: "check the path and its permissions, or choose another directory", exit: .mountProblem)
            default:
                throw Failure("mountpoint \(target) is not safe to mount on: \(error)",
                              hint: (error.fix.map { $0 + ", or " } ?? "")
                                  + "mount on a directory that only you and root can replace (it and every directory above it owned by you or root, none writable by others)",
                              exit: .mountProblem)
            }
        }
        let resolved = directory.canonicalPath
        if MountTable.isMountpoint(resolved) {
            throw Failure("\(target) is already a mount point",
                          hint: "unmount it first (secretfs umount \(target)) or choose another directory", exit: .mountProblem)
        }
        // Listed through the descriptor that was checked, not the path again.
        let listing = dup(directory.descriptor)
        guard listing >= 0, let dir = fdopendir(listing) else {
            if listing >= 0 { close(listing) }
            throw Failure("cannot open mountpoint \(target): \(String(cString: strerror(errno)))", exit: .mountProblem)
        }
        defer { closedir(dir) }
        while let ent = readdir(dir) {
            let name = withUnsafeBytes(of: ent.pointee.d_name) { String(cString: $0.baseAddress!.assumingMemoryBound(to: CChar.self)) }
            if name != "." && name != ".." {
                throw Failure("mountpoint \(target) is not empty", hint: "mount on an empty directory: its files would be hidden", exit: .mountProblem)
            }
        }
        return resolved
    }
}

// MARK: Small process helpers

func splitOption(_ item: String) -> (String, String?) {
    guard let eq = item.firstIndex(of: "=") else { return (item, nil) }
    return (String(item[..<eq]), String(item[item.index(after: eq)...]))
}

/// A byte count with an optional K or M suffix; nil when it does not parse
/// or does not fit (never a trap: `99999999999999M` is just too large).
func parseSize(_ s: String) -> Int? {
    let upper = s.uppercased()
    var digits = Substring(upper)
    var unit = 1
    if upper.hasSuffix("K") { unit = 1 << 10; digits = digits.dropLast() }
    else if upper.hasSuffix("M") { unit = 1 << 20; digits = digits.dropLast() }
    guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }), let n = Int(digits) else { return nil }
    let (product, overflow) = n.multipliedReportingOverflow(by: unit)
    return overflow ? nil : product
}

func lookupGroup(_ s: String) -> gid_t? {
    if let n = UInt32(s) { return n }
    guard let g = getgrnam(s) else { return nil }
    return g.pointee.gr_gid
}

func lookupUser(_ s: String) -> uid_t? {
    if let n = UInt32(s) { return n }
    guard let p = getpwnam(s) else { return nil }
    return p.pointee.pw_uid
}

func fuseConfAllowsOther() -> Bool {
    guard let f = fopen("/etc/fuse.conf", "r") else { return false }
    defer { fclose(f) }
    var line: UnsafeMutablePointer<CChar>?
    var cap = 0
    defer { free(line) }
    while getline(&line, &cap, f) > 0 {
        if String(cString: line!).trimmingCharacters(in: " \t\n") == "user_allow_other" { return true }
    }
    return false
}

extension String {
    func trimmingCharacters(in set: String) -> String {
        let chars = Set(set)
        var s = Substring(self)
        while let c = s.first, chars.contains(c) { s = s.dropFirst() }
        while let c = s.last, chars.contains(c) { s = s.dropLast() }
        return String(s)
    }
}

func selfExecutable() -> String {
    var buf = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
    let n = readlink("/proc/self/exe", &buf, buf.count - 1)
    return n > 0 ? cString(buf) : CommandLine.arguments[0]
}

func environmentList() -> [String] {
    var out: [String] = []
    var p = environ
    while let s = p.pointee {
        out.append(String(cString: s))
        p += 1
    }
    return out
}

func withCStrings<R>(_ strings: [String], _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) -> R) -> R {
    var cs: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) }
    cs.append(nil)
    defer { for p in cs { free(p) } }
    return cs.withUnsafeBufferPointer { body($0.baseAddress!) }
}

