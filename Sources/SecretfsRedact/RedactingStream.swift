/// Redacts a byte stream that arrives in chunks of any size.
///
/// Each `write` scans its chunk and passes to the sink, at once, every byte
/// that can no longer become part of a match: everything except the longest
/// tail that is still the beginning of some registered form (at most
/// `redactor.longestForm` bytes). No registered form contains a newline, so a
/// newline always releases everything before it: output is at least
/// line-buffered, which keeps `tail -f | secretfs redact` live. `finish()`
/// releases the rest.
///
/// Masking: the union of all match intervals is masked, one mask per maximal
/// run of overlapping *or adjacent* matches, so no fragment of a longer match
/// survives and two values written back to back show as one mask. The result
/// is identical whatever the chunking (1-byte writes included).
///
/// Memory: the held-back tail lives in locked memory (it may be the start of
/// a value) and is bounded by the longest form; pending matches are kept as
/// positions only. A stream is not thread-safe; use one per source.
public final class RedactingStream {
    public typealias Sink = (UnsafeRawBufferPointer) throws -> Void

    /// The redactor in use (see `replaceRedactor(_:)`).
    public private(set) var redactor: Redactor
    private let sink: Sink

    /// Current automaton state (encoded, match flag cleared).
    private var state: UInt32 = 0
    /// Bytes consumed so far (absolute positions count from 0).
    private var position = 0
    /// Every byte before this has been written or masked.
    private var emitted = 0
    /// When >= 0, a mask has been written for a run ending here (inclusive)
    /// that a later adjacent match may still extend.
    private var openMaskEnd = -1
    /// Pending runs to mask, disjoint, non-adjacent, in order (start, end
    /// inclusive); the ones before `regionHead` are done.
    private var regions: [(start: Int, end: Int)] = []
    private var regionHead = 0
    /// Bytes [emitted, position) of earlier writes, kept because they may be
    /// the start of a value.
    private let held: LockedArray<UInt8>

    // The chunk being written (valid during write only).
    private var chunk: UnsafePointer<UInt8>? = nil
    private var chunkStart = 0

    public init(redactor: Redactor, sink: @escaping Sink) {
        self.redactor = redactor
        self.sink = sink
        held = LockedArray(capacity: redactor.longestForm + 1)
    }

    /// Number of bytes currently held back.
    public var heldBackCount: Int { held.count }

    /// Scans `bytes` and writes whatever is final to the sink. If the sink
    /// throws, the error is passed on and the stream should be discarded.
    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        let n = bytes.count
        guard n > 0, let p = bytes.baseAddress?.assumingMemoryBound(to: UInt8.self) else { return }
        chunk = p
        chunkStart = position
        defer { chunk = nil }
        var finalPoint = position + n
        if let a = redactor.automaton {
            scan(a, p, n)
            position += n
            finalPoint = position - a.depth(of: state)
        } else {
            position += n
        }
        try release(upTo: finalPoint)
        keepTail(p, n)
    }

    public func write(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try write($0) }
    }

    /// Releases everything still held back; the next write starts afresh (a
    /// match never spans a `finish`).
    public func finish() throws {
        chunkStart = position
        try release(upTo: position)
        openMaskEnd = -1
        held.removeAll()
        state = redactor.automaton?.root ?? 0
        precondition(emitted == position && regionHead == regions.count)
        regions.removeAll(keepingCapacity: true)
        regionHead = 0
    }

    /// Switches to another redactor (the values changed) without losing the
    /// stream's place: masks already decided stand, and the held-back tail is
    /// scanned again with the new matcher.
    public func replaceRedactor(_ newRedactor: Redactor) throws {
        redactor = newRedactor
        state = newRedactor.automaton?.root ?? 0
        let tail = LockedArray<UInt8>(capacity: held.count + 1)
        tail.append(held.rawBuffer)
        held.removeAll()
        position = emitted
        try write(tail.rawBuffer)
    }

    // MARK: - Scanning

    /// Runs the automaton over the chunk, recording matches.
    ///
    /// The common case (a dense state without output) is one table load per
    /// byte, but each load depends on the previous one, so a single walk is
    /// bound by memory latency. A large chunk is therefore cut in two halves
    /// walked in lockstep (independent loads overlap in the CPU). The second
    /// walker starts at the root `longestForm` bytes before its half: the
    /// automaton's state only depends on that many trailing bytes, so it is
    /// exact from the half's first byte on. Matches are recorded in input
    /// order: the second walker's are queued until the first one is done.
    private func scan(_ a: Automaton, _ p: UnsafePointer<UInt8>, _ n: Int) {
        let w = a.maxLength
        guard n >= 1 << 13, n >= 4 * w else {
            var i = 0
            state = walk(a, p, &i, n, state, queue: false)
            return
        }
        let m = (n + w) / 2             // first half [0, m), second [m, n)
        var s0 = state, s1 = a.root
        var i0 = 0, i1 = m - w          // i1 < m: warming up, no matches recorded
        let dense = UnsafePointer(a.dense.base)
        let cls = UnsafePointer(a.classOf.base)
        let flags = Automaton.flags
        queued.removeAll(keepingCapacity: true)
        while i0 < m && i1 < n {
            if (s0 | s1) & flags == 0 {
                s0 = dense[Int(s0) &+ Int(cls[Int(p[i0])])]
                s1 = dense[Int(s1) &+ Int(cls[Int(p[i1])])]
                i0 &+= 1
                i1 &+= 1
                continue
            }
            if s0 & flags != 0 { s0 = slowStep(a, p, &i0, m, s0, queue: false, from: 0) }
            if s1 & flags != 0 { s1 = slowStep(a, p, &i1, n, s1, queue: true, from: m) }
        }
        _ = walk(a, p, &i0, m, s0, queue: false)
        for (start, end) in queued { addMatch(start: start, end: end) }
        queued.removeAll(keepingCapacity: true)
        state = walk(a, p, &i1, n, s1, queue: false, from: m)
    }

    /// Matches found by the second walker, waiting for the first.
    private var queued: [(Int, Int)] = []

    /// One walker over p[i..<end]; returns the state (match flag cleared).
    @inline(__always)
    private func walk(_ a: Automaton, _ p: UnsafePointer<UInt8>, _ i: inout Int, _ end: Int,
                      _ state: UInt32, queue: Bool, from: Int = 0) -> UInt32 {
        let dense = UnsafePointer(a.dense.base)
        let cls = UnsafePointer(a.classOf.base)
        let flags = Automaton.flags
        var s = state
        var j = i
        while true {
            while s & flags == 0 {
                if j == end { i = j; return s }
                s = dense[Int(s) &+ Int(cls[Int(p[j])])]
                j &+= 1
            }
            s = slowStep(a, p, &j, end, s, queue: queue, from: from)
            if j == end && s & flags == 0 { i = j; return s }
            if j == end && s & Automaton.matchFlag == 0 { i = j; return s }  // sparse, input done
        }
    }

    /// Handles a state with flags: records its match (if the match ends at or
    /// after `from`), then takes one sparse step if the state is sparse and
    /// input remains. Returns the new state.
    @inline(never)
    private func slowStep(_ a: Automaton, _ p: UnsafePointer<UInt8>, _ i: inout Int, _ end: Int,
                          _ state: UInt32, queue: Bool, from: Int) -> UInt32 {
        var s = state
        if s & Automaton.matchFlag != 0 {
            s &= ~Automaton.matchFlag
            let e = i - 1
            if e >= from {
                let len = a.matchLength(of: s)
                let absEnd = chunkStart + e
                if queue { queued.append((absEnd - len + 1, absEnd)) } else { addMatch(start: absEnd - len + 1, end: absEnd) }
            }
        }
        if s & Automaton.sparseFlag != 0 && i < end {
            s = a.sparseStep(s, p[i])
            i &+= 1
        }
        return s
    }

    /// Records the match [start, end], merging it with pending runs it
    /// overlaps or touches (those are always the last ones).
    private func addMatch(start: Int, end: Int) {
        var s = start
        while regions.count > regionHead, let last = regions.last, last.end >= s - 1 {
            s = min(s, last.start)
            regions.removeLast()
        }
        if regions.count == regionHead, openMaskEnd >= 0, s <= openMaskEnd + 1 {
            openMaskEnd = max(openMaskEnd, end)
            emitted = max(emitted, openMaskEnd + 1)
        } else {
            regions.append((s, end))
        }
    }

    // MARK: - Output

    /// Writes out clean bytes and masks before `finalPoint` (no match can
    /// start before it any more).
    private func release(upTo finalPoint: Int) throws {
        while true {
            if openMaskEnd >= 0 {
                // The run is closed once a match could no longer touch it.
                if openMaskEnd + 1 < finalPoint { openMaskEnd = -1 } else { break }
            }
            let nextStart = regionHead < regions.count ? regions[regionHead].start : Int.max
            let cleanEnd = min(finalPoint, nextStart)
            if cleanEnd > emitted {
                try writeClean(from: emitted, to: cleanEnd)
                emitted = cleanEnd
            }
            guard nextStart < finalPoint else { break }
            try redactor.maskBytes.withUnsafeBytes { try sink($0) }
            openMaskEnd = regions[regionHead].end
            emitted = max(emitted, openMaskEnd + 1)
            regionHead += 1
        }
        if regionHead == regions.count {
            regions.removeAll(keepingCapacity: true)
            regionHead = 0
        }
    }

    /// Passes bytes [from, to) to the sink, from the held tail and/or the chunk.
    private func writeClean(from: Int, to: Int) throws {
        let heldStart = chunkStart - held.count
        var a = from
        if a < chunkStart {
            let z = min(to, chunkStart)
            try sink(UnsafeRawBufferPointer(start: held.base + (a - heldStart), count: z - a))
            a = z
        }
        if a < to, let c = chunk {
            try sink(UnsafeRawBufferPointer(start: c + (a - chunkStart), count: to - a))
        }
    }

    /// Keeps bytes [emitted, position) for the next write.
    private func keepTail(_ p: UnsafePointer<UInt8>, _ n: Int) {
        let heldStart = chunkStart - held.count
        if emitted >= chunkStart {
            held.removeAll()
            if emitted < position {
                held.append(contentsOf: p + (emitted - chunkStart), count: position - emitted)
            }
        } else {
            let drop = emitted - heldStart
            if drop > 0 {
                let keep = held.count - drop
                held.base.update(from: held.base + drop, count: keep)
                held.truncate(to: keep)
            }
            held.append(contentsOf: p, count: n)
        }
    }
}
