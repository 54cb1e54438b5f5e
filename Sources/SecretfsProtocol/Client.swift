import Glibc
import SecretfsNames
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

    public init(projectVersion: Int64, sequence: UInt64, values: [String: SecureBytes], missing: [String]) {
        self.projectVersion = projectVersion
        self.sequence = sequence
        self.values = values
        self.missing = missing
    }

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

/// A client of a project's privileged socket: LIST and GET on one
/// connection, made again whenever the mount has dropped it (idle timeout,
/// remount). Calls are serialised; share it between threads if you like.
public final class PrivilegedClient: @unchecked Sendable {
    // @unchecked: the connection lives in a `SocketClient` (its own lock).
    public let socketPath: String
    private let client: SocketClient

    /// Connects. Fails with `.notListening`, `.connectionRefused`,
    /// `.permissionDenied`, `.untrustedServer` (with hints) when there is no
    /// usable socket. A peer the server does not allow learns it from the
    /// first request's error.
    public init(socketPath: String, timeout: Double = 30) throws(ProtocolError) {
        self.socketPath = socketPath
        client = try SocketClient(socketPath: socketPath, service: .mount, timeout: timeout)
    }

    public func close() { client.close() }

    // MARK: Requests

    /// Names, versions and times of every secret of the project.
    public func list() throws(ProtocolError) -> SecretListing {
        let frame = try client.request(expect: [Wire.MessageType.listReply.rawValue]) { Wire.emptyRequest(.list) }
        do throws(ParseError) {
            return try Self.parseListing(frame)
        } catch {
            throw malformed("LIST reply: \(error.reason)")
        }
    }

    /// A LIST_REPLY's fields (names checked as names).
    public static func parseListing(_ frame: Frame) throws(ParseError) -> SecretListing {
        var r = FrameReader(frame)
        let version = try r.i64()
        let sequence = try r.u64()
        let project = try r.text()
        let count = Int(try r.u32())
        var entries: [SecretEntry] = []
        entries.reserveCapacity(min(count, r.remaining / 30))
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
    }

    /// The values of `names` (only those), and the names that do not exist.
    /// Large requests are split into several GETs (each audited by the mount).
    public func values(_ names: [String]) throws(ProtocolError) -> SecretValues {
        var unique: [String] = []
        var seen = Set<String>(minimumCapacity: names.count)
        unique.reserveCapacity(names.count)
        for n in names where seen.insert(n).inserted { unique.append(n) }
        var result = SecretValues(projectVersion: Int64.max, sequence: UInt64.max, values: [:], missing: [])
        result.values.reserveCapacity(unique.count)
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
            throw ProtocolError(.server(.invalidName), "'\(Wire.printable(Wire.clip(n, 64)))' is not a valid secret name")
        }
        let frame: Frame
        do {
            frame = try client.request(expect: [Wire.MessageType.getReply.rawValue]) { Wire.getRequest(names) }
        } catch let e where e.serverCode == .replyTooLarge && names.count > 1 {
            let half = names.count / 2
            try getBatch(Array(names[..<half]), into: &result)
            try getBatch(Array(names[half...]), into: &result)
            return
        }
        do throws(ParseError) {
            try Self.parseValues(frame, asked: Set(names), into: &result)
        } catch {
            result.wipe()
            throw malformed("GET reply: \(error.reason)")
        }
    }

    /// A GET_REPLY's values and missing names, added to `result`; only
    /// names in `asked` are accepted.
    public static func parseValues(_ frame: Frame, asked: Set<String>, into result: inout SecretValues) throws(ParseError) {
        var r = FrameReader(frame)
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
    }

    private func malformed(_ what: String) -> ProtocolError {
        client.close()
        return ProtocolError(.malformedReply, "\(socketPath): \(what)", hint: "the client and the mount may be different secretfs versions")
    }

    // MARK: Watching

    /// A `ChangeFeed` on the mount's socket: every change of the project,
    /// and `.lost`/`.restored` around every reconnection.
    public static func changeFeed(socketPath: String, timeout: Double = 30,
                                  handler: @escaping @Sendable (ChangeFeed.Event) -> Bool) throws(ProtocolError) -> ChangeFeed {
        try ChangeFeed.start(subscription(socketPath: socketPath, timeout: timeout), handler: handler)
    }

    /// How to watch a mount's socket (WATCH, WATCHING, CHANGED).
    public static func subscription(socketPath: String, timeout: Double = 30) -> ChangeFeed.Subscription {
        ChangeFeed.Subscription(
            socketPath: socketPath, service: .mount, timeout: timeout,
            request: { Wire.emptyRequest(.watch) },
            acknowledgement: Wire.MessageType.watching.rawValue, changed: Wire.MessageType.changed.rawValue,
            parse: { frame throws(ParseError) in
                let e = try changeEvent(frame)
                return (e.names, e.complete)
            })
    }

    /// A CHANGED frame's fields.
    public static func changeEvent(_ frame: Frame) throws(ParseError) -> ChangeEvent {
        var r = FrameReader(frame)
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
    }
}
