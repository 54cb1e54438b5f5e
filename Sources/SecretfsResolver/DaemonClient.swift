import Glibc
import SecretfsInject
import SecretfsProtocol
import SecureMemory
import Synchronization

/// One connection to a resolver daemon. Requests are answered in order; use
/// one connection per thread (or serialise calls).
final class DaemonConnection: @unchecked Sendable {
    // @unchecked: used by one thread at a time (handed over, never shared).
    let socketPath: String
    let timeout: Double
    private(set) var fd: Int32

    init(socketPath: String, timeout: Double) throws(DaemonError) {
        self.socketPath = socketPath
        self.timeout = timeout
        let fd = SocketIO.connect(to: socketPath)
        guard fd >= 0 else { throw DaemonError.connectFailure(socketPath, errno: errno) }
        SocketIO.setSendTimeout(fd, seconds: timeout)
        self.fd = fd
    }

    deinit { close() }

    func close() {
        if fd >= 0 {
            Glibc.close(fd)
            fd = -1
        }
    }

    var isOpen: Bool { fd >= 0 }

    /// Sends `request` (wiped afterwards) and reads one reply frame. An ERROR
    /// reply is thrown as `.server(code)`.
    func roundTrip(_ request: SecureBytes, expect: [DaemonWire.MessageType]) throws(DaemonError) -> Frame {
        defer { request.wipe() }
        try send(request)
        return try receive(expect: expect, deadline: SocketIO.monotonicNow() + timeout)
    }

    func send(_ request: SecureBytes) throws(DaemonError) {
        guard fd >= 0 else { throw DaemonError(.connectionClosed, "\(socketPath): the connection is closed") }
        guard SocketIO.sendAll(fd, request) else {
            // The daemon may have refused us and closed: its ERROR is still readable.
            let sendErrno = errno
            if case .frame(let f) = SocketIO.readFrame(fd, maxLength: DaemonWire.maxReplyFrame, deadline: SocketIO.monotonicNow() + 1),
               f.type == DaemonWire.MessageType.error.rawValue {
                close()
                throw Self.errorFromFrame(f, path: socketPath)
            }
            close()
            if sendErrno == EAGAIN || sendErrno == EWOULDBLOCK {
                throw DaemonError(.timedOut, "\(socketPath): the resolver daemon did not accept the request within \(timeout) s")
            }
            throw DaemonError(.connectionClosed, "\(socketPath): connection closed by the resolver daemon")
        }
    }

    func receive(expect: [DaemonWire.MessageType], deadline: Double?) throws(DaemonError) -> Frame {
        guard fd >= 0 else { throw DaemonError(.connectionClosed, "\(socketPath): the connection is closed") }
        let frame: Frame
        switch SocketIO.readFrame(fd, maxLength: DaemonWire.maxReplyFrame, deadline: deadline) {
        case .frame(let f):
            guard f.version == DaemonWire.version else {
                throw malformed("reply in protocol version \(f.version) (this client speaks \(DaemonWire.version))")
            }
            frame = f
        case .closed, .truncated:
            close()
            throw DaemonError(.connectionClosed, "\(socketPath): connection closed by the resolver daemon",
                              hint: "the daemon may have stopped, or closed an idle connection")
        case .timedOut:
            close()
            throw DaemonError(.timedOut, "\(socketPath): no reply from the resolver daemon within \(timeout) s")
        case .badLength(let n):
            close()
            throw DaemonError(.malformedReply, "\(socketPath): reply length \(n) is outside the protocol's limits")
        case .failed(let e):
            close()
            throw DaemonError(.system(e), "\(socketPath): \(SocketIO.errorText(e))")
        }
        if frame.type == DaemonWire.MessageType.error.rawValue {
            let e = Self.errorFromFrame(frame, path: socketPath)
            if let c = e.serverCode, [.notAllowed, .busy, .timeout, .frameTooLarge, .unsupportedVersion, .unexpected].contains(c) {
                close()   // the daemon closes these connections
            }
            throw e
        }
        guard expect.contains(where: { $0.rawValue == frame.type }) else {
            throw malformed("unexpected message 0x\(String(frame.type, radix: 16))")
        }
        return frame
    }

    func malformed(_ what: String) -> DaemonError {
        close()
        return DaemonError(.malformedReply, "\(socketPath): \(what)",
                           hint: "is \(socketPath) a resolver daemon's socket (not a mount's)? Are both the same secretfs version?")
    }

    static func errorFromFrame(_ frame: Frame, path: String) -> DaemonError {
        var r = FrameReader(frame)
        guard let code = try? r.u16(), let text = try? r.text() else {
            return DaemonError(.malformedReply, "\(path): malformed ERROR frame")
        }
        return DaemonError.fromServer(code, text, path: path)
    }
}

/// Runs `body` on a connection, reconnecting once if the daemon had closed
/// the previous one (an idle timeout, or a daemon restart). Every request is
/// idempotent, so sending it again is safe.
private func withRetry<R>(_ connection: inout DaemonConnection?, socketPath: String, timeout: Double,
                          _ body: (DaemonConnection) throws(DaemonError) -> R) throws(DaemonError) -> R {
    var retried = false
    while true {
        let c: DaemonConnection
        if let existing = connection, existing.isOpen { c = existing } else {
            c = try DaemonConnection(socketPath: socketPath, timeout: timeout)
            connection = c
            retried = true   // a fresh connection is not retried
        }
        do {
            return try body(c)
        } catch {
            if error.kind == .connectionClosed && !retried {
                retried = true
                connection = nil
                continue
            }
            throw error
        }
    }
}

/// Values and names of a project through a resolver daemon (which fetches
/// them from the project's mount and caches them). Values arrive in locked
/// memory; the caller owns (and should wipe) them.
public final class DaemonValueSource: ValueSource, @unchecked Sendable {
    // @unchecked: the connection is guarded by `lock`.
    public let socketPath: String
    public let project: String
    public let timeout: Double
    private let lock = Mutex(())
    private var connection: DaemonConnection?

    /// Connects to the daemon. Throws `DaemonError` when nothing usable
    /// listens at `socketPath` or the project name is not valid.
    public convenience init(socketPath: String, project: String) throws {
        try self.init(socketPath: socketPath, project: project, timeout: 30)
    }

    public init(socketPath: String, project: String, timeout: Double) throws {
        guard isValidSecretName(project) else {
            throw DaemonError(.server(.invalidProject), "'\(project)' is not a valid project name")
        }
        self.socketPath = socketPath
        self.project = project
        self.timeout = timeout
        connection = try DaemonConnection(socketPath: socketPath, timeout: timeout)
    }

    public func values(_ names: [String]) throws -> [String: SecureBytes] {
        var unique: [String] = []
        var seen = Set<String>()
        for n in names where seen.insert(n).inserted { unique.append(n) }
        var result: [String: SecureBytes] = [:]
        var start = 0
        while start < unique.count {
            let end = min(start + Wire.maxNamesPerGet, unique.count)
            let batch = Array(unique[start..<end])
            for n in batch where !isValidSecretName(n) {
                throw DaemonError(.server(.invalidName), "'\(n)' is not a valid secret name")
            }
            do {
                try fetch(batch, into: &result)
            } catch {
                for v in result.values { v.wipe() }
                throw error
            }
            start = end
        }
        return result
    }

    private func fetch(_ names: [String], into result: inout [String: SecureBytes]) throws(DaemonError) {
        let frame = try lock.withLock { _ throws(DaemonError) -> Frame in
            try withRetry(&connection, socketPath: socketPath, timeout: timeout) { c throws(DaemonError) in
                try c.roundTrip(DaemonWire.valuesRequest(project: project, names: names), expect: [.valuesReply])
            }
        }
        var r = FrameReader(frame)
        let asked = Set(names)
        do throws(ParseError) {
            let found = Int(try r.u32())
            for _ in 0..<found {
                let name = try r.text()
                guard asked.contains(name) else { throw ParseError(reason: "a value for a name that was not asked for") }
                let v = try r.value()
                result[name]?.wipe()
                result[name] = v
            }
            let missing = Int(try r.u32())
            for _ in 0..<missing {
                guard asked.contains(try r.text()) else { throw ParseError(reason: "a missing name that was not asked for") }
            }
            try r.expectEnd()
        } catch {
            throw DaemonError(.malformedReply, "\(socketPath): VALUES reply: \(error.reason)")
        }
    }

    public func names() throws -> [String] {
        let frame = try lock.withLock { _ throws(DaemonError) -> Frame in
            try withRetry(&connection, socketPath: socketPath, timeout: timeout) { c throws(DaemonError) in
                try c.roundTrip(DaemonWire.projectRequest(.names, project: project), expect: [.namesReply])
            }
        }
        var r = FrameReader(frame)
        do throws(ParseError) {
            let count = Int(try r.u32())
            var names: [String] = []
            names.reserveCapacity(min(count, 65536))
            for _ in 0..<count { names.append(try r.text()) }
            try r.expectEnd()
            return names
        } catch {
            throw DaemonError(.malformedReply, "\(socketPath): NAMES reply: \(error.reason)")
        }
    }
}

/// Calls `onChange` whenever the daemon reports that a secret of the project
/// changed (or that the mount went away or came back: then anything derived
/// from the values should be rebuilt). Runs its own thread; reconnects to the
/// daemon (once a second) if the connection ends, and calls `onChange` after
/// reconnecting. Cancelled when released.
public final class DaemonWatch: @unchecked Sendable {
    // @unchecked: mutable state is in `Shared.state` (a Mutex).
    private final class Shared: @unchecked Sendable {
        struct State { var fd: Int32 = -1; var cancelled = false }
        let state = Mutex(State())
    }
    private let shared = Shared()
    public let socketPath: String
    public let project: String

    /// Connects and subscribes (so a daemon that is not there, or refuses us,
    /// is reported now), then watches on a new thread.
    public init(socketPath: String, project: String, onChange: @escaping @Sendable () -> Void) throws {
        guard isValidSecretName(project) else {
            throw DaemonError(.server(.invalidProject), "'\(project)' is not a valid project name")
        }
        self.socketPath = socketPath
        self.project = project
        let first = try Self.subscribe(socketPath: socketPath, project: project)
        shared.state.withLock { $0.fd = first.fd }
        let shared = self.shared
        let started = startDetachedThread {
            Self.run(shared: shared, first: first, socketPath: socketPath, project: project, onChange: onChange)
        }
        guard started else {
            first.close()
            throw DaemonError(.system(EAGAIN), "cannot start the watch thread")
        }
    }

    deinit { cancel() }

    /// Ends the watch (the thread exits soon after; `onChange` is not called again).
    public func cancel() {
        shared.state.withLock { s in
            s.cancelled = true
            if s.fd >= 0 { _ = shutdown(s.fd, Int32(SHUT_RDWR)) }
        }
    }

    private static func subscribe(socketPath: String, project: String) throws(DaemonError) -> DaemonConnection {
        let c = try DaemonConnection(socketPath: socketPath, timeout: 30)
        _ = try c.roundTrip(DaemonWire.projectRequest(.watch, project: project), expect: [.watching])
        return c
    }

    private static func run(shared: Shared, first: DaemonConnection, socketPath: String, project: String,
                            onChange: @Sendable () -> Void) {
        var connection: DaemonConnection? = first
        while true {
            if let c = connection {
                // Events until the connection ends.
                while true {
                    guard let frame = try? c.receive(expect: [.changed], deadline: nil) else { break }
                    _ = frame
                    if shared.state.withLock({ $0.cancelled }) { break }
                    onChange()
                }
                c.close()
                connection = nil
            }
            let cancelled = shared.state.withLock { s -> Bool in
                s.fd = -1
                return s.cancelled
            }
            if cancelled { return }
            usleep(1_000_000)
            if shared.state.withLock({ $0.cancelled }) { return }
            if let c = try? subscribe(socketPath: socketPath, project: project) {
                let stillWanted = shared.state.withLock { s -> Bool in
                    if s.cancelled { return false }
                    s.fd = c.fd
                    return true
                }
                guard stillWanted else { c.close(); return }
                connection = c
                onChange()   // changes may have happened while disconnected
            }
        }
    }
}

/// One-shot requests to a resolver daemon.
public enum DaemonClient {
    /// Resolves `document` through the daemon at `socketPath`: the same result
    /// as `Resolver.resolve` against the project's mount. Throws
    /// `ResolveFailure` (every problem with its location, as local resolution
    /// reports them) when the document cannot be resolved, and `DaemonError`
    /// for anything else.
    public static func resolve(socketPath: String, project: String, document: [UInt8], format: InjectionFormat,
                               output: ResolveOutput) throws -> SecureBytes {
        guard isValidSecretName(project) else {
            throw DaemonError(.server(.invalidProject), "'\(project)' is not a valid project name")
        }
        let c = try DaemonConnection(socketPath: socketPath, timeout: 30)
        defer { c.close() }
        return try resolve(on: c, project: project, document: document, format: format, output: output)
    }

    static func resolve(on c: DaemonConnection, project: String, document: [UInt8], format: InjectionFormat,
                        output: ResolveOutput) throws -> SecureBytes {
        let frame = try c.roundTrip(DaemonWire.resolveRequest(project: project, format: format, output: output,
                                                              document: document),
                                    expect: [.resolved, .problems])
        if frame.type == DaemonWire.MessageType.problems.rawValue {
            do {
                throw ResolveFailure(problems: try DaemonWire.parseProblems(frame))
            } catch let e as ParseError {
                throw DaemonError(.malformedReply, "\(c.socketPath): PROBLEMS reply: \(e.reason)")
            }
        }
        var r = FrameReader(frame)
        do throws(ParseError) {
            let v = try r.value()
            try r.expectEnd()
            return v
        } catch {
            throw DaemonError(.malformedReply, "\(c.socketPath): RESOLVED reply: \(error.reason)")
        }
    }
}

/// A redaction stream through a resolver daemon (REDACT): the daemon masks
/// every value of the project (and its encodings) in what is written, and
/// follows the project's changes. Lock-step: each `write` returns what the
/// daemon released for it (at least every complete line). One thread at a time.
public final class DaemonRedaction {
    public let socketPath: String
    public let project: String
    /// Secrets the daemon does not mask (too short), with the reason; never a value.
    public let skipped: [(name: String, reason: String)]
    private let connection: DaemonConnection
    private var finished = false

    public init(socketPath: String, project: String, minimumLength: Int = 4, mask: String = "[REDACTED]",
                timeout: Double = 30) throws {
        guard isValidSecretName(project) else {
            throw DaemonError(.server(.invalidProject), "'\(project)' is not a valid project name")
        }
        self.socketPath = socketPath
        self.project = project
        let c = try DaemonConnection(socketPath: socketPath, timeout: timeout)
        let frame = try c.roundTrip(DaemonWire.redactRequest(project: project, minimumLength: minimumLength, mask: mask),
                                    expect: [.redacting])
        var r = FrameReader(frame)
        var skipped: [(name: String, reason: String)] = []
        do throws(ParseError) {
            let n = Int(try r.u32())
            for _ in 0..<n { skipped.append((try r.text(), try r.text())) }
            try r.expectEnd()
        } catch {
            throw DaemonError(.malformedReply, "\(socketPath): REDACTING reply: \(error.reason)")
        }
        self.skipped = skipped
        connection = c
    }

    /// Sends a chunk (any size up to `DaemonWire.dataChunk` per frame; larger
    /// input is split) and returns the redacted output released so far.
    public func write(_ bytes: UnsafeRawBufferPointer) throws -> SecureBytes {
        let out = OutputBuffer()
        var off = 0
        repeat {
            let n = min(DaemonWire.dataChunk, bytes.count - off)
            let frame = FrameBuilder(rawType: DaemonWire.MessageType.data.rawValue, bodySize: n)
            if n > 0 { frame.buffer.append(UnsafeRawBufferPointer(rebasing: bytes[off..<(off + n)])) }
            let reply = try connection.roundTrip(frame.finish(), expect: [.redacted])
            reply.storage.withUnsafeBytes { out.append(UnsafeRawBufferPointer(rebasing: $0[Wire.headerSize...])) }
            off += n
        } while off < bytes.count
        return out.take()
    }

    public func write(_ bytes: [UInt8]) throws -> SecureBytes {
        try bytes.withUnsafeBytes { try write($0) }
    }

    /// Ends the stream: returns what the daemon still held back.
    public func finish() throws -> SecureBytes {
        guard !finished else { return SecureBytes(capacity: 0) }
        finished = true
        defer { connection.close() }
        let reply = try connection.roundTrip(FrameBuilder(rawType: DaemonWire.MessageType.end.rawValue, bodySize: 0).finish(),
                                             expect: [.ended])
        return reply.storage.withUnsafeBytes { SecureBytes(copying: UnsafeRawBufferPointer(rebasing: $0[Wire.headerSize...])) }
    }
}
