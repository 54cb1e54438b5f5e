/// The three input formats of `secretfs resolve`.
public enum InjectionFormat: String, Sendable, CaseIterable {
    /// A flow definition (YAML); only scalars tagged `!expr` are expressions.
    case flow
    /// An app installation config: a JSON object of field name -> expression source.
    case config
    /// One JavaScript expression, the whole input.
    case expr

    /// The format implied by a file name: `.yaml`/`.yml` flow, `.json` config.
    public static func forPath(_ path: String) -> InjectionFormat? {
        let lower = path.lowercased()
        if lower.hasSuffix(".yaml") || lower.hasSuffix(".yml") { return .flow }
        if lower.hasSuffix(".json") { return .config }
        return nil
    }
}

/// Entry point. Two phases, so that only referenced secrets are ever fetched:
///
/// ```swift
/// let scan = Injector.scan(bytes, format: .flow)          // phase 1: no secrets needed
/// guard scan.problems.isEmpty else { report(scan.problems) }
/// let values = fetch(scan.referencedNames)                 // least privilege
/// let out: SecureBytes = try scan.rewrite { values[$0] }   // phase 2
/// ```
public enum Injector {
    /// Phase 1: parses the document, tokenizes every expression in it and
    /// finds the secret references. Never needs a value and never fails: what
    /// is wrong is listed in `problems`, including any of `limits` that the
    /// document goes past (a `.limit` problem; the document size is checked
    /// before anything is parsed).
    public static func scan(_ source: [UInt8], format: InjectionFormat,
                            limits: InjectionLimits = .default) -> InjectionScan {
        var doc = DocumentPlan(source: source, limits: limits)
        if source.count > limits.maxDocumentBytes {
            doc.limitProblem(line: 1, column: 1,
                             "document: \(source.count) bytes, over the limit of \(limits.maxDocumentBytes) bytes")
            return InjectionScan(format: format, plan: doc)
        }
        switch format {
        case .expr:
            doc.addWholeExpression()
        case .config:
            ConfigReader.read(into: &doc)
        case .flow:
            FlowReader.read(into: &doc)
        }
        return InjectionScan(format: format, plan: doc)
    }

    /// Convenience: `scan` of UTF-8 text.
    public static func scan(_ source: String, format: InjectionFormat,
                            limits: InjectionLimits = .default) -> InjectionScan {
        scan(Array(source.utf8), format: format, limits: limits)
    }
}

/// The result of phase 1, and phase 2 on it.
public struct InjectionScan: Sendable {
    public let format: InjectionFormat
    /// Every distinct secret name statically referenced, sorted. Fetch only these.
    public let referencedNames: [String]
    /// Problems found without any value (syntax, non-static use, invalid
    /// names, document errors), in document order. Non-empty means `rewrite`
    /// and `bindings` will throw them.
    public let problems: [InjectionProblem]
    /// Number of references (occurrences) in the document.
    public let referenceCount: Int
    let plan: DocumentPlan

    init(format: InjectionFormat, plan: DocumentPlan) {
        self.format = format
        self.plan = plan
        var names = Set<String>()
        var count = 0
        for site in plan.sites {
            for r in site.analysis.references { names.insert(r.name) }
            count += site.analysis.references.count
        }
        referencedNames = names.sorted()
        referenceCount = count
        problems = (plan.documentProblems + plan.sites.flatMap { site in
            site.analysis.problems.map { plan.problem($0.kind, site: site, at: $0.position, $0.message) }
        })
        .sorted { ($0.line, $0.column) < ($1.line, $1.column) }
    }

    /// Phase 2: the document with every reference replaced by a JavaScript
    /// string literal of its value, assembled in one buffer of `B` (use
    /// `SecureBytes`) of exactly the output length.
    ///
    /// `lookup` is called once per name in `referencedNames` and returns the
    /// value, or nil if the project has no such secret. Throws every problem at
    /// once: the phase-1 problems if any (then `lookup` is not called), else
    /// every missing secret at each reference and every value that is not
    /// valid UTF-8. Messages name secrets, never values.
    ///
    /// Output: `flow` is the input file byte for byte except each `!expr`
    /// scalar that holds a reference, which becomes `!expr "…"` (a YAML
    /// double-quoted scalar, anchor kept); `config` is a JSON object with the
    /// same fields in the same order, each value the rewritten expression;
    /// `expr` is the rewritten expression.
    public func rewrite<B: SecretBuffer>(_ lookup: (String) -> B?) throws(InjectionError) -> B {
        let values = try resolve(lookup)
        return assemble(B.self, { emitDocument(into: &$0, values) }, { emitDocument(into: &$0, values) })
    }

    /// Phase 2, for runtimes that bind `secrets` themselves: a JSON object of
    /// just the referenced names (sorted) and their values as JSON strings,
    /// `{"A":"…","B":"…"}` plus a newline, assembled in `B`. Same errors as
    /// `rewrite`.
    public func bindings<B: SecretBuffer>(_ lookup: (String) -> B?) throws(InjectionError) -> B {
        let values = try resolve(lookup)
        return assemble(B.self, { emitBindings(into: &$0, values) }, { emitBindings(into: &$0, values) })
    }

    /// A missing-secret problem at each reference to a name not in
    /// `existing`. Lets a caller report missing secrets together with the
    /// phase-1 problems, knowing only the project's names (no values).
    public func missingSecretProblems(existing: Set<String>) -> [InjectionProblem] {
        var found: [InjectionProblem] = []
        for site in plan.sites {
            for r in site.analysis.references where !existing.contains(r.name) {
                found.append(plan.problem(.missingSecret, site: site, at: r.position,
                                          "secret \(r.name) does not exist in the project", secret: r.name))
            }
        }
        return found
    }

    private func resolve<B: SecretBuffer>(_ lookup: (String) -> B?) throws(InjectionError) -> [String: B] {
        guard problems.isEmpty else { throw InjectionError(problems: problems) }
        var values: [String: B] = [:]
        var missing = Set<String>()
        var notUTF8 = Set<String>()
        for name in referencedNames {
            if let v = lookup(name) {
                if v.isValidUTF8Value { values[name] = v } else { notUTF8.insert(name) }
            } else {
                missing.insert(name)
            }
        }
        guard !missing.isEmpty || !notUTF8.isEmpty else { return values }
        var found: [InjectionProblem] = []
        var reportedUTF8 = Set<String>()
        for site in plan.sites {
            for r in site.analysis.references {
                if missing.contains(r.name) {
                    found.append(plan.problem(.missingSecret, site: site, at: r.position,
                                              "secret \(r.name) does not exist in the project", secret: r.name))
                } else if notUTF8.contains(r.name), reportedUTF8.insert(r.name).inserted {
                    found.append(plan.problem(.invalidUTF8Value, site: site, at: r.position,
                                              "secret \(r.name) is not valid UTF-8 and cannot become a JavaScript string",
                                              secret: r.name))
                }
            }
        }
        throw InjectionError(problems: found)
    }

    private func emitDocument<S: ByteSink, B: SecretBuffer>(into sink: inout S, _ values: [String: B]) {
        for piece in plan.pieces {
            switch piece {
            case .raw(let range):
                sink.put(bytes: plan.source[range])
            case .text(let bytes):
                sink.put(bytes: bytes)
            case .expression(let index, let outer):
                let analysis = plan.sites[index].analysis
                analysis.emit(into: &sink, outer: outer) { n, s in
                    values[analysis.references[n].name]!.withUnsafeBytes { s.putJSStringLiteral($0, outer: outer) }
                }
            }
        }
    }

    private func emitBindings<S: ByteSink, B: SecretBuffer>(into sink: inout S, _ values: [String: B]) {
        sink.put(0x7B)
        for (k, name) in referencedNames.enumerated() {
            if k > 0 { sink.put(0x2C) }
            sink.put(bytes: jsonQuoted(name))
            sink.put(0x3A)
            sink.put(0x22)
            values[name]!.withUnsafeBytes { raw in forEachScalar(raw) { sink.putJSONEscaped($0) } }
            sink.put(0x22)
        }
        sink.put(0x7D)
        sink.put(0x0A)
    }
}

// MARK: - Document plan (internal)

/// How the raw text of an expression maps back to file positions.
struct RawSpan {
    enum Style { case plain, singleQuoted, doubleQuoted, block, json }
    var contentStart: Int       // byte offset of the first content character
    var end: Int                // byte offset where the raw scalar ends
    var line: Int               // 1-based, at contentStart
    var column: Int             // 1-based, at contentStart
    var style: Style
}

struct ExpressionSite: Sendable {
    var analysis: ExpressionAnalysis
    /// Flow path components, or the rendered context for other formats.
    var context: String
    var span: RawSpan?          // nil: positions are the expression's own
}

enum Piece: Sendable {
    case raw(Range<Int>)
    case text([UInt8])
    case expression(Int, OuterEscaping)
}

struct DocumentPlan: Sendable {
    let source: [UInt8]
    let limits: InjectionLimits
    var sites: [ExpressionSite] = []
    var pieces: [Piece] = []
    var documentProblems: [InjectionProblem] = []

    init(source: [UInt8], limits: InjectionLimits) {
        self.source = source
        self.limits = limits
    }

    mutating func limitProblem(line: Int, column: Int, _ message: String, context: String = "") {
        documentProblems.append(InjectionProblem(kind: .limit, context: context, line: line, column: column, message: message))
    }

    /// What the next expression may cost.
    var analysisBudget: AnalysisBudget {
        AnalysisBudget(maxDepth: limits.maxNestingDepth, references: .max, problems: .max)
    }

    mutating func addWholeExpression() {
        sites.append(ExpressionSite(analysis: ExpressionAnalysis(source, budget: analysisBudget), context: "", span: nil))
        pieces = [.expression(0, .none)]
    }

    mutating func documentProblem(line: Int, column: Int, _ message: String, context: String = "") {
        documentProblems.append(InjectionProblem(kind: .document, context: context, line: line, column: column, message: message))
    }

    func problem(_ kind: InjectionProblem.Kind, site: ExpressionSite, at p: SourcePosition,
                 _ message: String, secret: String? = nil) -> InjectionProblem {
        let (line, column) = position(site: site, p)
        return InjectionProblem(kind: kind, context: site.context, line: line, column: column,
                                message: message, secretName: secret)
    }

    /// File position of an expression position.
    func position(site: ExpressionSite, _ p: SourcePosition) -> (Int, Int) {
        guard let span = site.span else { return (p.line, p.column) }
        return RawAligner.position(file: source, span: span, value: site.analysis.source, scalarIndex: p.scalarIndex)
    }
}

/// Maps the n-th scalar of a decoded scalar (YAML or JSON string) back to its
/// place in the file by walking the raw text alongside the value: a value
/// character is matched to the next equal raw character, or to the escape
/// that produced it; raw characters that produced nothing (indentation,
/// folded line breaks, quotes of `''`) are skipped; a folded line break
/// matches the value's space or newline. Exact for the characters tokens
/// start with.
enum RawAligner {
    static func position(file: [UInt8], span: RawSpan, value: [UInt8], scalarIndex: Int) -> (Int, Int) {
        var w = RawWalker(src: file, pos: span.contentStart, line: span.line, column: span.column,
                          yamlBreaks: span.style != .json)
        var vp = 0
        var k = 0
        while vp < value.count {
            let (v, vn) = decodeUTF8(value, vp)
            var here = (w.line, w.column)
            while w.pos < span.end {
                let r = w.current
                if (span.style == .doubleQuoted || span.style == .json) && r == 0x5C {
                    let e = w.peekByte(1)
                    if span.style == .doubleQuoted && (e == 0x0A || e == 0x0D) {
                        w.advance(); w.advance()   // escaped line break
                        if e == 0x0D && w.currentByte == 0x0A { w.advance() }
                        while w.pos < span.end && (w.currentByte == 0x20 || w.currentByte == 0x09) { w.advance() }
                        continue
                    }
                    here = (w.line, w.column)
                    let len: Int
                    switch e {
                    case 0x78: len = 4
                    case 0x75: len = 6
                    case 0x55: len = 10
                    default: len = 2
                    }
                    // A JSON surrogate pair is two escapes for one scalar.
                    let pair = span.style == .json && e == 0x75 && v >= 0x10000
                    for _ in 0..<(pair ? 12 : len) { w.advance() }
                    break
                }
                if span.style == .singleQuoted && r == 0x27 {
                    here = (w.line, w.column)
                    w.advance(); w.advance()
                    break
                }
                if r == v {
                    here = (w.line, w.column)
                    w.advance()
                    break
                }
                if (v == 0x20 || v == 0x0A) && w.isBreak {
                    here = (w.line, w.column)
                    w.advance()
                    break
                }
                w.advance()
            }
            if k == scalarIndex { return here }
            vp += vn
            k += 1
        }
        return (w.line, w.column)
    }
}

/// Walks raw file text keeping a 1-based line and column (columns in scalars).
struct RawWalker {
    let src: [UInt8]
    var pos: Int
    var line: Int
    var column: Int
    var yamlBreaks: Bool

    var current: UInt32 { decodeUTF8(src, pos).0 }
    var currentByte: UInt8 { pos < src.count ? src[pos] : 0 }
    func peekByte(_ n: Int) -> UInt8 { pos + n < src.count ? src[pos + n] : 0 }
    var isBreak: Bool {
        let c = current
        return c == 0x0A || c == 0x0D || (yamlBreaks && (c == 0x85 || c == 0x2028 || c == 0x2029))
    }

    mutating func advance() {
        guard pos < src.count else { return }
        let (c, n) = decodeUTF8(src, pos)
        let brk = isBreak
        pos += n
        if brk && !(c == 0x0D && currentByte == 0x0A) {
            line += 1
            column = 1
        } else {
            column += 1
        }
    }
}

/// The scalar at byte `p` of UTF-8 `src` and its length; invalid bytes read
/// as U+FFFD of length 1.
func decodeUTF8(_ src: [UInt8], _ p: Int) -> (UInt32, Int) {
    guard p < src.count else { return (0, 0) }
    let b0 = UInt32(src[p])
    if b0 < 0x80 { return (b0, 1) }
    func cont(_ k: Int) -> UInt32? {
        guard p + k < src.count, src[p + k] & 0xC0 == 0x80 else { return nil }
        return UInt32(src[p + k] & 0x3F)
    }
    if b0 & 0xE0 == 0xC0, let c1 = cont(1) {
        let v = (b0 & 0x1F) << 6 | c1
        if v >= 0x80 { return (v, 2) }
    } else if b0 & 0xF0 == 0xE0, let c1 = cont(1), let c2 = cont(2) {
        let v = (b0 & 0x0F) << 12 | c1 << 6 | c2
        if v >= 0x800 && !(0xD800...0xDFFF).contains(v) { return (v, 3) }
    } else if b0 & 0xF8 == 0xF0, let c1 = cont(1), let c2 = cont(2), let c3 = cont(3) {
        let v = (b0 & 0x07) << 18 | c1 << 12 | c2 << 6 | c3
        if v >= 0x10000 && v <= 0x10FFFF { return (v, 4) }
    }
    return (0xFFFD, 1)
}
