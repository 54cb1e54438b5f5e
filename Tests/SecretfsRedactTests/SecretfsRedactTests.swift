import SecretfsTestSupport
import Foundation
import Testing
import SecureMemory
@testable @_spi(Testing) import SecretfsRedact

// MARK: - Helpers

private func secure(_ s: String) -> SecureBytes {
    Array(s.utf8).withUnsafeBytes { SecureBytes(copying: $0) }
}

private func secure(_ b: [UInt8]) -> SecureBytes {
    b.withUnsafeBytes { SecureBytes(copying: $0) }
}

private func makeRedactor(_ values: [String], minimumLength: Int = 4, mask: String = "[REDACTED]",
                          denseBudget: Int = Redactor.defaultDenseBudget) -> Redactor {
    var secrets = values.enumerated().map { (name: "S\($0.offset)", value: secure($0.element)) }
    return Redactor(secrets: &secrets,
             options: RedactionOptions(minimumLength: minimumLength, mask: mask),
             denseBudget: denseBudget)
}

private func redact(_ r: Redactor, _ s: String) -> String {
    String(decoding: r.redact(Array(s.utf8)), as: UTF8.self)
}

/// Redacts `input` through a stream fed in chunks of the given sizes (cycled),
/// checking the held-back bound after every write.
private func redactChunked(_ r: Redactor, _ input: [UInt8], sizes: [Int]) throws -> [UInt8] {
    var out: [UInt8] = []
    let stream = RedactingStream(redactor: r) { out.append(contentsOf: $0) }
    var i = 0, k = 0
    while i < input.count {
        let n = min(sizes[k % sizes.count], input.count - i)
        try input[i..<(i + n)].withUnsafeBytes { try stream.write($0) }
        #expect(stream.heldBackCount <= max(r.longestForm, 1))
        i += n; k += 1
    }
    try stream.finish()
    return out
}

/// Asserts that `payload`'s characters in `mustCover` (offsets) fall inside
/// the single mask of the redacted output, and that the rest is unchanged.
private func expectMasked(_ r: Redactor, payload: String, mustCover: Range<Int>,
                          sourceLocation: SourceLocation = #_sourceLocation) {
    let p = Array(payload.utf8)
    let out = r.redact(p)
    let mask = Array("[REDACTED]".utf8)
    guard let a = (0...(max(out.count - mask.count, -1))).first(where: { Array(out[$0..<($0 + mask.count)]) == mask })
    else {
        Issue.record("not masked: \(payload)", sourceLocation: sourceLocation)
        return
    }
    let tail = out.count - a - mask.count
    let b = p.count - tail
    #expect(Array(out[..<a]) == Array(p[..<a]), sourceLocation: sourceLocation)
    #expect(Array(out[(a + mask.count)...]) == Array(p[b...]), sourceLocation: sourceLocation)
    #expect(a <= mustCover.lowerBound && b >= mustCover.upperBound,
            "mask [\(a),\(b)) does not cover \(mustCover) in \(payload)", sourceLocation: sourceLocation)
}

// MARK: - Plain values

@Test func masksPlainValueAndKeepsTheRest() {
    let r = makeRedactor(["hunter2-secret"])
    #expect(redact(r, "login with hunter2-secret now") == "login with [REDACTED] now")
    #expect(redact(r, "nothing here\n") == "nothing here\n")
    #expect(redact(r, "hunter2-secrethunter2-secret") == "[REDACTED]")
    #expect(r.skipped.isEmpty)
    #expect(r.registeredNames == ["S0"])
}

@Test func maskIsConfigurableAndIndependentOfLength() {
    let r = makeRedactor(["abcd", "a-much-longer-secret-value"], mask: "***")
    #expect(redact(r, "x abcd y") == "x *** y")
    #expect(redact(r, "x a-much-longer-secret-value y") == "x *** y")
}

@Test func stringConvenienceRedactsMessages() {
    let r = makeRedactor(["tok_123456"])
    #expect(r.redact("error: bad token tok_123456 (é)") == "error: bad token [REDACTED] (é)")
}

@Test func binaryValuesAreMaskedRawAndEncoded() {
    let value: [UInt8] = [0x00, 0xFF, 0xFE, 0x41, 0x0B, 0x80, 0x42, 0xC3, 0x01]
    let r = Redactor(secrets: [(name: "BIN", value: secure(value))])
    #expect(r.redact([0x20] + value + [0x20]) == Array(" [REDACTED] ".utf8))
    let b64 = Array(Data(value).base64EncodedString().utf8)
    #expect(r.redact(Array("k=".utf8) + b64) == Array("k=[REDACTED]".utf8))
    let pct = Array(value.map { String(format: "%%%02X", $0) }.joined().utf8)
    #expect(r.redact(pct) == Array("[REDACTED]".utf8))
}

// MARK: - base64

@Test func base64AtEveryAlignment() {
    let values = ["s3cr3t-Value_42", "p@ss:w0rd/with+slash?", "four", "é∑ unicode ✓ value"]
    let r = makeRedactor(values)
    for value in values {
        let v = Array(value.utf8)
        for prefix in ["", "u", "us", "user:", "Basic:x", "ab"] {
            for suffix in ["", "\n", "x", "xy", "xyz", ":more-data"] {
                let payload = Array(prefix.utf8) + v + Array(suffix.utf8)
                let p = prefix.utf8.count
                // Characters made only of value bits.
                let first = (8 * p + 5) / 6
                let last = 8 * (p + v.count) / 6
                let std = Data(payload).base64EncodedString()
                let url = std.replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
                let unpadded = std.replacingOccurrences(of: "=", with: "")
                for encoded in [std, url, unpadded] {
                    expectMasked(r, payload: "auth=" + encoded + " end", mustCover: (5 + first)..<(5 + last))
                }
                if suffix.isEmpty {
                    // The value ends the payload: the final partial character
                    // and the padding go too.
                    expectMasked(r, payload: "auth=" + std + " end", mustCover: (5 + first)..<(5 + std.count))
                }
            }
        }
    }
}

// MARK: - percent encoding

@Test func percentEncodings() {
    let value = "p@ss w0rd/&=?~x+y"
    let r = makeRedactor([value])
    var sets: [CharacterSet] = [.urlQueryAllowed, .alphanumerics, .urlPathAllowed]
    var unreserved = CharacterSet.alphanumerics
    unreserved.insert(charactersIn: "-._~")
    sets.append(unreserved)
    var query = CharacterSet.urlQueryAllowed
    query.remove(charactersIn: "+&=")
    sets.append(query)
    for set in sets {
        let enc = value.addingPercentEncoding(withAllowedCharacters: set)!
        for v in [enc, lowerHex(enc), enc.replacingOccurrences(of: "%20", with: "+")] {
            #expect(redact(r, "GET /x?q=\(v)&z=1") == "GET /x?q=[REDACTED]&z=1", "\(v)")
        }
    }
    // Every byte escaped.
    let all = value.utf8.map { String(format: "%%%02X", $0) }.joined()
    #expect(redact(r, "q=\(all)") == "q=[REDACTED]")
}

/// Lower-cases the hex digits of %XX escapes only.
private func lowerHex(_ s: String) -> String {
    var out = [UInt8]()
    var pending = 0
    for b in s.utf8 {
        if b == UInt8(ascii: "%") { pending = 2; out.append(b); continue }
        if pending > 0, b >= UInt8(ascii: "A"), b <= UInt8(ascii: "F") { out.append(b + 32) } else { out.append(b) }
        pending = max(pending - 1, 0)
    }
    return String(decoding: out, as: UTF8.self)
}

// MARK: - JSON

@Test func jsonEscapings() throws {
    let value = "a\"b\\c/d\ne\tf\u{1}g é 😀"
    let r = makeRedactor([value])
    let encoder = JSONEncoder()
    let e1 = String(decoding: try encoder.encode([value]), as: UTF8.self)
    encoder.outputFormatting = [.withoutEscapingSlashes]
    let e2 = String(decoding: try encoder.encode([value]), as: UTF8.self)
    let e3 = String(decoding: try JSONSerialization.data(withJSONObject: ["k": value]), as: UTF8.self)
    for doc in [e1, e2, e3] {
        let out = redact(r, doc)
        #expect(out == "[\"[REDACTED]\"]" || out == "{\"k\":\"[REDACTED]\"}", "\(doc) -> \(out)")
    }
    // Python json.dumps (ensure_ascii): control chars and non-ASCII as \u escapes.
    var py = ""
    for u in value.utf16 {
        switch u {
        case 0x22: py += "\\\""
        case 0x5C: py += "\\\\"
        case 0x0A: py += "\\n"
        case 0x09: py += "\\t"
        case 0..<0x20, 0x7F...: py += String(format: "\\u%04x", u)
        default: py += String(UnicodeScalar(UInt8(u)))
        }
    }
    #expect(redact(r, "{\"k\": \"\(py)\"}") == "{\"k\": \"[REDACTED]\"}", "\(py)")
    // JSON inside a JSON string.
    let inner = String(decoding: try JSONSerialization.data(withJSONObject: ["t": value]), as: UTF8.self)
    let outer = String(decoding: try JSONSerialization.data(withJSONObject: ["body": inner]), as: UTF8.self)
    #expect(!redact(r, outer).contains("b\\\\\\\\c"))
    #expect(redact(r, outer).contains("[REDACTED]"))
}

// MARK: - quotes, XML

@Test func backslashEscapedQuotes() {
    let value = #"he said "hi" it's"#
    let r = makeRedactor([value])
    #expect(redact(r, #"msg="he said \"hi\" it's""#) == #"msg="[REDACTED]""#)
    #expect(redact(r, #"msg='he said "hi" it\'s'"#) == #"msg='[REDACTED]'"#)
    #expect(redact(r, #"msg='he said \"hi\" it\'s'"#) == #"msg='[REDACTED]'"#)
}

@Test func xmlAndHTMLEscaping() {
    let value = #"a<b>&"c'd"#
    let r = makeRedactor([value])
    for enc in ["a&lt;b&gt;&amp;&quot;c&#39;d", "a&lt;b&gt;&amp;&quot;c&apos;d", "a&lt;b&gt;&amp;&quot;c&#x27;d",
                "a&lt;b&gt;&amp;\"c'd", "a&lt;b&gt;&amp;&#34;c&#39;d"] {
        #expect(redact(r, "<v>\(enc)</v>") == "<v>[REDACTED]</v>", "\(enc)")
    }
}

// MARK: - multi-line values

@Test func multiLineValuesMaskEachLine() {
    let value = "-----BEGIN KEY-----\n  MIIEowIBAAKCAQEA7  \r\n\nxy\nZmFrZSBrZXkgYm9keQ==\n-----END KEY-----\n"
    let r = makeRedactor([value])
    #expect(redact(r, "key: MIIEowIBAAKCAQEA7 (line)") == "key: [REDACTED] (line)")
    #expect(redact(r, "ZmFrZSBrZXkgYm9keQ==") == "[REDACTED]")
    // The whole value: every line masked; short line "xy" is below the minimum.
    #expect(redact(r, value) == "[REDACTED]\n  [REDACTED]  \r\n\nxy\n[REDACTED]\n[REDACTED]\n")
    // Encodings of the whole value (no raw newline in them) are one mask.
    let b64 = Data(value.utf8).base64EncodedString()
    #expect(redact(r, "blob \(b64) end") == "blob [REDACTED] end")
    let json = String(decoding: try! JSONEncoder().encode([value]), as: UTF8.self)
    #expect(redact(r, json) == "[\"[REDACTED]\"]")
    // Lines of the value are encoded too.
    let lineB64 = Data("user:MIIEowIBAAKCAQEA7".utf8).base64EncodedString()
    #expect(redact(r, lineB64).contains("[REDACTED]"))
}

// MARK: - overlaps

@Test func overlappingAndPrefixValues() {
    let r = makeRedactor(["abcd", "abcdef"])
    #expect(redact(r, "xxabcdefyy") == "xx[REDACTED]yy")
    #expect(redact(r, "xxabcdeyy") == "xx[REDACTED]eyy")
    #expect(redact(r, "abcdabcdef") == "[REDACTED]")
    // Longest wins even when the longer match starts earlier.
    let r2 = makeRedactor(["bcde", "abcdefgh"])
    #expect(redact(r2, "-abcdefgh-") == "-[REDACTED]-")
    #expect(redact(r2, "-abcdefgX-") == "-a[REDACTED]fgX-")
    // Overlapping different values merge into one mask.
    let r3 = makeRedactor(["abcdXYZW", "XYZWuvwx"])
    #expect(redact(r3, "<abcdXYZWuvwx>") == "<[REDACTED]>")
}

@Test func adjacentMatchesMerge() {
    let r = makeRedactor(["first-secret", "second-secret"])
    #expect(redact(r, "first-secretsecond-secret") == "[REDACTED]")
    #expect(redact(r, "first-secret second-secret") == "[REDACTED] [REDACTED]")
}

// MARK: - minimum length

@Test func minimumLengthIsReported() {
    let r = Redactor(secrets: [(name: "SHORT", value: secure("abc")),
                               (name: "EMPTY", value: secure("")),
                               (name: "OK", value: secure("abcd")),
                               (name: "BLANK_LINES", value: secure(" \n \n"))],
                     options: RedactionOptions())
    #expect(r.skipped.map(\.name) == ["SHORT", "EMPTY", "BLANK_LINES"])
    #expect(r.skipped[0].reason.contains("minimum of 4 bytes"))
    #expect(r.skipped[2].reason.contains("whitespace"))
    #expect(r.skipped.allSatisfy { !$0.reason.contains("abc") })
    #expect(r.registeredNames == ["OK"])
    #expect(redact(r, "abc abcd") == "abc [REDACTED]")
    let r2 = makeRedactor(["abc"], minimumLength: 3)
    #expect(r2.skipped.isEmpty)
    #expect(redact(r2, "1abc2") == "1[REDACTED]2")
    // Same value under two names: both registered.
    let r3 = Redactor(secrets: [(name: "A", value: secure("same-value")), (name: "B", value: secure("same-value"))])
    #expect(r3.registeredNames == ["A", "B"])
}

// MARK: - clean text

@Test func cleanBytesPassThroughIncludingInvalidUTF8() throws {
    let r = makeRedactor(["QWxhZGRpbjpvcGVu-secret"])
    var rng = SplitMix64(seed: 7)
    var input: [UInt8] = [0xFF, 0xFE, 0xC3, 0x28, 0xE2, 0x82, 0x0A, 0x80, 0x00, 0x0D, 0x0A]
    for _ in 0..<100_000 { input.append(UInt8(truncatingIfNeeded: rng.next())) }
    #expect(r.redact(input) == input)
    #expect(try redactChunked(r, input, sizes: [1, 3, 1000]) == input)
    let empty = makeRedactor([])
    #expect(empty.redact(input) == input)
    #expect(empty.formCount == 0)
}

// MARK: - streaming

private func sampleInput() throws -> (Redactor, [UInt8]) {
    let values = ["abcd", "abcdef", "tok_9f8e7d6c5b4a", "multi line\nsecond-line-value", "p@ss w0rd&<>\"'"]
    let r = makeRedactor(values)
    var rng = SplitMix64(seed: 42)
    var input: [UInt8] = []
    let fillers: [[UInt8]] = [Array("INFO request ok id=42\n".utf8), Array(" ab".utf8), Array("abc".utf8),
                              [0xFF, 0xC3, 0x0A], Array("\n".utf8), Array("aaaaabcd".utf8)]
    for _ in 0..<400 {
        if rng.next() % 3 == 0 {
            let v = Array(values[Int(rng.next() % UInt64(values.count))].utf8)
            switch rng.next() % 4 {
            case 0: input += v
            case 1: input += Array(Data(Array("user:".utf8) + v).base64EncodedString().utf8)
            case 2: input += Array(String(decoding: try JSONEncoder().encode([String(decoding: v, as: UTF8.self)]), as: UTF8.self).utf8)
            default: input += Array(String(decoding: v, as: UTF8.self)
                        .addingPercentEncoding(withAllowedCharacters: .alphanumerics)!.utf8)
            }
        } else {
            input += fillers[Int(rng.next() % UInt64(fillers.count))]
        }
    }
    return (r, input)
}

@Test func chunkingDoesNotChangeTheResult() throws {
    let (r, input) = try sampleInput()
    let whole = r.redact(input)
    #expect(whole != input)
    for sizes in [[1], [2], [3], [7], [13, 1, 5], [64], [4096]] {
        #expect(try redactChunked(r, input, sizes: sizes) == whole, "chunk sizes \(sizes)")
    }
}

@Test func largeChunksGiveTheSameResult() throws {
    // Large writes are scanned by two walkers in lockstep; the result must
    // match small writes (one walker) exactly, dense or sparse.
    let (r, sample) = try sampleInput()
    var input: [UInt8] = []
    for _ in 0..<20 { input += sample }
    let small = try redactChunked(r, input, sizes: [1, 700, 3])
    #expect(r.redact(input) == small)
    #expect(try redactChunked(r, input, sizes: [9000, 17_000]) == small)
    let values = ["abcd", "abcdef", "tok_9f8e7d6c5b4a", "multi line\nsecond-line-value", "p@ss w0rd&<>\"'"]
    let sparse = makeRedactor(values, denseBudget: 64)
    #expect(sparse.redact(input) == small)
}

@Test func valueSplitAcrossWritesIsMasked() throws {
    let r = makeRedactor(["split-secret-value"])
    var out: [UInt8] = []
    let stream = RedactingStream(redactor: r) { out.append(contentsOf: $0) }
    try stream.write(Array("line one\nvalue: split-sec".utf8))
    // Everything up to and including the newline is out already.
    #expect(String(decoding: out, as: UTF8.self).hasPrefix("line one\nvalue: "))
    #expect(!String(decoding: out, as: UTF8.self).contains("split"))
    try stream.write(Array("ret-value and more\nnext".utf8))
    #expect(String(decoding: out, as: UTF8.self) == "line one\nvalue: [REDACTED] and more\nnext")
    try stream.finish()
    #expect(String(decoding: out, as: UTF8.self) == "line one\nvalue: [REDACTED] and more\nnext")
}

@Test func newlineReleasesEverything() throws {
    let r = makeRedactor(["abcdef", "multi\nline-secret"])
    var out: [UInt8] = []
    let stream = RedactingStream(redactor: r) { out.append(contentsOf: $0) }
    for line in ["x abc", "de", "f ab\n", "abcd\n", "multi\n"] {
        try stream.write(Array(line.utf8))
    }
    // "multi" is a line of the second value: masked on its own.
    #expect(String(decoding: out, as: UTF8.self) == "x [REDACTED] ab\nabcd\n[REDACTED]\n")
    #expect(stream.heldBackCount == 0)
}

@Test func replacingTheRedactorMidStream() throws {
    let old = makeRedactor(["old-secret-1", "shared-prefix-AAAA"])
    let new = makeRedactor(["new-secret-2", "shared-prefix-BBBB"])
    var out: [UInt8] = []
    let stream = RedactingStream(redactor: old) { out.append(contentsOf: $0) }
    try stream.write(Array("a old-secret-1 b shared-prefix-".utf8))
    // The tail could still be a value of the old set, so it is held back...
    #expect(String(decoding: out, as: UTF8.self) == "a [REDACTED] b ")
    try stream.replaceRedactor(new)
    // ...and scanned again with the new one.
    try stream.write(Array("BBBB c old-secret-1 new-secret-2\n".utf8))
    try stream.finish()
    #expect(String(decoding: out, as: UTF8.self) == "a [REDACTED] b [REDACTED] c old-secret-1 [REDACTED]\n")
}

// MARK: - engine internals

@Test func sparseStatesGiveTheSameResults() throws {
    let (dense, input) = try sampleInput()
    let values = ["abcd", "abcdef", "tok_9f8e7d6c5b4a", "multi line\nsecond-line-value", "p@ss w0rd&<>\"'"]
    for budget in [1, 64, 4096] {
        let sparse = makeRedactor(values, denseBudget: budget)
        #expect(sparse.redact(input) == dense.redact(input), "budget \(budget)")
        #expect(try redactChunked(sparse, input, sizes: [1, 5]) == dense.redact(input))
    }
}

@Test func formsAreDeduplicated() {
    let r = makeRedactor(["plainalnumvalue1"])
    var seen = Set<[UInt8]>()
    var count = 0
    r.forEachRegisteredForm { seen.insert(Array($0)); count += 1 }
    #expect(count == seen.count)
    #expect(count == r.formCount)
    #expect(seen.contains(Array("plainalnumvalue1".utf8)))
    // raw == percent == JSON == XML for this value; base64: 3 alignments x
    // (middle, unpadded end, padded end) at most, std == url here.
    #expect(count <= 1 + 9 * 2)
}


@Test func adversarialInputStaysLinear() throws {
    // Counted, not timed: the failure links the sparse path follows. Aho-
    // Corasick follows about one per input byte at most, amortised (each
    // moves to a strictly shallower state, and each byte deepens by one at
    // most; the compact tables' links to a run's start add a little); a
    // matcher that backtracked would follow ~2000 per byte here.
    let size = 1 << 20
    let value = String(repeating: "a", count: 2000) + "b"
    let run = [UInt8](repeating: UInt8(ascii: "a"), count: size)
    for budget in [Redactor.defaultDenseBudget, 64] {   // the usual tables, and deep states on the sparse path
        let r = makeRedactor([value], denseBudget: budget)
        let automaton = try #require(r.automaton)
        let before = automaton.failureSteps.load(ordering: .relaxed)
        let out = redactAll(r, run, chunk: 65536)
        let steps = automaton.failureSteps.load(ordering: .relaxed) - before
        #expect(out == run, "nothing matches a run with no 'b'")
        #expect(steps <= 2 * size, "dense budget \(budget): \(steps) failure steps for \(size) bytes")
        // Twice the input, at most twice the steps (plus the one-off climb).
        let before2 = automaton.failureSteps.load(ordering: .relaxed)
        _ = redactAll(r, run + run, chunk: 65536)
        let steps2 = automaton.failureSteps.load(ordering: .relaxed) - before2
        #expect(steps2 <= 2 * steps + 4096, "dense budget \(budget): \(steps2) steps for 2N against \(steps) for N")
    }
}

/// Streams `input` through a redacting stream in `chunk`-byte writes; what comes out.
private func redactAll(_ r: Redactor, _ input: [UInt8], chunk: Int) -> [UInt8] {
    var out: [UInt8] = []
    out.reserveCapacity(input.count)
    let stream = RedactingStream(redactor: r) { out.append(contentsOf: $0) }
    input.withUnsafeBytes { raw in
        var i = 0
        while i < raw.count {
            let n = min(chunk, raw.count - i)
            try! stream.write(UnsafeRawBufferPointer(rebasing: raw[i..<(i + n)]))
            i += n
        }
    }
    try! stream.finish()
    return out
}

