import CSodium

/// Initialises libsodium once per process. Every entry point that touches
/// libsodium goes through here first; `sodium_init` is idempotent but must
/// have run before `sodium_malloc`.
public enum Sodium {
    private static let initialised: Bool = sodium_init() >= 0
    public static func ensureInitialised() {
        precondition(initialised, "libsodium failed to initialise")
    }
}

/// A byte buffer for key material and secret values.
///
/// The memory comes from `sodium_malloc`: it is page-guarded, `mlock`ed (never
/// swapped out), excluded from core dumps (`MADV_DONTDUMP`), and `sodium_free`
/// wipes it before releasing it. Nothing here ever copies the bytes into an
/// ordinary Swift `Array` or `String`; callers that need one take responsibility
/// for it (and should not).
///
/// The buffer has a fixed capacity chosen at creation; `count` may grow up to it.
public final class SecureBytes: @unchecked Sendable {
    // @unchecked: the buffer is owned by this instance; callers that share an
    // instance across threads serialise access themselves (the store and the
    // filesystem hold it under their locks).
    public let capacity: Int
    public private(set) var count: Int
    private let base: UnsafeMutableRawPointer
    /// The buffer this one is a range of (`init(slicing:)`), kept alive by
    /// it; nil for a buffer of its own, which frees (and so wipes) its pages.
    private let owner: SecureBytes?

    /// A zero-filled buffer of `capacity` bytes, `count` bytes in use.
    public init(capacity: Int, count: Int = 0) {
        Sodium.ensureInitialised()
        precondition(count <= capacity && capacity >= 0)
        // sodium_malloc(0) is allowed but returns a pointer we may not touch;
        // always reserve one byte so `base` is valid.
        guard let p = sodium_malloc(max(capacity, 1)) else {
            fatalError("sodium_malloc failed: out of locked memory (see ulimit -l)")
        }
        sodium_memzero(p, max(capacity, 1))
        self.base = p
        self.capacity = capacity
        self.count = count
        self.owner = nil
    }

    /// `count` bytes of `parent` from `offset`, in place: no allocation, no
    /// copy. Each `sodium_malloc` maps guard pages and locks its own (about
    /// ten system calls, and a page of locked memory however small the
    /// value), so many values read or decrypted together share one buffer
    /// and are handed out as slices of it. A slice keeps its parent alive;
    /// the parent's pages are freed and wiped when the last slice goes.
    /// `wipe()` on a slice zeroes its own range.
    public init(slicing parent: SecureBytes, offset: Int, count: Int) {
        precondition(offset >= 0 && count >= 0 && offset + count <= parent.capacity, "slice out of range")
        self.base = parent.base + offset
        self.capacity = count
        self.count = count
        self.owner = parent.owner ?? parent
    }

    /// A zero-filled buffer, or nil when `sodium_malloc` fails (the address
    /// space or memory is exhausted). Servers allocate what a peer's input
    /// sizes through this, and answer nil with an error instead of trapping.
    public init?(allocating capacity: Int, count: Int = 0) {
        Sodium.ensureInitialised()
        guard count >= 0, count <= capacity, capacity >= 0,
              let p = sodium_malloc(max(capacity, 1)) else { return nil }
        sodium_memzero(p, max(capacity, 1))
        self.base = p
        self.capacity = capacity
        self.count = count
        self.owner = nil
    }

    /// Copies `bytes` into a new buffer of exactly that size. The caller should
    /// wipe its own copy.
    public convenience init(copying bytes: UnsafeRawBufferPointer) {
        self.init(capacity: bytes.count, count: bytes.count)
        if let src = bytes.baseAddress, bytes.count > 0 {
            base.copyMemory(from: src, byteCount: bytes.count)
        }
    }

    /// `count` random bytes from the OS CSPRNG (`randombytes_buf`).
    public static func random(count: Int) -> SecureBytes {
        let b = SecureBytes(capacity: count, count: count)
        randombytes_buf(b.base, count)
        return b
    }

    deinit {
        // A buffer of its own is wiped by sodium_free; a slice wipes its
        // range now, not when its last sibling goes.
        if owner == nil { sodium_free(base) } else if capacity > 0 { sodium_memzero(base, capacity) }
    }

    public var isEmpty: Bool { count == 0 }

    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeRawBufferPointer(start: base, count: count))
    }

    /// Mutable access to the first `count` bytes.
    public func withUnsafeMutableBytes<R>(_ body: (UnsafeMutableRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeMutableRawBufferPointer(start: base, count: count))
    }

    /// Mutable access to the whole capacity (for APIs that write then report a length).
    public func withUnsafeMutableCapacity<R>(_ body: (UnsafeMutableRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeMutableRawBufferPointer(start: base, count: capacity))
    }

    /// Sets the number of bytes in use; bytes past the new count are wiped.
    public func setCount(_ newCount: Int) {
        precondition(newCount >= 0 && newCount <= capacity)
        if newCount < count {
            sodium_memzero(base + newCount, count - newCount)
        }
        count = newCount
    }

    /// Appends bytes; returns false (and changes nothing) if they do not fit.
    @discardableResult
    public func append(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard bytes.count <= capacity - count else { return false }
        if let src = bytes.baseAddress, bytes.count > 0 {
            (base + count).copyMemory(from: src, byteCount: bytes.count)
        }
        count += bytes.count
        return true
    }

    /// Writes `bytes` at `offset`, zero-filling any gap and growing `count`;
    /// returns false (and changes nothing) if the result would exceed capacity.
    @discardableResult
    public func write(_ bytes: UnsafeRawBufferPointer, at offset: Int) -> Bool {
        guard offset >= 0, offset <= capacity, bytes.count <= capacity - offset else { return false }
        if offset > count { sodium_memzero(base + count, offset - count) }
        if let src = bytes.baseAddress, bytes.count > 0 {
            (base + offset).copyMemory(from: src, byteCount: bytes.count)
        }
        count = max(count, offset + bytes.count)
        return true
    }

    /// Wipes the contents now and sets `count` to 0 (the memory stays allocated).
    public func wipe() {
        // Exactly its own bytes: an empty slice at the end of its parent
        // points at libsodium's guard page, and must not touch it.
        if capacity > 0 { sodium_memzero(base, capacity) }
        count = 0
    }

    /// Wipes the bytes in `range` of the capacity, whatever `count` is (for
    /// buffers that manage their own regions, as a connection's reused
    /// frame buffer does); `count` is unchanged.
    public func wipe(range: Range<Int>) {
        precondition(range.lowerBound >= 0 && range.upperBound <= capacity, "wipe out of range")
        if !range.isEmpty { sodium_memzero(base + range.lowerBound, range.count) }
    }

    /// A new buffer holding a copy of these bytes, with at least `capacity` room.
    public func copy(capacity newCapacity: Int? = nil) -> SecureBytes {
        let cap = max(newCapacity ?? count, count)
        let out = SecureBytes(capacity: cap, count: count)
        if count > 0 { out.base.copyMemory(from: base, byteCount: count) }
        return out
    }

    /// Like `copy(capacity:)`, or nil when the new buffer cannot be allocated.
    public func copyIfPossible(capacity newCapacity: Int? = nil) -> SecureBytes? {
        let cap = max(newCapacity ?? count, count)
        guard let out = SecureBytes(allocating: cap, count: count) else { return nil }
        if count > 0 { out.base.copyMemory(from: base, byteCount: count) }
        return out
    }

    /// Constant-time comparison (`sodium_memcmp`).
    public func constantTimeEquals(_ other: SecureBytes) -> Bool {
        guard count == other.count else { return false }
        if count == 0 { return true }
        return sodium_memcmp(base, other.base, count) == 0
    }

    /// Whether the bytes are valid UTF-8 (without making a String of them).
    public var isValidUTF8: Bool {
        withUnsafeBytes(SecretfsUTF8.isValid)
    }
}

/// UTF-8 validation over raw bytes, without a String: values must not become
/// Swift strings just to be checked.
public enum SecretfsUTF8 {
    public static func isValid(_ raw: UnsafeRawBufferPointer) -> Bool {
        // ASCII, eight bytes at a time, first: most values are, and the
        // resolver checks every value it writes at every request.
        var i = 0
        while i + 8 <= raw.count, raw.loadUnaligned(fromByteOffset: i, as: UInt64.self) & 0x8080_8080_8080_8080 == 0 { i += 8 }
        while i < raw.count, raw[i] < 0x80 { i += 1 }
        if i == raw.count { return true }
        // The rest from the first non-ASCII byte: what precedes it is whole.
        var it = UnsafeRawBufferPointer(rebasing: raw[i...]).makeIterator()
        var decoder = UTF8()
        while true {
            switch decoder.decode(&it) {
            case .scalarValue: continue
            case .emptyInput: return true
            case .error: return false
            }
        }
    }
}
