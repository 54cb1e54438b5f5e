/// Reads an app installation config: a JSON object whose members are field
/// name -> expression source (a JSON string). Keeps field order; output is
/// `{\n  "field": "rewritten",\n  …\n}\n`.
struct ConfigReader {
    let src: [UInt8]
    var doc: DocumentPlan
    var i = 0
    var line = 1
    var column = 1

    static func read(into doc: inout DocumentPlan) {
        var r = ConfigReader(src: doc.source, doc: doc)
        r.parse()
        doc = r.doc
    }

    var maxNestingDepth: Int { doc.limits.maxNestingDepth }

    struct Fail: Error {}

    var atEnd: Bool { i >= src.count }
    var byte: UInt8 { i < src.count ? src[i] : 0 }

    mutating func advance() {
        guard i < src.count else { return }
        let (c, n) = decodeUTF8(src, i)
        i += n
        if c == 0x0A || (c == 0x0D && byte != 0x0A) { line += 1; column = 1 } else { column += 1 }
    }

    mutating func fail(_ message: String, context: String = "") -> Fail {
        doc.documentProblem(line: line, column: column, "config: \(message)", context: context)
        return Fail()
    }

    /// A limit reached: reading stops.
    mutating func limitFail(_ message: String, context: String = "") -> Fail {
        doc.stopReading(line: line, column: column, message, context: context)
        return Fail()
    }

    mutating func skipWhitespace() {
        while !atEnd && (byte == 0x20 || byte == 0x09 || byte == 0x0A || byte == 0x0D) { advance() }
    }

    mutating func expect(_ b: UInt8, _ what: String) throws(Fail) {
        skipWhitespace()
        guard byte == b else { throw fail("expected \(what)") }
        advance()
    }

    /// At the opening quote. Returns the decoded UTF-8 bytes and the raw span.
    mutating func string() throws(Fail) -> ([UInt8], RawSpan) {
        guard byte == 0x22 else { throw fail("expected a string") }
        advance()
        var span = RawSpan(contentStart: i, end: i, line: line, column: column, style: .json)
        var out = ArrayByteSink()
        while true {
            guard !atEnd else { throw fail("unterminated string") }
            let (c, _) = decodeUTF8(src, i)
            if c == 0x22 { break }
            if c < 0x20 { throw fail("control character in string") }
            if c == 0x5C {
                advance()
                let e = byte
                advance()
                switch e {
                case 0x22, 0x5C, 0x2F: out.put(e)
                case 0x62: out.put(0x08)
                case 0x66: out.put(0x0C)
                case 0x6E: out.put(0x0A)
                case 0x72: out.put(0x0D)
                case 0x74: out.put(0x09)
                case 0x75:
                    var v = try hex4()
                    if (0xD800...0xDBFF).contains(v), byte == 0x5C, i + 1 < src.count, src[i + 1] == 0x75 {
                        let save = (i, line, column)
                        advance(); advance()
                        let lo = try hex4()
                        if (0xDC00...0xDFFF).contains(lo) {
                            v = 0x10000 + ((v - 0xD800) << 10) + (lo - 0xDC00)
                        } else {
                            (i, line, column) = save
                        }
                    }
                    if (0xD800...0xDFFF).contains(v) { v = 0xFFFD }   // lone surrogate
                    out.putUTF8(v)
                default:
                    throw fail("invalid escape in string")
                }
                continue
            }
            if c == 0xFFFD && decodeUTF8(src, i).1 == 1 { throw fail("not valid UTF-8") }
            out.putUTF8(c)
            advance()
        }
        span.end = i
        advance() // closing quote
        return (out.bytes, span)
    }

    mutating func hex4() throws(Fail) -> UInt32 {
        var v: UInt32 = 0
        for _ in 0..<4 {
            guard let h = JSTokenizer.hexValue(UInt32(byte)) else { throw fail("invalid \\u escape") }
            v = v << 4 | h
            advance()
        }
        return v
    }

    /// Skips any JSON value (for fields that are not strings). Iterative, with
    /// a stack of the closing brackets still owed: a value nested a million
    /// levels deep costs no call stack, and nesting past
    /// `maxNestingDepth` (counting the config object itself as level 1) is a
    /// `.limit` problem.
    mutating func skipValue(context: String) throws(Fail) {
        var closers: [UInt8] = []
        while true {
            // One value.
            skipWhitespace()
            switch byte {
            case 0x22:
                _ = try string()
            case 0x7B, 0x5B:
                let close: UInt8 = byte == 0x7B ? 0x7D : 0x5D
                guard 1 + closers.count + 1 <= maxNestingDepth else {
                    throw limitFail("config: nesting deeper than \(maxNestingDepth) levels", context: context)
                }
                advance()
                skipWhitespace()
                if byte == close {
                    advance()
                } else {
                    closers.append(close)
                    if close == 0x7D { try memberName() }
                    continue
                }
            default:
                let start = i
                while !atEnd, let c = Optional(byte), c != 0x2C, c != 0x7D, c != 0x5D,
                      c != 0x20, c != 0x0A, c != 0x0D, c != 0x09 { advance() }
                if i == start { throw fail("expected a value") }
            }
            // After a value: a comma (the next member) or the closing brackets.
            while let close = closers.last {
                skipWhitespace()
                if byte == 0x2C {
                    advance()
                    if close == 0x7D { try memberName() }
                    break
                }
                try expect(close, close == 0x7D ? "'}'" : "']'")
                closers.removeLast()
            }
            if closers.isEmpty { return }
        }
    }

    /// `"name":` inside an object being skipped.
    mutating func memberName() throws(Fail) {
        skipWhitespace()
        _ = try string()
        try expect(0x3A, "':'")
    }

    mutating func parse() {
        var fields: [(key: String, site: Int)] = []
        do throws(Fail) {
            if src.starts(with: [0xEF, 0xBB, 0xBF]) { i = 3 }
            try expect(0x7B, "a JSON object of field name -> expression")
            skipWhitespace()
            var seen = Set<String>()
            if byte == 0x7D {
                advance()
            } else {
                while true {
                    skipWhitespace()
                    let keyLine = line, keyColumn = column
                    let (keyBytes, _) = try string()
                    let key = String(decoding: keyBytes, as: UTF8.self)
                    let context = "field \(displayQuoted(key, limit: 80))"
                    if !seen.insert(key).inserted {
                        doc.documentProblem(line: keyLine, column: keyColumn, "config: duplicate field", context: context)
                    }
                    try expect(0x3A, "':'")
                    skipWhitespace()
                    if byte == 0x22 {
                        let valueLine = line, valueColumn = column
                        let (value, span) = try string()
                        switch doc.analyse(value) {
                        case .analysed(let analysis):
                            doc.sites.append(ExpressionSite(analysis: analysis, context: .text(context), span: span))
                            fields.append((key, doc.sites.count - 1))
                        case .overLimit(let message, let partial):
                            doc.stopReading(at: partial.map { ExpressionSite(analysis: $0, context: .text(context), span: span) },
                                            message, context: .text(context), line: valueLine, column: valueColumn)
                            throw Fail()
                        }
                    } else {
                        doc.documentProblem(line: line, column: column,
                                            "config: the value must be a string holding the expression source", context: context)
                        try skipValue(context: context)
                    }
                    if doc.stopped { throw Fail() }
                    skipWhitespace()
                    if byte == 0x2C { advance(); continue }
                    try expect(0x7D, "',' or '}'")
                    break
                }
            }
            skipWhitespace()
            if !atEnd { throw fail("unexpected text after the object") }
        } catch {
            return
        }
        if fields.isEmpty {
            doc.pieces = [.text(Array("{}\n".utf8))]
            return
        }
        doc.pieces.append(.text(Array("{\n".utf8)))
        for (n, f) in fields.enumerated() {
            doc.pieces.append(.text(Array("  ".utf8) + jsonQuoted(f.key) + Array(": \"".utf8)))
            doc.pieces.append(.expression(f.site, .json))
            doc.pieces.append(.text(Array((n + 1 < fields.count ? "\",\n" : "\"\n").utf8)))
        }
        doc.pieces.append(.text(Array("}\n".utf8)))
    }
}
