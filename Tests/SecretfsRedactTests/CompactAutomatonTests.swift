import SecretfsTestSupport
import Foundation
import Testing
import SecureMemory
@testable @_spi(Testing) import SecretfsRedact

// Tests of the compact automaton: its locked memory at a thousand secrets, its
// output against a naive masker (every dense budget and continuation limit,
// so the dense rows, the deep chains, the continuations and the explicit
// links are all exercised), and its building blocks. No timing here.

private func secure(_ b: [UInt8]) -> SecureBytes {
    b.withUnsafeBytes { SecureBytes(copying: $0) }
}

private func build(_ values: [[UInt8]], minimumLength: Int = 4, denseBudget: Int = Redactor.defaultDenseBudget,
                   continuationLimit: Int = Automaton.maxContinuation) -> Redactor {
    var secrets = values.enumerated().map { (name: "S\($0.offset)", value: secure($0.element)) }
    return Redactor(secrets: &secrets,
             options: RedactionOptions(minimumLength: minimumLength), denseBudget: denseBudget,
             continuationLimit: continuationLimit)
}

private func registeredForms(_ r: Redactor) -> [[UInt8]] {
    var forms: [[UInt8]] = []
    r.forEachRegisteredForm { forms.append(Array($0)) }
    return forms
}

/// The contract, computed the slow way: every occurrence of every form is an
/// interval; overlapping or adjacent intervals merge; each merged run becomes
/// one mask.
private func naiveRedact(_ input: [UInt8], forms: [[UInt8]], mask: [UInt8] = Array("[REDACTED]".utf8)) -> [UInt8] {
    var intervals: [(Int, Int)] = []
    for f in forms where f.count <= input.count {
        let first = f[0]
        for i in 0...(input.count - f.count) where input[i] == first {
            var j = 1
            while j < f.count && input[i + j] == f[j] { j += 1 }
            if j == f.count { intervals.append((i, i + f.count)) }
        }
    }
    intervals.sort { $0.0 < $1.0 }
    var out: [UInt8] = []
    var pos = 0, k = 0
    while k < intervals.count {
        var (start, end) = intervals[k]
        k += 1
        while k < intervals.count && intervals[k].0 <= end {
            end = max(end, intervals[k].1)
            k += 1
        }
        out += input[pos..<start]
        out += mask
        pos = end
    }
    out += input[pos...]
    return out
}

private func streamed(_ r: Redactor, _ input: [UInt8], rng: inout SplitMix64) throws -> [UInt8] {
    var out: [UInt8] = []
    let stream = RedactingStream(redactor: r) { out.append(contentsOf: $0) }
    var i = 0
    while i < input.count {
        let n = min(1 + Int(rng.next() % 40), input.count - i)
        try input[i..<(i + n)].withUnsafeBytes { try stream.write($0) }
        #expect(stream.heldBackCount <= r.longestForm)
        i += n
    }
    try stream.finish()
    return out
}

// MARK: - Locked memory at a thousand secrets

/// `n` values of realistic shape, 20 to 64 bytes: API tokens, passwords with
/// the punctuation that gives every encoding a distinct form (quotes,
/// backslash, `&<>`, space, `/`, `+`), and some non-ASCII.
private func realisticValues(_ n: Int, seed: UInt64) -> [[UInt8]] {
    var rng = SplitMix64(seed: seed)
    let token = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789".utf8)
    let punct = Array("!@#$%^&*()-_=+[]{};:',.<>/?\"\\ ~`|".utf8)
    let prefixes = ["sk_live_", "ghp_", "xoxb-", "AKIA", "glpat-", ""]
    var out: [[UInt8]] = []
    for i in 0..<n {
        let length = 20 + Int(rng.next() % 45)   // 20...64
        var v: [UInt8] = []
        switch i % 4 {
        case 0, 1:
            v = Array(prefixes[Int(rng.next() % UInt64(prefixes.count))].utf8)
            while v.count < length { v.append(token[Int(rng.next() % UInt64(token.count))]) }
        case 2:
            while v.count < length {
                v.append(rng.next() % 3 == 0 ? punct[Int(rng.next() % UInt64(punct.count))]
                                              : token[Int(rng.next() % UInt64(token.count))])
            }
        default:
            while v.count < length - 2 {
                if rng.next() % 6 == 0 { v += Array("é".utf8) } else { v.append(token[Int(rng.next() % UInt64(token.count))]) }
            }
            while v.count < length { v.append(UInt8(ascii: "x")) }
        }
        out.append(v)
    }
    return out
}

@Test func thousandRealisticSecretsFitTheDefaultLockLimit() {
    let values = realisticValues(1000, seed: 2026)
    #expect(values.allSatisfy { (20...64).contains($0.count) })
    let r = build(values)
    #expect(r.registeredNames.count == 1000)
    #expect(r.formCount > 15_000)   // all the encodings, not just the values
    // A non-root user's default `ulimit -l` is 8 MiB: the tables, and the
    // build at its peak, fit in it.
    #expect(r.lockedBytes <= 8 << 20, "tables lock \(r.lockedBytes) bytes")
    #expect(r.peakBuildLockedBytes <= 8 << 20, "the build peaks at \(r.peakBuildLockedBytes) bytes")
    #expect(r.peakBuildLockedBytes >= r.lockedBytes)
    // And it masks them (spot checks; encodings are covered elsewhere).
    for v in values.prefix(20) {
        #expect(r.redact(Array("<".utf8) + v + Array(">".utf8)) == Array("<[REDACTED]>".utf8))
        let b64 = Array(Data(Array("user:".utf8) + v).base64EncodedString().utf8)
        #expect(r.redact(b64).count < b64.count)
    }
}

@Test func thousandSecretsWithMultiLineValuesFitTheDefaultLockLimit() {
    // The benchmark's mix (scripts/bench-redact-harness.swift): one value in
    // ten is a PEM-like key whose lines are registered one by one, in every
    // encoding, which makes this the larger set (about 1.1 million states).
    var rng = SplitMix64(seed: 0x5EC2E7)
    let token = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789".utf8)
    let punct = Array("!@#$%^&*()-_=+[]{};:',.<>/? \"\\".utf8)
    var values: [[UInt8]] = []
    for i in 0..<1000 {
        var v: [UInt8] = []
        switch i % 10 {
        case 0...4:
            v = Array(["sk_live_", "ghp_", "xoxb-", "AKIA", ""][i % 5].utf8)
            for _ in 0..<32 { v.append(token[Int(rng.next() % 62)]) }
        case 5...8:
            for _ in 0..<(12 + Int(rng.next() % 12)) {
                v.append(rng.next() % 4 == 0 ? punct[Int(rng.next() % UInt64(punct.count))] : token[Int(rng.next() % 62)])
            }
        default:
            v = Array("-----BEGIN PRIVATE KEY-----\n".utf8)
            for _ in 0..<3 {
                for _ in 0..<64 { v.append(token[Int(rng.next() % 62)]) }
                v.append(10)
            }
            v += Array("-----END PRIVATE KEY-----\n".utf8)
        }
        values.append(v)
    }
    let r = build(values)
    #expect(r.formCount > 18_000)
    #expect(r.lockedBytes <= 8 << 20, "tables lock \(r.lockedBytes) bytes")
    #expect(r.peakBuildLockedBytes <= 8 << 20, "the build peaks at \(r.peakBuildLockedBytes) bytes")
}

@Test func lockedBytesCountWholePagesAsLibsodiumLocksThem() {
    let page = LockedMeter.pageSize
    // sodium_malloc locks the allocation plus a 16-byte canary, in whole pages.
    #expect(LockedMeter.lockedFootprint(ofAllocation: 1) == page)
    #expect(LockedMeter.lockedFootprint(ofAllocation: page - 16) == page)
    #expect(LockedMeter.lockedFootprint(ofAllocation: page - 15) == 2 * page)
    let meter = LockedMeter()
    do {
        let a = LockedArray<UInt32>(capacity: 10, meter: meter)
        #expect(meter.current == page)
        a.reserve(page)   // old and new allocations are held at once while copying
        #expect(a.lockedBytes >= LockedMeter.lockedFootprint(ofAllocation: 4 * page))
        #expect(meter.current == a.lockedBytes)
        #expect(meter.peak == page + a.lockedBytes)
        let b = LockedArray<UInt8>(repeating: 1, count: 3 * page, meter: meter)
        #expect(meter.current == a.lockedBytes + LockedMeter.lockedFootprint(ofAllocation: 3 * page))
        b.detachMeter()
        #expect(meter.current == a.lockedBytes)
    }
    #expect(meter.current == 0)
    // A redactor reports its tables; an empty one has none.
    #expect(build([]).lockedBytes == 0)
    let r = build([Array("a-secret-value".utf8)])
    #expect(r.lockedBytes > 0 && r.lockedBytes <= r.peakBuildLockedBytes)
}

// MARK: - Against a naive masker

/// Small alphabets and related values, so that forms overlap, nest, repeat
/// periodically and share long stretches (the cases that make failure links
/// go deep and continue in lockstep).
private func overlappingValueSet(_ rng: inout SplitMix64) -> [[UInt8]] {
    let alphabet = Array((rng.next() % 2 == 0 ? "ab" : "abc").utf8)
    func word(_ n: Int) -> [UInt8] { (0..<n).map { _ in alphabet[Int(rng.next() % UInt64(alphabet.count))] } }
    var values: [[UInt8]] = []
    for _ in 0..<(3 + Int(rng.next() % 10)) {
        switch rng.next() % 6 {
        case 0: values.append(word(3 + Int(rng.next() % 10)))
        case 1:   // periodic: abab..., aab aab aab...
            let unit = word(1 + Int(rng.next() % 3))
            var v: [UInt8] = []
            while v.count < 6 + Int(rng.next() % 30) { v += unit }
            values.append(v)
        case 2:   // a long run then a different byte: aaaa...ab
            values.append([UInt8](repeating: alphabet[0], count: 5 + Int(rng.next() % 40)) + [alphabet[1]])
        case 3:   // another value with bytes around it (its prefix continues inside)
            if let base = values.last {
                values.append(word(Int(rng.next() % 3)) + base + word(Int(rng.next() % 3)))
            } else {
                values.append(word(8))
            }
        case 4:   // multi-line: its lines, and its encodings whole
            values.append(word(4 + Int(rng.next() % 8)) + [10] + word(4 + Int(rng.next() % 8)))
        default:  // punctuation, for the percent, JSON, quote and XML forms
            var v = word(3 + Int(rng.next() % 6))
            v.insert(Array("\"&<'\\ /".utf8)[Int(rng.next() % 7)], at: Int(rng.next() % UInt64(v.count)))
            values.append(v)
        }
    }
    return values
}

/// Random text over the same alphabet with registered forms planted in it,
/// whole, back to back or cut short.
private func overlappingInput(_ forms: [[UInt8]], _ rng: inout SplitMix64) -> [UInt8] {
    let alphabet = Array("abc".utf8)
    var input: [UInt8] = []
    while input.count < 1500 {
        switch rng.next() % 4 {
        case 0, 1:
            for _ in 0..<(1 + Int(rng.next() % 12)) { input.append(alphabet[Int(rng.next() % 3)]) }
        case 2:
            input += forms[Int(rng.next() % UInt64(forms.count))]
        default:
            let f = forms[Int(rng.next() % UInt64(forms.count))]
            input += f[..<(1 + Int(rng.next() % UInt64(f.count)))]
        }
        if rng.next() % 50 == 0 { input.append(10) }
    }
    return input
}

@Test func matchesANaiveMaskerOnOverlappingPatterns() throws {
    var rng = SplitMix64(seed: 11)
    let configs: [(budget: Int, limit: Int)] = [
        (1, 1), (1, 3), (1, Automaton.maxContinuation), (8, 2), (64, 1), (64, Automaton.maxContinuation),
        (Redactor.defaultDenseBudget, Automaton.maxContinuation),
    ]
    for trial in 0..<24 {
        let values = overlappingValueSet(&rng)
        let reference = build(values, minimumLength: 3)
        let forms = registeredForms(reference)
        guard !forms.isEmpty else { continue }
        let input = overlappingInput(forms, &rng)
        let expected = naiveRedact(input, forms: forms)
        for (budget, limit) in configs {
            let r = build(values, minimumLength: 3, denseBudget: budget, continuationLimit: limit)
            #expect(registeredForms(r) == forms)
            #expect(r.redact(input) == expected, "trial \(trial), budget \(budget), limit \(limit)")
            #expect(try streamed(r, input, rng: &rng) == expected, "streamed: trial \(trial), budget \(budget), limit \(limit)")
        }
    }
}

@Test func matchesANaiveMaskerOnRealisticValuesInsideEachOther() throws {
    // Tokens that contain each other's prefixes for long stretches (as a PEM
    // value's JSON encoding contains its lines): long lockstep chains, cut
    // into short continuations here so that anchors are everywhere.
    var rng = SplitMix64(seed: 12)
    let token = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789".utf8)
    func word(_ n: Int) -> [UInt8] { (0..<n).map { _ in token[Int(rng.next() % 62)] } }
    let a = word(40), b = word(30)
    let values: [[UInt8]] = [
        a, b, Array("key:".utf8) + a, a + Array(":".utf8) + b, Array("-----BEGIN-----\n".utf8) + a + [10] + b + [10],
        Array(a[10..<30]), Array("p@ss \"w0rd\" & <more>/".utf8) + b,
    ]
    let reference = build(values)
    let forms = registeredForms(reference)
    var input: [UInt8] = []
    for _ in 0..<300 {
        let f = forms[Int(rng.next() % UInt64(forms.count))]
        switch rng.next() % 3 {
        case 0: input += f
        case 1: input += f[..<(1 + Int(rng.next() % UInt64(f.count)))]
        default: input += word(1 + Int(rng.next() % 8))
        }
    }
    let expected = naiveRedact(input, forms: forms)
    #expect(expected != input)
    for (budget, limit) in [(1, 1), (1, 5), (64, 2), (4096, Automaton.maxContinuation),
                            (Redactor.defaultDenseBudget, Automaton.maxContinuation)] {
        let r = build(values, denseBudget: budget, continuationLimit: limit)
        #expect(r.redact(input) == expected, "budget \(budget), limit \(limit)")
        #expect(try streamed(r, input, rng: &rng) == expected, "streamed: budget \(budget), limit \(limit)")
    }
}

@Test func registeredFormsAreExactlyTheGeneratedOnes() {
    var rng = SplitMix64(seed: 13)
    for _ in 0..<20 {
        let values = overlappingValueSet(&rng)
        var generated = Set<[UInt8]>()
        let generator = FormGenerator(minimumLength: 3) { generated.insert(Array($0)) }
        for v in values where v.count >= 3 && !v.allSatisfy(isASCIIWhitespace) {
            v.withUnsafeBytes { generator.addForms(of: $0) }
        }
        let r = build(values, minimumLength: 3)
        let forms = registeredForms(r)
        #expect(Set(forms) == generated)
        #expect(forms.count == generated.count && forms.count == r.formCount)
        // In byte order, a prefix first: the depth-first order of the trie.
        #expect(zip(forms, forms.dropFirst()).allSatisfy { $0.lexicographicallyPrecedes($1) })
        #expect(r.longestForm == (forms.map(\.count).max() ?? 0))
    }
}

@Test func heldBackTailIsTheLongestFormPrefix() throws {
    // The depth of a deep state comes from its run (a binary search): after
    // each write the stream holds exactly the longest suffix that some form
    // begins with.
    let value = Array("q7Vx2LmN9pR4sT6uW8yZ0bC3dF5gH1jK".utf8)
    for budget in [1, 64, Redactor.defaultDenseBudget] {
        let r = build([value, Array(value[4..<20])], denseBudget: budget)
        var out: [UInt8] = []
        let stream = RedactingStream(redactor: r) { out.append(contentsOf: $0) }
        try stream.write(Array("log: ".utf8))
        #expect(stream.heldBackCount == 0)
        for k in 1..<value.count {
            try stream.write([value[k - 1]])
            #expect(stream.heldBackCount == k, "budget \(budget), after \(k) bytes")
        }
        try stream.write(Array(" x".utf8))
        try stream.finish()
        // The full value never came (its last byte is missing); the inner
        // value, bytes 4..<20, did.
        #expect(String(decoding: out, as: UTF8.self) == "log: q7Vx[REDACTED]0bC3dF5gH1j x")
    }
}

// MARK: - Building blocks

@Test func bitArrayRankMatchesCounting() {
    var rng = SplitMix64(seed: 14)
    for count in [0, 1, 63, 64, 65, 511, 512, 513, 5000] {
        let bits = BitArray(count: count, meter: nil)
        var reference = [Bool](repeating: false, count: count)
        for i in 0..<count where rng.next() % 3 == 0 { bits.set(i); reference[i] = true }
        for i in 0..<count where reference[i] && rng.next() % 4 == 0 { bits.clear(i); reference[i] = false }
        bits.buildRanks()
        var r = 0
        for i in 0..<count {
            #expect(bits.rank(i) == r)
            #expect(bits.test(i) == reference[i])
            if reference[i] { r += 1 }
        }
        #expect(bits.rank(count) == r && bits.setCount == r)
        var listed: [Int] = []
        bits.forEachSet { listed.append($0) }
        #expect(listed == reference.indices.filter { reference[$0] })
    }
}

@Test func nodeMapKeepsEveryKeyAcrossGrowth() {
    let meter = LockedMeter()
    let map = NodeMap(expected: 10, meter: meter)
    var rng = SplitMix64(seed: 15)
    var reference: [UInt32: UInt32] = [:]
    for _ in 0..<20_000 {
        let k = UInt32(truncatingIfNeeded: rng.next() % 1_000_000) * 2
        let v = UInt32(truncatingIfNeeded: rng.next())
        map.put(k, v)
        reference[k] = v
    }
    #expect(map.count == reference.count)
    for (k, v) in reference { #expect(map.get(k) == v) }
}

@Test func heapSortSorts() {
    var rng = SplitMix64(seed: 16)
    for n in [0, 1, 2, 3, 10, 1000] {
        let a = LockedArray<UInt32>(capacity: max(n, 1))
        var reference: [UInt32] = []
        for _ in 0..<n {
            let x = UInt32(truncatingIfNeeded: rng.next() % 100)
            a.append(x)
            reference.append(x)
        }
        heapSort(a, by: <)
        #expect(Array(a.buffer) == reference.sorted())
    }
}
