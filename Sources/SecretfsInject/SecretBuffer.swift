import SecureMemory
/// The buffer type that carries secret values into the injector and the
/// rewritten output back out.
///
/// The resolver uses `SecureMemory.SecureBytes` (locked, wiped, page-guarded
/// `sodium_malloc` memory), which already has exactly this shape (the one-line
/// conformance is at the end of this file). The injector never copies a value,
/// or any text derived from one, into a Swift `String` or `Array`: the output
/// goes straight into locked memory (see "Output sinks" below).
public protocol SecretBuffer: AnyObject {
    /// A zero-filled buffer of `capacity` bytes with `count` bytes in use.
    init(capacity: Int, count: Int)
    /// Number of bytes in use.
    var count: Int { get }
    func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R
    /// Mutable access to the first `count` bytes.
    func withUnsafeMutableBytes<R>(_ body: (UnsafeMutableRawBufferPointer) throws -> R) rethrows -> R
}

extension SecretBuffer {
    /// Whether the bytes are valid UTF-8, decided without making a `String`.
    var isValidUTF8Value: Bool {
        withUnsafeBytes(SecretfsUTF8.isValid)
    }
}

// MARK: - Output sinks
//
// An output is written by the same code into one of three sinks. Into a
// `SpillingSink` over locked memory that may be big enough (the daemon's
// reply buffer, the one-shot resolve's estimate), counting as it goes; when
// it was not, or when there is no such memory (`rewrite`, `bindings`), into a
// `CountingSink` to learn its exact length (each value's literal measured
// once, then counted at each reference) and then into a `WritingSink` over a
// buffer of that size. Nothing in between holds the bytes.

protocol ByteSink {
    mutating func put(_ byte: UInt8)
    /// Bytes written as they are (a run of text that needs no escaping):
    /// one count or one copy instead of a call per byte.
    mutating func put(run: UnsafeRawBufferPointer)
}

struct CountingSink: ByteSink {
    var count = 0
    @inline(__always) mutating func put(_ byte: UInt8) { count += 1 }
    @inline(__always) mutating func put(run: UnsafeRawBufferPointer) { count += run.count }
    /// `n` more bytes, measured elsewhere (saturates at `Int.max`).
    mutating func add(_ n: Int) {
        let (sum, overflow) = count.addingReportingOverflow(n)
        count = overflow ? .max : sum
    }
}

struct WritingSink: ByteSink {
    let base: UnsafeMutableRawBufferPointer
    var offset = 0
    init(_ base: UnsafeMutableRawBufferPointer) { self.base = base }
    @inline(__always) mutating func put(_ byte: UInt8) {
        precondition(offset < base.count, "injector length computation was wrong")
        base[offset] = byte
        offset += 1
    }
    @inline(__always) mutating func put(run: UnsafeRawBufferPointer) {
        precondition(run.count <= base.count - offset, "injector length computation was wrong")
        if run.count > 0 { (base.baseAddress! + offset).copyMemory(from: run.baseAddress!, byteCount: run.count) }
        offset += run.count
    }
}

/// Writes into a buffer while it has room, counting: `count` is the
/// output's size when it fits (`spilled` false); past the room, bytes are
/// counted but not written.
struct SpillingSink: ByteSink {
    let base: UnsafeMutableRawBufferPointer
    var count = 0
    init(_ base: UnsafeMutableRawBufferPointer) { self.base = base }
    var spilled: Bool { count > base.count }
    @inline(__always) mutating func put(_ byte: UInt8) {
        if count < base.count { base[count] = byte }
        count += 1
    }
    @inline(__always) mutating func put(run: UnsafeRawBufferPointer) {
        let n = min(run.count, max(base.count - count, 0))
        if n > 0 { (base.baseAddress! + count).copyMemory(from: run.baseAddress!, byteCount: n) }
        count += run.count
    }
}

extension ByteSink {
    mutating func put(run: UnsafeRawBufferPointer) {
        for b in run { put(b) }
    }
    mutating func put(bytes: [UInt8]) {
        bytes.withUnsafeBytes { put(run: $0) }
    }
    mutating func put(bytes: ArraySlice<UInt8>) {
        bytes.withUnsafeBytes { put(run: $0) }
    }
    mutating func put(ascii: StaticString) {
        ascii.withUTF8Buffer { for b in $0 { put(b) } }
    }
    /// UTF-8 encoding of one scalar.
    mutating func putUTF8(_ s: UInt32) {
        switch s {
        case 0..<0x80:
            put(UInt8(s))
        case 0x80..<0x800:
            put(UInt8(0xC0 | (s >> 6)))
            put(UInt8(0x80 | (s & 0x3F)))
        case 0x800..<0x10000:
            put(UInt8(0xE0 | (s >> 12)))
            put(UInt8(0x80 | ((s >> 6) & 0x3F)))
            put(UInt8(0x80 | (s & 0x3F)))
        default:
            put(UInt8(0xF0 | (s >> 18)))
            put(UInt8(0x80 | ((s >> 12) & 0x3F)))
            put(UInt8(0x80 | ((s >> 6) & 0x3F)))
            put(UInt8(0x80 | (s & 0x3F)))
        }
    }
}

/// Values from the store arrive in locked memory; rewritten output is
/// assembled there too.
extension SecureBytes: SecretBuffer {}
