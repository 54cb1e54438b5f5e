import Glibc
import SecureMemory

/// The bytes written through one open file, held in locked memory until the
/// file is flushed. Grows by doubling up to `limit` (the value limit plus one
/// byte for the trailing newline that may be dropped), so an open file costs
/// a few KiB of locked memory, not the whole limit.
final class WriteBuffer {
    private(set) var bytes: SecureBytes
    let limit: Int
    private let pool: BufferPool?
    private var released = false

    /// `pool` lends the first (small) buffer: allocating locked memory costs
    /// a dozen system calls, more than the rest of a small write. Nil when
    /// no locked memory can be had (the caller answers ENOMEM).
    init?(limit: Int, initial: SecureBytes? = nil, pool: BufferPool? = nil) {
        self.limit = limit
        self.pool = pool
        if let initial {
            guard let b = initial.copyIfPossible(capacity: max(initial.count, min(limit, BufferPool.bufferSize))) else { return nil }
            bytes = b
        } else if let lent = pool?.take(), lent.capacity >= min(limit, BufferPool.bufferSize) {
            bytes = lent
        } else {
            guard let b = SecureBytes(allocating: min(limit, BufferPool.bufferSize)) else { return nil }
            bytes = b
        }
    }

    var count: Int { bytes.count }
    /// Locked bytes held now.
    var capacity: Int { bytes.capacity }

    /// The capacity a write ending at `end` would grow this buffer to (its
    /// current capacity when no growth is needed).
    func capacity(forEnd end: Int) -> Int {
        guard end > bytes.capacity else { return bytes.capacity }
        var cap = max(bytes.capacity, 1)
        while cap < end { cap = min(limit, cap * 2) }
        return cap
    }

    /// Makes room for `needed` bytes: EFBIG over the limit, ENOMEM when the
    /// bigger buffer cannot be allocated (nothing changes then).
    private func reserve(_ needed: Int) throws(Errno) {
        guard needed <= limit else { throw .tooBig }
        if needed <= bytes.capacity { return }
        var cap = bytes.capacity
        while cap < needed { cap = min(limit, cap * 2) }
        guard let grown = bytes.copyIfPossible(capacity: cap) else { throw .noMemory }
        release(bytes)
        bytes = grown
    }

    /// Writes at `offset` (zero-filling a gap).
    func write(_ data: UnsafeRawBufferPointer, at offset: Int) throws(Errno) {
        let (end, overflow) = offset.addingReportingOverflow(data.count)
        guard !overflow else { throw .tooBig }
        try reserve(end)
        guard bytes.write(data, at: offset) else { throw .tooBig }
    }

    func append(_ data: UnsafeRawBufferPointer) throws(Errno) {
        try write(data, at: bytes.count)
    }

    /// Truncates or extends (with zeros) to `size`.
    func resize(to size: Int) throws(Errno) {
        guard size >= 0 else { throw .invalid }
        if size <= bytes.count { bytes.setCount(size); return }
        try reserve(size)
        let zeros = [UInt8](repeating: 0, count: size - bytes.count)
        let ok = zeros.withUnsafeBytes { bytes.write($0, at: bytes.count) }
        guard ok else { throw .tooBig }
    }

    /// The value to store, in place: without one trailing newline unless kept.
    func withValue<R>(keepTrailingNewline: Bool, _ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try bytes.withUnsafeBytes { raw in
            let drop = !keepTrailingNewline && raw.last == 0x0A
            return try body(UnsafeRawBufferPointer(rebasing: raw[0..<(raw.count - (drop ? 1 : 0))]))
        }
    }

    /// Length of the value that `withValue` would store.
    func valueCount(keepTrailingNewline: Bool) -> Int {
        withValue(keepTrailingNewline: keepTrailingNewline) { $0.count }
    }

    /// Wipes the bytes and gives a pooled buffer back. The buffer must not
    /// be used afterwards (the pool may lend its memory to another file).
    func wipe() {
        guard !released else { return }
        released = true
        release(bytes)
    }

    private func release(_ b: SecureBytes) {
        b.wipe()
        if b.capacity == BufferPool.bufferSize { pool?.give(b) }
    }
}

/// A few small locked buffers kept for reuse by write handles, always wiped
/// before they go back. Not thread-safe: used under the filesystem's lock.
final class BufferPool {
    static let bufferSize = 4096
    private var free: [SecureBytes] = []
    private let maximum: Int

    init(maximum: Int = 16) { self.maximum = maximum }

    func take() -> SecureBytes? { free.popLast() }

    func give(_ b: SecureBytes) {
        precondition(b.isEmpty, "a pooled buffer must be wiped first")
        if free.count < maximum { free.append(b) }
    }
}
