import CShims
import Glibc
import Logging
import SecretfsPOSIX
import SecureMemory
import Synchronization

/// The listening half of a Unix-socket server, shared by the mount's
/// `PrivilegedSocketServer` and the resolver daemon: the socket file (mode,
/// group, stale-socket replacement), the accept thread, the registry of
/// connections with its limit, SO_PEERCRED admission, one detached thread
/// per connection, the linger-drain after a final ERROR, and stop.
///
/// What a connection says is the owner's business: `start` takes the
/// handler each admitted connection's thread runs. The listener never reads
/// a request; the only frames it sends are the owner's ERROR frames for a
/// busy server and a peer outside the allow-list.
///
/// Threads: one accept thread; one detached thread per admitted connection,
/// which runs the owner's handler and then `finish`. Both capture the
/// listener and the handlers strongly until they end (as the servers'
/// threads always held the servers), so nothing is released under them and
/// there is no cycle once they are gone.
///
/// Lock order: `state` is a leaf. Nothing is called with it held (no
/// handler, no logger, no blocking I/O beyond `shutdown`), so owners may
/// take it under their own locks; `whenStopping` runs after it is released.
package final class UnixSocketListener: @unchecked Sendable {
    // @unchecked: mutable state lives in `state` (a Mutex); the rest is immutable.

    /// Why the listener refuses a connection itself (the owner builds the frame).
    package enum Refusal: Sendable {
        /// `maxConnections` are being served, or the peer's uid holds its share.
        case busy
        /// The peer's credentials are not in `policy`.
        case notAllowed
    }

    package struct Configuration: Sendable {
        package var path: String
        /// How log lines name the socket ("privileged socket", "daemon socket").
        package var name: String
        package var backlog: Int32
        /// Connections served at once; more get a busy ERROR. One uid, and
        /// all uids but the owner together, get a share of it (`Holdings`).
        package var maxConnections: Int
        /// Seconds a send may block on a peer that does not read (set on
        /// every admitted connection before anything is sent).
        package var sendTimeout: Double
        /// Who is admitted: the kernel (the file's mode, group and ACL) and
        /// SO_PEERCRED, checked on the accept thread before a slot is taken.
        package var policy: SocketPolicy
        /// The owner's ERROR frame for a refusal, with the message given.
        package var refusalFrame: @Sendable (Refusal, String) -> SecureBytes

        package init(path: String, name: String, backlog: Int32, maxConnections: Int, sendTimeout: Double,
                     policy: SocketPolicy, refusalFrame: @escaping @Sendable (Refusal, String) -> SecureBytes) {
            self.path = path
            self.name = name
            self.backlog = backlog
            self.maxConnections = maxConnections
            self.sendTimeout = sendTimeout
            self.policy = policy
            self.refusalFrame = refusalFrame
        }

        /// The socket file's mode, group and ACL.
        package var access: SocketFileAccess { policy.fileAccess }
    }

    /// An admitted connection, handed to the owner's handler on its own thread.
    package struct Connection: Sendable {
        /// Unique for the listener's lifetime (owners key their own registries by it).
        package let id: UInt64
        package let fd: Int32
        package let peer: PeerCredentials
    }

    /// Why `start` failed. `step` lets each owner word its own kind and hint;
    /// `message` is the text both owners share.
    package struct Failure: Error, Sendable {
        package enum Step: Sendable {
            case wake, address, inspect, notASocket, live, probe, removeStale, socket
            case bind, appeared, group, acl, mode, listen, thread
        }
        package var step: Step
        package var errno: Int32
        package var message: String
    }

    package let configuration: Configuration
    let logger: Logger

    private struct State {
        var started = false
        var stopping = false
        var connections: [UInt64: Int32] = [:]
        /// Connection slots held, in all and per peer uid.
        var slots: Holdings
        var nextID: UInt64 = 1
        /// The accept thread and every connection thread not yet finished.
        var runningThreads = 0
        var socketDevice: UInt64 = 0
        var socketInode: UInt64 = 0

        mutating func remove(_ id: UInt64, uid: uid_t) {
            guard connections.removeValue(forKey: id) != nil else { return }
            slots.give(1, for: uid)
        }
    }
    private let state: Mutex<State>
    /// Wakes the accept loop at stop (eventfd).
    private let wakeFD: Int32
    private let wakeErrno: Int32

    package init(_ configuration: Configuration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
        state = Mutex(State(slots: Holdings(limit: configuration.maxConnections, policy: configuration.policy)))
        wakeFD = secretfs_eventfd(0)
        wakeErrno = wakeFD < 0 ? errno : 0
    }

    deinit {
        if wakeFD >= 0 { close(wakeFD) }
    }

    private var path: String { configuration.path }

    /// Connections being served now.
    package var connectionCount: Int { state.withLock { $0.connections.count } }

    package var isStopping: Bool { state.withLock { $0.stopping } }

    // MARK: Starting

    /// Binds and listens at the path and starts accepting; every admitted
    /// connection's thread runs `serve` (which returns true when its last
    /// frame was an ERROR after which the connection closes: the listener
    /// then lingers so the peer reads it). `refused` runs after a peer
    /// outside the policy got its ERROR. A socket file left by a dead server
    /// is replaced; a live one (something answers) is not. False if already
    /// started; a failed start can be retried (after removing the cause).
    @discardableResult
    package func start(serve: @escaping @Sendable (Connection) -> Bool,
                       refused: @escaping @Sendable (PeerCredentials) -> Void = { _ in }) throws(Failure) -> Bool {
        let already = state.withLock { s in
            if s.started { return true }
            s.started = true
            return false
        }
        if already { return false }
        var ok = false
        defer { if !ok { state.withLock { $0.started = false } } }
        try bindAndListen(serve: serve, refused: refused)
        ok = true
        return true
    }

    private func fail(_ step: Failure.Step, _ code: Int32, _ message: String) -> Failure {
        Failure(step: step, errno: code, message: message)
    }

    private func bindAndListen(serve: @escaping @Sendable (Connection) -> Bool,
                               refused: @escaping @Sendable (PeerCredentials) -> Void) throws(Failure) {
        guard wakeFD >= 0 else {
            throw fail(.wake, wakeErrno, "eventfd: \(SocketIO.errorText(wakeErrno))")
        }
        guard var addr = SocketIO.address(path) else {
            throw fail(.address, ENAMETOOLONG, "socket path too long: \(path)")
        }
        try removeStaleSocket()

        let fd = SocketIO.newStreamSocket()
        guard fd >= 0 else { throw fail(.socket, errno, "socket: \(SocketIO.errorText(errno))") }
        var ok = false
        defer { if !ok { close(fd) } }
        // The file bind creates has the socket inode's mode minus the umask.
        // Its mode is set by path right after (chmod below), not by changing
        // the umask around bind: the umask is the whole process's, and a
        // file another thread created meanwhile (a mount's, a test's) would
        // have been born with the socket's mode. The file is wider than its
        // mode only until that chmod, before listen(): nobody can connect yet.
        let access = configuration.access
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard rc == 0 else {
            let e = errno
            if e == EADDRINUSE { throw fail(.appeared, e, "\(path) appeared while starting") }
            throw fail(.bind, e, "cannot bind \(path): \(SocketIO.errorText(e))")
        }
        defer { if !ok { unlink(path) } }
        // Nobody can connect before listen(), so these path operations happen
        // before the socket is reachable; the directory is a trusted one (no
        // one else can swap the file, so the path is the file bind just
        // made), and fchmodat/lchown/lsetxattr never follow a link. (There is
        // no descriptor of the file to fchmod: the socket's own is another inode.)
        guard fchmodat(AT_FDCWD, path, access.mode, AT_SYMLINK_NOFOLLOW) == 0 else {
            let e = errno
            throw fail(.mode, e, "cannot set the mode of \(path): \(SocketIO.errorText(e))")
        }
        if let group = access.group, lchown(path, uid_t.max, group) != 0 {
            let e = errno
            throw fail(.group, e, "cannot give \(path) to group \(group): \(SocketIO.errorText(e))")
        }
        if access.needsACL {
            let acl = access.aclXattr
            let rc = acl.withUnsafeBytes { secretfs_set_access_acl(path, $0.baseAddress, UInt($0.count)) }
            if rc != 0 {
                let e = errno
                throw fail(.acl, e, "cannot grant the allowed users and groups access to \(path) (POSIX ACL): \(SocketIO.errorText(e))")
            }
        }
        var st = stat()
        // Owner read/write, group at most read/write (the ACL mask), nothing
        // for others, no special bits: anything else is not the file just made.
        guard lstat(path, &st) == 0, st.st_mode & S_IFMT == S_IFSOCK, st.st_uid == geteuid(),
              st.st_mode & 0o7117 == 0, st.st_mode & 0o600 == 0o600 else {
            throw fail(.mode, EPERM, "\(path) does not have the expected owner and mode after bind")
        }
        guard listen(fd, configuration.backlog) == 0 else {
            let e = errno
            throw fail(.listen, e, "cannot listen on \(path): \(SocketIO.errorText(e))")
        }
        state.withLock { s in
            s.socketDevice = UInt64(st.st_dev)
            s.socketInode = UInt64(st.st_ino)
            s.runningThreads += 1
        }
        guard startDetachedThread({ [self] in acceptLoop(fd, serve: serve, refused: refused) }) else {
            state.withLock { $0.runningThreads -= 1 }
            throw fail(.thread, EAGAIN, "cannot start the accept thread")
        }
        ok = true
    }

    /// A socket file at the path is replaced only if nothing answers on it;
    /// anything else at the path is left alone and reported.
    private func removeStaleSocket() throws(Failure) {
        var st = stat()
        guard lstat(path, &st) == 0 else {
            if errno == ENOENT { return }
            let e = errno
            throw fail(.inspect, e, "cannot inspect \(path): \(SocketIO.errorText(e))")
        }
        guard st.st_mode & S_IFMT == S_IFSOCK else {
            throw fail(.notASocket, ENOTSOCK, "\(path) exists and is not a socket; not replacing it")
        }
        let probe = SocketIO.connect(to: path)
        if probe >= 0 {
            close(probe)
            throw fail(.live, EADDRINUSE, "another process already serves \(path)")
        }
        let e = errno
        guard e == ECONNREFUSED else {
            throw fail(.probe, e, "cannot tell whether \(path) is in use: \(SocketIO.errorText(e))")
        }
        guard unlink(path) == 0 || errno == ENOENT else {
            let e = errno
            throw fail(.removeStale, e, "cannot remove stale socket \(path): \(SocketIO.errorText(e))")
        }
        logger.info("replaced a stale socket", metadata: ["path": "\(path)"])
    }

    // MARK: Stopping

    /// Stops accepting and shuts down every connection (blocked reads return
    /// 0, sends fail), runs `whenStopping` (the owner wakes what else its
    /// threads wait on), removes the socket file if it is still ours, and
    /// waits up to `timeout` seconds for the threads. False (and nothing
    /// done) if not running.
    @discardableResult
    package func stop(timeout: Double, whenStopping: () -> Void = {}) -> Bool {
        let (wasRunning, device, inode) = state.withLock { s -> (Bool, UInt64, UInt64) in
            guard s.started, !s.stopping else { return (false, 0, 0) }
            s.stopping = true
            for fd in s.connections.values { _ = shutdown(fd, Int32(SHUT_RDWR)) }
            return (true, s.socketDevice, s.socketInode)
        }
        guard wasRunning else { return false }
        whenStopping()
        var st = stat()
        if lstat(path, &st) == 0, UInt64(st.st_dev) == device, UInt64(st.st_ino) == inode {
            unlink(path)
        }
        var one: UInt64 = 1
        _ = write(wakeFD, &one, 8)
        let deadline = monotonicSeconds() + timeout
        while state.withLock({ $0.runningThreads }) > 0 && monotonicSeconds() < deadline {
            usleep(2_000)
        }
        return true
    }

    // MARK: Accepting

    private func acceptLoop(_ listenFD: Int32, serve: @escaping @Sendable (Connection) -> Bool,
                            refused: @escaping @Sendable (PeerCredentials) -> Void) {
        defer {
            close(listenFD)
            state.withLock { $0.runningThreads -= 1 }
        }
        while true {
            var fds = [pollfd(fd: listenFD, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0)]
            let rc = poll(&fds, 2, -1)
            if rc < 0 {
                if errno == EINTR { continue }
                logger.error("poll on the \(configuration.name) failed", metadata: ["errno": "\(errno)"])
                return
            }
            if fds[1].revents != 0 || isStopping { return }
            if fds[0].revents & Int16(POLLNVAL | POLLERR) != 0 {
                logger.error("the \(configuration.name)'s listening descriptor failed")
                return
            }
            let fd = secretfs_accept_cloexec(listenFD)
            if fd < 0 {
                switch errno {
                case EINTR, EAGAIN, ECONNABORTED, EPROTO:
                    continue
                case EMFILE, ENFILE, ENOBUFS, ENOMEM:
                    logger.warning("accept: out of resources", metadata: ["errno": "\(errno)"])
                    usleep(50_000)
                    continue
                default:
                    logger.error("accept failed", metadata: ["errno": "\(errno)"])
                    usleep(10_000)
                    continue
                }
            }
            admit(fd, serve: serve, refused: refused)
        }
    }

    /// Who was refused lately (uid -> when last reported, refusals since),
    /// so a stranger connecting in a loop costs one log line and one audit
    /// row per uid every `refusalReportInterval` seconds, not one per attempt.
    private let refusals = Mutex([uid_t: (reported: Double, suppressed: Int)]())
    static let refusalReportInterval = 10.0

    /// On the accept thread: SO_PEERCRED against the policy before the peer
    /// takes a connection slot or a thread. A refused peer gets its ERROR
    /// (never blocking: a small frame into an empty buffer) and is closed at once.
    private func admit(_ fd: Int32, serve: @escaping @Sendable (Connection) -> Bool,
                       refused: @escaping @Sendable (PeerCredentials) -> Void) {
        guard let peer = PeerCredentials.of(fd) else {
            logger.warning("cannot read peer credentials; closing", metadata: ["errno": "\(errno)"])
            close(fd)
            return
        }
        guard configuration.policy.allows(peer) else {
            SocketIO.setSendTimeout(fd, seconds: 0.05)
            SocketIO.sendAll(fd, configuration.refusalFrame(.notAllowed, "uid \(peer.uid) is not allowed on this socket"))
            _ = shutdown(fd, Int32(SHUT_WR))
            close(fd)
            let now = monotonicSeconds()
            let report = refusals.withLock { r -> Int? in
                if r.count > 1024 { r.removeAll() }
                if let last = r[peer.uid], now - last.reported < Self.refusalReportInterval {
                    r[peer.uid] = (last.reported, last.suppressed + 1)
                    return nil
                }
                let suppressed = r[peer.uid]?.suppressed ?? 0
                r[peer.uid] = (now, 0)
                return suppressed
            }
            if let suppressed = report {
                logger.warning("refused a connection", metadata: ["uid": "\(peer.uid)", "gid": "\(peer.gid)", "pid": "\(peer.pid)",
                                                                  "refused-since-last-report": "\(suppressed)"])
                refused(peer)
            }
            return
        }
        enum Decision { case serve(UInt64), busy(String), stopping }
        let decision = state.withLock { s -> Decision in
            if s.stopping { return .stopping }
            switch s.slots.take(1, for: peer.uid) {
            case .total?: return .busy("too many connections (limit \(s.slots.limit))")
            case .uid?: return .busy("too many connections from uid \(peer.uid) (limit \(s.slots.share) per uid)")
            case .othersTogether?:
                return .busy("too many connections from allowed uids (limit \(s.slots.share) together; the rest is kept for the socket's owner)")
            case nil: break
            }
            let id = s.nextID
            s.nextID += 1
            s.connections[id] = fd
            s.runningThreads += 1
            return .serve(id)
        }
        switch decision {
        case .stopping:
            close(fd)
        case .busy(let message):
            // Never blocks the accept loop: a small frame into an empty buffer.
            SocketIO.setSendTimeout(fd, seconds: 0.05)
            SocketIO.sendAll(fd, configuration.refusalFrame(.busy, message))
            _ = shutdown(fd, Int32(SHUT_WR))
            close(fd)
            logger.warning("connection refused: busy", metadata: ["uid": "\(peer.uid)", "reason": "\(message)"])
        case .serve(let id):
            let started = startDetachedThread { [self] in
                SocketIO.setSendTimeout(fd, seconds: configuration.sendTimeout)
                let linger = serve(Connection(id: id, fd: fd, peer: peer))
                finish(id: id, uid: peer.uid, fd: fd, linger: linger)
            }
            if !started {
                state.withLock { s in
                    s.remove(id, uid: peer.uid)
                    s.runningThreads -= 1
                }
                close(fd)
                logger.error("cannot start a connection thread")
            }
        }
    }

    /// Removes the connection, then closes it (in that order: `stop` shuts
    /// down registered descriptors, and a number closed first could be reused).
    private func finish(id: UInt64, uid: uid_t, fd: Int32, linger: Bool) {
        if linger { Self.drainAfterError(fd) }
        state.withLock { $0.remove(id, uid: uid) }
        close(fd)
        state.withLock { $0.runningThreads -= 1 }
    }

    /// After a final ERROR frame: stop sending and discard what the peer still
    /// sends for a moment, so it reads our frame instead of ECONNRESET. The
    /// scratch is wiped: a resolver daemon's peer may be sending values (REDACT data).
    private static func drainAfterError(_ fd: Int32) {
        _ = shutdown(fd, Int32(SHUT_WR))
        let deadline = monotonicSeconds() + 0.2
        var scratch = [UInt8](repeating: 0, count: 4096)
        var budget = 1 << 20
        while budget > 0, SocketIO.waitReadable(fd, deadline: deadline) {
            let n = read(fd, &scratch, scratch.count)
            if n <= 0 { break }
            budget -= n
        }
        _ = scratch.withUnsafeMutableBytes { $0.initializeMemory(as: UInt8.self, repeating: 0) }
    }
}
