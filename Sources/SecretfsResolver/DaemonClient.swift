import Glibc
import SecretfsInject
import SecretfsNames
import SecretfsProtocol
import SecureMemory
import Synchronization

private func checkProject(_ project: String) throws(ProtocolError) {
    guard Names.isValid(project) else {
        throw ProtocolError(.server(.invalidProject), "'\(Wire.printable(Wire.clip(project, 64)))' is not a valid project name")
    }
}

/// Values and names of a project through a resolver daemon (which fetches
/// them from the project's mount and caches them). Values arrive in locked
/// memory; the caller owns (and should wipe) them. The connection is made
/// again whenever the daemon has dropped it (idle timeout, restart).
public final class DaemonValueSource: ValueSource, @unchecked Sendable {
    // @unchecked: the connection lives in a `SocketClient` (its own lock).
    public let socketPath: String
    public let project: String
    private let client: SocketClient

    /// Connects to the daemon. Throws `ProtocolError` when nothing usable
    /// listens at `socketPath` or the project name is not valid.
    public init(socketPath: String, project: String, timeout: Double = 30) throws(ProtocolError) {
        try checkProject(project)
        self.socketPath = socketPath
        self.project = project
        client = try SocketClient(socketPath: socketPath, service: .daemon, timeout: timeout)
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
            for n in batch where !Names.isValid(n) {
                throw ProtocolError(.server(.invalidName), "'\(Wire.printable(Wire.clip(n, 64)))' is not a valid secret name")
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

    private func fetch(_ names: [String], into result: inout [String: SecureBytes]) throws(ProtocolError) {
        let frame = try client.request(expect: [DaemonWire.MessageType.valuesReply.rawValue]) {
            DaemonWire.valuesRequest(project: project, names: names)
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
            throw ProtocolError(.malformedReply, "\(socketPath): VALUES reply: \(error.reason)")
        }
    }

    public func names() throws -> [String] {
        let frame = try client.request(expect: [DaemonWire.MessageType.namesReply.rawValue]) {
            DaemonWire.projectRequest(.names, project: project)
        }
        var r = FrameReader(frame)
        do throws(ParseError) {
            let count = Int(try r.u32())
            var names: [String] = []
            names.reserveCapacity(min(count, 65536))
            for _ in 0..<count {
                let n = try r.text()
                guard Names.isValid(n) else { throw ParseError(reason: "an invalid name") }
                names.append(n)
            }
            try r.expectEnd()
            return names
        } catch {
            throw ProtocolError(.malformedReply, "\(socketPath): NAMES reply: \(error.reason)")
        }
    }
}

/// One-shot requests to a resolver daemon.
public enum DaemonClient {
    /// Resolves `document` through the daemon at `socketPath`: the same result
    /// as `Resolver.resolve` against the project's mount. Throws
    /// `ResolveFailure` (every problem with its location, as local resolution
    /// reports them) when the document cannot be resolved, and `ProtocolError`
    /// for anything else.
    public static func resolve(socketPath: String, project: String, document: [UInt8], format: InjectionFormat,
                               output: ResolveOutput) throws -> SecureBytes {
        try checkProject(project)
        let c = try SocketConnection(socketPath: socketPath, service: .daemon, timeout: 30)
        defer { c.close() }
        return try resolve(on: c, project: project, document: document, format: format, output: output)
    }

    /// A `ChangeFeed` through the daemon: every change of the project (the
    /// daemon forwards its mount's), with `.lost`/`.restored` around every
    /// reconnection to the daemon.
    public static func changeFeed(socketPath: String, project: String, timeout: Double = 30,
                                  handler: @escaping @Sendable (ChangeFeed.Event) -> Bool) throws(ProtocolError) -> ChangeFeed {
        try checkProject(project)
        return try ChangeFeed.start(ChangeFeed.Subscription(
            socketPath: socketPath, service: .daemon, timeout: timeout,
            request: { DaemonWire.projectRequest(.watch, project: project) },
            acknowledgement: DaemonWire.MessageType.watching.rawValue, changed: DaemonWire.MessageType.changed.rawValue,
            parse: { frame throws(ParseError) in
                var r = FrameReader(frame)
                let flags = try r.u8()
                let count = Int(try r.u32())
                var names: [String] = []
                for _ in 0..<count {
                    guard let n = try r.name() else { throw ParseError(reason: "invalid name") }
                    names.append(n)
                }
                try r.expectEnd()
                return (names, flags & DaemonWire.changedFlagIncomplete == 0)
            }), handler: handler)
    }

    static func resolve(on c: SocketConnection, project: String, document: [UInt8], format: InjectionFormat,
                        output: ResolveOutput) throws -> SecureBytes {
        let frame = try c.roundTrip(DaemonWire.resolveRequest(project: project, format: format, output: output,
                                                              document: document),
                                    expect: [DaemonWire.MessageType.resolved.rawValue, DaemonWire.MessageType.problems.rawValue])
        if frame.type == DaemonWire.MessageType.problems.rawValue {
            do {
                throw ResolveFailure(problems: try DaemonWire.parseProblems(frame))
            } catch let e as ParseError {
                throw ProtocolError(.malformedReply, "\(c.socketPath): PROBLEMS reply: \(e.reason)")
            }
        }
        var r = FrameReader(frame)
        do throws(ParseError) {
            let v = try r.value()
            try r.expectEnd()
            return v
        } catch {
            throw ProtocolError(.malformedReply, "\(c.socketPath): RESOLVED reply: \(error.reason)")
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
    private let connection: SocketConnection
    private var finished = false

    public init(socketPath: String, project: String, minimumLength: Int = 4, mask: String = "[REDACTED]",
                timeout: Double = 30) throws {
        try checkProject(project)
        self.socketPath = socketPath
        self.project = project
        let c = try SocketConnection(socketPath: socketPath, service: .daemon, timeout: timeout)
        let frame = try c.roundTrip(DaemonWire.redactRequest(project: project, minimumLength: minimumLength, mask: mask),
                                    expect: [DaemonWire.MessageType.redacting.rawValue])
        var r = FrameReader(frame)
        var skipped: [(name: String, reason: String)] = []
        do throws(ParseError) {
            let n = Int(try r.u32())
            for _ in 0..<n { skipped.append((try r.text(), try r.text())) }
            try r.expectEnd()
        } catch {
            throw ProtocolError(.malformedReply, "\(socketPath): REDACTING reply: \(error.reason)")
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
            if n > 0 { frame.bytes(UnsafeRawBufferPointer(rebasing: bytes[off..<(off + n)])) }
            let reply = try connection.roundTrip(frame.finish(), expect: [DaemonWire.MessageType.redacted.rawValue])
            try reply.storage.withUnsafeBytes { try out.append(UnsafeRawBufferPointer(rebasing: $0[Wire.headerSize...])) }
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
                                             expect: [DaemonWire.MessageType.ended.rawValue])
        return reply.storage.withUnsafeBytes { SecureBytes(copying: UnsafeRawBufferPointer(rebasing: $0[Wire.headerSize...])) }
    }
}
