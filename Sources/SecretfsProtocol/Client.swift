import Glibc
import SecretfsStore
import SecureMemory
import Synchronization

/// One secret's metadata, as LIST reports it.
public struct SecretEntry: Sendable, Equatable {
    public var name: String
    public var version: Int64
    public var createdAt: Timestamp
    public var updatedAt: Timestamp
    public var updatedBy: UInt32

    public init(name: String, version: Int64, createdAt: Timestamp, updatedAt: Timestamp, updatedBy: UInt32) {
        self.name = name; self.version = version; self.createdAt = createdAt
        self.updatedAt = updatedAt; self.updatedBy = updatedBy
    }
}

/// LIST's reply.
public struct SecretListing: Sendable, Equatable {
    public var project: String
    /// The project's version when the listing was taken (never newer than it).
    public var projectVersion: Int64
    /// The mount's change sequence when the listing was taken (see `SecretValues.sequence`).
    public var sequence: UInt64
    public var secrets: [SecretEntry]
}

/// GET's reply: the values found (in locked memory) and the names that were not.
public struct SecretValues: @unchecked Sendable {
    // @unchecked: SecureBytes buffers are owned by this value's holder.
    /// The project's version read before the values (never newer than them):
    /// a cache may keep these values only if no CHANGED with a higher version
    /// has been seen.
    public var projectVersion: Int64
    /// The mount's change sequence read before the values. A cache may keep
    /// these values only if it has seen no CHANGED with a higher `sequence`
    /// (the project version does not move on deletes; the sequence does).
    public var sequence: UInt64
    public var values: [String: SecureBytes]
    public var missing: [String]

    /// Wipes every value now (they are also wiped when released).
    public func wipe() { for v in values.values { v.wipe() } }
}

/// A CHANGED event.
public struct ChangeEvent: Sendable, Equatable {
    /// The project's version when the event was sent (at least the change's).
    public var projectVersion: Int64
    /// The mount's change sequence when the event was sent (at least the change's).
    public var sequence: UInt64
    /// Names created, updated, renamed (old and new) or deleted.
    public var names: [String]
    /// False when the server dropped names (too many queued): treat every
    /// cached value of the project as changed.
    public var complete: Bool
}

/// A connection to a project's privileged socket. Requests are answered in
/// order on one connection; use one client per thread (or serialise calls).
public final class PrivilegedClient: @unchecked Sendable {
    // @unchecked: `fd` is only touched by the calling thread (see above).
    public let socketPath: String
    /// Seconds to wait for a reply.
    public var timeout: Double
    private var fd: Int32

    /// Connects. Fails with `.notMounted`, `.connectionRefused`,
    /// `.permissionDenied` (with hints) when there is no usable socket. A peer
    /// the server does not allow learns it from the first request's error.
    public init(socketPath: String, timeout: Double = 30) throws(ProtocolError) {
        self.socketPath = socketPath
        self.timeout = timeout
        let fd = SocketIO.connect(to: socketPath)
        guard fd >= 0 else { throw ProtocolError.connectFailure(socketPath, errno: errno) }
        SocketIO.setSendTimeout(fd, seconds: timeout)
        self.fd = fd
    }

    deinit { close() }

    public func close() {
        if fd >= 0 {
            Glibc.close(fd)
            fd = -1
        }
    }

    // MARK: Requests

    /// Names, versions and times of every secret of the project.
    public func list() throws(ProtocolError) -> SecretListing {
        let frame = try roundTrip(Wire.emptyRequest(.list), expect: .listReply)
        var r = FrameReader(frame)
        do throws(ParseError) {
            let version = try r.i64()
            let sequence = try r.u64()
            let project = try r.text()
            let count = Int(try r.u32())
            var entries: [SecretEntry] = []
            entries.reserveCapacity(min(count, 65536))
            for _ in 0..<count {
                guard let name = try r.name() else { throw ParseError(reason: "invalid name in LIST reply") }
                let v = try r.i64()
                let created = try r.i64()
                let updated = try r.i64()
                let by = try r.u32()
                entries.append(SecretEntry(name: name, version: v, createdAt: Timestamp(nanoseconds: created),
                                           updatedAt: Timestamp(nanoseconds: updated), updatedBy: by))
            }
            try r.expectEnd()
            return SecretListing(project: project, projectVersion: version, sequence: sequence, secrets: entries)
        } catch {
            throw malformed("LIST reply: \(error.reason)")
        }
    }

    /// The values of `names` (only those), and the names that do not exist.
    /// Large requests are split into several GETs (each audited by the mount).
    public func values(_ names: [String]) throws(ProtocolError) -> SecretValues {
        var unique: [String] = []
        var seen = Set<String>()
        for n in names where seen.insert(n).inserted { unique.append(n) }
        var result = SecretValues(projectVersion: Int64.max, sequence: UInt64.max, values: [:], missing: [])
        var start = 0
        while start < unique.count {
            let end = min(start + Wire.maxNamesPerGet, unique.count)
            try getBatch(Array(unique[start..<end]), into: &result)
            start = end
        }
        if unique.isEmpty { result.projectVersion = 0; result.sequence = 0 }
        return result
    }

    private func getBatch(_ names: [String], into result: inout SecretValues) throws(ProtocolError) {
        for n in names where !Names.isValid(n) {
            throw ProtocolError(.server(.invalidName), "'\(n)' is not a valid secret name")
        }
        let frame: Frame
        do {
            frame = try roundTrip(Wire.getRequest(names), expect: .getReply)
        } catch let e where e.serverCode == .replyTooLarge && names.count > 1 {
            let half = names.count / 2
            try getBatch(Array(names[..<half]), into: &result)
            try getBatch(Array(names[half...]), into: &result)
            return
        }
        var r = FrameReader(frame)
        let asked = Set(names)
        do throws(ParseError) {
            let version = try r.i64()
            let sequence = try r.u64()
            let found = Int(try r.u32())
            for _ in 0..<found {
                guard let name = try r.name(), asked.contains(name) else {
                    throw ParseError(reason: "a value for a name that was not asked for")
                }
                let v = try r.value()
                result.values[name]?.wipe()
                result.values[name] = v
            }
            let missing = Int(try r.u32())
            for _ in 0..<missing {
                guard let name = try r.name(), asked.contains(name) else {
                    throw ParseError(reason: "a missing name that was not asked for")
                }
                result.missing.append(name)
            }
            try r.expectEnd()
            result.projectVersion = min(result.projectVersion, version)
            result.sequence = min(result.sequence, sequence)
        } catch {
            result.wipe()
            throw malformed("GET reply: \(error.reason)")
        }
    }

    /// Turns this connection into a watch: `onStart` gets the project's version
    /// and the mount's change sequence at subscription, then `handler` gets every CHANGED event until it
    /// returns false (then this returns) or the connection ends (then this
    /// throws `.connectionClosed`: the mount went away, drop every cached value).
    /// The connection takes no other request afterwards.
    public func watch(onStart: (_ projectVersion: Int64, _ sequence: UInt64) -> Void = { _, _ in },
                      _ handler: (ChangeEvent) -> Bool) throws(ProtocolError) {
        let first = try roundTrip(Wire.emptyRequest(.watch), expect: .watching)
        var r = FrameReader(first)
        let start: Int64, sequence: UInt64
        do {
            start = try r.i64()
            sequence = try r.u64()
        } catch { throw malformed("WATCHING: \(error.reason)") }
        onStart(start, sequence)
        while true {
            let frame = try receive(deadline: nil)
            guard let event = try Self.changeEvent(frame, path: socketPath) else { continue }
            if !handler(event) { return }
        }
    }

    static func changeEvent(_ frame: Frame, path: String) throws(ProtocolError) -> ChangeEvent? {
        if frame.type == Wire.MessageType.error.rawValue { throw errorFromFrame(frame, path: path) }
        guard frame.type == Wire.MessageType.changed.rawValue else {
            throw ProtocolError(.malformedReply, "\(path): unexpected message 0x\(String(frame.type, radix: 16)) while watching")
        }
        var r = FrameReader(frame)
        do throws(ParseError) {
            let version = try r.i64()
            let sequence = try r.u64()
            let flags = try r.u8()
            let count = Int(try r.u32())
            var names: [String] = []
            for _ in 0..<count {
                guard let n = try r.name() else { throw ParseError(reason: "invalid name") }
                names.append(n)
            }
            try r.expectEnd()
            return ChangeEvent(projectVersion: version, sequence: sequence, names: names,
                               complete: flags & Wire.changedFlagIncomplete == 0)
        } catch {
            throw ProtocolError(.malformedReply, "\(path): CHANGED: \(error.reason)")
        }
    }

    // MARK: Framing

    private func malformed(_ what: String) -> ProtocolError {
        close()
        return ProtocolError(.malformedReply, "\(socketPath): \(what)", hint: "the client and the mount may be different secretfs versions")
    }

    private func roundTrip(_ request: SecureBytes, expect: Wire.MessageType) throws(ProtocolError) -> Frame {
        guard fd >= 0 else { throw ProtocolError(.connectionClosed, "\(socketPath): the connection is closed") }
        defer { request.wipe() }
        if !SocketIO.sendAll(fd, request) {
            // The server may have refused us and closed: its ERROR is still readable.
            let sendErrno = errno
            if let frame = try? receive(deadline: SocketIO.monotonicNow() + 1),
               frame.type == Wire.MessageType.error.rawValue {
                close()
                throw Self.errorFromFrame(frame, path: socketPath)
            }
            close()
            if sendErrno == EAGAIN || sendErrno == EWOULDBLOCK {
                throw ProtocolError(.timedOut, "\(socketPath): the mount did not accept the request within \(timeout) s")
            }
            throw ProtocolError(.connectionClosed, "\(socketPath): connection closed by the mount")
        }
        let frame = try receive(deadline: SocketIO.monotonicNow() + timeout)
        if frame.type == Wire.MessageType.error.rawValue {
            let e = Self.errorFromFrame(frame, path: socketPath)
            if case .server(let c) = e.kind, [.notAllowed, .busy, .timeout, .frameTooLarge, .unsupportedVersion, .unexpected].contains(c) {
                close()   // the server closes these connections
            }
            throw e
        }
        guard frame.type == expect.rawValue else {
            throw malformed("expected message 0x\(String(expect.rawValue, radix: 16)), got 0x\(String(frame.type, radix: 16))")
        }
        return frame
    }

    private func receive(deadline: Double?) throws(ProtocolError) -> Frame {
        guard fd >= 0 else { throw ProtocolError(.connectionClosed, "\(socketPath): the connection is closed") }
        switch SocketIO.readFrame(fd, maxLength: Wire.maxResponseFrame, deadline: deadline) {
        case .frame(let f):
            guard f.version == Wire.version else {
                throw malformed("reply in protocol version \(f.version) (this client speaks \(Wire.version))")
            }
            return f
        case .closed, .truncated:
            close()
            throw ProtocolError(.connectionClosed, "\(socketPath): connection closed by the mount",
                                hint: "the project may have been unmounted")
        case .timedOut:
            close()
            throw ProtocolError(.timedOut, "\(socketPath): no reply within \(timeout) s")
        case .badLength(let n):
            close()
            throw ProtocolError(.malformedReply, "\(socketPath): reply length \(n) is outside the protocol's limits")
        case .failed(let e):
            close()
            throw ProtocolError(.system(e), "\(socketPath): \(SocketIO.errorText(e))")
        }
    }

    static func errorFromFrame(_ frame: Frame, path: String) -> ProtocolError {
        var r = FrameReader(frame)
        guard let code = try? r.u16(), let text = try? r.text() else {
            return ProtocolError(.malformedReply, "\(path): malformed ERROR frame")
        }
        return ProtocolError.fromServer(code, text, path: path)
    }
}

/// A watch on its own connection and thread, for daemons that cache values.
///
///     let watch = try SecretWatch.start(socketPath: path) { event in
///         switch event {
///         case .changed(let c): cache.drop(c.complete ? c.names : nil)
///         case .ended: cache.dropAll()   // reconnect later
///         }
///     }
///     ...
///     watch.cancel()
///
/// Events arrive on the watch's thread, in order; `.ended` is the last one.
public final class SecretWatch: @unchecked Sendable {
    public enum Event: Sendable {
        case changed(ChangeEvent)
        /// The watch is over: nil after `cancel()`, else why it ended.
        case ended(ProtocolError?)
    }

    /// The project's version when the subscription took effect: every change
    /// after it produces an event.
    public let initialVersion: Int64
    /// The mount's change sequence at subscription.
    public let initialSequence: UInt64
    public let socketPath: String
    private struct State { var fd: Int32; var cancelled = false }
    private let state: Mutex<State>

    private init(fd: Int32, initialVersion: Int64, initialSequence: UInt64, socketPath: String) {
        self.state = Mutex(State(fd: fd))
        self.initialVersion = initialVersion
        self.initialSequence = initialSequence
        self.socketPath = socketPath
    }

    /// Connects, subscribes (waiting up to `timeout` for the server's
    /// acknowledgement), then delivers events to `handler` on a new thread.
    public static func start(socketPath: String, timeout: Double = 30,
                             handler: @escaping @Sendable (Event) -> Void) throws(ProtocolError) -> SecretWatch {
        let fd = SocketIO.connect(to: socketPath)
        guard fd >= 0 else { throw ProtocolError.connectFailure(socketPath, errno: errno) }
        SocketIO.setSendTimeout(fd, seconds: timeout)
        func fail(_ e: ProtocolError) -> ProtocolError { Glibc.close(fd); return e }
        guard SocketIO.sendAll(fd, Wire.emptyRequest(.watch)) else {
            if case .frame(let f) = SocketIO.readFrame(fd, maxLength: Wire.maxResponseFrame, deadline: SocketIO.monotonicNow() + 1),
               f.type == Wire.MessageType.error.rawValue {
                throw fail(PrivilegedClient.errorFromFrame(f, path: socketPath))
            }
            throw fail(ProtocolError(.connectionClosed, "\(socketPath): connection closed by the mount"))
        }
        let version: Int64, sequence: UInt64
        switch SocketIO.readFrame(fd, maxLength: Wire.maxResponseFrame, deadline: SocketIO.monotonicNow() + timeout) {
        case .frame(let f) where f.type == Wire.MessageType.watching.rawValue:
            var r = FrameReader(f)
            guard let v = try? r.i64(), let q = try? r.u64() else {
                throw fail(ProtocolError(.malformedReply, "\(socketPath): malformed WATCHING"))
            }
            version = v
            sequence = q
        case .frame(let f) where f.type == Wire.MessageType.error.rawValue:
            throw fail(PrivilegedClient.errorFromFrame(f, path: socketPath))
        case .timedOut:
            throw fail(ProtocolError(.timedOut, "\(socketPath): no reply within \(timeout) s"))
        case .frame:
            throw fail(ProtocolError(.malformedReply, "\(socketPath): unexpected reply to WATCH"))
        default:
            throw fail(ProtocolError(.connectionClosed, "\(socketPath): connection closed by the mount"))
        }
        let watch = SecretWatch(fd: fd, initialVersion: version, initialSequence: sequence, socketPath: socketPath)
        guard startDetachedThread({ watch.run(fd: fd, handler: handler) }) else {
            throw fail(ProtocolError(.system(EAGAIN), "cannot start the watch thread"))
        }
        return watch
    }

    private func run(fd: Int32, handler: @Sendable (Event) -> Void) {
        var ending: ProtocolError?
        loop: while true {
            switch SocketIO.readFrame(fd, maxLength: Wire.maxResponseFrame, deadline: nil) {
            case .frame(let f):
                do {
                    if let e = try PrivilegedClient.changeEvent(f, path: socketPath) { handler(.changed(e)) }
                } catch {
                    ending = error
                    break loop
                }
            case .closed, .truncated:
                ending = ProtocolError(.connectionClosed, "\(socketPath): the mount closed the watch",
                                       hint: "the project may have been unmounted")
                break loop
            case .badLength(let n):
                ending = ProtocolError(.malformedReply, "\(socketPath): frame length \(n) is outside the protocol's limits")
                break loop
            case .failed(let e):
                ending = ProtocolError(.system(e), "\(socketPath): \(SocketIO.errorText(e))")
                break loop
            case .timedOut:
                continue
            }
        }
        let cancelled = state.withLock { s -> Bool in
            Glibc.close(s.fd)
            s.fd = -1
            return s.cancelled
        }
        handler(.ended(cancelled ? nil : ending))
    }

    /// Ends the watch; the handler then gets `.ended(nil)` (from its thread).
    public func cancel() {
        state.withLock { s in
            s.cancelled = true
            if s.fd >= 0 { _ = shutdown(s.fd, Int32(SHUT_RDWR)) }
        }
    }
}
