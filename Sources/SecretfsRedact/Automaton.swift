/// An Aho-Corasick automaton over bytes, stored as a hybrid DFA.
///
/// Construction: the forms are inserted into a trie (first-child /
/// next-sibling lists, so identical forms share one path and are counted
/// once); states are then renumbered in breadth-first order, and failure
/// links and outputs computed in that order.
///
/// Representation: the first `denseCount` states in breadth-first order (the
/// shallow ones, where a scan spends nearly all its time on ordinary text) get
/// a full DFA row indexed by byte class; failure transitions are already
/// folded in, so one table load per input byte. Deeper states (only when the
/// dense table would exceed its budget) keep a sorted list of trie children
/// and a failure link, as in the textbook automaton; a failure step always
/// lands on a shallower state, so the scan stays linear in the input (at most
/// two state changes per byte, amortised) whatever the patterns.
///
/// Encoded state (`UInt32`): for a dense state, the row offset
/// (`id * classCount`); for a sparse one, `sparseFlag | (id - denseCount)`.
/// `matchFlag` is set on every state at which some form ends, so the hot loop
/// tests one bit to leave the fast path.
///
/// Every table here is a `LockedArray` (sodium_malloc'd, wiped on release).
final class Automaton {
    static let matchFlag: UInt32 = 1 << 31
    static let sparseFlag: UInt32 = 1 << 30
    static let flags: UInt32 = matchFlag | sparseFlag
    static let payload: UInt32 = sparseFlag - 1

    /// byte -> class (0 = byte in no form).
    let classOf: LockedArray<UInt8>
    let classCount: Int
    let denseCount: Int
    let stateCount: Int
    /// Dense rows, `denseCount * classCount` encoded states.
    let dense: LockedArray<UInt32>
    /// Per state id: failure link (id), longest form ending here (0 = none),
    /// depth (length of the longest form prefix the state stands for).
    let fail: LockedArray<UInt32>
    let out: LockedArray<UInt32>
    let depth: LockedArray<UInt32>
    /// Sparse states' trie children, sorted by byte.
    let childStart: LockedArray<UInt32>
    let childCount: LockedArray<UInt16>
    let childByte: LockedArray<UInt8>
    let childTarget: LockedArray<UInt32>
    /// Longest form, in bytes.
    let maxLength: Int
    /// Number of distinct forms.
    let formCount: Int

    /// Root state, encoded.
    var root: UInt32 { 0 }

    /// Builds from a trie. `denseBudget` caps the dense table (entries).
    init(trie: Trie, denseBudget: Int) {
        let n = trie.nodeCount
        stateCount = n
        maxLength = trie.maxLength
        formCount = trie.formCount

        // Byte classes: one per byte that occurs in some form, 0 for the rest.
        classOf = LockedArray(repeating: 0, count: 256)
        var nc = 1
        for b in 0..<256 where trie.usedByte[b] != 0 {
            classOf[b] = UInt8(truncatingIfNeeded: nc)
            nc += 1
        }
        classCount = nc
        let k = max(1, min(n, denseBudget / nc))
        denseCount = k

        dense = LockedArray(repeating: 0, count: k * nc)
        fail = LockedArray(repeating: 0, count: n)
        out = LockedArray(repeating: 0, count: n)
        depth = LockedArray(repeating: 0, count: n)
        childStart = LockedArray(repeating: 0, count: max(n - k, 0))
        childCount = LockedArray(repeating: 0, count: max(n - k, 0))
        childByte = LockedArray(capacity: max(n - k, 1))
        childTarget = LockedArray(capacity: max(n - k, 1))

        // order[newId] = trie node; filled as nodes are discovered (BFS).
        let order = LockedArray<UInt32>(capacity: n)
        order.append(0)
        var next = 1
        let kids = LockedArray<UInt32>(capacity: 256)   // trie children of the node at hand
        let kidIds = LockedArray<UInt32>(capacity: 256)

        var id = 0
        while id < order.count {
            let node = Int(order[id])
            // Collect children, sorted by byte (insertion sort, at most 256).
            kids.removeAll()
            var c = trie.firstChild[node]
            while c != Trie.none {
                kids.append(c)
                var j = kids.count - 1
                while j > 0 && trie.byte[Int(kids[j - 1])] > trie.byte[Int(kids[j])] {
                    let t = kids[j]; kids[j] = kids[j - 1]; kids[j - 1] = t
                    j -= 1
                }
                c = trie.nextSibling[Int(c)]
            }
            // Number them, and compute failure links and outputs.
            kidIds.removeAll()
            for j in 0..<kids.count {
                let child = Int(kids[j])
                let b = trie.byte[child]
                let cid = next
                next += 1
                order.append(UInt32(child))
                kidIds.append(UInt32(cid))
                let f: Int = id == 0 ? 0 : Int(decode(step(encode(Int(fail[id])), b)))
                fail[cid] = UInt32(f)
                depth[cid] = depth[id] + 1
                out[cid] = trie.terminal[child] != 0 ? depth[cid] : out[f]
            }
            // Transitions of this state.
            if id < k {
                let row = dense.base + id * nc
                if id != 0 {
                    let frow = dense.base + Int(fail[id]) * nc
                    row.update(from: frow, count: nc)
                }
                for j in 0..<kids.count {
                    let b = trie.byte[Int(kids[j])]
                    row[Int(classOf[Int(b)])] = encode(Int(kidIds[j]))
                }
            } else {
                let s = id - k
                childStart[s] = UInt32(childByte.count)
                childCount[s] = UInt16(kids.count)
                for j in 0..<kids.count {
                    childByte.append(trie.byte[Int(kids[j])])
                    childTarget.append(encode(Int(kidIds[j])))
                }
            }
            id += 1
        }
        precondition(order.count == n)
    }

    @inline(__always)
    func encode(_ id: Int) -> UInt32 {
        let m: UInt32 = out[id] != 0 ? Automaton.matchFlag : 0
        if id < denseCount { return UInt32(id * classCount) | m }
        return UInt32(id - denseCount) | Automaton.sparseFlag | m
    }

    @inline(__always)
    func decode(_ e: UInt32) -> Int {
        if e & Automaton.sparseFlag != 0 { return denseCount + Int(e & Automaton.payload) }
        return Int(e & Automaton.payload) / classCount
    }

    /// The transition from encoded state `e` on byte `b` (any state).
    @inline(__always)
    func step(_ e: UInt32, _ b: UInt8) -> UInt32 {
        if e & Automaton.sparseFlag == 0 {
            return dense.base[Int(e & Automaton.payload) &+ Int(classOf.base[Int(b)])]
        }
        return sparseStep(e, b)
    }

    /// The transition from a sparse state: its trie children, else failure
    /// links down to a dense state.
    func sparseStep(_ e: UInt32, _ b: UInt8) -> UInt32 {
        var id = denseCount + Int(e & Automaton.payload)
        let k = denseCount
        while id >= k {
            let s = id - k
            var j = Int(childStart.base[s])
            let end = j + Int(childCount.base[s])
            while j < end {
                let cb = childByte.base[j]
                if cb == b { return childTarget.base[j] }
                if cb > b { break }
                j += 1
            }
            id = Int(fail.base[id])
        }
        return dense.base[id * classCount + Int(classOf.base[Int(b)])]
    }

    /// Walks every distinct form (depth-first), for benchmarks and tests.
    /// Each buffer is valid only during the call.
    func forEachForm(_ body: (UnsafeRawBufferPointer) -> Void) {
        // Bytes by class, to turn a class back into a byte.
        let byteOfClass = LockedArray<UInt8>(repeating: 0, count: classCount)
        for b in 0..<256 { byteOfClass[Int(classOf[b])] = UInt8(b) }
        let path = LockedArray<UInt8>(capacity: maxLength + 1)
        let stack = LockedArray<UInt32>(capacity: 64)   // (state, next class) pairs
        stack.append(root); stack.append(1)
        while !stack.isEmpty {
            let e = stack[stack.count - 2]
            let c = Int(stack[stack.count - 1])
            if c >= classCount {
                stack.truncate(to: stack.count - 2)
                if path.count > 0 { path.truncate(to: path.count - 1) }
                continue
            }
            stack[stack.count - 1] = UInt32(c + 1)
            let b = byteOfClass[c]
            let t = step(e, b)
            let tid = decode(t)
            if depth[tid] == depth[decode(e)] + 1 {
                path.append(b)
                if out[tid] == depth[tid] { body(path.rawBuffer) }
                stack.append(t & ~Automaton.matchFlag); stack.append(1)
            }
        }
    }
}

/// The pattern trie used while building (first-child / next-sibling lists in
/// locked memory). Inserting an existing form changes nothing.
final class Trie {
    static let none = UInt32.max
    let byte = LockedArray<UInt8>(capacity: 1024)
    let firstChild = LockedArray<UInt32>(capacity: 1024)
    let nextSibling = LockedArray<UInt32>(capacity: 1024)
    let terminal = LockedArray<UInt8>(capacity: 1024)
    /// Direct child table for the root (it has the most children).
    let rootChild = LockedArray<UInt32>(repeating: Trie.none, count: 256)
    let usedByte = LockedArray<UInt8>(repeating: 0, count: 256)
    private(set) var maxLength = 0
    private(set) var formCount = 0

    init() { newNode(0) }

    var nodeCount: Int { byte.count }

    @discardableResult
    private func newNode(_ b: UInt8) -> UInt32 {
        byte.append(b); firstChild.append(Trie.none); nextSibling.append(Trie.none); terminal.append(0)
        return UInt32(byte.count - 1)
    }

    func insert(_ form: UnsafeRawBufferPointer) {
        guard form.count > 0 else { return }
        var node: UInt32 = 0
        for (i, b) in form.enumerated() {
            usedByte[Int(b)] = 1
            if i == 0 {
                var c = rootChild[Int(b)]
                if c == Trie.none {
                    c = newNode(b)
                    rootChild[Int(b)] = c
                    nextSibling[Int(c)] = firstChild[0]
                    firstChild[0] = c
                }
                node = c
                continue
            }
            var c = firstChild[Int(node)]
            while c != Trie.none && byte[Int(c)] != b { c = nextSibling[Int(c)] }
            if c == Trie.none {
                c = newNode(b)
                nextSibling[Int(c)] = firstChild[Int(node)]
                firstChild[Int(node)] = c
            }
            node = c
        }
        if terminal[Int(node)] == 0 {
            terminal[Int(node)] = 1
            formCount += 1
        }
        maxLength = max(maxLength, form.count)
    }
}
