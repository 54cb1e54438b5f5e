import SecretfsNames

/// A static reference to one secret inside an expression.
struct SecretReference: Sendable {
    var name: String
    /// Byte range replaced: from the `secrets` token to the end of the name or `]`.
    var start: Int
    var end: Int
    var position: SourcePosition
    /// Written as `("value")` rather than `"value"` (see `ExpressionAnalysis`).
    var parenthesize: Bool
    /// The gaps between the reference's tokens that hold comments (rare):
    /// those comments are kept after the literal. Each gap is read once, when
    /// the output is produced, so matching comments to references is linear.
    var commentGaps: [Range<Int>] = []
}

/// What one expression may cost: its nesting depth, and how many references
/// and problems it may still add to the document's totals.
struct AnalysisBudget {
    var maxDepth: Int
    var references: Int
    var problems: Int

    static let unlimited = AnalysisBudget(maxDepth: .max, references: .max, problems: .max)
}

/// The references and problems of one expression.
///
/// Replacement form: a reference becomes a double-quoted JavaScript string
/// literal, bare (`"v"`). A string literal is a PrimaryExpression, so it can
/// stand wherever the MemberExpression `secrets.NAME` stood and everything
/// around it binds the same way: `"v".length`, `typeof "v"`, `new "v"`,
/// `"v"\`t\``, `a / "v" / b`. Bare is preferred over `("v")` because a line
/// that starts with `(` can continue the previous line as a call when there is
/// no semicolon (`f\n("v")` is `f("v")`), while a string cannot. The one place
/// a bare string changes meaning is a statement of its own at the start of a
/// body, where it becomes a directive (`"use strict"`): a reference that
/// starts a statement (start of input, after `{` or `;`) and also ends it
/// (followed by `;`, `}` or a line break) is therefore written as `("v")`,
/// which is never a directive and cannot continue anything there. A reference
/// that is the whole input stays bare: a directive with no code after it
/// changes nothing and evaluates to the same string.
struct ExpressionAnalysis: Sendable {
    enum Exceeded: Sendable { case references, problems }

    var source: [UInt8]
    var references: [SecretReference] = []
    var problems: [LexProblem] = []
    /// Set when the budget ran out: the analysis stopped at `exceededAt`, and
    /// the document reader reports the limit.
    var exceeded: Exceeded?
    var exceededAt: SourcePosition?

    init(_ source: [UInt8], budget: AnalysisBudget = .unlimited) {
        self.source = source
        var finder = ReferenceFinder(source: source, budget: budget)
        finder.run()
        references = finder.references
        problems = finder.tokens.lexer.problems
        if let at = finder.referencesExceededAt {
            exceeded = .references
            exceededAt = at
        } else if finder.tokens.lexer.problemsExceeded {
            exceeded = .problems
            exceededAt = finder.tokens.lexer.problemsExceededAt
        }
        problems.sort { $0.position.scalarIndex < $1.position.scalarIndex }
    }

    /// Writes the rewritten expression through `outer`; `literal(i, &sink)`
    /// writes the JavaScript string literal for `references[i]`.
    func emit<S: ByteSink>(into sink: inout S, outer: OuterEscaping,
                           literal: (Int, inout S) -> Void) {
        Self.emit(source: source, references: references, into: &sink, outer: outer, literal: literal)
    }

    /// `emit` on an analysis's two arrays, for a caller that reaches the
    /// analysis through a pointer: calling a method on it copied the whole
    /// analysis (a retain and a release of each of its arrays) per site and pass.
    static func emit<S: ByteSink>(source: [UInt8], references: [SecretReference], into sink: inout S,
                                  outer: OuterEscaping, literal: (Int, inout S) -> Void) {
        // Through borrowed buffers: a copy of each reference (its name, its
        // comment gaps) and a slice of the source per piece cost a retain
        // and a release each, most of phase 2's own time for small documents
        // written twice (measured, then written) at every request.
        source.withUnsafeBytes { src in
            references.withUnsafeBufferPointer { refs in
                var pos = 0
                for n in refs.indices {
                    sink.putSource(UnsafeRawBufferPointer(rebasing: src[pos..<refs[n].start]), outer: outer)
                    let parenthesize = refs[n].parenthesize
                    if parenthesize { sink.put(scalar: 0x28, outer: outer) }
                    literal(n, &sink)
                    if parenthesize { sink.put(scalar: 0x29, outer: outer) }
                    if !refs[n].commentGaps.isEmpty {
                        for gap in refs[n].commentGaps {
                            forEachComment(source, in: gap) { range, isLine in
                                sink.put(scalar: 0x20, outer: outer)
                                sink.putSource(UnsafeRawBufferPointer(rebasing: src[range]), outer: outer)
                                if isLine { sink.put(scalar: 0x0A, outer: outer) }
                            }
                        }
                    }
                    pos = refs[n].end
                }
                sink.putSource(UnsafeRawBufferPointer(rebasing: src[pos...]), outer: outer)
            }
        }
    }
}

/// The comments in `gap`, a run of trivia (white space, line terminators,
/// comments) between two tokens, as the tokenizer read them: a line comment
/// ends before its line terminator, a block comment after its `*/`.
func forEachComment(_ src: [UInt8], in gap: Range<Int>, _ body: (Range<Int>, _ isLine: Bool) -> Void) {
    func isLineTerminator(_ q: Int) -> Bool {
        let b = src[q]
        if b == 0x0A || b == 0x0D { return true }
        // U+2028, U+2029
        return b == 0xE2 && q + 2 < src.count && src[q + 1] == 0x80 && (src[q + 2] == 0xA8 || src[q + 2] == 0xA9)
    }
    var p = gap.lowerBound
    while p + 1 < gap.upperBound {
        guard src[p] == 0x2F else { p += 1; continue }
        if src[p + 1] == 0x2F {
            var q = p + 2
            while q < gap.upperBound && !isLineTerminator(q) { q += 1 }
            body(p..<q, true)
            p = q
        } else if src[p + 1] == 0x2A {
            var q = p + 2
            while q + 1 < gap.upperBound && !(src[q] == 0x2A && src[q + 1] == 0x2F) { q += 1 }
            let end = min(q + 2, gap.upperBound)
            body(p..<end, false)
            p = end
        } else {
            p += 1
        }
    }
}

/// A few tokens of lookahead over the tokenizer, and the token before them.
struct TokenWindow {
    var lexer: JSTokenizer
    private var ahead: [JSToken] = []
    private(set) var previous: JSToken?

    init(_ lexer: JSTokenizer) { self.lexer = lexer }

    /// The token `n` places ahead (0 is the current one), or nil past the end.
    mutating func peek(_ n: Int) -> JSToken? {
        // A reference looks at most six tokens ahead: room for them at once.
        if ahead.capacity < 8 { ahead.reserveCapacity(8) }
        while ahead.count <= n {
            guard let t = lexer.next() else { return nil }
            ahead.append(t)
        }
        return ahead[n]
    }

    /// Moves past `n` tokens.
    mutating func consume(_ n: Int) {
        for _ in 0..<n {
            if ahead.isEmpty {
                guard let t = lexer.next() else { return }
                previous = t
            } else {
                previous = ahead.removeFirst()
            }
        }
    }

    /// Moves to the next identifier `secrets` and returns it (nil at the
    /// end). Most tokens pass here, once each, without being buffered.
    mutating func nextSecrets() -> JSToken? {
        while true {
            if let t = ahead.first {
                if JSTokenizer.isSecrets(t, in: lexer.src) { return t }
                previous = ahead.removeFirst()
                continue
            }
            guard let t = lexer.next() else { return nil }
            if JSTokenizer.isSecrets(t, in: lexer.src) {
                if ahead.capacity < 8 { ahead.reserveCapacity(8) }
                ahead.append(t)
                return t
            }
            previous = t
        }
    }

    /// At a `[`: moves past the bracket that closes it. Returns the end of
    /// that `]`, or nil when another kind of bracket closes it or the input
    /// ends first.
    mutating func skipBracketed() -> Int? {
        var depth = 0
        while let t = peek(0) {
            consume(1)
            guard t.kind == .punctuator else { continue }
            if t.isPunctuator("(") || t.isPunctuator("[") || t.isPunctuator("{") {
                depth += 1
            } else if t.isPunctuator(")") || t.isPunctuator("]") || t.isPunctuator("}") {
                depth -= 1
                if depth == 0 { return t.isPunctuator("]") ? t.end : nil }
            }
        }
        return nil
    }

    /// Moves to the end (the tokenizer still reports what it finds).
    mutating func drain() {
        while peek(0) != nil { consume(1) }
    }
}

/// Finds the references of one expression in one pass over its tokens.
struct ReferenceFinder {
    let source: [UInt8]
    var tokens: TokenWindow
    let maxReferences: Int
    var references: [SecretReference] = []
    /// The reference past `maxReferences`, where the finder stopped.
    var referencesExceededAt: SourcePosition?

    init(source: [UInt8], budget: AnalysisBudget) {
        self.source = source
        tokens = TokenWindow(JSTokenizer(source, maxDepth: budget.maxDepth, maxProblems: budget.problems))
        maxReferences = budget.references
    }

    static let assignmentOperators: Set<UInt32> = [
        JSToken.code("="), JSToken.code("+="), JSToken.code("-="), JSToken.code("*="), JSToken.code("/="),
        JSToken.code("%="), JSToken.code("**="), JSToken.code("<<="), JSToken.code(">>="), JSToken.code(">>>="),
        JSToken.code("&="), JSToken.code("|="), JSToken.code("^="), JSToken.code("&&="), JSToken.code("||="),
        JSToken.code("??="), JSToken.code("++"), JSToken.code("--"),
    ]

    var stopped: Bool { referencesExceededAt != nil || tokens.lexer.problemsExceeded }

    mutating func report(_ kind: InjectionProblem.Kind, _ t: JSToken, _ message: String) {
        tokens.lexer.problem(kind, at: SourcePosition(line: t.line, column: t.column, scalarIndex: t.scalarIndex), message)
    }

    /// Source text for a message: runs of white space collapsed (so it stays
    /// on one line), at most `limit` characters.
    func sourceText(_ from: Int, _ to: Int, limit: Int = 60) -> String {
        var out = String.UnicodeScalarView()
        var lastSpace = false
        var n = 0
        var p = from
        let end = min(to, source.count)
        while p < end {
            if n == limit {
                out.append("…")
                break
            }
            let (c, len) = decodeUTF8(source, p)
            p += len
            let u = Unicode.Scalar(c) ?? "\u{FFFD}"
            if u.properties.isWhitespace {
                if lastSpace { continue }
                out.append(" ")
                lastSpace = true
            } else {
                out.append(u)
                lastSpace = false
            }
            n += 1
        }
        return String(out)
    }

    mutating func run() {
        while !stopped, let t = tokens.nextSecrets() {
            let prev = tokens.previous
            if let prev, prev.isPunctuator(".") || prev.isPunctuator("?.") {
                tokens.consume(1)   // `x.secrets`: a property, not the secrets object
                continue
            }
            let next = tokens.peek(1)
            var found: (name: String, last: Int)?
            var last = 0

            if let next, next.isPunctuator(".") || next.isPunctuator("?.") {
                let after = tokens.peek(2)
                if let after, after.kind == .identifier {
                    found = (tokens.lexer.name(of: after), 2)
                } else if let after, next.isPunctuator("?."), after.isPunctuator("[") {
                    guard let key = bracket(t, at: 2) else { continue }
                    found = key
                } else if let after, after.kind == .privateName {
                    report(.notStatic, t, "secrets.#\(tokens.lexer.name(of: after)) is not a secret reference; hint: use secrets.NAME")
                    last = 2
                } else {
                    report(.syntax, t, "expected a secret name after 'secrets\(next.punctuatorText)'")
                    last = 1
                }
            } else if let next, next.isPunctuator("[") {
                guard let key = bracket(t, at: 1) else { continue }
                found = key
            } else {
                let inObject = t.enclosing == .brace && (prev?.isPunctuator("{") == true || prev?.isPunctuator(",") == true)
                if inObject, next?.isPunctuator(":") == true {
                    tokens.consume(1)   // `{ secrets: … }`: a property name
                    continue
                }
                if inObject, let next, next.isPunctuator("}") || next.isPunctuator(",") || next.isPunctuator("=") {
                    report(.notStatic, t, "shorthand { secrets } cannot be resolved statically; hint: use secrets.NAME")
                } else {
                    report(.notStatic, t, "secrets used as a whole cannot be resolved statically; hint: reference each secret as secrets.NAME")
                }
                tokens.consume(1)
                continue
            }
            if let found {
                last = found.last
                record(t, name: found.name, last: last, prev: prev)
            }
            tokens.consume(last + 1)
        }
        // Problems past the last reference still count (an unterminated
        // literal at the end makes the expression unusable).
        if !stopped { tokens.drain() }
    }

    /// `secrets[` with the `[` `b` tokens ahead. Returns the name and the
    /// offset of `]` for a static key; otherwise reports the reference, moves
    /// past its brackets and returns nil.
    mutating func bracket(_ t: JSToken, at b: Int) -> (name: String, last: Int)? {
        if let inner = tokens.peek(b + 1), inner.kind == .string || inner.kind == .templateNoSubstitution {
            let (key, valid) = tokens.lexer.cookedValue(of: inner)
            if valid, let close = tokens.peek(b + 2), close.isPunctuator("]") { return (key, b + 2) }
        }
        tokens.consume(b)
        let end = tokens.skipBracketed()
        report(.notStatic, t, "\(sourceText(t.start, end ?? source.count)) cannot be resolved statically; hint: use secrets.NAME")
        // A bracket closed by another kind: nothing after it is read as code.
        if end == nil { tokens.drain() }
        return nil
    }

    /// `secrets` (`t`, the current token) through its name, `last` tokens ahead.
    mutating func record(_ t: JSToken, name: String, last: Int, prev: JSToken?) {
        guard let lastToken = tokens.peek(last) else { return }
        let following = tokens.peek(last + 1)
        if !Names.isValid(name) {
            report(.invalidName, t, "invalid secret name \(displayQuoted(name)); names match [A-Za-z_][A-Za-z0-9_]*")
            return
        }
        if let following, following.kind == .punctuator, Self.assignmentOperators.contains(following.punctuator) {
            report(.assignment, t, "secrets.\(name) cannot be assigned to")
            return
        }
        if let prev, prev.isPunctuator("++") || prev.isPunctuator("--") {
            report(.assignment, t, "secrets.\(name) cannot be assigned to")
            return
        }
        guard references.count < maxReferences else {
            referencesExceededAt = SourcePosition(line: t.line, column: t.column, scalarIndex: t.scalarIndex)
            return
        }
        // A directive is a statement that is only a string literal: at a
        // statement start, and ended by `;`, `}`, the end, or a line break.
        let statementStart = prev == nil || prev!.isPunctuator("{") || prev!.isPunctuator(";")
        let statementEnds = following == nil || following!.isPunctuator(";")
            || following!.isPunctuator("}") || following!.line > lastToken.line
        var gaps: [Range<Int>] = []
        var before = t
        for j in stride(from: 1, through: last, by: 1) {
            guard let tok = tokens.peek(j) else { break }
            if before.end < tok.start, source[before.end..<tok.start].contains(0x2F) { gaps.append(before.end..<tok.start) }
            before = tok
        }
        references.append(SecretReference(
            name: name, start: t.start, end: lastToken.end,
            position: SourcePosition(line: t.line, column: t.column, scalarIndex: t.scalarIndex),
            parenthesize: statementStart && statementEnds && following != nil, commentGaps: gaps))
    }
}
