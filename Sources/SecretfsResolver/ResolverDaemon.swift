import Glibc
import Logging
import SecretfsInject
import SecretfsNames
import SecretfsPOSIX
import SecretfsProtocol
import SecretfsRedact
import SecureMemory
import Synchronization

/// Bounds on what the daemon does for its clients.
public struct ResolverDaemonLimits: Sendable {
    /// Connections served at once (watchers and redaction streams included);
    /// more get a `busy` ERROR.
    public var maxConnections = 128
    /// Seconds a connection may sit idle between requests (or take to send
    /// one frame) before it gets a `timeout` ERROR and is closed.
    public var idleTimeout: Double = 300
    /// Seconds a send may block on a client that does not read.
    public var sendTimeout: Double = 10
    /// Seconds to wait for the mount's socket.
    public var mountTimeout: Double = 10
    /// Projects cached at once (each with a watch on its mount).
    public var maxProjects = 64
    /// Redactors kept per project. Each REDACT request chooses its key (any
    /// minimum length, any mask), and a redactor of 1,000 secrets locks up
    /// to 8 MiB: without a bound, one client cycling through masks would
    /// make the daemon lock memory without end. A stream keeps using the
    /// redactor it started with when the cache lets it go.
    public var maxRedactorsPerProject = 4
    /// Redactors alive per project: cached or held by a REDACT stream. The
    /// cache's bound alone leaves one per stream (a stream keeps its own when
    /// the cache lets it go, and with a mask of its own never shares it), so
    /// connections x 8 MiB could be locked. Past it a REDACT that would build
    /// another gets ERROR `busy`; a stream's rebuild after a change replaces
    /// its own and is never refused.
    public var maxLiveRedactorsPerProject = 8
    /// WATCH connections one uid may hold (watches never time out).
    public var maxWatchesPerUID = 32
    /// Largest request frame (a document or a DATA chunk).
    public var maxRequestFrame = DaemonWire.maxRequestFrame
    /// Largest reply frame built; bigger results get `reply-too-large`.
    public var maxReplyFrame = DaemonWire.maxReplyFrame
    /// Locked memory all connections may hold at once for requests, replies
    /// and redaction output (`MemoryBudget`); one uid gets three quarters of
    /// it when several may connect. Room for three of the largest request
    /// and reply together; a request that would pass it gets ERROR `busy`.
    public var maxFrameMemory = 256 << 20

    public init() {}
}

/// The resolver daemon: serves flow runtimes over its own Unix socket
/// (docs/protocol.md, "Resolver daemon protocol") with RESOLVE, VALUES,
/// NAMES, WATCH and streaming REDACT, for any project whose mount socket is
/// at `RUNTIME_DIR/PROJECT.sock`.
///
/// A `UnixSocketListener` owns the socket file, the accept thread and the
/// connections (bounded by `ResolverDaemonLimits.maxConnections`); each
/// connection gets its own thread with blocking I/O, and is checked with
/// SO_PEERCRED against `policy` before anything is read from it.
/// Values live only in `ProjectCache` (locked memory) and in the frames that
/// carry them (locked memory, wiped after sending). Logs carry projects,
/// names, uids and errors; never a value.
///
/// Lock order: `state` → (nothing). A `ProjectCache`'s lock and the
/// listener's lock are leaves; the daemon never holds `state` while calling
/// into a cache or the listener.
public final class ResolverDaemon: @unchecked Sendable {
    // @unchecked: mutable state lives in `state` (a Mutex); the rest is immutable.
    public let socketPath: String
    public let runtimeDirectory: String
    public let policy: SocketPolicy
    public let limits: ResolverDaemonLimits
    let logger: Logger
    private let listener: UnixSocketListener
    /// What the connections' frame buffers hold (`limits.maxFrameMemory`).
    public let frameMemory: MemoryBudget

    private struct State {
        /// Set by the first `start`, even one that fails: the daemon starts once.
        var started = false
        var stopping = false
        var projects: [String: ProjectCache] = [:]
        var watchesByUID: [uid_t: Int] = [:]
    }
    private let state = Mutex(State())

    public init(socketPath: String, runtimeDirectory: String, policy: SocketPolicy = SocketPolicy(),
                limits: ResolverDaemonLimits = ResolverDaemonLimits(),
                logger: Logger = Logger(label: "secretfs.resolver")) {
        self.socketPath = socketPath
        self.runtimeDirectory = runtimeDirectory
        self.policy = policy
        self.limits = limits
        self.logger = logger
        frameMemory = MemoryBudget(limit: limits.maxFrameMemory, policy: policy)
        listener = UnixSocketListener(UnixSocketListener.Configuration(
            path: socketPath, name: "daemon socket",
            backlog: 128, maxConnections: limits.maxConnections, sendTimeout: limits.sendTimeout, policy: policy,
            refusalFrame: { refusal, message in
                DaemonWire.errorFrame(refusal == .busy ? .busy : .notAllowed, message)
            }), logger: logger)
    }

    /// The socket file's mode (0600, or 0660 with a group; other allowed
    /// uids and groups get POSIX ACL entries).
    public var socketMode: mode_t { listener.configuration.access.mode }

    /// The mount socket the daemon uses for `project`.
    public func mountSocketPath(_ project: String) -> String { MountSocket.path(runtimeDirectory: runtimeDirectory, project: project) }

    /// Connections being served now.
    public var connectionCount: Int { listener.connectionCount }

    /// For tests: the project's cached value count, the number of events that
    /// dropped cached values, whether the mount is being watched, and the
    /// redactors kept.
    public func cacheStats(project: String) -> (cachedValues: Int, invalidations: Int, watching: Bool, redactors: Int)? {
        state.withLock { $0.projects[project] }?.stats
    }

    // MARK: Starting and stopping

    /// Binds and listens at `socketPath` (replacing a stale socket file, never
    /// a live one) and starts serving.
    public func start() throws(ProtocolError) {
        let already = state.withLock { s -> Bool in
            defer { s.started = true }
            return s.started
        }
        if already { return }
        do {
            try listener.start(serve: { [self] in serveConnection($0) })
        } catch {
            throw startFailure(error)
        }
        logger.info("resolver daemon listening", metadata: [
            "path": "\(socketPath)", "mode": "\(String(socketMode, radix: 8))", "runtime-dir": "\(runtimeDirectory)",
            "uids": "\(policy.effectiveUIDs)", "gids": "\(policy.gids)",
        ])
    }

    /// The listener's failure in the daemon's words.
    private func startFailure(_ f: UnixSocketListener.Failure) -> ProtocolError {
        switch f.step {
        case .address:
            return ProtocolError.connectFailure(socketPath, errno: ENAMETOOLONG, service: .daemon)
        case .notASocket:
            return ProtocolError(.notASocket, f.message, hint: "remove it if it is yours, or listen elsewhere")
        case .live:
            return ProtocolError(.addressInUse, f.message, hint: "is a resolver daemon running there already?")
        case .appeared:
            return ProtocolError(.addressInUse, f.message)
        case .bind:
            return ProtocolError(.system(f.errno), f.message, hint: "check that the directory exists and is writable")
        case .group:
            return ProtocolError(.system(f.errno), f.message,
                               hint: "the daemon's user must be a member of the --allow-group group (or run as root)")
        case .mode:
            return ProtocolError(.system(f.errno), "\(socketPath) is not the socket just bound")
        case .acl:
            return ProtocolError(.system(f.errno), f.message,
                                 hint: "--allow-uid and a second --allow-group need a directory on a filesystem with POSIX ACLs (ext4, tmpfs)")
        case .wake, .inspect, .probe, .removeStale, .socket, .listen, .thread:
            return ProtocolError(.system(f.errno), f.message)
        }
    }

    /// Stops accepting, removes the socket file (if still ours), closes every
    /// connection, stops every watch and drops every cached value, then waits
    /// (up to `timeout` seconds) for the threads.
    public func stop(timeout: Double = 3) {
        let (wasStarted, projects) = state.withLock { s -> (Bool, [ProjectCache]) in
            guard s.started, !s.stopping else { return (false, []) }
            s.stopping = true
            defer { s.projects.removeAll() }
            return (true, Array(s.projects.values))
        }
        guard wasStarted else { return }
        // After the connections are shut down, before the socket file goes.
        listener.stop(timeout: timeout) {
            for p in projects { p.stop() }
        }
        logger.info("resolver daemon stopped", metadata: ["path": "\(socketPath)"])
    }

    private var isStopping: Bool { state.withLock { $0.stopping } }

    // MARK: Projects

    /// The project's cache, made on first use. At most `limits.maxProjects`
    /// are kept: a new one evicts the least recently used that no client
    /// watches or streams through (its feed stops, its values are dropped);
    /// when every one is, the request is refused as busy (nil with `busy`).
    /// `streaming`: a REDACT stream starts on it, counted before the lock is
    /// let go (so it cannot be evicted in between); it calls `streamEnded()`.
    private func cache(for project: String, streaming: Bool = false) -> (cache: ProjectCache?, busy: Bool) {
        var evicted: ProjectCache?
        let result = state.withLock { s -> (ProjectCache?, Bool) in
            if s.stopping { return (nil, false) }
            if let c = s.projects[project] {
                if streaming { c.streamStarted() }
                return (c, false)
            }
            if s.projects.count >= limits.maxProjects {
                let idle = s.projects.map { ($0.key, $0.value.usage) }.filter { !$0.1.watched }
                guard let victim = idle.min(by: { $0.1.lastUsed < $1.1.lastUsed })?.0 else { return (nil, true) }
                evicted = s.projects.removeValue(forKey: victim)
            }
            let c = ProjectCache(project: project, socketPath: mountSocketPath(project), logger: logger,
                                 fetchTimeout: limits.mountTimeout, maxRedactors: limits.maxRedactorsPerProject,
                                 maxLiveRedactors: limits.maxLiveRedactorsPerProject)
            s.projects[project] = c
            if streaming { c.streamStarted() }
            return (c, false)
        }
        if let evicted {
            evicted.stop()
            logger.info("evicted an idle project cache", metadata: ["project": "\(evicted.project)"])
        }
        return result
    }

    /// `cache(for:)`, sending the ERROR when there is none.
    private func cacheOrRefuse(_ fd: Int32, _ project: String, streaming: Bool = false) -> ProjectCache? {
        let (cache, busy) = cache(for: project, streaming: streaming)
        if busy { sendError(fd, .busy, "the daemon serves \(limits.maxProjects) projects that are all being watched or streamed") }
        return cache
    }

    // MARK: One connection

    /// Serves one admitted connection until it ends. True when the last
    /// thing sent was an ERROR after which the connection is closed.
    private func serveConnection(_ admitted: UnixSocketListener.Connection) -> Bool {
        let (id, fd) = (admitted.id, admitted.fd)
        let account = frameMemory.account(uid: admitted.peer.uid)
        let conn = Connection(fd: fd, peer: admitted.peer, account: account, receiver: FrameReceiver(fd: fd, account: account),
                              reply: ReplyBuffer(account: account), scans: ScanMemo(), uidText: .string("\(admitted.peer.uid)"), pidText: .string("\(admitted.peer.pid)"))
        while true {
            switch readRequest(conn, deadline: monotonicSeconds() + limits.idleTimeout) {
            case .end(let linger):
                return linger
            case .frame(let frame):
                let request: DaemonRequest
                do throws(DaemonRequest.Refusal) {
                    request = try DaemonRequest.parse(frame)
                } catch {
                    let sent = sendError(fd, error.code, error.message)
                    if error.closes { return true }
                    if !sent { return false }
                    continue
                }
                let keepGoing: Bool
                switch request {
                case .resolve(let project, let format, let output, let document):
                    keepGoing = handleResolve(conn, project: project, format: format, output: output, document: document)
                case .values(let project, let names): keepGoing = handleValues(conn, project: project, names: names)
                case .names(let project): keepGoing = handleNames(conn, project: project)
                case .watch(let project): return runWatch(id: id, conn, project: project)
                case .redact(let project, let minimumLength, let mask):
                    switch runRedact(conn, project: project, key: ProjectCache.RedactorKey(minimumLength: minimumLength, mask: mask)) {
                    case .next: keepGoing = true
                    case .close(let linger): return linger
                    }
                case .data, .end:
                    sendError(fd, .unexpected, "DATA and END belong to a REDACT stream")
                    return true
                }
                if !keepGoing { return false }
            }
        }
    }

    /// One connection and its two locked buffers, allocated once for the
    /// connection rather than once per request (see `FrameReceiver`): the
    /// request frames (a REDACT stream's DATA holds values) and the replies
    /// that carry values. Both are wiped after every request. And the
    /// scans of the documents it resolved last (no values; see `ScanMemo`).
    private struct Connection {
        let fd: Int32
        let peer: PeerCredentials
        /// The connection's share of `frameMemory`, which its buffers hold.
        let account: MemoryBudget.Account
        let receiver: FrameReceiver
        let reply: ReplyBuffer
        let scans: ScanMemo
        /// The peer's uid and pid as every audit line writes them.
        let uidText: Logger.MetadataValue
        let pidText: Logger.MetadataValue
    }

    private enum RequestRead {
        case frame(Frame)
        case end(linger: Bool)
    }

    /// One request frame, or how the connection ends (with the ERROR sent).
    /// The frame is valid until the next call (it lives in the connection's buffer).
    private func readRequest(_ conn: Connection, deadline: Double?) -> RequestRead {
        let fd = conn.fd
        switch conn.receiver.next(maxLength: limits.maxRequestFrame, deadline: deadline) {
        case .failed(ENOBUFS):
            refuseOverBudget(conn, "a request")
            return .end(linger: true)
        case .failed(ENOMEM):
            outOfMemory(conn, "a request")
            return .end(linger: true)
        case .closed, .truncated, .failed:
            return .end(linger: false)
        case .timedOut:
            sendError(fd, .timeout, "no complete request within \(limits.idleTimeout) s")
            return .end(linger: true)
        case .badLength(let n):
            sendError(fd, .frameTooLarge, "frame length \(n) is outside 2...\(limits.maxRequestFrame)")
            return .end(linger: true)
        case .frame(let frame):
            return .frame(frame)
        }
    }

    @discardableResult
    private func sendError(_ fd: Int32, _ code: WireErrorCode, _ message: String) -> Bool {
        SocketIO.sendAll(fd, DaemonWire.errorFrame(code, message))
    }

    /// The ERROR for a buffer that could not be had: `busy` when the budget
    /// refused it (the client may try again), `internal-error` when the
    /// memory could not be locked.
    @discardableResult
    private func outOfMemory(_ conn: Connection, _ what: String) -> Bool {
        if conn.account.lastTakeRefused { return refuseOverBudget(conn, what) }
        logger.error("out of locked memory", metadata: ["for": "\(what)", "uid": conn.uidText])
        return sendError(conn.fd, .internalError, "the daemon is out of locked memory for \(what)")
    }

    @discardableResult
    private func refuseOverBudget(_ conn: Connection, _ what: String) -> Bool {
        logger.warning("frame memory budget refused", metadata: [
            "for": "\(what)", "uid": conn.uidText, "pid": conn.pidText,
            "held-by-connection": "\(conn.account.held)", "held-in-all": "\(frameMemory.total)",
        ])
        return sendError(conn.fd, .busy, "no room for \(what): " + conn.account.refusal)
    }

    private func upstreamError(_ conn: Connection, _ project: String, _ e: UpstreamFailure) -> Bool {
        logger.warning("mount request failed", metadata: ["project": "\(project)", "uid": "\(conn.peer.uid)",
                                                          "error": "\(e.message)"])
        // A message that names the project already (not mounted) is not prefixed again.
        let named = e.message.hasPrefix("project \(project) ") ? e.message : "project \(project): \(e.message)"
        return sendError(conn.fd, e.code, named)
    }

    // MARK: RESOLVE

    private func handleResolve(_ conn: Connection, project: String, format: InjectionFormat, output: ResolveOutput,
                               document: [UInt8]) -> Bool {
        let fd = conn.fd
        guard let cache = cacheOrRefuse(fd, project) else { return false }

        // The one resolve pipeline, with values borrowed from the cache (not
        // wiped here: other requests may be using them). The output's size is
        // checked against the reply frame before any memory is allocated for
        // it, and the output is written straight into the connection's reply
        // buffer, after the frame's header: one locked buffer, one send.
        let reply = conn.reply
        defer { reply.wipe() }
        let scanned = conn.scans.scan(document, format: format)
        let head = Wire.lengthSize + Wire.headerSize + 4   // RESOLVED: the value's u32 length first
        let placed: Bool
        do {
            placed = try Resolver.resolve(scanned.scan, names: { () throws(UpstreamFailure) -> [String] in try cache.names() },
                                          values: { (names: [String]) throws(UpstreamFailure) -> [SecureBytes?] in
                                              try cache.orderedValues(names)
                                          }) { (scan: InjectionScan, values: [SecureBytes?]) throws(InjectionError) -> Bool in
                // Written straight into the room of the reply buffer when it
                // fits (one pass); else measured, then placed in a larger one.
                guard let room = reply.room(headerBytes: head) else { return false }
                var filled = false
                let placement = try scan.produce(InjectionOutput(output), maximum: limits.maxReplyFrame - Wire.headerSize - 4,
                                                 values: values, room: room) { size, fill in
                    guard let body = reply.frame(.resolved, prefix: UInt32(size), bodySize: size) else { return }
                    fill(body)
                    filled = true
                }
                if case .inRoom(let count) = placement {
                    reply.finish(.resolved, prefix: UInt32(count), bodySize: count)
                    return true
                }
                return filled
            }
        } catch let failure as ResolveFailure {
            return sendProblems(conn, project, failure.problems)
        } catch let failure as UpstreamFailure {
            return upstreamError(conn, project, failure)
        } catch {
            logger.error("RESOLVE failed", metadata: ["project": "\(project)", "error": "\(error)"])
            return sendError(fd, .internalError, "project \(project): the document could not be resolved")
        }
        guard placed else { return outOfMemory(conn, "the reply") }
        // Audit: who received which values, at the default level (cached or
        // not): the names fetched, which are the scan's referenced names.
        // The values are the strings themselves (an interpolation copies the
        // names into a new String at every request).
        logger.info("resolved", metadata: ["project": .string(project), "uid": conn.uidText, "pid": conn.pidText,
                                           "format": .string(format.rawValue), "names": .string(scanned.namesText)])
        return reply.send(fd)
    }

    private func sendProblems(_ conn: Connection, _ project: String, _ problems: [InjectionProblem]) -> Bool {
        logger.info("document not resolvable", metadata: ["project": "\(project)", "uid": "\(conn.peer.uid)",
                                                          "problems": "\(problems.count)"])
        guard DaemonWire.problemsSize(problems) + Wire.headerSize <= limits.maxReplyFrame else {
            return sendError(conn.fd, .replyTooLarge, "\(problems.count) problems do not fit one frame")
        }
        return SocketIO.sendAll(conn.fd, DaemonWire.problemsFrame(problems))
    }

    // MARK: VALUES and NAMES

    private func handleValues(_ conn: Connection, project: String, names: [String]) -> Bool {
        let fd = conn.fd
        guard let cache = cacheOrRefuse(fd, project) else { return false }
        let got: (values: [String: SecureBytes], missing: [String])
        do { got = try cache.values(names) } catch { return upstreamError(conn, project, error) }
        let found = names.filter { got.values[$0] != nil }
        let missing = names.filter { got.values[$0] == nil }
        var size = 4 + 4
        for n in found { size += Wire.textSize(n) + 4 + got.values[n]!.count }
        for n in missing { size += Wire.textSize(n) }
        guard size + Wire.headerSize <= limits.maxReplyFrame else {
            return sendError(fd, .replyTooLarge, "the \(found.count) values asked for do not fit one frame")
        }
        // The reply's buffer is held in the budget until it is sent.
        let held = Wire.lengthSize + Wire.headerSize + size
        guard conn.account.take(held) else { return outOfMemory(conn, "the reply") }
        defer { conn.account.give(held) }
        guard let b = FrameBuilder(allocatingReply: DaemonWire.MessageType.valuesReply.rawValue, bodySize: size) else {
            return outOfMemory(conn, "the reply")
        }
        b.u32(UInt32(found.count))
        for n in found {
            b.text(n)
            b.value(got.values[n]!)
        }
        b.u32(UInt32(missing.count))
        for n in missing { b.text(n) }
        let reply = b.finish()
        defer { reply.wipe() }
        logger.info("values", metadata: ["project": "\(project)", "uid": "\(conn.peer.uid)", "pid": "\(conn.peer.pid)",
                                         "names": "\(names.joined(separator: ","))", "found": "\(found.count)"])
        return SocketIO.sendAll(fd, reply)
    }

    private func handleNames(_ conn: Connection, project: String) -> Bool {
        let fd = conn.fd
        guard let cache = cacheOrRefuse(fd, project) else { return false }
        let names: [String]
        do { names = try cache.names() } catch { return upstreamError(conn, project, error) }
        let size = 4 + names.reduce(0) { $0 + Wire.textSize($1) }
        guard size + Wire.headerSize <= limits.maxReplyFrame else {
            return sendError(fd, .replyTooLarge, "the name list does not fit one frame")
        }
        let b = FrameBuilder(rawType: DaemonWire.MessageType.namesReply.rawValue, bodySize: size)
        b.u32(UInt32(names.count))
        for n in names { b.text(n) }
        return SocketIO.sendAll(fd, b.finish())
    }

    // MARK: WATCH

    /// WATCHING now, then CHANGED for every change the mount reports (and an
    /// incomplete CHANGED when the mount goes away or comes back), until the
    /// client closes. Returns the linger flag.
    private func runWatch(id: UInt64, _ conn: Connection, project: String) -> Bool {
        let fd = conn.fd
        // A watch holds its project's cache slot for as long as it lasts, so
        // only a project that is mounted now may be watched (a client's feed
        // retries until it is); and one uid holds only some of the watches.
        guard state.withLock({ $0.projects[project] != nil }) || access(mountSocketPath(project), F_OK) == 0 else {
            sendError(fd, .notMounted, "project \(project) is not mounted")
            return true
        }
        let uid = conn.peer.uid
        let admitted = state.withLock { s -> Bool in
            guard s.watchesByUID[uid, default: 0] < limits.maxWatchesPerUID else { return false }
            s.watchesByUID[uid, default: 0] += 1
            return true
        }
        guard admitted else {
            sendError(fd, .busy, "uid \(uid) already has \(limits.maxWatchesPerUID) watches on this daemon")
            return true
        }
        defer {
            state.withLock { s in
                let left = s.watchesByUID[uid, default: 1] - 1
                s.watchesByUID[uid] = left > 0 ? left : nil
            }
        }
        guard let cache = cacheOrRefuse(fd, project) else { return true }
        guard let queue = ChangeQueue() else {
            sendError(fd, .internalError, "cannot watch now")
            return true
        }
        cache.addWatcher(id, queue)   // before the mount's watch starts: no event is missed
        defer { cache.removeWatcher(id) }
        cache.ensureWatch(retryInterval: 0)
        let watching = cache.stats.watching
        let b = FrameBuilder(rawType: DaemonWire.MessageType.watching.rawValue, bodySize: 1)
        b.u8(watching ? 1 : 0)
        guard SocketIO.sendAll(fd, b.finish()) else { return false }
        logger.info("client watching", metadata: ["project": "\(project)", "uid": "\(conn.peer.uid)", "mount-watched": "\(watching)"])

        while true {
            // Bytes the client sent after WATCH that were read with it.
            if conn.receiver.hasBufferedInput {
                sendError(fd, .unexpected, "a watching connection takes no requests; open another connection")
                return true
            }
            var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: queue.eventFD, events: Int16(POLLIN), revents: 0)]
            let rc = poll(&fds, 2, 1000)
            if rc < 0 {
                if errno == EINTR { continue }
                return false
            }
            if isStopping { return false }
            // The mount may have come back: watch it again (this tells the
            // client, with an incomplete CHANGED, if a watch had been lost).
            cache.ensureWatch(retryInterval: 1)
            if fds[1].revents != 0 || rc == 0, let (names, complete) = queue.take() {
                var size = 1 + 4
                for n in names { size += Wire.textSize(n) }
                let c = FrameBuilder(rawType: DaemonWire.MessageType.changed.rawValue, bodySize: size)
                c.u8(complete ? 0 : DaemonWire.changedFlagIncomplete)
                c.u32(UInt32(names.count))
                for n in names { c.text(n) }
                guard SocketIO.sendAll(fd, c.finish()) else { return false }
            }
            if fds[0].revents != 0 {
                var byte: UInt8 = 0
                let n = read(fd, &byte, 1)
                if n == 0 { return false }
                if n < 0 { if errno == EINTR || errno == EAGAIN { continue } else { return false } }
                sendError(fd, .unexpected, "a watching connection takes no requests; open another connection")
                return true
            }
        }
    }

    // MARK: REDACT

    private enum StreamEnd {
        case next
        case close(linger: Bool)
    }

    /// REDACTING, then each DATA in → one REDACTED out (everything that can
    /// no longer be part of a match, so at least every complete line; maybe
    /// empty), END → ENDED carrying the rest. The redactor follows the
    /// project's changes between chunks.
    private func runRedact(_ conn: Connection, project: String, key: ProjectCache.RedactorKey) -> StreamEnd {
        let fd = conn.fd
        guard let cache = cacheOrRefuse(fd, project, streaming: true) else { return .close(linger: true) }
        defer { cache.streamEnded() }
        var (redactor, generation): (Redactor, UInt64)
        do { (redactor, generation) = try cache.redactor(key) } catch {
            return upstreamError(conn, project, error) ? .next : .close(linger: false)
        }
        // What the stream releases for one chunk, sent as one REDACTED frame.
        // The input may hold values, so the output buffer is locked memory too.
        guard let out = OutputBuffer(account: conn.account) else {
            outOfMemory(conn, "a redaction stream")
            return .close(linger: true)
        }
        var size = 4
        for s in redactor.skipped { size += Wire.textSize(s.name) + Wire.textSize(DaemonWire.clip(s.reason, 1024)) }
        let hello = FrameBuilder(rawType: DaemonWire.MessageType.redacting.rawValue, bodySize: size)
        hello.u32(UInt32(redactor.skipped.count))
        for s in redactor.skipped {
            hello.text(s.name)
            hello.text(DaemonWire.clip(s.reason, 1024))
        }
        guard SocketIO.sendAll(fd, hello.finish()) else { return .close(linger: false) }
        logger.info("redaction stream", metadata: ["project": "\(project)", "uid": "\(conn.peer.uid)", "pid": "\(conn.peer.pid)"])

        let stream = RedactingStream(redactor: redactor) { bytes in try out.append(bytes) }
        func flush(_ type: DaemonWire.MessageType) -> Bool {
            defer { out.reset() }
            return out.withBytes { DaemonIO.sendFrame(fd, type: type, body: $0) }
        }
        while true {
            switch readRequest(conn, deadline: monotonicSeconds() + limits.idleTimeout) {
            case .end(let linger):
                return .close(linger: linger)
            case .frame(let f):
                let request: DaemonRequest
                do throws(DaemonRequest.Refusal) { request = try DaemonRequest.parse(f) } catch {
                    sendError(fd, error.code, error.message)
                    return .close(linger: true)
                }
                switch request {
                case .data:
                    // One chunk's output is bounded by the chunk (at most
                    // 64 KiB) times the mask over the shortest value masked.
                    guard f.bodyCount <= DaemonWire.dataChunk else {
                        sendError(fd, .frameTooLarge, "a DATA frame carries at most \(DaemonWire.dataChunk) bytes")
                        return .close(linger: true)
                    }
                    if cache.generation != generation {
                        // The project changed: this chunk goes through the
                        // new values or not at all (the old matcher does not
                        // know a value written since).
                        do { (redactor, generation) = try cache.redactor(key, replacing: redactor) } catch {
                            _ = upstreamError(conn, project, error)
                            return .close(linger: true)
                        }
                        // Re-reading its held-back tail may need room: said,
                        // as a failed write is, not dropped in silence.
                        do { try stream.replaceRedactor(redactor) } catch {
                            outOfMemory(conn, "the stream's output")
                            return .close(linger: true)
                        }
                    }
                    do {
                        try f.storage.withUnsafeBytes { raw in
                            try stream.write(UnsafeRawBufferPointer(rebasing: raw[Wire.headerSize...]))
                        }
                    } catch {
                        outOfMemory(conn, "the stream's output")
                        return .close(linger: true)
                    }
                    // Exactly one REDACTED per DATA (possibly empty): clients
                    // can work in lock-step without a reader thread.
                    if !flush(.redacted) { return .close(linger: false) }
                case .end:
                    try? stream.finish()
                    return flush(.ended) ? .next : .close(linger: false)
                default:
                    sendError(fd, .unexpected, "a REDACT stream takes DATA and END only")
                    return .close(linger: true)
                }
            }
        }
    }
}

/// A growable locked buffer (for REDACTED frames). With an `account`, its
/// capacity is held in the daemon's `MemoryBudget`.
final class OutputBuffer {
    static let initialCapacity = 64 << 10
    private var buffer: SecureBytes
    private let account: MemoryBudget.Account?
    var count: Int { buffer.count }

    struct OutOfMemory: Error {}

    init() {
        buffer = SecureBytes(capacity: Self.initialCapacity)
        account = nil
    }

    /// nil when the budget refuses the first buffer.
    init?(account: MemoryBudget.Account) {
        guard account.take(Self.initialCapacity) else { return nil }
        guard let b = SecureBytes(allocating: Self.initialCapacity) else {
            account.give(Self.initialCapacity)
            return nil
        }
        buffer = b
        self.account = account
    }

    deinit { account?.give(buffer.capacity) }

    /// Appends, growing into a bigger locked buffer; OutOfMemory (and nothing
    /// changed) when the budget refuses or the memory cannot be locked.
    func append(_ bytes: UnsafeRawBufferPointer) throws {
        if !buffer.append(bytes) {
            let capacity = max(buffer.capacity * 2, buffer.count + bytes.count)
            guard account?.resize(from: buffer.capacity, to: capacity) ?? true else { throw OutOfMemory() }
            guard let bigger = buffer.copyIfPossible(capacity: capacity) else {
                _ = account?.resize(from: capacity, to: buffer.capacity)
                throw OutOfMemory()
            }
            buffer = bigger   // the old buffer is wiped by sodium_free
            buffer.append(bytes)
        }
    }

    func withBytes<R>(_ body: (UnsafeRawBufferPointer) -> R) -> R { buffer.withUnsafeBytes(body) }

    func reset() { buffer.setCount(0) }

    /// The bytes in a buffer of their own (this one is left empty).
    func take() -> SecureBytes {
        defer { reset() }
        return buffer.copy()
    }
}
