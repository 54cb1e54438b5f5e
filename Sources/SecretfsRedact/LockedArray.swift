import SecureMemory
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Counts the locked memory of the arrays that report to it: what
/// `sodium_malloc` locks for each (the allocation plus its 16-byte canary,
/// rounded up to whole pages; the guard pages around it are not locked), the
/// current total and the highest it has been. One meter follows one build on
/// one thread; the arrays a finished automaton keeps are detached from it.
final class LockedMeter {
    private(set) var current = 0
    private(set) var peak = 0

    init() {}

    func add(_ bytes: Int) {
        current += bytes
        if current > peak { peak = current }
    }

    func remove(_ bytes: Int) { current -= bytes }

    static let pageSize: Int = {
        let p = sysconf(Int32(_SC_PAGESIZE))
        return p > 0 ? p : 4096
    }()

    /// Bytes `sodium_malloc(size)` locks: the canary and the region rounded
    /// up to whole pages (libsodium's `_page_round(size + 16)`).
    static func lockedFootprint(ofAllocation size: Int) -> Int {
        let n = max(size, 1) + 16
        return (n + pageSize - 1) / pageSize * pageSize
    }
}

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
    /// Where the locked bytes are counted, if anywhere (see `LockedMeter`).
    private var meter: LockedMeter?

    init(capacity: Int = 16, meter: LockedMeter? = nil) {
        let cap = max(capacity, 1)
        storage = SecureBytes(capacity: cap * MemoryLayout<Element>.stride)
        base = LockedArray.pointer(of: storage)
        count = 0
        self.capacity = cap
        self.meter = meter
        meter?.add(lockedBytes)
    }

    /// An array of `count` copies of `value`.
    convenience init(repeating value: Element, count: Int, meter: LockedMeter? = nil) {
        self.init(capacity: count, meter: meter)
        base.initialize(repeating: value, count: count)
        self.count = count
    }

    deinit {
        meter?.remove(lockedBytes)
    }

    /// Locked memory of the current allocation (whole pages, see `LockedMeter`).
    var lockedBytes: Int {
        LockedMeter.lockedFootprint(ofAllocation: capacity * MemoryLayout<Element>.stride)
    }

    /// Stops reporting to the meter (the array outlives the build it was
    /// counted in, and may be released on another thread).
    func detachMeter() {
        meter?.remove(lockedBytes)
        meter = nil
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
        let oldBytes = lockedBytes
        meter?.add(LockedMeter.lockedFootprint(ofAllocation: newCap * MemoryLayout<Element>.stride))
        let newBase = LockedArray.pointer(of: newStorage)
        newBase.update(from: base, count: count)
        storage = newStorage  // the old SecureBytes is freed (and wiped) here
        meter?.remove(oldBytes)
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
