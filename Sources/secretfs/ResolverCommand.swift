import ArgumentParser
import CShims
import Glibc
import SecretfsPOSIX
import SecretfsProtocol
import SecretfsResolver

struct ResolverCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "resolver",
        abstract: "Serve flow runtimes: resolve documents, hand out values and redact streams over a Unix socket.",
        discussion: """
            Runs in the foreground until SIGTERM or SIGINT. Clients (flow runtimes, `secretfs resolve \
            --resolver SOCKET`, `secretfs redact --resolver SOCKET`) send RESOLVE, VALUES, NAMES, WATCH and \
            REDACT requests for any project mounted with this --runtime-dir (the daemon uses \
            RUNTIME_DIR/PROJECT.sock, so the mount must allow the daemon's user). Values are fetched only \
            when a request needs them, cached in locked memory, and dropped the moment the mount reports a \
            change or goes away. Only the daemon's own user is served by default; --allow-uid and \
            --allow-group widen that. The kernel enforces the list at connect(2) (the socket file is 0600, \
            0660 with the first group, and other users and groups get POSIX ACL entries), and the daemon \
            checks SO_PEERCRED again before it reads a byte. The protocol is in docs/protocol.md \
            ("Resolver daemon protocol"). Logs on stderr carry projects, names and errors; never a value.
            """)

    @OptionGroup var global: GlobalOptions

    @Option(help: ArgumentHelp("The daemon's socket.", valueName: "socket"))
    var listen: String
    @Option(name: .customLong("allow-uid"), help: ArgumentHelp("Also serve this user (name or uid; repeatable).", valueName: "uid"))
    var allowUid: [String] = []
    @Option(name: .customLong("allow-group"), help: ArgumentHelp("Also serve members of this group (name or gid; repeatable). The socket file is given the first group, mode 0660.", valueName: "group"))
    var allowGroup: [String] = []
    @Option(name: .customLong("idle-timeout"), help: ArgumentHelp("Close a client connection idle this many seconds (it reconnects; default 300).", valueName: "seconds"))
    var idleTimeoutOption: Double?
    var idleTimeout: Double { idleTimeoutOption ?? 300 }
    @Flag(help: "Log every request (names, never values).") var debug = false

    func validate() throws {
        _ = try policy()
        guard idleTimeout > 0, idleTimeout <= 86400 else { throw ValidationError("--idle-timeout needs more than 0 and at most 86400 seconds") }
    }

    func policy() throws -> SocketPolicy {
        var uids: [uid_t] = []
        for u in allowUid {
            guard let uid = lookupUser(u) else { throw ValidationError("--allow-uid: no user '\(u)'") }
            uids.append(uid)
        }
        var gids: [gid_t] = []
        for g in allowGroup {
            guard let gid = lookupGroup(g) else { throw ValidationError("--allow-group: no group '\(g)'") }
            gids.append(gid)
        }
        // The daemon's own user is always in (SocketPolicy adds it).
        return SocketPolicy(uids: uids, gids: gids)
    }

    func run() throws {
        let logger = makeLogger(label: "secretfs.resolver", debug: debug)
        // The daemon holds values: no core dumps, no ptrace by other processes.
        if secretfs_harden_process() != 0 {
            throw Failure("cannot disable core dumps and ptrace for the resolver daemon: \(errnoText(errno))", exit: .socketProblem)
        }
        // Block the stop signals before any thread starts (threads inherit
        // the mask), then wait for them here.
        var stopSignals = sigset_t()
        sigemptyset(&stopSignals)
        for s in [SIGTERM, SIGINT, SIGHUP] { sigaddset(&stopSignals, s) }
        pthread_sigmask(SIG_BLOCK, &stopSignals, nil)

        // The socket's directory is trusted like a runtime directory: nobody
        // but us and root may write it, or they could swap the socket out
        // from under our clients.
        let socketPath = absolute(listen)
        let socketDirectory = socketPath.lastIndex(of: "/").map { $0 == socketPath.startIndex ? "/" : String(socketPath[..<$0]) } ?? "/"
        do {
            _ = try TrustedDirectory.open(socketDirectory)
        } catch {
            throw Failure("the directory of the daemon's socket, \(socketDirectory), is not safe to use: \(error)",
                          hint: (error.fix.map { $0 + ", or " } ?? "") + "listen in a directory that only you and root can write",
                          exit: .socketProblem)
        }
        var limits = ResolverDaemonLimits()
        limits.idleTimeout = idleTimeout
        let daemon = ResolverDaemon(socketPath: socketPath, runtimeDirectory: global.runtimeDirectory,
                                    policy: try policy(), limits: limits, logger: logger)
        do {
            try daemon.start()
        } catch {
            throw Failure(error.message, hint: error.hint, exit: .socketProblem)
        }
        // Under secretfs-resolver.service (Type=notify): ready once the
        // socket listens, stopping as soon as a stop signal arrives.
        let notifier = ServiceNotifier.fromEnvironment()
        notifier?.send("READY=1\nSTATUS=listening on \(socketPath)")
        var signal: Int32 = 0
        while sigwait(&stopSignals, &signal) != 0 {}
        notifier?.send("STOPPING=1")
        logger.info("stopping", metadata: ["signal": "\(signal)"])
        daemon.stop()
    }
}
