import Testing
import SecretfsTestSupport
@testable import SecretfsInject

/// The shortcuts of the scan and the rewrite, against the slow way they
/// stand for: tokens carry no text (names and cooked values are read again
/// from the source when asked, `secrets` is compared as bytes unless it is
/// spelled with an escape), and output is copied in runs.
@Suite struct FastPathTests {
    /// Every token of `source`, with the tokenizer that read them.
    static func tokens(_ source: String) -> (JSTokenizer, [JSToken]) {
        var lexer = JSTokenizer(Array(source.utf8))
        var out: [JSToken] = []
        while let t = lexer.next() { out.append(t) }
        return (lexer, out)
    }

    @Test func secretsIsFoundHoweverItIsSpelled() {
        let cases: [(String, Bool)] = [
            ("secrets", true), (#"secr\u0065ts"#, true), (#"\u{73}ecrets"#, true), (#"\u0073\u0065\u0063\u0072\u0065\u0074\u0073"#, true),
            (#"secret\u{0073}"#, true), (#"secrets\u0073"#, false),
            ("secret", false), ("secrets_", false), ("Secrets", false), ("secrets2", false), ("$secrets", false),
            ("\u{0455}ecrets", false),   // CYRILLIC SMALL LETTER DZE, not `s`
        ]
        for (source, expected) in cases {
            let (lexer, tokens) = Self.tokens(source)
            #expect(tokens.count == 1, "\(source)")
            #expect(tokens.first.map(lexer.isSecrets) == expected, "\(source)")
        }
        // Not an identifier: a string, a template, a comment, a private name.
        for source in [#""secrets""#, "'secrets'", "`secrets`", "/* secrets */ 1", "#secrets"] {
            let (lexer, tokens) = Self.tokens(source)
            #expect(!tokens.contains(where: lexer.isSecrets), "\(source)")
        }
    }

    @Test func namesAreDecodedWhenAsked() {
        let cases: [(String, String)] = [
            ("abc", "abc"), (#"\u0041bc"#, "Abc"), (#"a\u{62}c"#, "abc"), ("é𝒳", "é𝒳"), ("#priv", "priv"),
            (#"#\u0070riv"#, "priv"), (#"a\u00zzb"#, "a\u{FFFD}zzb"),
        ]
        for (source, expected) in cases {
            let (lexer, tokens) = Self.tokens(source)
            guard let t = tokens.first else { Issue.record("no token in \(source)"); continue }
            #expect(lexer.name(of: t) == expected, "\(source)")
        }
        // `secrets.NAME` with an escaped name is the reference it spells.
        #expect(ExpressionAnalysis(Array(#"secrets.\u0041B"#.utf8)).references.map(\.name) == ["AB"])
        #expect(ExpressionAnalysis(Array(#"secr\u0065ts?.A"#.utf8)).references.map(\.name) == ["A"])
    }

    @Test func literalsAreCookedWhenAsked() {
        let cases: [(String, String, Bool)] = [
            (#""plain""#, "plain", true), (#"'a\x41\u{42}\u0043\n'"#, "aABC\n", true),
            ("\"a\\\nb\\\r\nc\"", "abc", true),     // line continuations
            (#""\q\0""#, "q\u{0}", true), (#""\101""#, "A", true),
            (#""\x4""#, "x4", false), (#""\u{110000}""#, "{110000}", false),
            ("`t\\u0041`", "tA", true), ("`a\r\nb`", "a\nb", true), (#"`\x`"#, "x", false),
            (#""\uD83D\uDD11""#, "🔑", true),
        ]
        for (source, expected, valid) in cases {
            let (lexer, tokens) = Self.tokens(source)
            guard tokens.count == 1, let t = tokens.first else { Issue.record("not one token: \(source)"); continue }
            let (value, ok) = lexer.cookedValue(of: t)
            #expect(ok == valid, "\(source)")
            if valid { #expect(value == expected, "\(source)") }
        }
        // A static key is a reference; a malformed one is not static.
        #expect(ExpressionAnalysis(Array(#"secrets["\x41"] + secrets[`\u0042`]"#.utf8)).references.map(\.name) == ["A", "B"])
        let bad = ExpressionAnalysis(Array(#"secrets["\x4"]"#.utf8))
        #expect(bad.references.isEmpty)
        #expect(bad.problems.map(\.kind) == [.notStatic])
    }

    /// Copying plain bytes in runs writes what writing each scalar did, for
    /// every container and for invalid UTF-8 too (whose U+FFFD must not
    /// depend on where a run was cut).
    @Test func runsWriteWhatScalarsWrite() {
        var rng = SplitMix64(seed: 11)
        let alphabet: [UInt8] = [0x41, 0x20, 0x22, 0x27, 0x5C, 0x60, 0x0A, 0x0D, 0x09, 0x00, 0x1F, 0x7E, 0x7F, 0x80, 0xBF,
                                 0xC0, 0xC2, 0xC3, 0xDF, 0xE0, 0xE2, 0xED, 0xEF, 0xF0, 0xF4, 0xF5, 0xFF, 0xA0, 0x9F, 0x85]
        for _ in 0..<20_000 {
            let bytes = (0..<Int(rng.next() % 16)).map { _ in
                rng.next() % 3 == 0 ? UInt8(truncatingIfNeeded: rng.next()) : alphabet[Int(rng.next() % UInt64(alphabet.count))]
            }
            for outer in [OuterEscaping.none, .yamlDoubleQuoted, .json] {
                var fast = ArrayByteSink()
                var slow = ArrayByteSink()
                bytes.withUnsafeBytes { raw in
                    fast.putJSStringLiteral(raw, outer: outer)
                    slow.put(scalar: 0x22, outer: outer)
                    forEachScalar(raw) { slow.putJSStringChar($0, outer: outer) }
                    slow.put(scalar: 0x22, outer: outer)
                }
                #expect(fast.bytes == slow.bytes, "literal \(bytes) \(outer)")
                var source = ArrayByteSink()
                var each = ArrayByteSink()
                bytes.withUnsafeBytes { source.putSource($0, outer: outer) }
                if case .none = outer {
                    each.put(bytes: bytes)   // copied as it is, never decoded
                } else {
                    bytes.withUnsafeBytes { raw in forEachScalar(raw) { each.put(scalar: $0, outer: outer) } }
                }
                #expect(source.bytes == each.bytes, "source \(bytes) \(outer)")
            }
        }
    }
}
