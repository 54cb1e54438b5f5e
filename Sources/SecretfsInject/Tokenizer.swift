/// A JavaScript tokenizer over the UTF-8 bytes of one expression.
///
/// It knows exactly as much of ECMAScript's lexical grammar as it takes to
/// tell code from text: string literals (every escape, line continuations),
/// template literals with arbitrarily nested `${ … }` substitutions, line and
/// block comments, regular expression literals versus division, identifiers
/// with `\uXXXX` / `\u{…}` escapes, numbers, private names and punctuators
/// including `?.`.
///
/// Positions: `line` and `column` are 1-based; columns count Unicode scalars
/// (code points), which is also what libyaml counts, so flow-file positions and
/// expression positions agree. Line terminators are LF, CR, CRLF, U+2028, U+2029.
///
/// Regex versus division is decided by the previous significant token, the
/// usual heuristic: a `/` starts a regular expression at the start of input,
/// after any punctuator except `)`, `]`, `}`, `++`, `--`, after a template head
/// or middle, and after the keywords in `regexKeywords`; anywhere else it is
/// division. (`}` is taken to end an object literal or a function body used as
/// a value, `)` to end a call or group; `if (x) /re/` in statement code is the
/// known blind spot of every such heuristic.)
struct JSToken {
    enum Kind: Equatable {
        case identifier      // `JSTokenizer.name(of:)` is the decoded name
        case privateName     // `#name`
        case punctuator      // `punctuator` is its bytes
        case number
        case string          // `JSTokenizer.cookedValue(of:)` is the cooked value
        case templateNoSubstitution
        case templateHead
        case templateMiddle
        case templateTail
        case regex
    }
    enum Opener: Equatable { case none, paren, bracket, brace, substitution }

    var kind: Kind
    var start: Int          // byte offset
    var end: Int            // byte offset, exclusive
    var line: Int
    var column: Int
    var scalarIndex: Int    // scalars before `start`
    /// A punctuator's bytes, the first in the low byte (`JSToken.code`).
    var punctuator: UInt32 = 0
    /// An identifier or private name spelled with a `\u` escape.
    var hasEscape = false
    /// The innermost open bracket when this token was read.
    var enclosing: Opener = .none

    // A token holds no text: an identifier's name and a literal's cooked
    // value are read from the source when asked (`JSTokenizer.name(of:)`,
    // `cookedValue(of:)`), which is for a few tokens around each `secrets`.
    // Making a String for every token was most of the tokenizer's time.

    /// The code of punctuator `p` (one to four ASCII bytes).
    @inline(__always)
    static func code(_ p: StaticString) -> UInt32 {
        var c: UInt32 = 0
        p.withUTF8Buffer { b in
            for k in 0..<min(b.count, 4) { c |= UInt32(b[k]) << (8 * UInt32(k)) }
        }
        return c
    }

    @inline(__always)
    func isPunctuator(_ p: StaticString) -> Bool { kind == .punctuator && punctuator == Self.code(p) }

    /// A punctuator's text, for messages.
    var punctuatorText: String {
        var bytes: [UInt8] = []
        var c = punctuator
        while c != 0 { bytes.append(UInt8(c & 0xFF)); c >>= 8 }
        return String(decoding: bytes, as: UTF8.self)
    }
}

struct SourcePosition: Equatable {
    var line: Int
    var column: Int
    var scalarIndex: Int
}

struct LexProblem {
    var kind: InjectionProblem.Kind = .syntax
    var position: SourcePosition
    var message: String
}

let regexKeywords: Set<String> = [
    "return", "typeof", "instanceof", "in", "of", "new", "delete", "void", "throw",
    "case", "do", "else", "yield", "await", "extends",
]

/// The length of the punctuator that starts with bytes `b0 b1 b2 b3` (0 past
/// the end), longest match first, or 0 for none. The punctuators:
///
///     { } ( ) [ ] ; , < > + - * / % & | ^ ! ~ ? : = . @
///     => == != <= >= && || ?? ?. ++ -- += -= *= /= %= &= |= ^= ** << >>
///     ... === !== **= <<= >>= >>> &&= ||= ??=   >>>=
///
/// `?.` followed by a digit is `?` (so `a?.5:b` is a conditional).
/// Matched on bytes: this runs for every punctuator of every expression.
func punctuatorLength(_ b0: UInt8, _ b1: UInt8, _ b2: UInt8, _ b3: UInt8) -> Int {
    func isDigit(_ b: UInt8) -> Bool { b >= 0x30 && b <= 0x39 }
    switch b0 {
    case 0x7B, 0x7D, 0x28, 0x29, 0x5B, 0x5D, 0x3B, 0x2C, 0x7E, 0x40, 0x3A: // { } ( ) [ ] ; , ~ @ :
        return 1
    case 0x2E: // .
        return b1 == 0x2E && b2 == 0x2E ? 3 : 1
    case 0x3F: // ?
        if b1 == 0x3F { return b2 == 0x3D ? 3 : 2 }
        return b1 == 0x2E && !isDigit(b2) ? 2 : 1
    case 0x3D: // =
        if b1 == 0x3D { return b2 == 0x3D ? 3 : 2 }
        return b1 == 0x3E ? 2 : 1
    case 0x21: // !
        if b1 == 0x3D { return b2 == 0x3D ? 3 : 2 }
        return 1
    case 0x3C: // <
        if b1 == 0x3C { return b2 == 0x3D ? 3 : 2 }
        return b1 == 0x3D ? 2 : 1
    case 0x3E: // >
        if b1 == 0x3E {
            if b2 == 0x3E { return b3 == 0x3D ? 4 : 3 }
            return b2 == 0x3D ? 3 : 2
        }
        return b1 == 0x3D ? 2 : 1
    case 0x2B, 0x2D: // + -
        return b1 == b0 || b1 == 0x3D ? 2 : 1
    case 0x2A, 0x26, 0x7C: // * & |
        if b1 == b0 { return b2 == 0x3D ? 3 : 2 }
        return b1 == 0x3D ? 2 : 1
    case 0x2F, 0x25, 0x5E: // / % ^
        return b1 == 0x3D ? 2 : 1
    default:
        return 0
    }
}

/// Reads tokens one at a time (`next()`), so an expression costs a window of
/// tokens, not one `JSToken` per token of input. Comments are skipped; the
/// byte gaps between tokens are where they were.
struct JSTokenizer {
    let src: [UInt8]
    /// Most brackets and `${` open at once; one more is a `.limit` problem
    /// and the end of tokenizing.
    let maxDepth: Int
    /// Most problems recorded; the next one sets `problemsExceeded` and ends
    /// tokenizing.
    let maxProblems: Int
    var i = 0
    var line = 1
    var column = 1
    var scalarIndex = 0
    var problems: [LexProblem] = []
    private(set) var problemsExceeded = false
    /// Where the first problem past `maxProblems` was.
    private(set) var problemsExceededAt: SourcePosition?
    /// Open brackets; `.substitution` entries remember where their template began.
    var stack: [(JSToken.Opener, SourcePosition)] = []
    var reportedBadUTF8 = false
    private var depthExceeded = false
    /// The last two tokens returned (the regex-or-division decision looks at them).
    private var last: JSToken?
    private var beforeLast: JSToken?
    private var started = false
    private(set) var finished = false
    /// Whether literals build their cooked value and identifiers their
    /// decoded name (in `cooked`): only the tokenizer that `cookedValue(of:)`
    /// or `name(of:)` runs again over one token does.
    private var cooking = false
    private var cooked = String.UnicodeScalarView()
    private var cookedValid = true

    init(_ bytes: [UInt8], maxDepth: Int = .max, maxProblems: Int = .max) {
        self.src = bytes
        self.maxDepth = maxDepth
        self.maxProblems = maxProblems
    }

    // MARK: scalar access
    //
    // ASCII is read inline, byte by byte; only other bytes go through
    // `decodeUTF8`. Same scalars, lines and columns either way.

    /// The scalar at byte offset `at` and its length in bytes; invalid UTF-8
    /// reads as U+FFFD of length 1.
    @inline(__always)
    func scalar(at p: Int) -> (UInt32, Int) {
        if p < src.count, src[p] < 0x80 { return (UInt32(src[p]), 1) }
        return decodeUTF8(src, p)
    }

    @inline(__always) var atEnd: Bool { i >= src.count }
    @inline(__always) var current: UInt32 {
        guard i < src.count else { return 0 }
        let b = src[i]
        return b < 0x80 ? UInt32(b) : decodeUTF8(src, i).0
    }
    func peek(_ offsetScalars: Int = 1) -> UInt32 {
        var p = i
        for _ in 0..<offsetScalars {
            guard p < src.count else { return 0 }
            p += scalar(at: p).1
        }
        return p < src.count ? scalar(at: p).0 : 0
    }
    @inline(__always) func byte(_ p: Int) -> UInt8 { p < src.count ? src[p] : 0 }

    var position: SourcePosition { SourcePosition(line: line, column: column, scalarIndex: scalarIndex) }

    /// Consumes one scalar, keeping line and column. CRLF is one line break.
    @inline(__always)
    mutating func advance() {
        guard i < src.count else { return }
        let b = src[i]
        guard b < 0x80 else { return advanceNonASCII() }
        i += 1
        scalarIndex += 1
        if b == 0x0A || (b == 0x0D && byte(i) != 0x0A) {
            line += 1
            column = 1
        } else {
            column += 1
        }
    }

    private mutating func advanceNonASCII() {
        let (s, n) = decodeUTF8(src, i)
        if s == 0xFFFD && n == 1 && !reportedBadUTF8 {
            reportedBadUTF8 = true
            problem(at: position, "the expression is not valid UTF-8")
        }
        i += n
        scalarIndex += 1
        if s == 0x0A || s == 0x2028 || s == 0x2029 || (s == 0x0D && byte(i) != 0x0A) {
            line += 1
            column = 1
        } else {
            column += 1
        }
    }

    mutating func problem(_ kind: InjectionProblem.Kind = .syntax, at p: SourcePosition, _ message: String) {
        guard problems.count < maxProblems else {
            if !problemsExceeded { problemsExceededAt = p }
            problemsExceeded = true
            return
        }
        problems.append(LexProblem(kind: kind, position: p, message: message))
    }

    /// Opens a bracket level, unless that would go past `maxDepth`.
    mutating func open(_ opener: JSToken.Opener, _ p: SourcePosition) {
        guard stack.count < maxDepth else {
            depthExceeded = true
            return
        }
        // Room for the usual nesting at once, not grown one level at a time.
        if stack.capacity < 8 { stack.reserveCapacity(8) }
        stack.append((opener, p))
    }

    @inline(__always)
    static func isLineTerminator(_ s: UInt32) -> Bool {
        s == 0x0A || s == 0x0D || s == 0x2028 || s == 0x2029
    }

    static func isWhitespace(_ s: UInt32) -> Bool {
        switch s {
        case 0x09, 0x0B, 0x0C, 0x20, 0xA0, 0xFEFF: return true
        case 0..<0x80: return false
        default:
            return Unicode.Scalar(s)?.properties.generalCategory == .spaceSeparator
        }
    }

    static func isIDStart(_ s: UInt32) -> Bool {
        switch s {
        case 0x24, 0x5F, 0x41...0x5A, 0x61...0x7A: return true
        case 0..<0x80: return false
        default: return Unicode.Scalar(s)?.properties.isIDStart ?? false
        }
    }

    static func isIDPart(_ s: UInt32) -> Bool {
        switch s {
        case 0x24, 0x5F, 0x30...0x39, 0x41...0x5A, 0x61...0x7A, 0x200C, 0x200D: return true
        case 0..<0x80: return false
        default: return Unicode.Scalar(s)?.properties.isIDContinue ?? false
        }
    }

    static func hexValue(_ s: UInt32) -> UInt32? {
        switch s {
        case 0x30...0x39: return s - 0x30
        case 0x41...0x46: return s - 0x41 + 10
        case 0x61...0x66: return s - 0x61 + 10
        default: return nil
        }
    }

    // MARK: main loop

    /// The next token, or nil at the end of the input or where tokenizing
    /// stopped (an unterminated literal, a limit).
    mutating func next() -> JSToken? {
        if finished { return nil }
        if !started {
            started = true
            // A hashbang line is a comment (only at the very start).
            if byte(0) == 0x23 && byte(1) == 0x21 {
                while !atEnd && !Self.isLineTerminator(current) { advance() }
            }
        }
        while true {
            skipTrivia()
            if problemsExceeded { return finish(stoppedEarly: true) }
            if atEnd { return finish(stoppedEarly: false) }
            let c = current
            let pos = position
            let start = i
            let enclosing = stack.last?.0 ?? .none
            var tok = JSToken(kind: .punctuator, start: start, end: start, line: pos.line,
                              column: pos.column, scalarIndex: pos.scalarIndex, enclosing: enclosing)
            var complete = true
            if c == 0x60 { // `
                advance()
                complete = scanTemplate(&tok, templateStart: pos, continuation: false)
            } else if c == 0x7D, let top = stack.last, top.0 == .substitution { // } closing ${
                stack.removeLast()
                advance()
                complete = scanTemplate(&tok, templateStart: top.1, continuation: true)
            } else if c == 0x22 || c == 0x27 {
                complete = scanString(&tok, quote: c)
            } else if (c < 0x80 ? Self.isASCIIIDChar(c, first: true) : Self.isIDStart(c)) || c == 0x5C {
                scanIdentifier(&tok)
            } else if c == 0x23 { // #
                advance()
                if !atEnd && (Self.isIDStart(current) || current == 0x5C) {
                    scanIdentifier(&tok)
                    tok.kind = .privateName
                } else {
                    problem(at: pos, "unexpected character '#'")
                    continue
                }
            } else if (0x30...0x39).contains(c) || (c == 0x2E && (0x30...0x39).contains(peek())) {
                scanNumber(&tok)
            } else if c == 0x2F && regexAllowed() {
                complete = scanRegex(&tok)
            } else if !scanPunctuator(&tok) {
                problem(at: pos, "unexpected character U+\(String(c, radix: 16, uppercase: true).leftPadded(4))")
                advance()
                continue
            }
            if depthExceeded {
                problem(.limit, at: pos, "expression: nesting deeper than \(maxDepth) levels")
                return finish(stoppedEarly: true)
            }
            if !complete || problemsExceeded { return finish(stoppedEarly: true) }
            tok.end = i
            beforeLast = last
            last = tok
            return tok
        }
    }

    private mutating func finish(stoppedEarly: Bool) -> JSToken? {
        finished = true
        // An unclosed `${` at the end; not when scanning already stopped at an
        // unterminated token inside it (that one is the problem to report).
        if !stoppedEarly, let open = stack.first(where: { $0.0 == .substitution }) {
            problem(at: open.1, "unterminated template literal")
        }
        return nil
    }

    /// Whitespace, line terminators and comments.
    mutating func skipTrivia() {
        while !atEnd {
            // Runs of spaces and tabs (indentation, mostly): one column and
            // one scalar each, what `advance` does for them.
            while i < src.count, src[i] == 0x20 || src[i] == 0x09 {
                i += 1
                column += 1
                scalarIndex += 1
            }
            if atEnd { return }
            let c = current
            if c < 0x80 {
                // ASCII: the other white space and line terminators, or a
                // comment, or the end of the trivia (isWhitespace and
                // isLineTerminator, without their Unicode lookups).
                if c == 0x0A || c == 0x0D || c == 0x0B || c == 0x0C {
                    advance()
                    continue
                }
                if c != 0x2F { return }
            } else if Self.isWhitespace(c) || Self.isLineTerminator(c) {
                advance()
                continue
            }
            if c == 0x2F && byte(i + 1) == 0x2F {
                while i < src.count {
                    let b = src[i]
                    if b == 0x0A || b == 0x0D { break }
                    if b < 0x80 {
                        i += 1
                        column += 1
                        scalarIndex += 1
                    } else {
                        if Self.isLineTerminator(current) { break }
                        advance()
                    }
                }
            } else if c == 0x2F && byte(i + 1) == 0x2A {
                let pos = position
                advance(); advance()
                var closed = false
                while !atEnd {
                    if byte(i) == 0x2A && byte(i + 1) == 0x2F {
                        advance(); advance()
                        closed = true
                        break
                    }
                    advance()
                }
                if !closed {
                    problem(at: pos, "unterminated comment")
                }
            } else {
                return
            }
        }
    }

    func regexAllowed() -> Bool {
        guard let prev = last else { return true }
        switch prev.kind {
        case .punctuator:
            return !(prev.isPunctuator(")") || prev.isPunctuator("]") || prev.isPunctuator("}")
                     || prev.isPunctuator("++") || prev.isPunctuator("--"))
        case .identifier:
            // A keyword used as a property name (`x.typeof / 2`) is an operand.
            if let b = beforeLast, b.isPunctuator(".") || b.isPunctuator("?.") {
                return false
            }
            return !prev.hasEscape && regexKeywords.contains(name(of: prev))
        case .templateHead, .templateMiddle:
            return true
        default:
            return false
        }
    }

    // MARK: token scanners

    /// After the opening backtick or the `}` that closes a substitution.
    /// Returns false when the input ended inside the template.
    mutating func scanTemplate(_ tok: inout JSToken, templateStart: SourcePosition, continuation: Bool) -> Bool {
        while true {
            if atEnd {
                problem(at: templateStart, "unterminated template literal")
                return false
            }
            let c = current
            if c == 0x60 {
                advance()
                tok.kind = continuation ? .templateTail : .templateNoSubstitution
                break
            }
            if c == 0x24 && byte(i + 1) == 0x7B { // ${
                advance(); advance()
                tok.kind = continuation ? .templateMiddle : .templateHead
                open(.substitution, templateStart)
                break
            }
            if c == 0x5C {
                if !scanEscape(inTemplate: true) { cookedValid = false }
                continue
            }
            // CR and CRLF in template text cook to LF.
            if c == 0x0D {
                advance()
                if !atEnd && current == 0x0A { advance() }
                if cooking { cooked.append("\n") }
                continue
            }
            if cooking, let u = Unicode.Scalar(c) { cooked.append(u) }
            advance()
        }
        return true
    }

    /// Returns false when the string is unterminated.
    mutating func scanString(_ tok: inout JSToken, quote: UInt32) -> Bool {
        let pos = position
        advance()
        while true {
            if atEnd || current == 0x0A || current == 0x0D {
                problem(at: pos, "unterminated string literal")
                return false
            }
            let c = current
            if c == quote {
                advance()
                break
            }
            if c == 0x5C {
                if !scanEscape(inTemplate: false) { cookedValid = false }
                continue
            }
            if cooking, let u = Unicode.Scalar(c) { cooked.append(u) }
            advance()
        }
        tok.kind = .string
        return true
    }

    /// At a backslash inside a string or template: consumes the escape and
    /// appends its cooked value (when `cooking`). Returns false for a
    /// malformed escape (the cooked value is then unknown; in a string that
    /// is a syntax error the engine reports, in a tagged template it is legal).
    mutating func scanEscape(inTemplate: Bool) -> Bool {
        advance() // backslash
        if atEnd { return false }
        let c = current
        func append(_ v: UInt32) -> Bool {
            guard let u = Unicode.Scalar(v) else {
                if cooking { cooked.append("\u{FFFD}") }
                return false
            }
            if cooking { cooked.append(u) }
            return true
        }
        switch c {
        case 0x0D:
            advance()
            if !atEnd && current == 0x0A { advance() }
            return true
        case 0x0A, 0x2028, 0x2029:
            advance()
            return true
        case 0x6E: advance(); return append(0x0A)
        case 0x74: advance(); return append(0x09)
        case 0x72: advance(); return append(0x0D)
        case 0x62: advance(); return append(0x08)
        case 0x66: advance(); return append(0x0C)
        case 0x76: advance(); return append(0x0B)
        case 0x78: // \xHH
            advance()
            guard let h = Self.hexValue(current), let l = Self.hexValue(peek()) else { return false }
            advance(); advance()
            return append(h << 4 | l)
        case 0x75: // \uHHHH or \u{…}
            guard let v = scanUnicodeEscapeBody() else { return false }
            // Surrogate pairs spelled as two escapes.
            if (0xD800...0xDBFF).contains(v), byte(i) == 0x5C, byte(i + 1) == 0x75 {
                let save = (i, line, column, scalarIndex)
                advance()
                if let lo = scanUnicodeEscapeBody(), (0xDC00...0xDFFF).contains(lo) {
                    return append(0x10000 + ((v - 0xD800) << 10) + (lo - 0xDC00))
                }
                (i, line, column, scalarIndex) = save
            }
            return append(v)
        case 0x30...0x39:
            if c == 0x30 && !(0x30...0x39).contains(peek()) {
                advance()
                return append(0)
            }
            // Legacy octal (or \8 \9): not allowed in templates; cooked value
            // computed for strings in sloppy mode.
            if inTemplate { advance(); return false }
            var v: UInt32 = 0
            var n = 0
            while n < 3, !atEnd, (0x30...0x37).contains(current), v * 8 + (current - 0x30) <= 0xFF {
                v = v * 8 + (current - 0x30)
                advance()
                n += 1
            }
            if n == 0 { let d = current; advance(); return append(d) }
            return append(v)
        default:
            advance()
            return append(c)
        }
    }

    /// At the `u` of a `\u` escape; consumes `uHHHH` or `u{H…}`.
    mutating func scanUnicodeEscapeBody() -> UInt32? {
        guard !atEnd, current == 0x75 else { return nil }
        advance()
        if !atEnd && current == 0x7B {
            advance()
            var v: UInt32 = 0
            var digits = 0
            while !atEnd, let h = Self.hexValue(current) {
                v = v &* 16 &+ h
                digits += 1
                if v > 0x10FFFF { break }
                advance()
            }
            guard digits > 0, v <= 0x10FFFF, !atEnd, current == 0x7D else { return nil }
            advance()
            return v
        }
        var v: UInt32 = 0
        for _ in 0..<4 {
            guard !atEnd, let h = Self.hexValue(current) else { return nil }
            v = v << 4 | h
            advance()
        }
        return v
    }

    /// An identifier (or a private name's, after the `#`). Its decoded name
    /// is built only when asked (`name(of:)` runs this again, cooking).
    mutating func scanIdentifier(_ tok: inout JSToken) {
        var first = true
        while !atEnd {
            let c = current
            if c == 0x5C {
                let pos = position
                advance()
                tok.hasEscape = true
                guard let v = scanUnicodeEscapeBody(), let u = Unicode.Scalar(v),
                      first ? Self.isIDStart(v) : Self.isIDPart(v) else {
                    problem(at: pos, "invalid escape in identifier")
                    if cooking { cooked.append("\u{FFFD}") }
                    first = false
                    continue
                }
                if cooking { cooked.append(u) }
            } else if c < 0x80 ? Self.isASCIIIDChar(c, first: first) : (first ? Self.isIDStart(c) : Self.isIDPart(c)) {
                if cooking, let u = Unicode.Scalar(c) { cooked.append(u) }
                advance()
            } else {
                break
            }
            first = false
        }
        tok.kind = .identifier
    }

    /// `isIDStart` / `isIDPart` of an ASCII scalar.
    @inline(__always)
    static func isASCIIIDChar(_ c: UInt32, first: Bool) -> Bool {
        switch c {
        case 0x24, 0x5F, 0x41...0x5A, 0x61...0x7A: return true
        case 0x30...0x39: return !first
        default: return false
        }
    }

    // MARK: text of a token, on demand

    /// The decoded name of an identifier or private name (without its `#`).
    func name(of t: JSToken) -> String {
        let from = t.kind == .privateName ? t.start + 1 : t.start
        // Without an escape the name is its bytes, which are valid UTF-8:
        // scanIdentifier stops at anything that does not decode to an ID
        // character (invalid UTF-8 reads as U+FFFD).
        guard t.hasEscape else { return String(decoding: src[from..<t.end], as: UTF8.self) }
        var again = JSTokenizer(src)
        again.cooking = true
        again.i = from
        var tok = t
        again.scanIdentifier(&tok)
        return String(again.cooked)
    }

    /// Whether `t` is the identifier `secrets` (also when spelled with escapes,
    /// `secr\u0065ts`). Without an escape, compared as bytes.
    func isSecrets(_ t: JSToken) -> Bool { Self.isSecrets(t, in: src) }

    /// The same over the source bytes alone: called for every token, and a
    /// call on the tokenizer held inside the token window copied the whole
    /// tokenizer (257 bytes) each time in the release build.
    static func isSecrets(_ t: JSToken, in src: [UInt8]) -> Bool {
        guard t.kind == .identifier else { return false }
        guard !t.hasEscape else { return JSTokenizer(src).name(of: t) == "secrets" }
        guard t.end - t.start == 7 else { return false }
        return src[t.start] == 0x73 && src[t.start + 1] == 0x65 && src[t.start + 2] == 0x63 && src[t.start + 3] == 0x72
            && src[t.start + 4] == 0x65 && src[t.start + 5] == 0x74 && src[t.start + 6] == 0x73
    }

    /// The cooked value of a string literal or a template with no
    /// substitution, and whether every escape in it is well formed: the
    /// literal is read again, building its value, by the same code.
    func cookedValue(of t: JSToken) -> (value: String, valid: Bool) {
        var again = JSTokenizer(src)
        again.cooking = true
        again.i = t.start
        var tok = t
        switch t.kind {
        case .string:
            _ = again.scanString(&tok, quote: again.current)
        case .templateNoSubstitution:
            again.advance()
            _ = again.scanTemplate(&tok, templateStart: again.position, continuation: false)
        default:
            return ("", false)
        }
        return (String(again.cooked), again.cookedValid)
    }

    mutating func scanNumber(_ tok: inout JSToken) {
        func isDigitOrSep(_ s: UInt32) -> Bool { (0x30...0x39).contains(s) || s == 0x5F }
        tok.kind = .number
        if current == 0x30, [0x78, 0x58, 0x62, 0x42, 0x6F, 0x4F].contains(peek()) {
            advance(); advance()
            while !atEnd && (Self.hexValue(current) != nil || current == 0x5F) { advance() }
        } else {
            while !atEnd && isDigitOrSep(current) { advance() }
            if !atEnd && current == 0x2E {
                advance()
                while !atEnd && isDigitOrSep(current) { advance() }
            }
            if !atEnd && (current == 0x65 || current == 0x45) {
                let next = peek()
                if (0x30...0x39).contains(next)
                    || ((next == 0x2B || next == 0x2D) && (0x30...0x39).contains(peek(2))) {
                    advance(); advance()
                    while !atEnd && isDigitOrSep(current) { advance() }
                }
            }
        }
        if !atEnd && current == 0x6E { advance() } // BigInt
    }

    /// Returns false when the regex is unterminated.
    mutating func scanRegex(_ tok: inout JSToken) -> Bool {
        let pos = position
        advance() // /
        var inClass = false
        while true {
            if atEnd || Self.isLineTerminator(current) {
                problem(at: pos, "unterminated regular expression literal")
                return false
            }
            let c = current
            advance()
            if c == 0x5C {
                if atEnd || Self.isLineTerminator(current) {
                    problem(at: pos, "unterminated regular expression literal")
                    return false
                }
                advance()
            } else if c == 0x5B {
                inClass = true
            } else if c == 0x5D {
                inClass = false
            } else if c == 0x2F && !inClass {
                break
            }
        }
        while !atEnd && Self.isIDPart(current) { advance() }
        tok.kind = .regex
        return true
    }

    mutating func scanPunctuator(_ tok: inout JSToken) -> Bool {
        let first = byte(i)
        let n = punctuatorLength(first, byte(i + 1), byte(i + 2), byte(i + 3))
        guard n > 0 else { return false }
        tok.kind = .punctuator
        var code: UInt32 = 0
        for k in 0..<n { code |= UInt32(src[i + k]) << (8 * UInt32(k)) }
        tok.punctuator = code
        for _ in 0..<n { advance() }
        if n == 1 {
            switch first {
            case 0x28: open(.paren, position)
            case 0x5B: open(.bracket, position)
            case 0x7B: open(.brace, position)
            case 0x29: if stack.last?.0 == .paren { stack.removeLast() }
            case 0x5D: if stack.last?.0 == .bracket { stack.removeLast() }
            case 0x7D: if stack.last?.0 == .brace { stack.removeLast() }
            default: break
            }
        }
        return true
    }
}

extension String {
    func leftPadded(_ n: Int) -> String {
        count >= n ? self : String(repeating: "0", count: n - count) + self
    }
}
