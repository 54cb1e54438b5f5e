import CShims
import Glibc
import Logging
import SecretfsPOSIX
import SecretfsStore
import SecureMemory
import Synchronization

/// Bounds on what one server will do for its peers.
public struct ServerLimits: Sendable {
    /// Connections served at once (watchers included); more get a `busy` ERROR.
    public var maxConnections = 64
    /// Seconds a non-watching connection may sit idle, or take to send one frame.
    public var idleTimeout: Double = 30
    /// Seconds a send may block on a peer that does not read.
    public var sendTimeout: Double = 10
    /// Largest request frame accepted (bytes after the length prefix).
    public var maxRequestFrame = Wire.maxRequestFrame
    /// Largest reply frame built; a GET whose values do not fit gets `reply-too-large`.
    public var maxReplyFrame = Wire.maxResponseFrame
    /// Locked memory all connections may hold at once for requests and
    /// replies (`MemoryBudget`; one uid gets three quarters of it when
    /// several may connect): room for three of the largest GET replies. A
    /// request that would pass it gets ERROR `busy`.
    public var maxFrameMemory = 64 << 20
    /// Most names in one GET.
    public var maxNamesPerGet = Wire.maxNamesPerGet
    /// WATCH connections one uid may hold (watches are not subject to the
    /// idle timeout; without this one peer could take every slot for good).
    public var maxWatchesPerUID = 16
    /// Changed names queued per watcher before the next CHANGED is sent as
    /// "incomplete" (drop everything) instead.
    public var maxQueuedNames = 1024

    public init() {}
}

/// The privileged socket of one mounted project: LIST, GET and WATCH for the
/// peers its `SocketPolicy` allows (docs/protocol.md).
///
/// A `UnixSocketListener` owns the socket file, the accept thread and the
/// connections (bounded by `ServerLimits.maxConnections`); each connection
/// gets its own thread with blocking I/O, running `serveConnection`. Lock
/// order: `state` is never held while calling the store, and the store lock
/// is never held while taking `state`; `notifyChanged` (called under the
/// filesystem's lock) only takes `state` and each watcher's queue lock, and
/// never blocks on I/O. The listener's lock is a leaf.
public final class PrivilegedSocketServer: @unchecked Sendable {
    // @unchecked: mutable state lives in `state` (a Mutex); the rest is immutable.
    public let socketPath: String
    public let policy: SocketPolicy
    public let limits: ServerLimits
    public let vault: ProjectVault
    let logger: Logger
    private let listener: UnixSocketListener
    /// What the connections' frames hold (`limits.maxFrameMemory`).
    public let frameMemory: MemoryBudget

    private struct State {
        /// Set once the listener has stopped admitting, with every watcher woken.
        var stopping = false
        var watchers: [UInt64: ChangeQueue] = [:]
        var watchersByUID: [uid_t: Int] = [:]
        /// Bumped by every `notifyChanged`: unlike the project's version it
        /// also moves on deletes.
        var sequence: UInt64 = 0
    }
    private let state = Mutex(State())

    public init(vault: ProjectVault, socketPath: String, policy: SocketPolicy = SocketPolicy(),
                limits: ServerLimits = ServerLimits(), logger: Logger = Logger(label: "secretfs.socket")) {
        self.vault = vault
        self.socketPath = socketPath
        self.policy = policy
        self.limits = limits
        self.logger = logger
        frameMemory = MemoryBudget(limit: limits.maxFrameMemory, policy: policy)
        listener = UnixSocketListener(UnixSocketListener.Configuration(
            path: socketPath, name: "privileged socket",
            backlog: 64, maxConnections: limits.maxConnections, sendTimeout: limits.sendTimeout, policy: policy,
            refusalFrame: { refusal, message in
                Wire.errorFrame(refusal == .busy ? .busy : .notAllowed, message)
            }), logger: logger)
    }

    /// Connections being served now (watchers included).
    public var connectionCount: Int { listener.connectionCount }
    /// The change sequence: how many `notifyChanged` calls this server has seen.
    public var changeSequence: UInt64 { state.withLock { $0.sequence } }

    /// Connections in WATCH mode now.
    public var watcherCount: Int { state.withLock { $0.watchers.count } }

    // MARK: Starting

    /// Binds and listens at `socketPath` and starts serving. A socket file left
    /// by a dead mount is replaced; a live one (something answers) is not.
    /// A failed start can be retried (after removing the cause).
    public func start() throws(ProtocolError) {
        let started: Bool
        do {
            started = try listener.start(serve: { [self] in serveConnection($0) },
                                         refused: { [self] in auditRefusal($0) })
        } catch {
            throw startFailure(error)
        }
        guard started else { return }
        logger.debug("privileged socket listening", metadata: [
            "path": "\(socketPath)", "mode": "\(String(listener.configuration.access.mode, radix: 8))",
            "uids": "\(policy.effectiveUIDs)", "gids": "\(policy.gids)",
        ])
    }

    /// The listener's failure in the mount's words.
    private func startFailure(_ f: UnixSocketListener.Failure) -> ProtocolError {
        switch f.step {
        case .address:
            return ProtocolError.connectFailure(socketPath, errno: ENAMETOOLONG, service: .mount)
        case .notASocket:
            return ProtocolError(.notASocket, f.message, hint: "remove it if it is yours, or use another --runtime-dir")
        case .live:
            return ProtocolError(.addressInUse, f.message, hint: "is the project mounted already? (secretfs status)")
        case .appeared:
            return ProtocolError(.addressInUse, f.message + " (another mount of the project?)")
        case .bind:
            return ProtocolError(.system(f.errno), f.message, hint: "check that the runtime directory is writable")
        case .group:
            return ProtocolError(.system(f.errno), f.message,
                                 hint: "the mount's owner must be a member of the --resolver-group group (or mount as root)")
        case .thread:
            return ProtocolError(.system(f.errno), "cannot start the socket's accept thread")
        case .acl:
            return ProtocolError(.system(f.errno), f.message,
                                 hint: "--resolver-uid and a second --resolver-group need a runtime directory on a filesystem with POSIX ACLs (ext4, tmpfs)")
        case .wake, .inspect, .probe, .removeStale, .socket, .mode, .listen:
            return ProtocolError(.system(f.errno), f.message)
        }
    }

    // MARK: Stopping

    /// Stops accepting, removes the socket file (if it is still ours), closes
    /// every connection and waits (up to `timeout` seconds) for the threads.
    public func stop(timeout: Double = 3) {
        let stopped = listener.stop(timeout: timeout) {
            // Under `state`, so a WATCH either subscribed already (and is
            // woken here) or sees `stopping` and does not subscribe.
            state.withLock { s in
                s.stopping = true
                for w in s.watchers.values { w.wake() }
            }
        }
        guard stopped else { return }
        logger.info("privileged socket stopped", metadata: ["path": "\(socketPath)"])
    }

    private var isStopping: Bool { state.withLock { $0.stopping } }

    // MARK: Change notification

    /// Tells every watcher that `names` changed (created, updated, renamed or
    /// deleted). Cheap and non-blocking: safe to call from the filesystem's
    /// commit path; the watchers' own threads do the sending.
    public func notifyChanged(_ names: [String]) {
        let watchers = state.withLock { s -> [ChangeQueue] in
            s.sequence += 1
            return Array(s.watchers.values)
        }
        for w in watchers { w.enqueue(names) }
    }

    // MARK: One connection

    /// Serves one admitted connection until it ends. Returns true when the
    /// last thing sent was an ERROR after which the connection is being closed.
    private func serveConnection(_ conn: UnixSocketListener.Connection) -> Bool {
        let (id, fd, peer) = (conn.id, conn.fd, conn.peer)
        let actor = Actor(uid: peer.uid, pid: peer.pid)
        // One locked buffer for the connection's requests (see FrameReceiver),
        // held in the server's budget with its replies.
        let account = frameMemory.account(uid: peer.uid)
        let receiver = FrameReceiver(fd: fd, account: account)
        while true {
            let deadline = monotonicSeconds() + limits.idleTimeout
            switch receiver.next(maxLength: limits.maxRequestFrame, deadline: deadline) {
            case .failed(ENOBUFS):
                refuseOverBudget(fd, account, "a request")
                return true
            case .failed(ENOMEM):
                logger.error("out of locked memory for a request", metadata: ["uid": "\(peer.uid)"])
                sendError(fd, .internalError, "the mount is out of locked memory for a request")
                return true
            case .closed, .truncated, .failed:
                return false
            case .timedOut:
                sendError(fd, .timeout, "no complete request within \(limits.idleTimeout) s")
                return true
            case .badLength(let n):
                sendError(fd, .frameTooLarge, "frame length \(n) is outside 2...\(limits.maxRequestFrame)")
                return true
            case .frame(let frame):
                let request: MountRequest
                do throws(MountRequest.Refusal) {
                    request = try MountRequest.parse(frame, maxNamesPerGet: limits.maxNamesPerGet)
                } catch {
                    let sent = sendError(fd, error.code, error.message)
                    if error.closes { return true }
                    guard sent else { return false }
                    continue
                }
                switch request {
                case .list:
                    guard handleList(fd) else { return false }
                case .get(let names):
                    guard handleGet(fd, names, actor: actor, peer: peer, account: account) else { return false }
                case .watch:
                    receiver.release()
                    return runWatch(id: id, fd: fd, uid: peer.uid, sentMore: receiver.hasBufferedInput)
                }
            }
        }
    }

    @discardableResult
    private func sendError(_ fd: Int32, _ code: WireErrorCode, _ message: String) -> Bool {
        SocketIO.sendAll(fd, Wire.errorFrame(code, message))
    }

    @discardableResult
    private func refuseOverBudget(_ fd: Int32, _ account: MemoryBudget.Account, _ what: String) -> Bool {
        logger.warning("frame memory budget refused", metadata: [
            "for": "\(what)", "uid": "\(account.uid)",
            "held-by-connection": "\(account.held)", "held-in-all": "\(frameMemory.total)",
        ])
        return sendError(fd, .busy, "no room for \(what): " + account.refusal)
    }

    /// After the listener refused a peer outside the allow-list (it sent the
    /// ERROR and logged it): the audit trail records the attempt.
    private func auditRefusal(_ peer: PeerCredentials) {
        do {
            try vault.audit(action: "refused", names: nil,
                            detail: "privileged socket: uid \(peer.uid) gid \(peer.gid) pid \(peer.pid) not in the allow-list",
                            actor: Actor(uid: peer.uid, pid: peer.pid))
        } catch {
            logger.error("cannot audit a refused connection", metadata: ["error": "\(error)"])
        }
    }

    /// A store failure as an ERROR frame: a shared store's database out of
    /// reach is said as such (the client may retry), anything else is internal.
    private func sendStoreError(_ fd: Int32, _ error: Error, _ what: String) -> Bool {
        if case StoreError.unavailable = error {
            return sendError(fd, .storeUnavailable, "store unavailable: the database cannot be reached now; the mount reconnects by itself")
        }
        return sendError(fd, .internalError, what)
    }

    /// LIST → LIST_REPLY. False if the connection should end.
    private func handleList(_ fd: Int32) -> Bool {
        let version: Int64
        let entries: [SecretInfo]
        // Sequence and version first: a reply's stamps are never newer than its contents.
        let sequence = changeSequence
        do {
            version = try vault.currentVersion()
            entries = try vault.list()
        } catch {
            logger.error("LIST failed", metadata: ["error": "\(error)"])
            return sendStoreError(fd, error, "the store could not list secrets")
        }
        let project = vault.name
        var size = 8 + 8 + Wire.textSize(project) + 4
        for e in entries { size += Wire.textSize(e.name) + 8 + 8 + 8 + 4 }
        guard size + Wire.headerSize <= limits.maxReplyFrame else {
            return sendError(fd, .replyTooLarge, "the listing does not fit one frame")
        }
        let b = FrameBuilder(type: .listReply, bodySize: size)
        b.i64(version)
        b.u64(sequence)
        b.text(project)
        b.u32(UInt32(entries.count))
        for e in entries {
            b.text(e.name)
            b.i64(e.version)
            b.i64(e.createdAt.nanoseconds)
            b.i64(e.updatedAt.nanoseconds)
            b.u32(e.updatedBy)
        }
        return SocketIO.sendAll(fd, b.finish())
    }

    /// GET → GET_REPLY (values in request order, then the missing names).
    /// The reply is laid out once the names found and their sizes are known,
    /// and each value is decrypted straight into its place in the frame
    /// (ProjectVault.openValues), not into a buffer of its own first.
    private func handleGet(_ fd: Int32, _ names: [String], actor: Actor, peer: PeerCredentials,
                           account: MemoryBudget.Account) -> Bool {
        let sequence = changeSequence
        let reply = GetReplyLayout(sequence: sequence, maxReplyFrame: limits.maxReplyFrame, account: account)
        // The values' places in the frame wipe their ranges when they go, and
        // the frame is wiped once sent (or not).
        defer { reply.discard() }
        if !names.isEmpty {
            do {
                reply.version = try vault.currentVersion()
                try vault.openValues(names, actor: actor) { reply.layOut($0, $1) }
            } catch {
                logger.error("GET failed", metadata: ["error": "\(error)", "uid": "\(peer.uid)"])
                return sendStoreError(fd, error, "the store could not read the secrets")
            }
        } else {
            reply.version = (try? vault.currentVersion()) ?? 0
            _ = reply.layOut([], [])
        }
        switch reply.refusal {
        case .tooLarge(let found, let size)?:
            return sendError(fd, .replyTooLarge,
                             "the \(found) values asked for need \(size) bytes; the limit is \(limits.maxReplyFrame)")
        case .outOfMemory(let size)?:
            logger.error("GET: out of locked memory for the reply", metadata: ["bytes": "\(size)"])
            return sendError(fd, .internalError, "the mount is out of memory for this reply; ask for fewer names")
        case .overBudget?:
            return refuseOverBudget(fd, account, "the reply")
        case nil:
            break
        }
        guard let frame = reply.finish() else { return sendError(fd, .internalError, "the reply could not be built") }
        logger.info("get", metadata: ["uid": "\(peer.uid)", "pid": "\(peer.pid)", "names": "\(names.joined(separator: ","))",
                                      "found": "\(reply.foundCount)"])
        return SocketIO.sendAll(fd, frame)
    }

    /// WATCH: WATCHING now, CHANGED whenever `notifyChanged` is called, until
    /// the peer closes or the server stops. Returns the `linger` flag.
    /// `sentMore`: bytes after WATCH were read with it (a request, refused).
    private func runWatch(id: UInt64, fd: Int32, uid: uid_t, sentMore: Bool) -> Bool {
        guard let watcher = ChangeQueue(limit: limits.maxQueuedNames) else {
            sendError(fd, .internalError, "cannot create an event descriptor")
            return true
        }
        // Subscribe before reading the version, so no change falls in between.
        // Watches never time out, so one uid may hold only some of the slots.
        enum Subscription { case ok, stopping, tooMany }
        let subscribed = state.withLock { s -> Subscription in
            guard !s.stopping else { return .stopping }
            guard s.watchersByUID[uid, default: 0] < limits.maxWatchesPerUID else { return .tooMany }
            s.watchers[id] = watcher
            s.watchersByUID[uid, default: 0] += 1
            return .ok
        }
        switch subscribed {
        case .stopping: return false
        case .tooMany:
            sendError(fd, .busy, "uid \(uid) already has \(limits.maxWatchesPerUID) watches on this socket")
            return true
        case .ok: break
        }
        defer {
            state.withLock { s in
                s.watchers.removeValue(forKey: id)
                let left = s.watchersByUID[uid, default: 1] - 1
                s.watchersByUID[uid] = left > 0 ? left : nil
            }
        }
        let sequence = changeSequence
        guard let start = try? vault.currentVersion() else {
            sendError(fd, .internalError, "the store could not report its version")
            return true
        }
        let b = FrameBuilder(type: .watching, bodySize: 8 + 8 + Wire.textSize(vault.name))
        b.i64(start)
        b.u64(sequence)
        b.text(vault.name)
        guard SocketIO.sendAll(fd, b.finish()) else { return false }
        logger.debug("watching", metadata: ["version": "\(start)"])
        if sentMore {
            sendError(fd, .unexpected, "a watching connection takes no requests; open another connection")
            return true
        }

        while true {
            var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: watcher.eventFD, events: Int16(POLLIN), revents: 0)]
            let rc = poll(&fds, 2, -1)
            if rc < 0 {
                if errno == EINTR { continue }
                return false
            }
            if isStopping { return false }
            if fds[1].revents != 0 {
                if let (names, complete) = watcher.take() {
                    let sequence = changeSequence
                    let version = (try? vault.currentVersion()) ?? Int64.max
                    var size = 8 + 8 + 1 + 4
                    for n in names { size += Wire.textSize(n) }
                    let c = FrameBuilder(type: .changed, bodySize: size)
                    c.i64(version)
                    c.u64(sequence)
                    c.u8(complete ? 0 : Wire.changedFlagIncomplete)
                    c.u32(UInt32(names.count))
                    for n in names { c.text(n) }
                    guard SocketIO.sendAll(fd, c.finish()) else { return false }
                }
            }
            if fds[0].revents != 0 {
                // A watcher only listens. EOF ends it; anything else is an error.
                var byte: UInt8 = 0
                let n = read(fd, &byte, 1)
                if n == 0 { return false }
                if n < 0 { if errno == EINTR || errno == EAGAIN { continue } else { return false } }
                sendError(fd, .unexpected, "a watching connection takes no requests; open another connection")
                return true
            }
        }
    }
}

/// A GET_REPLY laid out around the values before they are opened: the
/// header, each found name with room for its value (slices of the frame,
/// which the vault decrypts into), then the missing names.
private final class GetReplyLayout {
    enum Refusal { case tooLarge(found: Int, size: Int), outOfMemory(size: Int), overBudget }

    let sequence: UInt64
    let maxReplyFrame: Int
    /// Holds the frame's bytes in the server's budget until `discard`.
    let account: MemoryBudget.Account
    private var held = 0
    var version: Int64 = 0
    private(set) var refusal: Refusal?
    private(set) var foundCount = 0
    private var builder: FrameBuilder?
    private var frame: SecureBytes?
    /// Each wipes its range of the frame when it goes: kept until `discard`.
    private var places: [SecureBytes] = []

    init(sequence: UInt64, maxReplyFrame: Int, account: MemoryBudget.Account) {
        self.sequence = sequence
        self.maxReplyFrame = maxReplyFrame
        self.account = account
    }

    /// The frame for `found` (with their value sizes) and `missing`, and the
    /// place of each value in it; nil (and `refusal` set) when the frame is
    /// over the limit or its locked memory cannot be had.
    func layOut(_ found: [(name: String, size: Int)], _ missing: [String]) -> [SecureBytes]? {
        foundCount = found.count
        var size = 8 + 8 + 4 + 4
        for f in found { size += Wire.textSize(f.name) + 4 + f.size }
        for n in missing { size += Wire.textSize(n) }
        guard size + Wire.headerSize <= maxReplyFrame else {
            refusal = .tooLarge(found: found.count, size: size)
            return nil
        }
        let bytes = Wire.lengthSize + Wire.headerSize + size
        account.give(held)   // laid out once per GET; never held twice
        held = 0
        guard account.take(bytes) else {
            refusal = .overBudget
            return nil
        }
        held = bytes
        guard let b = FrameBuilder(allocatingReply: Wire.MessageType.getReply.rawValue, bodySize: size) else {
            refusal = .outOfMemory(size: size)
            return nil
        }
        b.i64(version)
        b.u64(sequence)
        b.u32(UInt32(found.count))
        var out: [SecureBytes] = []
        out.reserveCapacity(found.count)
        for f in found {
            b.text(f.name)
            // The frame was sized for exactly these fields, so it never grows
            // under a slice.
            guard let place = b.valueSpace(f.size) else { preconditionFailure("GET reply laid out too small") }
            out.append(place)
        }
        b.u32(UInt32(missing.count))
        for n in missing { b.text(n) }
        builder = b
        places = out
        return out
    }

    /// The finished frame (nil if none was laid out).
    func finish() -> SecureBytes? {
        guard let builder else { return nil }
        frame = builder.finish()
        return frame
    }

    /// Wipes the frame, whatever happened to it (a failed open leaves values
    /// opened before it there).
    func discard() {
        places = []
        builder?.buffer.wipe()
        frame?.wipe()
        builder = nil
        frame = nil
        account.give(held)
        held = 0
    }
}
