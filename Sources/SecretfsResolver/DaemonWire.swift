import Glibc
import SecretfsInject
import SecretfsNames
import SecretfsProtocol
import SecureMemory

/// The resolver daemon's wire format (docs/protocol.md, "Resolver daemon
/// protocol"). It shares the privileged socket's framing (`Wire`,
/// `FrameBuilder`, `FrameReader`, `SocketIO`):
///
///     frame = length:u32be  version:u8 (1)  type:u8  body
///
/// with its own message types, so that a client pointed at the wrong socket
/// gets `unknown-type` instead of a misread reply.
public enum DaemonWire {
    public static let version: UInt8 = Wire.version

    public enum MessageType: UInt8, Sendable {
        // Requests (high bit clear).
        case resolve = 0x11
        case values = 0x12
        case names = 0x13
        case watch = 0x14
        case redact = 0x15
        case data = 0x16
        case end = 0x17

        // Replies (high bit set).
        case resolved = 0x91
        case problems = 0x92
        case valuesReply = 0x93
        case namesReply = 0x94
        case watching = 0x95
        case changed = 0x96
        case redacting = 0x97
        case redacted = 0x98
        case ended = 0x99
        case error = 0xFF
    }

    /// Largest request frame the daemon accepts (a document, or a DATA chunk).
    public static let maxRequestFrame = 16 << 20
    /// Largest reply frame a client accepts.
    public static let maxReplyFrame = Wire.maxDaemonReplyFrame
    /// Largest DATA chunk a REDACT client should send (the daemon accepts up to `maxRequestFrame`).
    public static let dataChunk = 64 << 10
    /// Longest REDACT mask (it bounds a chunk's output: 64 KiB of one-byte
    /// matches give at most 64 KiB x 64 bytes).
    public static let maxMask = 64
    /// Longest problem context or message carried (bytes of UTF-8).
    public static let maxProblemText = 8192

    /// CHANGED flag: the names list is not the whole story (the mount went
    /// away, came back, or dropped names): treat every value as changed.
    public static let changedFlagIncomplete: UInt8 = 0x01

    static func formatCode(_ f: InjectionFormat) -> UInt8 {
        switch f {
        case .flow: return 1
        case .config: return 2
        case .expr: return 3
        }
    }

    static func format(_ code: UInt8) -> InjectionFormat? {
        switch code {
        case 1: return .flow
        case 2: return .config
        case 3: return .expr
        default: return nil
        }
    }

    static func outputCode(_ o: ResolveOutput) -> UInt8 { o == .document ? 1 : 2 }
    static func output(_ code: UInt8) -> ResolveOutput? {
        switch code {
        case 1: return .document
        case 2: return .bindings
        default: return nil
        }
    }

    /// A text field cut to `limit` bytes at a character boundary.
    static func clip(_ s: String, _ limit: Int) -> String { Wire.clip(s, limit) }

    // MARK: Building

    /// An ERROR frame. The daemon's codes are `WireErrorCode`s: 1–12 mean
    /// what they mean on the mount's socket, 20 and up are the daemon's own.
    static func errorFrame(_ code: WireErrorCode, _ message: String) -> SecureBytes {
        Wire.errorFrame(code: code.rawValue, message)
    }

    static func projectRequest(_ type: MessageType, project: String) -> SecureBytes {
        let b = FrameBuilder(rawType: type.rawValue, bodySize: Wire.textSize(project))
        b.text(project)
        return b.finish()
    }

    static func resolveRequest(project: String, format: InjectionFormat, output: ResolveOutput,
                               document: [UInt8]) -> SecureBytes {
        let b = FrameBuilder(rawType: MessageType.resolve.rawValue,
                             bodySize: Wire.textSize(project) + 1 + 1 + 4 + document.count)
        b.text(project)
        b.u8(formatCode(format))
        b.u8(outputCode(output))
        b.u32(UInt32(document.count))
        document.withUnsafeBytes { b.bytes($0) }
        return b.finish()
    }

    static func valuesRequest(project: String, names: [String]) -> SecureBytes {
        let b = FrameBuilder(rawType: MessageType.values.rawValue,
                             bodySize: Wire.textSize(project) + 2 + names.reduce(0) { $0 + Wire.textSize($1) })
        b.text(project)
        b.u16(UInt16(names.count))
        for n in names { b.text(n) }
        return b.finish()
    }

    static func redactRequest(project: String, minimumLength: Int, mask: String) -> SecureBytes {
        let b = FrameBuilder(rawType: MessageType.redact.rawValue,
                             bodySize: Wire.textSize(project) + 2 + Wire.textSize(mask))
        b.text(project)
        b.u16(UInt16(clamping: minimumLength))
        b.text(mask)
        return b.finish()
    }

    static func problemsSize(_ problems: [InjectionProblem]) -> Int {
        var size = 4
        for p in problems {
            size += Wire.textSize(p.kind.rawValue) + Wire.textSize(clip(p.context, maxProblemText)) + 4 + 4
                + Wire.textSize(clip(p.message, maxProblemText)) + 1 + (p.secretName.map(Wire.textSize) ?? 0)
        }
        return size
    }

    /// PROBLEMS: every problem with its location; never a value (problems carry none).
    static func problemsFrame(_ problems: [InjectionProblem]) -> SecureBytes {
        let b = FrameBuilder(rawType: MessageType.problems.rawValue, bodySize: problemsSize(problems))
        b.u32(UInt32(problems.count))
        for p in problems {
            b.text(p.kind.rawValue)
            b.text(clip(p.context, maxProblemText))
            b.u32(UInt32(clamping: p.line))
            b.u32(UInt32(clamping: p.column))
            b.text(clip(p.message, maxProblemText))
            if let n = p.secretName {
                b.u8(1)
                b.text(n)
            } else {
                b.u8(0)
            }
        }
        return b.finish()
    }

    public static func parseProblems(_ frame: Frame) throws(ParseError) -> [InjectionProblem] {
        var r = FrameReader(frame)
        let count = Int(try r.u32())
        var out: [InjectionProblem] = []
        out.reserveCapacity(min(count, 4096))
        for _ in 0..<count {
            let kindText = try r.text()
            guard let kind = InjectionProblem.Kind(rawValue: kindText) else {
                throw ParseError(reason: "unknown problem kind '\(kindText)'")
            }
            let context = try r.text()
            let line = Int(try r.u32())
            let column = Int(try r.u32())
            let message = try r.text()
            let hasName = try r.u8()
            let name: String? = hasName == 0 ? nil : try r.text()
            out.append(InjectionProblem(kind: kind, context: context, line: line, column: column,
                                        message: message, secretName: name))
        }
        try r.expectEnd()
        return out
    }
}

// MARK: Sending without an extra copy

enum DaemonIO {
    /// Sends one frame: the 6-byte header, then `body` straight from the
    /// caller's (locked) buffer, so a large reply is not copied into a second
    /// buffer first. False if the peer went away or the send timed out.
    static func sendFrame(_ fd: Int32, type: DaemonWire.MessageType, prefix: [UInt8] = [],
                          body: UnsafeRawBufferPointer) -> Bool {
        let length = UInt32(Wire.headerSize + prefix.count + body.count)
        var header: [UInt8] = [UInt8(length >> 24), UInt8((length >> 16) & 0xff), UInt8((length >> 8) & 0xff),
                               UInt8(length & 0xff), DaemonWire.version, type.rawValue]
        header += prefix   // lengths and counts only, never secret bytes
        let more = body.count > 0 ? Int32(MSG_MORE) : 0
        guard header.withUnsafeBytes({ sendRaw(fd, $0, flags: more) }) else { return false }
        return body.count == 0 || sendRaw(fd, body, flags: 0)
    }

    static func sendRaw(_ fd: Int32, _ raw: UnsafeRawBufferPointer, flags: Int32) -> Bool {
        var off = 0
        while off < raw.count {
            let n = send(fd, raw.baseAddress! + off, raw.count - off, Int32(MSG_NOSIGNAL) | flags)
            if n > 0 { off += n; continue }
            if n < 0 && errno == EINTR { continue }
            return false
        }
        return true
    }

    static func be32(_ v: Int) -> [UInt8] {
        let u = UInt32(v)
        return [UInt8(u >> 24), UInt8((u >> 16) & 0xff), UInt8((u >> 8) & 0xff), UInt8(u & 0xff)]
    }
}

/// A request read from the resolver daemon's socket: what the daemon acts
/// on, parsed apart from the acting, so that every byte a client can send
/// goes through this one function (and its fuzz harness, Fuzz/Socket).
public enum DaemonRequest: Equatable, Sendable {
    case resolve(project: String, format: InjectionFormat, output: ResolveOutput, document: [UInt8])
    /// Distinct valid names, in the order asked.
    case values(project: String, names: [String])
    case names(project: String)
    case watch(project: String)
    case redact(project: String, minimumLength: Int, mask: String)
    /// A REDACT stream's chunk: the bytes after the header, in the frame's locked storage.
    case data
    case end

    /// Why a frame is not a request the daemon serves: the ERROR to send, and
    /// whether the connection ends after it.
    public struct Refusal: Error, Equatable, Sendable {
        public var code: WireErrorCode
        public var message: String
        public var closes: Bool
    }

    public static func parse(_ frame: Frame) throws(Refusal) -> DaemonRequest {
        guard frame.version == DaemonWire.version else {
            throw Refusal(code: .unsupportedVersion,
                          message: "protocol version \(frame.version) is not supported (this daemon speaks \(DaemonWire.version))",
                          closes: true)
        }
        guard let type = DaemonWire.MessageType(rawValue: frame.type) else {
            throw Refusal(code: .unknownType, message: "message type 0x\(String(frame.type, radix: 16)) is not a request", closes: false)
        }
        var r = FrameReader(frame)
        // Only for messages: `"\(type)"` goes through reflection, too slow
        // to pay on every request.
        func what() -> String { "\(type)".uppercased() }
        func field<T>(_ read: (inout FrameReader) throws(ParseError) -> T) throws(Refusal) -> T {
            do throws(ParseError) { return try read(&r) } catch {
                throw Refusal(code: .malformed, message: "\(what()): \(error.reason)", closes: type == .watch)
            }
        }
        func project() throws(Refusal) -> String {
            let name = try field { r throws(ParseError) in try r.text() }
            guard Names.isValid(name) else {
                throw Refusal(code: .invalidProject, message: "'\(Wire.printable(DaemonWire.clip(name, 64)))' is not a valid project name",
                              closes: type == .watch)
            }
            return name
        }
        func end() throws(Refusal) { try field { r throws(ParseError) in try r.expectEnd() } }
        switch type {
        case .resolve:
            let p = try project()
            let f = try field { r throws(ParseError) in try r.u8() }
            let o = try field { r throws(ParseError) in try r.u8() }
            let n = Int(try field { r throws(ParseError) in try r.u32() })
            guard r.remaining == n else {
                throw Refusal(code: .malformed, message: "RESOLVE: document length \(n) does not match the \(r.remaining) bytes sent", closes: false)
            }
            guard let format = DaemonWire.format(f) else {
                throw Refusal(code: .invalidRequest, message: "format \(f) is not 1 (flow), 2 (config) or 3 (expr)", closes: false)
            }
            guard let output = DaemonWire.output(o) else {
                throw Refusal(code: .invalidRequest, message: "output \(o) is not 1 (document) or 2 (bindings)", closes: false)
            }
            let start = r.offset
            // The document is not secret (it holds references, not values).
            let document = frame.storage.withUnsafeBytes { Array($0[start..<(start + n)]) }
            return .resolve(project: p, format: format, output: output, document: document)
        case .values:
            let p = try project()
            let count = Int(try field { r throws(ParseError) in try r.u16() })
            guard count <= Wire.maxNamesPerGet else {
                throw Refusal(code: .tooManyNames, message: "VALUES asks for \(count) names (limit \(Wire.maxNamesPerGet))", closes: false)
            }
            let (names, invalid) = try field { r throws(ParseError) in try r.distinctNames(count) }
            try end()
            if let invalid {
                throw Refusal(code: .invalidName, message: "name #\(invalid) is not a valid secret name", closes: false)
            }
            return .values(project: p, names: names)
        case .names:
            let p = try project()
            try end()
            return .names(project: p)
        case .watch:
            let p = try project()
            try end()
            return .watch(project: p)
        case .redact:
            let p = try project()
            let minimum = Int(try field { r throws(ParseError) in try r.u16() })
            let mask = try field { r throws(ParseError) in try r.text() }
            try end()
            guard minimum >= 1, !mask.isEmpty, mask.utf8.count <= DaemonWire.maxMask else {
                throw Refusal(code: .invalidRequest,
                              message: "REDACT needs a minimum length of at least 1 and a mask of 1...\(DaemonWire.maxMask) bytes",
                              closes: false)
            }
            return .redact(project: p, minimumLength: minimum, mask: mask)
        case .data: return .data
        case .end:
            try end()
            return .end
        default:
            throw Refusal(code: .unknownType, message: "message type 0x\(String(frame.type, radix: 16)) is not a request", closes: false)
        }
    }
}

/// One connection's reply buffer: locked memory kept from request to request
/// (a `sodium_malloc` per reply costs about ten address-space system calls,
/// which also serialise the daemon's connection threads on the mm lock; see
/// `FrameReceiver`). A reply is built in place after its frame header and
/// sent with one send; `wipe()` after every reply (a RESOLVED frame holds
/// values). A buffer grown past `retainedCapacity` for one large reply is
/// given back by `wipe()`, so an idle connection keeps at most that much
/// locked. With an `account`, the buffer's capacity is held in the daemon's
/// `MemoryBudget`, and a reply that would pass it is not built (nil, with
/// `account.lastTakeRefused` set).
final class ReplyBuffer {
    let retainedCapacity: Int
    let account: MemoryBudget.Account?
    private var buffer: SecureBytes?
    /// Bytes of the frame being built (`buffer[0..<used]`).
    private var used = 0
    /// Bytes handed out by `room` to be written (`buffer[0..<dirty]`), all
    /// wiped by `wipe()` whatever was written there.
    private var dirty = 0

    /// The smallest buffer (sodium_malloc rounds up to whole pages anyway).
    static let minimumCapacity = 4096 - 16

    init(retainedCapacity: Int = 64 << 10, account: MemoryBudget.Account? = nil) {
        self.retainedCapacity = retainedCapacity
        self.account = account
    }

    deinit {
        wipe()
        account?.give(buffer?.capacity ?? 0)
    }

    /// Replaces the buffer with a new one of `capacity` bytes, held in the
    /// budget; false (the old one kept) when the budget refuses, false (no
    /// buffer) when the memory cannot be locked.
    private func reallocate(_ capacity: Int) -> Bool {
        let old = buffer?.capacity ?? 0
        guard account?.resize(from: old, to: capacity) ?? true else { return false }
        buffer = nil   // sodium_free wipes
        guard let b = SecureBytes(allocating: capacity) else {
            account?.give(capacity)
            return false
        }
        buffer = b
        return true
    }

    /// Starts a frame of `type` whose body is an optional u32 `prefix` (a
    /// length or count, never secret) then `bodySize` bytes: writes the
    /// length, version, type and prefix, and returns the `bodySize` bytes to
    /// fill. nil (nothing changed) when the locked memory cannot be had.
    func frame(_ type: DaemonWire.MessageType, prefix: UInt32?, bodySize: Int) -> UnsafeMutableRawBufferPointer? {
        wipe()
        let head = Wire.lengthSize + Wire.headerSize + (prefix == nil ? 0 : 4)
        let total = head + bodySize
        if (buffer?.capacity ?? 0) < total {
            guard reallocate(max(total, Self.minimumCapacity)) else { return nil }
        }
        writeHeader(type, prefix: prefix, total: total)
        // Within the buffer's lifetime: `buffer` holds it until `wipe()`.
        return buffer!.withUnsafeMutableCapacity { UnsafeMutableRawBufferPointer(rebasing: $0[head..<total]) }
    }

    /// The buffer's room after a header of `headerBytes`, for a body written
    /// before its size is known (`InjectionScan.produce(_:maximum:values:room:orElse:)`);
    /// `finish` then writes the header. nil when no locked memory can be had.
    func room(headerBytes: Int) -> UnsafeMutableRawBufferPointer? {
        wipe()
        if buffer == nil {
            guard reallocate(Self.minimumCapacity) else { return nil }
        }
        let b = buffer!
        guard b.capacity > headerBytes else { return nil }
        dirty = b.capacity
        // Within the buffer's lifetime: `buffer` holds it until `wipe()`.
        return b.withUnsafeMutableCapacity { UnsafeMutableRawBufferPointer(rebasing: $0[headerBytes...]) }
    }

    /// Writes the header of a frame whose body (`bodySize` bytes) was
    /// written into `room(headerBytes:)`, where headerBytes is the length,
    /// version and type plus the prefix if any.
    func finish(_ type: DaemonWire.MessageType, prefix: UInt32?, bodySize: Int) {
        let head = Wire.lengthSize + Wire.headerSize + (prefix == nil ? 0 : 4)
        writeHeader(type, prefix: prefix, total: head + bodySize)
        // A body that fit was written up to its end and no further (the
        // one-pass writer writes each byte at the count it has reached), so
        // the frame is all there is to wipe, not the whole room.
        dirty = used
    }

    private func writeHeader(_ type: DaemonWire.MessageType, prefix: UInt32?, total: Int) {
        let length = UInt32(total - Wire.lengthSize)
        buffer!.withUnsafeMutableCapacity { raw in
            func be32(_ v: UInt32, at o: Int) {
                raw[o] = UInt8(v >> 24); raw[o + 1] = UInt8((v >> 16) & 0xff)
                raw[o + 2] = UInt8((v >> 8) & 0xff); raw[o + 3] = UInt8(v & 0xff)
            }
            be32(length, at: 0)
            raw[4] = DaemonWire.version
            raw[5] = type.rawValue
            if let prefix { be32(prefix, at: 6) }
        }
        used = total
    }

    /// Sends the frame built (after its body was filled); false if the peer
    /// went away or the send timed out. The caller wipes.
    func send(_ fd: Int32) -> Bool {
        guard let b = buffer, used > 0 else { return false }
        return b.withUnsafeMutableCapacity { raw in
            DaemonIO.sendRaw(fd, UnsafeRawBufferPointer(rebasing: raw[0..<used]), flags: 0)
        }
    }

    /// Wipes the frame built, and gives back a buffer grown past `retainedCapacity`.
    func wipe() {
        guard let b = buffer else { return }
        let written = max(used, dirty)
        if written > 0 { b.wipe(range: 0..<written) }
        used = 0
        dirty = 0
        if b.capacity > retainedCapacity {
            account?.give(b.capacity)
            buffer = nil   // sodium_free wipes
        }
    }
}
