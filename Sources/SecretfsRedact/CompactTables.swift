#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Small building blocks of the compact automaton: a bit array with rank, a
/// build-time map from node to value, an in-place heapsort, and the set of
/// distinct forms. All of them keep their contents in `LockedArray`s.

/// Something that holds locked memory and may report it to a meter.
protocol LockedStorage: AnyObject {
    var lockedBytes: Int { get }
    func detachMeter()
}

extension LockedArray: LockedStorage {}

/// A fixed-size bit array in locked memory, with `rank` (the number of set
/// bits before a position) in constant time once `buildRanks()` has run: one
/// `UInt32` count per 512-bit block, then at most eight popcounts.
final class BitArray: LockedStorage {
    let count: Int
    private let words: LockedArray<UInt64>
    private let blockRanks: LockedArray<UInt32>

    init(count: Int, meter: LockedMeter?) {
        self.count = count
        words = LockedArray(repeating: 0, count: (count + 63) >> 6 + 1, meter: meter)
        blockRanks = LockedArray(repeating: 0, count: (count + 511) >> 9 + 1, meter: meter)
    }

    @inline(__always)
    func test(_ i: Int) -> Bool {
        words.base[i >> 6] & (1 << UInt64(i & 63)) != 0
    }

    func set(_ i: Int) { words.base[i >> 6] |= 1 << UInt64(i & 63) }
    func clear(_ i: Int) { words.base[i >> 6] &= ~(1 << UInt64(i & 63)) }

    /// Fills the rank directory; call after the last `set`/`clear`.
    func buildRanks() {
        var total: UInt32 = 0
        for w in 0..<words.count {
            if w & 7 == 0 { blockRanks.base[w >> 3] = total }
            total &+= UInt32(words.base[w].nonzeroBitCount)
        }
        setCount = Int(total)
    }

    /// Number of set bits in [0, i). Valid after `buildRanks()`.
    @inline(__always)
    func rank(_ i: Int) -> Int {
        let w = i >> 6
        var r = Int(blockRanks.base[w >> 3])
        var k = w & ~7
        while k < w { r &+= words.base[k].nonzeroBitCount; k &+= 1 }
        return r &+ (words.base[w] & ((1 << UInt64(i & 63)) &- 1)).nonzeroBitCount
    }

    /// Set bits in total. Valid after `buildRanks()`.
    private(set) var setCount = 0

    /// Calls `body` with each set position, in increasing order.
    func forEachSet(_ body: (Int) -> Void) {
        for w in 0..<words.count {
            var x = words.base[w]
            while x != 0 {
                body(w << 6 | x.trailingZeroBitCount)
                x &= x &- 1
            }
        }
    }

    var lockedBytes: Int { words.lockedBytes + blockRanks.lockedBytes }
    func detachMeter() { words.detachMeter(); blockRanks.detachMeter() }
}

/// Build-time map from a `UInt32` key to a `UInt32` value (open addressing,
/// linear probing, in locked memory). Keys are never removed. The table is
/// sized for the expected count, not to a power of two (a slot is picked by
/// multiply-shift), and grows by half: its locked memory stays close to
/// 8 bytes / 0.85 per entry.
final class NodeMap {
    private var slots: LockedArray<UInt64>   // (key + 1) << 32 | value; 0 = empty
    private(set) var count = 0
    private let meter: LockedMeter?

    init(expected: Int, meter: LockedMeter?) {
        slots = LockedArray(repeating: 0, count: max(1024, expected * 20 / 17 + 1), meter: meter)
        self.meter = meter
    }

    @inline(__always)
    private func home(_ key: UInt32) -> Int {
        let h = (UInt64(key) &* 0x9E37_79B9_7F4A_7C15) >> 32
        return Int(truncatingIfNeeded: (h &* UInt64(slots.count)) >> 32)
    }

    func put(_ key: UInt32, _ value: UInt32) {
        // Up to 85% full: linear probing stays short for the keys looked up
        // (all present).
        if (count + 1) * 20 > slots.count * 17 { grow() }
        let tag = (UInt64(key) + 1) << 32
        let n = slots.count
        var i = home(key)
        while true {
            let s = slots.base[i]
            if s == 0 { slots.base[i] = tag | UInt64(value); count += 1; return }
            if s & 0xFFFF_FFFF_0000_0000 == tag { slots.base[i] = tag | UInt64(value); return }
            i += 1
            if i == n { i = 0 }
        }
    }

    /// The value for `key`, which must be present.
    func get(_ key: UInt32) -> UInt32 {
        let tag = (UInt64(key) + 1) << 32
        let n = slots.count
        var i = home(key)
        while true {
            let s = slots.base[i]
            precondition(s != 0, "NodeMap: missing key")
            if s & 0xFFFF_FFFF_0000_0000 == tag { return UInt32(truncatingIfNeeded: s) }
            i += 1
            if i == n { i = 0 }
        }
    }

    private func grow() {
        let old = slots
        slots = LockedArray(repeating: 0, count: old.count + old.count / 2, meter: meter)
        count = 0
        for i in 0..<old.count where old.base[i] != 0 {
            let s = old.base[i]
            put(UInt32(truncatingIfNeeded: s >> 32) - 1, UInt32(truncatingIfNeeded: s))
        }
    }
}

/// Sorts `a` in place with `less` (heapsort: no extra memory, n log n).
func heapSort(_ a: LockedArray<UInt32>, by less: (UInt32, UInt32) -> Bool) {
    let n = a.count
    guard n > 1 else { return }
    let p = a.base
    func siftDown(_ start: Int, _ end: Int) {
        var root = start
        while true {
            var child = 2 * root + 1
            if child >= end { return }
            if child + 1 < end && less(p[child], p[child + 1]) { child += 1 }
            if !less(p[root], p[child]) { return }
            let t = p[root]; p[root] = p[child]; p[child] = t
            root = child
        }
    }
    var start = n / 2 - 1
    while start >= 0 { siftDown(start, n); start -= 1 }
    var end = n - 1
    while end > 0 {
        let t = p[0]; p[0] = p[end]; p[end] = t
        siftDown(0, end)
        end -= 1
    }
}

/// The distinct forms of one build, concatenated in locked memory. A hash set
/// of form indices drops a form already held as soon as it is emitted (the
/// generator emits each value's identical encodings many times over: about
/// four times the bytes that stay), so duplicates never take room.
final class FormSet {
    let bytes: LockedArray<UInt8>
    let start: LockedArray<UInt32>
    let length: LockedArray<UInt32>
    /// 1 for each byte value that occurs in some form.
    let usedByte: LockedArray<UInt8>
    private var slots: LockedArray<UInt32>   // form index + 1; 0 = empty
    private let meter: LockedMeter?
    private(set) var maxLength = 0

    init(meter: LockedMeter?) {
        self.meter = meter
        bytes = LockedArray(capacity: 4096, meter: meter)
        start = LockedArray(capacity: 256, meter: meter)
        length = LockedArray(capacity: 256, meter: meter)
        usedByte = LockedArray(repeating: 0, count: 256, meter: meter)
        slots = LockedArray(repeating: 0, count: 512, meter: meter)
    }

    var count: Int { start.count }

    @inline(__always)
    func form(_ i: Int) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: bytes.base + Int(start.base[i]), count: Int(length.base[i]))
    }

    private static func hash(_ form: UnsafeRawBufferPointer) -> UInt64 {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325   // FNV-1a
        for b in form { h = (h ^ UInt64(b)) &* 0x100_0000_01B3 }
        return h ^ (h >> 29)
    }

    func insert(_ form: UnsafeRawBufferPointer) {
        guard form.count > 0 else { return }
        precondition(bytes.count + form.count < Int(UInt32.max), "too many registered forms")
        let mask = slots.count - 1
        var i = Int(truncatingIfNeeded: FormSet.hash(form)) & mask
        while true {
            let s = Int(slots.base[i])
            if s == 0 { break }
            let other = self.form(s - 1)
            if other.count == form.count && memcmp(other.baseAddress!, form.baseAddress!, form.count) == 0 { return }
            i = (i + 1) & mask
        }
        start.append(UInt32(bytes.count))
        length.append(UInt32(form.count))
        bytes.append(form)
        for b in form { usedByte.base[Int(b)] = 1 }
        maxLength = max(maxLength, form.count)
        slots.base[i] = UInt32(count)
        if count * 2 > slots.count { rehash() }
    }

    private func rehash() {
        slots = LockedArray(repeating: 0, count: slots.count * 2, meter: meter)
        let mask = slots.count - 1
        for f in 0..<count {
            var i = Int(truncatingIfNeeded: FormSet.hash(form(f))) & mask
            while slots.base[i] != 0 { i = (i + 1) & mask }
            slots.base[i] = UInt32(f + 1)
        }
    }

    /// Lexicographic order of forms `a` and `b` (a proper prefix sorts first).
    func less(_ a: UInt32, _ b: UInt32) -> Bool {
        let x = form(Int(a)), y = form(Int(b))
        let n = min(x.count, y.count)
        let c = memcmp(x.baseAddress!, y.baseAddress!, n)
        return c != 0 ? c < 0 : x.count < y.count
    }

    /// Length of the common prefix of forms `a` and `b`.
    func commonPrefix(_ a: UInt32, _ b: UInt32) -> Int {
        let x = form(Int(a)), y = form(Int(b))
        let n = min(x.count, y.count)
        var i = 0
        while i < n && x[i] == y[i] { i += 1 }
        return i
    }
}
