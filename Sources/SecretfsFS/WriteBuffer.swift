import SecureMemory

/// The bytes written through one open file, held in locked memory until the
/// file is flushed. Grows by doubling up to `limit` (the value limit plus one
/// byte for the trailing newline that may be dropped), so an open file costs
/// a few KiB of locked memory, not the whole limit.
final class WriteBuffer {
    private(set) var bytes: SecureBytes
    let limit: Int

    init(limit: Int, initial: SecureBytes? = nil) {
        self.limit = limit
        if let initial {
            bytes = initial.copy(capacity: max(initial.count, min(limit, 4096)))
        } else {
            bytes = SecureBytes(capacity: min(limit, 4096))
        }
    }

    var count: Int { bytes.count }

    /// Makes room for `needed` bytes; false when that is over the limit.
    private func reserve(_ needed: Int) -> Bool {
        guard needed <= limit else { return false }
        if needed <= bytes.capacity { return true }
        var cap = bytes.capacity
        while cap < needed { cap = min(limit, cap * 2) }
        bytes = bytes.copy(capacity: cap)  // the old buffer is wiped when freed
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

    /// The value to store: a copy without one trailing newline unless kept.
    func value(keepTrailingNewline: Bool) -> SecureBytes {
        let out = bytes.copy()
        if !keepTrailingNewline, out.withUnsafeBytes({ $0.last == 0x0A }) {
            out.setCount(out.count - 1)
        }
        return out
    }

    func wipe() { bytes.wipe() }
}
