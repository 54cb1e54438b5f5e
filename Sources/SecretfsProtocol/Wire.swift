import SecretfsNames
import SecretfsStore
import SecureMemory

/// The privileged socket's wire format (docs/protocol.md is the specification).
///
///     frame   = length:u32be  version:u8  type:u8  body
///     length  = number of bytes after the length field (version + type + body)
///
/// Integers are big-endian. A `name` is `u16 length` + UTF-8 bytes of a valid
/// secret name; a `value` is `u32 length` + raw bytes; a `text` is `u16 length`
/// + UTF-8 (error messages only, never a value).
///
/// Every frame is built in, and read into, a `SecureBytes` buffer: a reply to
/// GET holds values, and treating every frame the same way means no code path
/// can forget to.
public enum Wire {
    public static let version: UInt8 = 1

    /// Bytes of the length prefix.
    public static let lengthSize = 4
    /// version + type.
    public static let headerSize = 2

    /// Largest frame a server accepts from a client (requests carry names only).
    public static let maxRequestFrame = 1 << 20
    /// Largest frame a client accepts from a server: one 16 MiB value (the
    /// mount's largest `max_size`) plus room for names and framing.
    public static let maxResponseFrame = (16 << 20) + (1 << 20)
    /// Largest reply frame a client accepts from the resolver daemon (a
    /// resolved document).
    public static let maxDaemonReplyFrame = 64 << 20
    /// Most names in one GET request.
    public static let maxNamesPerGet = 4096
    /// Longest error message sent (bytes of UTF-8).
    public static let maxErrorMessage = 1024

    /// Message types. Requests have the high bit clear, replies set.
    public enum MessageType: UInt8, Sendable {
        case list = 0x01
        case get = 0x02
        case watch = 0x03

        case listReply = 0x81
        case getReply = 0x82
        case watching = 0x83
        case changed = 0x84
        case error = 0xFF
    }

    /// CHANGED flag: the names list is incomplete (too many changes queued
    /// for a slow watcher); drop everything cached for the project.
    public static let changedFlagIncomplete: UInt8 = 0x01
}

/// Numeric error codes carried by ERROR frames. Stable: documented in
/// docs/protocol.md, never renumbered.
public enum WireErrorCode: UInt16, Sendable, CustomStringConvertible {
    case malformed = 1           // body does not parse (framing intact)
    case unsupportedVersion = 2  // version byte is not one the server speaks
    case unknownType = 3         // type byte is not a request
    case frameTooLarge = 4       // length prefix over the limit (or zero)
    case invalidName = 5         // a GET name is not a valid secret name
    case tooManyNames = 6        // GET with more names than allowed
    case notAllowed = 7          // peer not in the socket's allow-list
    case busy = 8                // too many connections
    case timeout = 9             // idle or slow connection
    case internalError = 10      // the store failed (details in the mount's log)
    case replyTooLarge = 11      // the values asked for do not fit one frame
    case unexpected = 12         // a request not valid in this state (after WATCH)
    case storeUnavailable = 13   // the shared store's database cannot be reached now (the mount retries by itself)
    // 20 and up: the resolver daemon's own.
    case notMounted = 20         // no mount answers for the project (no socket, or a stale one)
    case mountRefused = 21       // the project's mount refused the daemon (its allow-list lacks the daemon's uid)
    case mountFailed = 22        // anything else that went wrong talking to the mount
    case invalidProject = 23     // the project name is not a valid name
    case invalidRequest = 24     // a field has a value the daemon does not know (format, output, mask)

    public var description: String {
        switch self {
        case .malformed: return "malformed"
        case .unsupportedVersion: return "unsupported-version"
        case .unknownType: return "unknown-type"
        case .frameTooLarge: return "frame-too-large"
        case .invalidName: return "invalid-name"
        case .tooManyNames: return "too-many-names"
        case .notAllowed: return "not-allowed"
        case .busy: return "busy"
        case .timeout: return "timeout"
        case .internalError: return "internal-error"
        case .replyTooLarge: return "reply-too-large"
        case .unexpected: return "unexpected"
        case .storeUnavailable: return "store-unavailable"
        case .notMounted: return "not-mounted"
        case .mountRefused: return "mount-refused"
        case .mountFailed: return "mount-failed"
        case .invalidProject: return "invalid-project"
        case .invalidRequest: return "invalid-request"
        }
    }
}

// MARK: Building frames

/// Writes one frame into locked memory: the fields are appended, and the
/// length prefix is filled in by `finish()` from what was written, so no
/// frame's length is ever worked out by hand. `bodySize` is the expected
/// body size (the buffer grows if it was too small; callers that check a
/// reply's size against a limit compute it for that check).
public final class FrameBuilder {
    public private(set) var buffer: SecureBytes

    convenience init(type: Wire.MessageType, bodySize: Int) {
        self.init(rawType: type.rawValue, bodySize: bodySize)
    }

    /// A frame of any type byte (the resolver daemon's protocol shares this framing).
    public init(rawType: UInt8, bodySize: Int) {
        buffer = SecureBytes(capacity: Wire.lengthSize + Wire.headerSize + max(bodySize, 0))
        header(rawType)
    }

    /// For replies whose size a peer's request decides: nil (answer with an
    /// ERROR) when the locked memory cannot be had, instead of trapping.
    public init?(allocatingReply rawType: UInt8, bodySize: Int) {
        guard let b = SecureBytes(allocating: Wire.lengthSize + Wire.headerSize + max(bodySize, 0)) else { return nil }
        buffer = b
        header(rawType)
    }

    private func header(_ rawType: UInt8) {
        u32(0)   // the length, filled in by finish()
        u8(Wire.version)
        u8(rawType)
    }

    /// Appends raw bytes (locked memory to locked memory), growing if needed.
    public func bytes(_ raw: UnsafeRawBufferPointer) {
        if !buffer.append(raw) {
            let grown = buffer.copy(capacity: max(buffer.capacity * 2, buffer.count + raw.count))
            buffer = grown   // the old buffer is wiped by sodium_free
            buffer.append(raw)
        }
    }

    public func u8(_ v: UInt8) {
        withUnsafeBytes(of: v) { bytes($0) }
    }
    public func u16(_ v: UInt16) {
        withUnsafeBytes(of: v.bigEndian) { bytes($0) }
    }
    public func u32(_ v: UInt32) {
        withUnsafeBytes(of: v.bigEndian) { bytes($0) }
    }
    public func u64(_ v: UInt64) {
        withUnsafeBytes(of: v.bigEndian) { bytes($0) }
    }
    public func i64(_ v: Int64) { u64(UInt64(bitPattern: v)) }

    /// u16 length + UTF-8 (names and messages; never values). Text longer
    /// than a u16 can say is clipped at a character boundary.
    public func text(_ s: String) {
        var s = s.utf8.count > Int(UInt16.max) ? Wire.clip(s, Int(UInt16.max)) : s
        s.withUTF8 { raw in
            u16(UInt16(raw.count))
            bytes(UnsafeRawBufferPointer(raw))
        }
    }

    /// u32 length + the bytes of a value, copied from locked memory to locked memory.
    public func value(_ v: SecureBytes) {
        u32(UInt32(v.count))
        v.withUnsafeBytes { bytes($0) }
    }

    /// u32 length + room for a value of `count` bytes, returned as a slice of
    /// the frame to be filled in place (the mount decrypts values straight
    /// into its reply). Nil when the frame's buffer has no room for it: the
    /// buffer must never grow while a slice of it is out, so the caller sizes
    /// the frame exactly. The slice wipes its range when it goes: keep it
    /// until the frame is sent.
    public func valueSpace(_ count: Int) -> SecureBytes? {
        guard count >= 0, count <= UInt32.max, buffer.capacity - buffer.count >= 4 + count else { return nil }
        u32(UInt32(count))
        let offset = buffer.count
        buffer.setCount(offset + count)   // zeros, until the value is opened there
        return SecureBytes(slicing: buffer, offset: offset, count: count)
    }

    /// The frame, its length prefix filled in.
    public func finish() -> SecureBytes {
        let length = UInt32(buffer.count - Wire.lengthSize).bigEndian
        buffer.withUnsafeMutableBytes { raw in
            withUnsafeBytes(of: length) { raw.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: 4) }
        }
        return buffer
    }
}

extension Wire {
    public static func textSize(_ s: String) -> Int { 2 + s.utf8.count }

    /// Text from a peer made safe to print: control characters (a hostile
    /// server could send terminal escapes) become `\u{..}` escapes.
    public static func printable(_ s: String) -> String {
        var out = ""
        for u in s.unicodeScalars {
            if u.value < 0x20 || (0x7F...0x9F).contains(u.value) {
                out += "\\u{" + String(u.value, radix: 16) + "}"
            } else {
                out.unicodeScalars.append(u)
            }
        }
        return out
    }

    /// An error message cut to the limit at a character boundary.
    public static func clippedMessage(_ s: String) -> String { clip(s, maxErrorMessage) }

    /// A text field cut to `limit` bytes at a character boundary.
    package static func clip(_ s: String, _ limit: Int) -> String {
        if s.utf8.count <= limit { return s }
        var out = ""
        for ch in s {
            if out.utf8.count + String(ch).utf8.count > limit { break }
            out.append(ch)
        }
        return out
    }

    static func errorFrame(_ code: WireErrorCode, _ message: String) -> SecureBytes {
        errorFrame(code: code.rawValue, message)
    }

    /// An ERROR frame (type 0xFF, `u16 code, text message`, the message
    /// clipped): the resolver daemon's ERROR has the same layout, with its
    /// own codes.
    package static func errorFrame(code: UInt16, _ message: String) -> SecureBytes {
        let m = clippedMessage(message)
        let b = FrameBuilder(type: .error, bodySize: 2 + textSize(m))
        b.u16(code)
        b.text(m)
        return b.finish()
    }

    static func emptyRequest(_ type: MessageType) -> SecureBytes {
        FrameBuilder(type: type, bodySize: 0).finish()
    }

    static func getRequest(_ names: [String]) -> SecureBytes {
        let size = 2 + names.reduce(0) { $0 + textSize($1) }
        let b = FrameBuilder(type: .get, bodySize: size)
        b.u16(UInt16(names.count))
        for n in names { b.text(n) }
        return b.finish()
    }
}

// MARK: Parsing frames

/// A received frame: version, type and the body, still in locked memory.
public struct Frame {
    public let version: UInt8
    public let type: UInt8
    /// version + type + body (the bytes after the length prefix).
    public let storage: SecureBytes

    public var bodyCount: Int { storage.count - Wire.headerSize }
}

public struct ParseError: Error {
    public var reason: String
    public init(reason: String) { self.reason = reason }
}

/// Reads fields from a frame body, bounds-checked at every step.
public struct FrameReader {
    public let frame: Frame
    public private(set) var offset = Wire.headerSize

    public init(_ frame: Frame) { self.frame = frame }

    public var remaining: Int { frame.storage.count - offset }
    public var atEnd: Bool { remaining == 0 }

    private mutating func take<T: FixedWidthInteger>(_: T.Type) throws(ParseError) -> T {
        let n = MemoryLayout<T>.size
        guard remaining >= n else { throw ParseError(reason: "truncated field at byte \(offset)") }
        let o = offset
        let v = frame.storage.withUnsafeBytes { raw -> T in
            var x: T = 0
            for i in 0..<n { x = (x << 8) | T(raw[o + i]) }
            return x
        }
        offset += n
        return v
    }

    public mutating func u8() throws(ParseError) -> UInt8 { try take(UInt8.self) }
    public mutating func u16() throws(ParseError) -> UInt16 { try take(UInt16.self) }
    public mutating func u32() throws(ParseError) -> UInt32 { try take(UInt32.self) }
    public mutating func u64() throws(ParseError) -> UInt64 { try take(UInt64.self) }
    public mutating func i64() throws(ParseError) -> Int64 { Int64(bitPattern: try take(UInt64.self)) }

    /// A secret name: u16 length + bytes that must be a valid name.
    /// Returns nil (having consumed the field) when the bytes are not a valid name.
    public mutating func name() throws(ParseError) -> String? {
        let n = Int(try u16())
        guard remaining >= n else { throw ParseError(reason: "truncated name at byte \(offset)") }
        let o = offset
        offset += n
        return frame.storage.withUnsafeBytes { raw -> String? in
            let slice = UnsafeRawBufferPointer(rebasing: raw[o..<(o + n)])
            guard Names.isValid(utf8: slice) else { return nil }
            return String(decoding: slice, as: UTF8.self)
        }
    }

    /// `count` names as GET and VALUES carry them: the distinct valid ones in
    /// the order sent, and the position (1-based) of the first invalid one.
    /// Every field is read even past an invalid name, so a frame that is also
    /// cut short is reported as malformed rather than as an invalid name.
    public mutating func distinctNames(_ count: Int) throws(ParseError) -> (names: [String], firstInvalid: Int?) {
        var names: [String] = []
        var seen = Set<String>()
        // Sized once for the names the frame can hold (each takes at least
        // three bytes), not rehashed as they come.
        let room = min(count, remaining / 3)
        names.reserveCapacity(room)
        seen.reserveCapacity(room)
        var invalid: Int?
        for i in 0..<count {
            guard let n = try name() else {
                if invalid == nil { invalid = i + 1 }
                continue
            }
            if seen.insert(n).inserted { names.append(n) }
        }
        return (names, invalid)
    }

    /// Free text (error messages), decoded leniently.
    public mutating func text() throws(ParseError) -> String {
        let n = Int(try u16())
        guard remaining >= n else { throw ParseError(reason: "truncated text at byte \(offset)") }
        let o = offset
        offset += n
        return frame.storage.withUnsafeBytes { raw in
            String(decoding: UnsafeRawBufferPointer(rebasing: raw[o..<(o + n)]), as: UTF8.self)
        }
    }

    /// A value: u32 length + bytes, a slice of the frame's own locked
    /// buffer (no copy; the frame lives as long as any of its values).
    public mutating func value() throws(ParseError) -> SecureBytes {
        let n = Int(try u32())
        guard remaining >= n else { throw ParseError(reason: "truncated value at byte \(offset)") }
        let o = offset
        offset += n
        return SecureBytes(slicing: frame.storage, offset: o, count: n)
    }

    public func expectEnd() throws(ParseError) {
        guard atEnd else { throw ParseError(reason: "\(remaining) unexpected bytes after the last field") }
    }
}
