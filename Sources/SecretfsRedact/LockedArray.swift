import SecureMemory

/// A growable array of plain values in `sodium_malloc`'d memory.
///
/// Every table the matcher builds from secret values (the pattern bytes, trie
/// links, DFA transitions, byte classes, per-state outputs) lives in one of
/// these, so that no form of a value ever sits in ordinary heap memory that can
/// be swapped out, dumped or left behind unwiped. The backing `SecureBytes` is
/// wiped and unlocked by `sodium_free` when the array is dropped or grows.
///
/// It is a class (not a copy-on-write struct) so that a copy can never be made
/// by accident; element access is unchecked in release builds, the callers
/// keep their indices in range.
final class LockedArray<Element: BitwiseCopyable> {
    private var storage: SecureBytes
    /// Base of the element storage. Stable while `storage` is alive: the
    /// memory comes from `sodium_malloc` and `SecureBytes` never moves it.
    private(set) var base: UnsafeMutablePointer<Element>
    private(set) var count: Int
    private(set) var capacity: Int

    init(capacity: Int = 16) {
        let cap = max(capacity, 1)
        storage = SecureBytes(capacity: cap * MemoryLayout<Element>.stride)
        base = LockedArray.pointer(of: storage)
        count = 0
        self.capacity = cap
    }

    /// An array of `count` copies of `value`.
    convenience init(repeating value: Element, count: Int) {
        self.init(capacity: count)
        base.initialize(repeating: value, count: count)
        self.count = count
    }

    private static func pointer(of storage: SecureBytes) -> UnsafeMutablePointer<Element> {
        storage.withUnsafeMutableCapacity { raw in
            raw.baseAddress!.bindMemory(to: Element.self, capacity: max(raw.count / MemoryLayout<Element>.stride, 1))
        }
    }

    @inline(__always)
    subscript(i: Int) -> Element {
        get {
            assert(i >= 0 && i < count)
            return base[i]
        }
        set {
            assert(i >= 0 && i < count)
            base[i] = newValue
        }
    }

    /// Makes room for at least `minimumCapacity` elements (moving to a new
    /// locked allocation; the old one is wiped on release).
    func reserve(_ minimumCapacity: Int) {
        guard minimumCapacity > capacity else { return }
        var newCap = capacity
        while newCap < minimumCapacity { newCap *= 2 }
        let newStorage = SecureBytes(capacity: newCap * MemoryLayout<Element>.stride)
        let newBase = LockedArray.pointer(of: newStorage)
        newBase.update(from: base, count: count)
        storage = newStorage  // the old SecureBytes is freed (and wiped) here
        base = newBase
        capacity = newCap
    }

    @inline(__always)
    func append(_ value: Element) {
        if count == capacity { reserve(count + 1) }
        base[count] = value
        count += 1
    }

    func append(contentsOf source: UnsafePointer<Element>, count n: Int) {
        guard n > 0 else { return }
        reserve(count + n)
        (base + count).update(from: source, count: n)
        count += n
    }

    /// Sets the count to `newCount` (<= capacity), wiping what is dropped.
    func truncate(to newCount: Int) {
        precondition(newCount >= 0 && newCount <= count)
        if newCount < count {
            UnsafeMutableRawPointer(base + newCount)
                .initializeMemory(as: UInt8.self, repeating: 0,
                                  count: (count - newCount) * MemoryLayout<Element>.stride)
        }
        count = newCount
    }

    func removeAll() { truncate(to: 0) }

    /// Grows the count to `newCount`, filling new slots with `value`.
    func resize(to newCount: Int, filling value: Element) {
        if newCount <= count { truncate(to: newCount); return }
        reserve(newCount)
        (base + count).initialize(repeating: value, count: newCount - count)
        count = newCount
    }

    var buffer: UnsafeBufferPointer<Element> { UnsafeBufferPointer(start: base, count: count) }
    var isEmpty: Bool { count == 0 }
}

extension LockedArray where Element == UInt8 {
    var rawBuffer: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base, count: count) }

    func append(_ bytes: UnsafeRawBufferPointer) {
        guard let p = bytes.baseAddress, bytes.count > 0 else { return }
        append(contentsOf: p.assumingMemoryBound(to: UInt8.self), count: bytes.count)
    }

    /// Appends ASCII text given as a static string (escape sequences and
    /// similar constants; never a value).
    func append(ascii s: StaticString) {
        s.withUTF8Buffer { append(UnsafeRawBufferPointer($0)) }
    }
}
