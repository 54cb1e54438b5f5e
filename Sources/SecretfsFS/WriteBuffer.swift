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
    /// a dozen system calls, more than the rest of a small write.
    init(limit: Int, initial: SecureBytes? = nil, pool: BufferPool? = nil) {
        self.limit = limit
        self.pool = pool
        if let initial {
            bytes = initial.copy(capacity: max(initial.count, min(limit, BufferPool.bufferSize)))
        } else if let lent = pool?.take(), lent.capacity >= min(limit, BufferPool.bufferSize) {
            bytes = lent
        } else {
            bytes = SecureBytes(capacity: min(limit, BufferPool.bufferSize))
        }
    }

    var count: Int { bytes.count }

    /// Makes room for `needed` bytes; false when that is over the limit.
    private func reserve(_ needed: Int) -> Bool {
        guard needed <= limit else { return false }
        if needed <= bytes.capacity { return true }
        var cap = bytes.capacity
        while cap < needed { cap = min(limit, cap * 2) }
        let grown = bytes.copy(capacity: cap)
        release(bytes)
        bytes = grown
        return true
    }

    /// Writes at `offset` (zero-filling a gap); false when over the limit.
    func write(_ data: UnsafeRawBufferPointer, at offset: Int) -> Bool {
        let (end, overflow) = offset.addingReportingOverflow(data.count)
        guard !overflow, reserve(end) else { return false }
        return bytes.write(data, at: offset)
    }

    func append(_ data: UnsafeRawBufferPointer) -> Bool {
        write(data, at: bytes.count)
    }

    /// Truncates or extends (with zeros) to `size`; false when over the limit.
    func resize(to size: Int) -> Bool {
        guard size >= 0 else { return false }
        if size <= bytes.count { bytes.setCount(size); return true }
        guard reserve(size) else { return false }
        let zeros = [UInt8](repeating: 0, count: size - bytes.count)
        return zeros.withUnsafeBytes { bytes.write($0, at: bytes.count) }
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
