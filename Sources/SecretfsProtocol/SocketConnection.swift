import CShims
import Glibc
import SecretfsPOSIX
import SecureMemory
import Synchronization

/// One client connection to a secretfs socket: a mount's privileged socket or
/// the resolver daemon's. Both clients (`PrivilegedClient`, the daemon's
/// clients in SecretfsResolver) and every watch (`ChangeFeed`) use this one
/// type, so connecting, checking who serves the socket, framing and the
/// mapping of read results to errors exist once.
///
/// Requests are answered in order; one thread at a time (or serialise calls).
public final class SocketConnection: @unchecked Sendable {
    // @unchecked: `fd` is touched by the owning thread; `shutdown()` may be
    // called from another one (it only shuts the descriptor down).
    public let socketPath: String
    public let service: SocketService
    /// Seconds to wait for the connection and for each reply.
    public let timeout: Double
    private let descriptor: Mutex<Int32>

    /// Connects (waiting at most `timeout` when the server's backlog is
    /// full) and checks who serves the socket: root, this process's own uid,
    /// or the owner of the socket's directory. Anything else could be a
    /// process that put its own socket in our place, and gets no request.
    public init(socketPath: String, service: SocketService, timeout: Double = 30) throws(ProtocolError) {
        self.socketPath = socketPath
        self.service = service
        self.timeout = timeout
        let fd = SocketIO.connect(to: socketPath, timeout: timeout)
        guard fd >= 0 else { throw ProtocolError.connectFailure(socketPath, errno: errno, service: service) }
        guard let server = PeerCredentials.of(fd) else {
            let e = errno
            Glibc.close(fd)
            throw ProtocolError(.system(e), "\(socketPath): cannot read the server's credentials: \(SocketIO.errorText(e))")
        }
        guard Self.trusts(server.uid, socketPath: socketPath) else {
            Glibc.close(fd)
            throw ProtocolError(.untrustedServer,
                                "\(socketPath) is served by uid \(server.uid) (pid \(server.pid)), which this client does not trust",
                                hint: "a secretfs socket must be served by root, by you, or by the owner of its directory; check who created it")
        }
        SocketIO.setSendTimeout(fd, seconds: timeout)
        descriptor = Mutex(fd)
    }

    deinit { close() }

    /// Root, ourselves, or whoever owns the directory the socket is in (the
    /// user who mounted into their own runtime directory).
    static func trusts(_ uid: uid_t, socketPath: String) -> Bool {
        if uid == 0 || uid == getuid() || uid == geteuid() { return true }
        var dir = socketPath
        if let slash = dir.lastIndex(of: "/") { dir = slash == dir.startIndex ? "/" : String(dir[..<slash]) } else { dir = "." }
        var st = stat()
        return lstat(dir, &st) == 0 && st.st_mode & S_IFMT == S_IFDIR && st.st_uid == uid
    }

    public var fd: Int32 { descriptor.withLock { $0 } }
    public var isOpen: Bool { fd >= 0 }

    public func close() {
        descriptor.withLock { fd in
            if fd >= 0 { Glibc.close(fd); fd = -1 }
        }
    }

    /// Wakes a thread blocked on this connection (its read returns the end);
    /// safe from any thread.
    public func shutdown() {
        descriptor.withLock { fd in
            if fd >= 0 { _ = Glibc.shutdown(fd, Int32(SHUT_RDWR)) }
        }
    }

    /// Whether the server already said something (an ERROR before closing an
    /// idle connection) or closed: a connection to reuse must be neither.
    public var hasPendingInput: Bool {
        let fd = self.fd
        guard fd >= 0 else { return true }
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return poll(&p, 1, 0) != 0
    }

    /// Sends `request` (wiped afterwards) and reads one reply of a type in
    /// `expect`. An ERROR reply is thrown as `.server(code)`.
    public func roundTrip(_ request: SecureBytes, expect: [UInt8]) throws(ProtocolError) -> Frame {
        defer { request.wipe() }
        try send(request)
        return try receive(expect: expect, deadline: monotonicSeconds() + timeout)
    }

    public func send(_ request: SecureBytes) throws(ProtocolError) {
        let fd = self.fd
        guard fd >= 0 else { throw ProtocolError(.connectionClosed, "\(socketPath): the connection is closed") }
        guard SocketIO.sendAll(fd, request) else {
            // The server may have refused us and closed: its ERROR is still readable.
            let sendErrno = errno
            if case .frame(let f) = SocketIO.readFrame(fd, maxLength: service.maxReplyFrame, deadline: monotonicSeconds() + 1),
               f.type == Wire.MessageType.error.rawValue {
                close()
                throw errorFromFrame(f)
            }
            close()
            if sendErrno == EAGAIN || sendErrno == EWOULDBLOCK {
                throw ProtocolError(.timedOut, "\(socketPath): \(service.noun) did not accept the request within \(timeout) s")
            }
            throw ProtocolError(.connectionClosed, "\(socketPath): connection closed by \(service.noun)")
        }
    }

    /// One frame of a type in `expect` (nil deadline: wait for ever).
    public func receive(expect: [UInt8], deadline: Double?) throws(ProtocolError) -> Frame {
        let fd = self.fd
        guard fd >= 0 else { throw ProtocolError(.connectionClosed, "\(socketPath): the connection is closed") }
        let frame: Frame
        switch SocketIO.readFrame(fd, maxLength: service.maxReplyFrame, deadline: deadline) {
        case .frame(let f):
            guard f.version == Wire.version else {
                throw malformed("reply in protocol version \(f.version) (this client speaks \(Wire.version))")
            }
            frame = f
        case .closed, .truncated:
            close()
            throw ProtocolError(.connectionClosed, "\(socketPath): connection closed by \(service.noun)",
                                hint: service == .mount ? "the project may have been unmounted"
                                                        : "the daemon may have stopped, or closed an idle connection")
        case .timedOut:
            close()
            throw ProtocolError(.timedOut, "\(socketPath): no reply from \(service.noun) within \(timeout) s")
        case .badLength(let n):
            close()
            throw ProtocolError(.malformedReply, "\(socketPath): reply length \(n) is outside the protocol's limits")
        case .failed(let e):
            close()
            if e == ENOMEM { throw ProtocolError(.outOfMemory, "\(socketPath): no memory for a reply") }
            throw ProtocolError(.system(e), "\(socketPath): \(SocketIO.errorText(e))")
        }
        if frame.type == Wire.MessageType.error.rawValue {
            let e = errorFromFrame(frame)
            if let c = e.serverCode, [.notAllowed, .busy, .timeout, .frameTooLarge, .unsupportedVersion, .unexpected].contains(c) {
                close()   // the server closes these connections
            }
            throw e
        }
        guard expect.contains(frame.type) else {
            throw malformed("unexpected message 0x\(String(frame.type, radix: 16))")
        }
        return frame
    }

    public func malformed(_ what: String) -> ProtocolError {
        close()
        let hint = service == .mount
            ? "the client and the mount may be different secretfs versions"
            : "is \(socketPath) a resolver daemon's socket (not a mount's)? Are both the same secretfs version?"
        return ProtocolError(.malformedReply, "\(socketPath): \(what)", hint: hint)
    }

    func errorFromFrame(_ frame: Frame) -> ProtocolError {
        ProtocolError.fromFrame(frame, path: socketPath, service: service)
    }
}

/// Request/reply on a connection that is made again whenever the server has
/// dropped it: an idle timeout (the mount closes idle connections after 30
/// s), a restart, a broken pipe. Every request sent through here must be
/// idempotent (all but REDACT streams are), since it may be sent twice.
public final class SocketClient: @unchecked Sendable {
    // @unchecked: the connection is only touched under `lock`.
    public let socketPath: String
    public let service: SocketService
    public let timeout: Double
    private let lock = Mutex(())
    private var connection: SocketConnection?

    /// Connects now, so a socket that is not there, or a server we do not
    /// trust, is reported at once.
    public init(socketPath: String, service: SocketService, timeout: Double = 30) throws(ProtocolError) {
        self.socketPath = socketPath
        self.service = service
        self.timeout = timeout
        connection = try SocketConnection(socketPath: socketPath, service: service, timeout: timeout)
    }

    /// Sends the request `build` makes and returns the reply. A reused
    /// connection that the server has closed is replaced and the request sent
    /// again, once; a fresh connection's failure is final.
    public func request(expect: [UInt8], _ build: () -> SecureBytes) throws(ProtocolError) -> Frame {
        try lock.withLock { _ throws(ProtocolError) -> Frame in
            var fresh = false
            while true {
                if let c = connection, c.isOpen, !c.hasPendingInput {
                    // reuse
                } else {
                    connection?.close()
                    connection = try SocketConnection(socketPath: socketPath, service: service, timeout: timeout)
                    fresh = true
                }
                do throws(ProtocolError) {
                    return try connection!.roundTrip(build(), expect: expect)
                } catch where !fresh && error.isConnectionLoss {
                    connection?.close()
                    connection = nil
                    fresh = false
                    continue
                }
            }
        }
    }

    public func close() {
        lock.withLock { _ in
            connection?.close()
            connection = nil
        }
    }
}

/// The one watch loop of every client: subscribes on its own connection and
/// thread, hands each change to the handler, and when the connection fails
/// for any reason (an idle timeout, a remount, a daemon restart, EPIPE)
/// reports `.lost`, reconnects with backoff and re-subscribes, then reports
/// `.restored`: changes made while it was disconnected were not seen, so the
/// handler must re-fetch everything it derived from the values.
///
/// The handler runs on the feed's thread, in order. Returning false says
/// "I could not bring myself up to date" (a re-fetch failed): the feed drops
/// the connection and goes round again (backoff, re-subscribe, `.restored`),
/// so a failed refresh is retried instead of silently keeping stale data.
public final class ChangeFeed: @unchecked Sendable {
    // @unchecked: mutable state is in `state` (a Mutex); the rest is immutable.
    public enum Event: Sendable {
        /// Names created, updated, renamed or deleted; `complete` false means
        /// "treat everything as changed".
        case changed(names: [String], complete: Bool)
        /// The feed is down: no change is seen until `.restored`.
        case lost(ProtocolError)
        /// Subscribed again after `.lost` (or after the handler asked for a resync).
        case restored
    }

    /// How to subscribe and read events on one kind of socket.
    public struct Subscription: Sendable {
        public var socketPath: String
        public var service: SocketService
        public var timeout: Double
        /// The WATCH request.
        public var request: @Sendable () -> SecureBytes
        /// Reply types: the subscription's acknowledgement and a change event.
        public var acknowledgement: UInt8
        public var changed: UInt8
        /// A change event's names and completeness.
        public var parse: @Sendable (Frame) throws(ParseError) -> (names: [String], complete: Bool)

        public init(socketPath: String, service: SocketService, timeout: Double = 30,
                    request: @escaping @Sendable () -> SecureBytes, acknowledgement: UInt8, changed: UInt8,
                    parse: @escaping @Sendable (Frame) throws(ParseError) -> (names: [String], complete: Bool)) {
            self.socketPath = socketPath
            self.service = service
            self.timeout = timeout
            self.request = request
            self.acknowledgement = acknowledgement
            self.changed = changed
            self.parse = parse
        }
    }

    /// Backoff between reconnection attempts (seconds): doubles from the
    /// first to the last.
    public static let backoff: (first: Double, last: Double) = (0.05, 2.0)

    public let subscription: Subscription
    private struct State {
        var connection: SocketConnection?
        var cancelled = false
        /// An event was read and its handler has not returned yet.
        var handling = false
    }
    private let state = Mutex(State())

    private init(_ subscription: Subscription) { self.subscription = subscription }

    /// Subscribes now (so a socket that is missing or refuses us is reported
    /// at once), then delivers events on a new thread until `cancel()`.
    public static func start(_ subscription: Subscription,
                             handler: @escaping @Sendable (Event) -> Bool) throws(ProtocolError) -> ChangeFeed {
        let feed = ChangeFeed(subscription)
        let first = try feed.subscribe()
        feed.state.withLock { $0.connection = first }
        guard startDetachedThread({ feed.run(first, handler) }) else {
            first.close()
            throw ProtocolError(.system(EAGAIN), "cannot start the watch thread")
        }
        return feed
    }

    /// Ends the feed; the handler is not called again once this returns
    /// (an event being handled right now finishes).
    public func cancel() {
        let c = state.withLock { s -> SocketConnection? in
            s.cancelled = true
            return s.connection
        }
        c?.shutdown()
    }

    public var isCancelled: Bool { state.withLock { $0.cancelled } }

    /// Whether an event has arrived on the connection that the feed's thread
    /// has not handled yet (it is in the socket buffer). A consumer that must
    /// not act on stale data (a redactor about to print) waits while this is
    /// true, which closes most of the gap between a change and its handling.
    public var hasUnhandledInput: Bool {
        let (connection, handling) = state.withLock { ($0.connection, $0.handling) }
        return handling || connection?.hasPendingInput == true
    }

    private func subscribe() throws(ProtocolError) -> SocketConnection {
        let s = subscription
        let c = try SocketConnection(socketPath: s.socketPath, service: s.service, timeout: s.timeout)
        _ = try c.roundTrip(s.request(), expect: [s.acknowledgement])
        return c
    }

    private func run(_ first: SocketConnection, _ handler: @Sendable (Event) -> Bool) {
        var connection: SocketConnection? = first
        var delay = Self.backoff.first
        while true {
            if let c = connection {
                let failure = events(on: c, handler)
                c.close()
                state.withLock { $0.connection = nil }
                connection = nil
                if isCancelled { return }
                if let failure { _ = handler(.lost(failure)) }
            }
            if !pause(delay) { return }
            delay = min(delay * 2, Self.backoff.last)
            guard let c = try? subscribe() else { continue }
            let wanted = state.withLock { s -> Bool in
                if s.cancelled { return false }
                s.connection = c
                return true
            }
            guard wanted else { c.close(); return }
            connection = c
            if handler(.restored) {
                delay = Self.backoff.first
            } else {
                // The handler could not catch up: round again, quietly.
                c.close()
                state.withLock { $0.connection = nil }
                connection = nil
            }
        }
    }

    /// Events until the connection fails (the error) or the handler asks for
    /// a resync (nil: it knows already).
    private func events(on c: SocketConnection, _ handler: @Sendable (Event) -> Bool) -> ProtocolError? {
        while true {
            let frame: Frame
            do {
                frame = try c.receive(expect: [subscription.changed], deadline: nil)
            } catch {
                return error
            }
            state.withLock { $0.handling = true }
            defer { state.withLock { $0.handling = false } }
            let change: (names: [String], complete: Bool)
            do {
                change = try subscription.parse(frame)
            } catch {
                return c.malformed("change event: \(error.reason)")
            }
            if isCancelled { return nil }
            if !handler(.changed(names: change.names, complete: change.complete)) { return nil }
        }
    }

    /// Sleeps `seconds`, waking early (false) if cancelled.
    private func pause(_ seconds: Double) -> Bool {
        let deadline = monotonicSeconds() + seconds
        while monotonicSeconds() < deadline {
            if isCancelled { return false }
            usleep(UInt32(min(50_000, max(1_000, (deadline - monotonicSeconds()) * 1e6))))
        }
        return !isCancelled
    }
}

/// One watching connection's queue of changed names, on the server side
/// (the mount's WATCH and the daemon's WATCH): filled by whoever sees a
/// change, emptied by the connection's thread, which the eventfd wakes.
/// Bounded: past `limit` names it keeps only "everything changed".
public final class ChangeQueue: @unchecked Sendable {
    // @unchecked: `pending` is a Mutex; `eventFD` is immutable.
    public let eventFD: Int32
    public let limit: Int
    private struct Pending {
        var has = false
        var names: [String] = []
        var seen: Set<String> = []
        var complete = true
    }
    private let pending = Mutex(Pending())

    public init?(limit: Int = 1024) {
        eventFD = secretfs_eventfd(1)
        self.limit = limit
        if eventFD < 0 { return nil }
    }

    deinit { Glibc.close(eventFD) }

    /// Wakes the connection's thread without queueing anything (stop).
    public func wake() {
        var one: UInt64 = 1
        _ = write(eventFD, &one, 8)
    }

    /// Queues `names` (or, with `complete` false, "everything changed").
    public func enqueue(_ names: [String], complete: Bool = true) {
        pending.withLock { p in
            p.has = true
            if !complete { p.complete = false }
            guard p.complete else { p.names = []; p.seen = []; return }
            for n in names where p.seen.insert(n).inserted { p.names.append(n) }
            if p.names.count > limit {
                p.complete = false
                p.names = []
                p.seen = []
            }
        }
        wake()
    }

    /// What is queued (and clears it), or nil.
    public func take() -> (names: [String], complete: Bool)? {
        var counter: UInt64 = 0
        _ = read(eventFD, &counter, 8)
        return pending.withLock { p -> (names: [String], complete: Bool)? in
            guard p.has else { return nil }
            defer { p = Pending() }
            return (p.names, p.complete)
        }
    }
}
