import SecretfsNames

/// A static reference to one secret inside an expression.
struct SecretReference {
    var name: String
    /// Byte range replaced: from the `secrets` token to the end of the name or `]`.
    var start: Int
    var end: Int
    var position: SourcePosition
    /// Written as `("value")` rather than `"value"` (see `ExpressionAnalysis`).
    var parenthesize: Bool
    /// Comments inside the replaced range, kept after the literal.
    var comments: [JSComment]
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
struct ExpressionAnalysis {
    var source: [UInt8]
    var references: [SecretReference] = []
    var problems: [LexProblem] = []

    init(_ source: [UInt8]) {
        self.source = source
        let lex = JSTokenizer.tokenize(source)
        problems = lex.problems
        findReferences(lex)
        problems.sort { $0.position.scalarIndex < $1.position.scalarIndex }
    }

    static let assignmentOperators: Set<String> = [
        "=", "+=", "-=", "*=", "/=", "%=", "**=", "<<=", ">>=", ">>>=", "&=", "|=", "^=",
        "&&=", "||=", "??=", "++", "--",
    ]

    private func sourceText(_ from: Int, _ to: Int) -> String {
        let raw = String(decoding: source[from..<min(to, source.count)], as: UTF8.self)
        // Collapse runs of whitespace so the message stays on one line.
        var out = ""
        var lastSpace = false
        for u in raw.unicodeScalars {
            if u.properties.isWhitespace {
                if !lastSpace { out.append(" ") }
                lastSpace = true
            } else {
                out.unicodeScalars.append(u)
                lastSpace = false
            }
        }
        return out
    }

    /// Index of the `]` matching the `[` at `open`, or nil.
    private func matchingBracket(_ toks: [JSToken], _ open: Int) -> Int? {
        var depth = 0
        var k = open
        while k < toks.count {
            let t = toks[k]
            if t.kind == .punctuator {
                switch t.text {
                case "(", "[", "{": depth += 1
                case ")", "]", "}":
                    depth -= 1
                    if depth == 0 { return t.text == "]" ? k : nil }
                default: break
                }
            }
            k += 1
        }
        return nil
    }

    private mutating func findReferences(_ lex: JSTokenization) {
        let toks = lex.tokens
        func tok(_ k: Int) -> JSToken? { k >= 0 && k < toks.count ? toks[k] : nil }
        func report(_ kind: InjectionProblem.Kind, _ t: JSToken, _ message: String) {
            problems.append(LexProblem(kind: kind, position: SourcePosition(line: t.line, column: t.column, scalarIndex: t.scalarIndex), message: message))
        }
        var k = 0
        while k < toks.count {
            let t = toks[k]
            guard t.kind == .identifier, t.text == "secrets" else { k += 1; continue }
            let prev = tok(k - 1)
            if let prev, prev.isPunctuator(".") || prev.isPunctuator("?.") {
                k += 1   // `x.secrets`: a property, not the secrets object
                continue
            }
            let next = tok(k + 1)
            var name: String?
            var last = k

            func bracket(_ b: Int) {
                if let inner = tok(b + 1), inner.kind == .string || inner.kind == .templateNoSubstitution,
                   inner.cookedValid, let close = tok(b + 2), close.isPunctuator("]") {
                    name = inner.text
                    last = b + 2
                } else {
                    let end = matchingBracket(toks, b)
                    let endByte = end.map { toks[$0].end } ?? source.count
                    report(.notStatic, t, "\(sourceText(t.start, endByte)) cannot be resolved statically; hint: use secrets.NAME")
                    last = end ?? toks.count
                }
            }

            if let next, next.isPunctuator(".") || next.isPunctuator("?.") {
                let after = tok(k + 2)
                if let after, after.kind == .identifier {
                    name = after.text
                    last = k + 2
                } else if let after, next.text == "?.", after.isPunctuator("[") {
                    bracket(k + 2)
                } else if let after, after.kind == .privateName {
                    report(.notStatic, t, "secrets.#\(after.text) is not a secret reference; hint: use secrets.NAME")
                    last = k + 2
                } else {
                    report(.syntax, t, "expected a secret name after 'secrets\(next.text)'")
                    last = k + 1
                }
            } else if let next, next.isPunctuator("[") {
                bracket(k + 1)
            } else {
                let inObject = t.enclosing == .brace && (prev?.isPunctuator("{") == true || prev?.isPunctuator(",") == true)
                if inObject, next?.isPunctuator(":") == true {
                    k += 1   // `{ secrets: … }`: a property name
                    continue
                }
                if inObject, let next, next.isPunctuator("}") || next.isPunctuator(",") || next.isPunctuator("=") {
                    report(.notStatic, t, "shorthand { secrets } cannot be resolved statically; hint: use secrets.NAME")
                } else {
                    report(.notStatic, t, "secrets used as a whole cannot be resolved statically; hint: reference each secret as secrets.NAME")
                }
                k += 1
                continue
            }

            if let name {
                let end = toks[last].end
                if !Names.isValid(name) {
                    report(.invalidName, t, "invalid secret name \(displayQuoted(name)); names match [A-Za-z_][A-Za-z0-9_]*")
                } else if let after = tok(last + 1), after.kind == .punctuator, Self.assignmentOperators.contains(after.text) {
                    report(.assignment, t, "secrets.\(name) cannot be assigned to")
                } else if let prev, prev.isPunctuator("++") || prev.isPunctuator("--") {
                    report(.assignment, t, "secrets.\(name) cannot be assigned to")
                } else {
                    // A directive is a statement that is only a string literal: at a
                    // statement start, and ended by `;`, `}`, the end, or a line break.
                    let statementStart = prev == nil || prev!.isPunctuator("{") || prev!.isPunctuator(";")
                    let following = tok(last + 1)
                    let statementEnds = following == nil || following!.isPunctuator(";")
                        || following!.isPunctuator("}") || following!.line > toks[last].line
                    let parenthesize = statementStart && statementEnds && following != nil
                    let inner = lex.comments.filter { $0.start >= t.start && $0.end <= end }
                    references.append(SecretReference(
                        name: name, start: t.start, end: end,
                        position: SourcePosition(line: t.line, column: t.column, scalarIndex: t.scalarIndex),
                        parenthesize: parenthesize, comments: inner))
                }
            }
            k = last + 1
        }
    }

    /// Writes the rewritten expression through `outer`; `literal(i, &sink)`
    /// writes the JavaScript string literal for `references[i]`.
    func emit<S: ByteSink>(into sink: inout S, outer: OuterEscaping,
                           literal: (Int, inout S) -> Void) {
        var pos = 0
        for (n, ref) in references.enumerated() {
            sink.putSource(source[pos..<ref.start], outer: outer)
            if ref.parenthesize { sink.put(scalar: 0x28, outer: outer) }
            literal(n, &sink)
            if ref.parenthesize { sink.put(scalar: 0x29, outer: outer) }
            for c in ref.comments {
                sink.put(scalar: 0x20, outer: outer)
                sink.putSource(source[c.start..<c.end], outer: outer)
                if c.isLine { sink.put(scalar: 0x0A, outer: outer) }
            }
            pos = ref.end
        }
        sink.putSource(source[pos...], outer: outer)
    }
}
