import Synchronization
/// An Aho-Corasick automaton over bytes, in compact tables.
///
/// Why compact: the tables live in locked memory, and a non-root user may lock
/// only 8 MiB by default (`ulimit -l`). A thousand secrets register about
/// 18,000 distinct forms and a trie of 1.1 million states, nearly all of them
/// on unbranched chains (a random token shares little with other forms). The
/// textbook layout (a 4-byte failure link, output, depth and child list per
/// state) took 27 MB for them, and the build peaked near 50 MB.
///
/// Layout. The trie's states are numbered in depth-first preorder, which is
/// what the sorted list of distinct forms gives directly: form `j` (in sorted
/// order) adds the states for its bytes past its common prefix with form
/// `j - 1`, as one *run* of consecutive ids. In that numbering a state's first
/// child (the one with the smallest byte) is the next state, `v + 1`, so a
/// chain needs no child pointers at all. Per state there are then three bytes:
///
/// - `label[v]`, the byte on the edge into `v`;
/// - `failCode[v]`, the failure link in 16 bits, one of
///   - a dense state index (`< 0x8000`): the failure link leads to one of the
///     shallow states that have full rows (most do: a random substring rarely
///     continues far into another form);
///   - a continuation `k` (`0x8000...0xFFFE`, `k = code - 0x7FFF`): the state
///     `k` steps up the chain (`v - k`, an anchor with a code of one of the other
///     two kinds) fails to some state `f`, and `v` fails to `f + k`. This is the
///     common deep case: a form that contains another form's prefix (a line of
///     a PEM value inside its JSON encoding, two encodings that agree after an
///     escape) fails along that prefix in lockstep;
///   - explicit (`0xFFFF`): the target is in `explicitFail`, at the rank of `v`
///     among the explicit states (a bit array with a rank directory);
///
/// plus a few bits: `hasChild` (the first child is `v + 1`), `branch` (further
/// children, in `branchByte`/`branchNode` at the rank of `v`), `match` (a form
/// ends here, its length in `matchOut` at the rank of `v`). Depth is not
/// stored: a state's run gives it (binary search over the run starts, needed
/// once per write and for each match only).
///
/// The first `denseCount` states in breadth-first order (the shallow ones,
/// where a scan of ordinary text spends nearly all its time: every state of
/// depth 2 or less, and at least 1 MiB of rows, at most the budget's 2 MiB)
/// also get a full DFA row indexed by byte class, with failure transitions folded in: one
/// table load per input byte. A row entry is an encoded state (`UInt32`): for
/// a dense state the row offset (`index * classCount`); for any other,
/// `sparseFlag | id`. `matchFlag` is set on every state at which some form
/// ends, so the hot loop tests one bit to leave the fast path.
///
/// Linear time: a step from a deep state tries its children, then follows
/// failure links, each strictly shallower, to a dense row; each link is
/// resolved in constant time (a continuation reads its anchor, which never is
/// a continuation). So the scan makes at most two state changes per input byte
/// amortised, whatever the patterns, and each costs O(1).
///
/// Every table is a `LockedArray` (sodium_malloc'd, wiped on release). The
/// build sorts the forms and derives the tables from them in locked memory too;
/// it keeps no form bytes anywhere else.
final class Automaton {
    #if DEBUG
    /// Failure links followed on the sparse path since the automaton was
    /// built (debug builds only): the linearity test counts work, not time.
    let failureSteps = Atomic<Int>(0)
    #endif
    static let matchFlag: UInt32 = 1 << 31
    static let sparseFlag: UInt32 = 1 << 30
    static let flags: UInt32 = matchFlag | sparseFlag
    static let payload: UInt32 = sparseFlag - 1

    /// `failCode` kinds (see the type's comment).
    static let lastDenseCode: UInt16 = 0x7FFF
    static let explicitCode: UInt16 = 0xFFFF
    /// Longest continuation the code can hold; a longer lockstep chain gets
    /// a new (explicit) anchor.
    static let maxContinuation = Int(explicitCode - 1 - lastDenseCode)
    /// Dense states are numbered below 0x8000 in a code.
    static let maxDenseCount = Int(lastDenseCode) + 1
    /// The dense table's least size in entries (4 bytes each: 1 MiB), when
    /// the budget allows; it grows past that to hold every state of depth 2.
    static let denseFloor = 1 << 18

    /// byte -> class (0 = byte in no form).
    let classOf: LockedArray<UInt8>
    let classCount: Int
    /// Number of dense states, and of all states.
    let denseCount: Int
    let stateCount: Int
    /// Dense rows, `denseCount * classCount` encoded states.
    let dense: LockedArray<UInt32>
    /// Per dense index: its state id, depth, and the longest form ending there (0 = none).
    let denseNode: LockedArray<UInt32>
    let denseDepth: LockedArray<UInt32>
    let denseOut: LockedArray<UInt32>
    /// Per state id (depth-first order).
    let label: LockedArray<UInt8>
    let failCode: LockedArray<UInt16>
    let hasChild: BitArray
    let branch: BitArray
    /// Children other than the first, of the state of each `branch` rank, sorted by byte.
    let branchStart: LockedArray<UInt32>
    let branchByte: LockedArray<UInt8>
    let branchNode: LockedArray<UInt32>
    let explicit: BitArray
    let explicitFail: LockedArray<UInt32>
    /// Deep states at which a form ends (dense ones have `denseOut`), and the
    /// longest form ending there, by rank.
    let match: BitArray
    let matchOut: LockedArray<UInt32>
    /// Per run (one per distinct form, in sorted order): its first state id,
    /// with `stateCount` after the last; and the depth it starts below.
    let runStart: LockedArray<UInt32>
    let runLCP: LockedArray<UInt32>
    /// Longest form, in bytes.
    let maxLength: Int
    /// Number of distinct forms.
    let formCount: Int
    /// Locked memory held by the tables (whole pages, as `sodium_malloc` locks them).
    let lockedBytes: Int

    /// Root state, encoded.
    var root: UInt32 { 0 }

    /// Builds from the distinct forms, which it releases (`forms` is nil on
    /// return) as soon as the trie's labels hold them. `denseBudget` caps the
    /// dense table (entries); `meter` counts every locked allocation made.
    /// `continuationLimit` (tests only) caps continuations lower than the
    /// code allows, to exercise anchors on small inputs.
    init(forms: inout FormSet?, denseBudget: Int, meter: LockedMeter,
         continuationLimit: Int = Automaton.maxContinuation) {
        let b = AutomatonBuilder(meter: meter, continuationLimit: min(max(continuationLimit, 1), Automaton.maxContinuation))
        b.layOut(&forms)
        b.linkBranches()
        b.chooseDense(budget: denseBudget)
        b.computeFailureLinks()
        b.fillDenseRows()
        b.dropScratch()

        classOf = b.classOf; classCount = b.classCount
        denseCount = b.denseCount; stateCount = b.stateCount
        dense = b.dense; denseNode = b.denseNode; denseDepth = b.denseDepth; denseOut = b.denseOut
        label = b.label; failCode = b.failCode
        hasChild = b.hasChild; branch = b.branch
        branchStart = b.branchStart; branchByte = b.branchByte; branchNode = b.branchNode
        explicit = b.explicit; explicitFail = b.explicitFail
        match = b.match; matchOut = b.matchOut
        runStart = b.runStart; runLCP = b.runLCP
        maxLength = b.maxLength; formCount = b.formCount

        let kept: [any LockedStorage] = [
            classOf, dense, denseNode, denseDepth, denseOut, label, failCode, hasChild, branch,
            branchStart, branchByte, branchNode, explicit, explicitFail, match, matchOut, runStart, runLCP,
        ]
        var total = 0
        for t in kept { total += t.lockedBytes; t.detachMeter() }
        lockedBytes = total
    }

    // MARK: - Scanning

    /// Encoded form of deep state `v` (its children are deep too).
    @inline(__always)
    func encodeDeep(_ v: Int) -> UInt32 {
        UInt32(truncatingIfNeeded: v) | Automaton.sparseFlag | (match.test(v) ? Automaton.matchFlag : 0)
    }

    /// The child of state `v` on byte `b`, or -1.
    @inline(__always)
    func child(_ v: Int, _ b: UInt8) -> Int {
        trieChild(v, b, label, hasChild, branch, branchStart, branchByte, branchNode)
    }

    /// The failure link of deep state `v` whose code is not a dense index.
    @inline(__always)
    func deepFail(_ v: Int, _ code: UInt16) -> Int {
        if code == Automaton.explicitCode { return Int(explicitFail.base[explicit.rank(v)]) }
        let k = Int(code &- Automaton.lastDenseCode)
        let a = v &- k
        let ac = failCode.base[a]
        let base = ac <= Automaton.lastDenseCode ? Int(denseNode.base[Int(ac)]) : Int(explicitFail.base[explicit.rank(a)])
        return base &+ k
    }

    /// The transition from a sparse (deep) state: its children, else failure
    /// links down to a dense row.
    func sparseStep(_ e: UInt32, _ b: UInt8) -> UInt32 {
        var v = Int(e & Automaton.payload)
        while true {
            let c = child(v, b)
            if c >= 0 { return encodeDeep(c) }
            let code = failCode.base[v]
            if code <= Automaton.lastDenseCode {
                return dense.base[Int(code) &* classCount &+ Int(classOf.base[Int(b)])]
            }
            v = deepFail(v, code)
            #if DEBUG
            failureSteps.add(1, ordering: .relaxed)
            #endif
        }
    }

    /// Length of the longest form prefix that encoded state `e` stands for:
    /// how much a stream must hold back.
    func depth(of e: UInt32) -> Int {
        let s = e & Automaton.payload
        if e & Automaton.sparseFlag == 0 { return Int(denseDepth.base[Int(s) / classCount]) }
        let v = Int(s)
        var lo = 0, hi = formCount   // runStart[0] == 1 <= v
        while hi - lo > 1 {
            let m = (lo + hi) >> 1
            if Int(runStart.base[m]) <= v { lo = m } else { hi = m }
        }
        return Int(runLCP.base[lo]) + 1 + (v - Int(runStart.base[lo]))
    }

    /// Length of the longest form ending at encoded state `e` (0 = none).
    func matchLength(of e: UInt32) -> Int {
        let s = e & Automaton.payload
        if e & Automaton.sparseFlag == 0 { return Int(denseOut.base[Int(s) / classCount]) }
        let v = Int(s)
        return match.test(v) ? Int(matchOut.base[match.rank(v)]) : 0
    }

    /// Walks every distinct form (in byte order), for benchmarks and tests.
    /// Each buffer is valid only during the call.
    func forEachForm(_ body: (UnsafeRawBufferPointer) -> Void) {
        let path = LockedArray<UInt8>(capacity: maxLength + 1)
        for j in 0..<formCount {
            path.truncate(to: Int(runLCP[j]))
            let s = Int(runStart[j])
            path.append(contentsOf: label.base + s, count: Int(runStart[j + 1]) - s)
            body(path.rawBuffer)
        }
    }
}

/// The child of state `v` on byte `b` in the depth-first trie, or -1: the
/// first child is `v + 1` (the smallest byte); the others, if `v` is a branch,
/// are in its range of the branch tables, sorted by byte.
@inline(__always)
private func trieChild(_ v: Int, _ b: UInt8, _ label: LockedArray<UInt8>, _ hasChild: BitArray, _ branch: BitArray,
                       _ branchStart: LockedArray<UInt32>, _ branchByte: LockedArray<UInt8>,
                       _ branchNode: LockedArray<UInt32>) -> Int {
    guard hasChild.test(v) else { return -1 }
    let first = label.base[v &+ 1]
    if first == b { return v &+ 1 }
    if first > b || !branch.test(v) { return -1 }
    let r = branch.rank(v)
    var lo = Int(branchStart.base[r]), hi = Int(branchStart.base[r &+ 1])
    while lo < hi {
        let m = (lo &+ hi) >> 1
        let x = branchByte.base[m]
        if x == b { return Int(branchNode.base[m]) }
        if x < b { lo = m &+ 1 } else { hi = m }
    }
    return -1
}

/// The build, in phases, each releasing what the next does not need, so the
/// peak stays close to the final tables: the sorted forms give the labels and
/// runs (then the forms go); the runs give children and branches; a
/// breadth-first pass (level by level, over the runs still long enough) gives
/// failure links and outputs, with explicit targets and outputs in a
/// temporary map; then the rank-indexed tables and the dense rows.
private final class AutomatonBuilder {
    let meter: LockedMeter

    var classOf: LockedArray<UInt8>!
    var classCount = 0
    var stateCount = 0
    var formCount = 0
    var maxLength = 0
    var label: LockedArray<UInt8>!
    var runStart: LockedArray<UInt32>!
    var runLCP: LockedArray<UInt32>!
    var hasChild: BitArray!
    var branch: BitArray!
    var branchStart: LockedArray<UInt32>!
    var branchByte: LockedArray<UInt8>!
    var branchNode: LockedArray<UInt32>!
    var denseCount = 0
    var denseNode: LockedArray<UInt32>!
    var denseDepth: LockedArray<UInt32>!
    var denseOut: LockedArray<UInt32>!
    var dense: LockedArray<UInt32>!
    var failCode: LockedArray<UInt16>!
    var explicit: BitArray!
    var explicitFail: LockedArray<UInt32>!
    var match: BitArray!
    var matchOut: LockedArray<UInt32>!

    // Scratch.
    /// Per run: the state its first state hangs from.
    var runParent: LockedArray<UInt32>?
    /// Dense states by id, and their dense index by rank.
    var isDense: BitArray?
    var denseIndexByRank: LockedArray<UInt16>?
    /// Explicit failure links (key `2v`) and outputs of deep states (key `2v + 1`).
    var map: NodeMap?

    let continuationLimit: Int

    init(meter: LockedMeter, continuationLimit: Int) {
        self.meter = meter
        self.continuationLimit = continuationLimit
    }

    /// Length of run `j`'s form.
    @inline(__always)
    func formLength(_ j: Int) -> Int {
        Int(runLCP.base[j]) + Int(runStart.base[j + 1]) - Int(runStart.base[j])
    }

    // MARK: Phase 1: sorted forms -> labels and runs

    func layOut(_ forms: inout FormSet?) {
        do {
            let fs = forms!
            let f = fs.count
            formCount = f
            maxLength = fs.maxLength
            classOf = LockedArray(repeating: 0, count: 256, meter: meter)
            var nc = 1
            for b in 0..<256 where fs.usedByte[b] != 0 {
                classOf[b] = UInt8(truncatingIfNeeded: nc)
                nc += 1
            }
            classCount = nc

            let order = LockedArray<UInt32>(capacity: f, meter: meter)
            for i in 0..<f { order.append(UInt32(i)) }
            heapSort(order, by: fs.less)

            runStart = LockedArray(repeating: 0, count: f + 1, meter: meter)
            runLCP = LockedArray(repeating: 0, count: f, meter: meter)
            var n = 1
            for j in 0..<f {
                let lcp = j == 0 ? 0 : fs.commonPrefix(order[j - 1], order[j])
                runLCP[j] = UInt32(lcp)
                runStart[j] = UInt32(n)
                n += Int(fs.length[Int(order[j])]) - lcp
                precondition(n < Int(Automaton.payload), "too many automaton states")
            }
            runStart[f] = UInt32(n)
            stateCount = n

            label = LockedArray(repeating: 0, count: n, meter: meter)
            for j in 0..<f {
                let form = fs.form(Int(order[j]))
                let lcp = Int(runLCP[j])
                (label.base + Int(runStart[j])).update(
                    from: form.baseAddress!.assumingMemoryBound(to: UInt8.self) + lcp, count: form.count - lcp)
            }
        }
        forms = nil   // the form bytes are wiped and unlocked here

        // The parent of each run's first state: the state at depth lcp on
        // the previous form's path (a stack of the runs along that path).
        let parent = LockedArray<UInt32>(repeating: 0, count: formCount, meter: meter)
        let stack = LockedArray<UInt32>(capacity: 64, meter: meter)
        for j in 0..<formCount {
            let l = Int(runLCP[j])
            if l == 0 {
                stack.removeAll()
            } else {
                while let top = stack.isEmpty ? nil : Int(stack[stack.count - 1]), Int(runLCP[top]) >= l {
                    stack.truncate(to: stack.count - 1)
                }
                let r = Int(stack[stack.count - 1])
                parent[j] = UInt32(Int(runStart[r]) + (l - Int(runLCP[r]) - 1))
            }
            stack.append(UInt32(j))
        }
        runParent = parent
    }

    // MARK: Phase 2: children

    func linkBranches() {
        let n = stateCount, f = formCount
        let parent = runParent!
        // Every state has a first child but the leaves: the last state of a
        // run, unless the next run hangs from it (its form extends this one).
        hasChild = BitArray(count: n, meter: meter)
        for v in 0..<(n - 1) { hasChild.set(v) }
        for j in 0..<f {
            let last = Int(runStart[j + 1]) - 1
            if !(j + 1 < f && Int(parent[j + 1]) == last) { hasChild.clear(last) }
        }
        // A run that does not start right after its parent is a further child.
        branch = BitArray(count: n, meter: meter)
        var extra = 0
        for j in 0..<f where Int(runStart[j]) != Int(parent[j]) + 1 {
            branch.set(Int(parent[j]))
            extra += 1
        }
        branch.buildRanks()
        let bc = branch.setCount
        branchStart = LockedArray(repeating: 0, count: bc + 1, meter: meter)
        for j in 0..<f where Int(runStart[j]) != Int(parent[j]) + 1 {
            branchStart[branch.rank(Int(parent[j])) + 1] += 1
        }
        for r in 0..<bc { branchStart[r + 1] += branchStart[r] }
        branchByte = LockedArray(repeating: 0, count: extra, meter: meter)
        branchNode = LockedArray(repeating: 0, count: extra, meter: meter)
        // Runs come in sorted order, so each state's further children arrive
        // by increasing byte.
        let cursor = LockedArray<UInt32>(repeating: 0, count: bc + 1, meter: meter)
        cursor.base.update(from: branchStart.base, count: bc + 1)
        for j in 0..<f where Int(runStart[j]) != Int(parent[j]) + 1 {
            let r = branch.rank(Int(parent[j]))
            let at = Int(cursor[r])
            cursor[r] += 1
            branchByte[at] = label[Int(runStart[j])]
            branchNode[at] = runStart[j]
        }
    }

    @inline(__always)
    func child(_ v: Int, _ b: UInt8) -> Int {
        trieChild(v, b, label, hasChild, branch, branchStart, branchByte, branchNode)
    }

    // MARK: Phase 3: breadth-first order

    /// Calls `body(v, depth, run, parent)` for every state but the root in
    /// breadth-first order (by depth, then id), until it returns false. At
    /// each depth only the runs whose form is at least that long are visited,
    /// so the whole walk costs the total length of the distinct forms.
    func forEachStateByLevel(_ body: (Int, Int, Int, Int) -> Bool) {
        let active = LockedArray<UInt32>(capacity: formCount, meter: meter)
        for j in 0..<formCount { active.append(UInt32(j)) }
        let parent = runParent!
        var d = 1
        while active.count > 0 {
            var w = 0
            for a in 0..<active.count {
                let j = Int(active.base[a])
                let lcp = Int(runLCP.base[j])
                if formLength(j) < d { continue }
                active.base[w] = UInt32(j)
                w += 1
                if lcp >= d { continue }
                let v = Int(runStart.base[j]) + (d - lcp - 1)
                let p = d == lcp + 1 ? Int(parent.base[j]) : v - 1
                if !body(v, d, j, p) { return }
            }
            active.truncate(to: w)
            d += 1
        }
    }

    /// The dense states: the first in breadth-first order. Enough for every
    /// state of depth 2 or less (ordinary text keeps the scan there: a pair
    /// of bytes that begins some form is common, three are not), and at least
    /// `Automaton.denseFloor` entries' worth, within `budget`.
    func chooseDense(budget: Int) {
        var shallow = 1
        forEachStateByLevel { _, d, _, _ in
            if d > 2 { return false }
            shallow += 1
            return true
        }
        let wanted = max(shallow, min(Automaton.denseFloor, budget) / classCount)
        let k = max(1, min(stateCount, wanted, budget / classCount, Automaton.maxDenseCount))
        denseCount = k
        denseNode = LockedArray(repeating: 0, count: k, meter: meter)
        let bits = BitArray(count: stateCount, meter: meter)
        bits.set(0)
        var next = 1
        if next < k {
            forEachStateByLevel { v, _, _, _ in
                denseNode[next] = UInt32(v)
                bits.set(v)
                next += 1
                return next < k
            }
        }
        bits.buildRanks()
        let byRank = LockedArray<UInt16>(repeating: 0, count: k, meter: meter)
        for i in 0..<k { byRank[bits.rank(Int(denseNode[i]))] = UInt16(i) }
        isDense = bits
        denseIndexByRank = byRank
    }

    /// Dense index of state `v`, or -1.
    @inline(__always)
    func denseIndex(_ v: Int) -> Int {
        let bits = isDense.unsafelyUnwrapped
        return bits.test(v) ? Int(denseIndexByRank.unsafelyUnwrapped.base[bits.rank(v)]) : -1
    }

    /// The failure link of `v` (computed already).
    func failNode(_ v: Int) -> Int {
        let c = failCode.base[v]
        if c <= Automaton.lastDenseCode { return Int(denseNode.base[Int(c)]) }
        if c == Automaton.explicitCode { return Int(map!.get(UInt32(2 * v))) }
        let k = Int(c - Automaton.lastDenseCode)
        let a = v - k
        let ac = failCode.base[a]
        let base = ac <= Automaton.lastDenseCode ? Int(denseNode.base[Int(ac)]) : Int(map!.get(UInt32(2 * a)))
        return base + k
    }

    /// The automaton's transition from state `s` on `b`, by the trie and the
    /// failure links computed so far (all of them shallower than the caller's
    /// state).
    func delta(_ s0: Int, _ b: UInt8) -> Int {
        var s = s0
        while true {
            let c = child(s, b)
            if c >= 0 { return c }
            if s == 0 { return 0 }
            s = failNode(s)
        }
    }

    func computeFailureLinks() {
        let n = stateCount, k = denseCount
        failCode = LockedArray(repeating: 0, count: n, meter: meter)
        explicit = BitArray(count: n, meter: meter)
        match = BitArray(count: n, meter: meter)
        denseDepth = LockedArray(repeating: 0, count: k, meter: meter)
        denseOut = LockedArray(repeating: 0, count: k, meter: meter)
        // About one state in ten has an explicit link or a deep output (a
        // thousand secrets: 81,000 and 26,000 of 1.1 million); sized for a
        // little more, the map rarely grows (growing holds both tables at once).
        map = NodeMap(expected: n / 9, meter: meter)
        let map = self.map!
        var bfs = 1   // breadth-first position of the next state (the root is 0)
        forEachStateByLevel { v, d, j, p in
            var f = 0, fp = 0
            if d > 1 {
                fp = failNode(p)
                f = delta(fp, label.base[v])
            }
            let fIndex = denseIndex(f)
            var out = 0
            if d == formLength(j) {
                out = d
            } else if fIndex >= 0 {
                out = Int(denseOut.base[fIndex])
            } else if match.test(f) {
                out = Int(map.get(UInt32(2 * f + 1)))
            }
            if fIndex >= 0 {
                failCode.base[v] = UInt16(fIndex)
            } else {
                precondition(bfs >= k, "a dense state fails to a deep one")
                var run = 0
                if v == p + 1 && f == fp + 1 {
                    let pc = failCode.base[p]
                    run = pc > Automaton.lastDenseCode && pc != Automaton.explicitCode
                        ? Int(pc - Automaton.lastDenseCode) + 1 : 1
                }
                if run >= 1 && run <= continuationLimit {
                    failCode.base[v] = Automaton.lastDenseCode + UInt16(run)
                } else {
                    failCode.base[v] = Automaton.explicitCode
                    explicit.set(v)
                    map.put(UInt32(2 * v), UInt32(f))
                }
            }
            if bfs < k {
                denseDepth.base[bfs] = UInt32(d)
                denseOut.base[bfs] = UInt32(out)
            } else if out != 0 {
                match.set(v)
                map.put(UInt32(2 * v + 1), UInt32(out))
            }
            bfs += 1
            return true
        }
        // The rank-indexed tables, then the map goes.
        explicit.buildRanks()
        explicitFail = LockedArray(capacity: explicit.setCount, meter: meter)
        explicit.forEachSet { v in explicitFail.append(map.get(UInt32(2 * v))) }
        match.buildRanks()
        matchOut = LockedArray(capacity: match.setCount, meter: meter)
        match.forEachSet { v in matchOut.append(map.get(UInt32(2 * v + 1))) }
        self.map = nil
    }

    // MARK: Phase 4: dense rows

    func encode(_ v: Int) -> UInt32 {
        let i = denseIndex(v)
        if i >= 0 {
            return UInt32(i * classCount) | (denseOut.base[i] != 0 ? Automaton.matchFlag : 0)
        }
        return UInt32(v) | Automaton.sparseFlag | (match.test(v) ? Automaton.matchFlag : 0)
    }

    func fillDenseRows() {
        let k = denseCount, nc = classCount
        dense = LockedArray(repeating: 0, count: k * nc, meter: meter)   // the root's row: all to the root
        for i in 0..<k {
            let u = Int(denseNode[i])
            let row = dense.base + i * nc
            if i != 0 {
                // Failure transitions first: a copy of the failure state's row
                // (a dense state fails to a dense state earlier in the order).
                row.update(from: dense.base + Int(failCode[u]) * nc, count: nc)
            }
            guard hasChild.test(u) else { continue }
            row[Int(classOf[Int(label[u + 1])])] = encode(u + 1)
            if branch.test(u) {
                let r = branch.rank(u)
                for m in Int(branchStart[r])..<Int(branchStart[r + 1]) {
                    row[Int(classOf[Int(branchByte[m])])] = encode(Int(branchNode[m]))
                }
            }
        }
    }

    func dropScratch() {
        runParent = nil
        isDense = nil
        denseIndexByRank = nil
        map = nil
    }
}
