// MARK: - Document plan (internal)
//
// Phase 1 turns a document into a plan: the expression sites (what to
// rewrite and what is wrong with it), the pieces of the output, and the
// counts the limits are checked against. Everything here is proportional to
// the document, never to the document times its depth: flow paths are shared
// nodes, and a context is rendered only when a problem message needs it.

/// How the raw text of an expression maps back to file positions.
struct RawSpan: Sendable {
    enum Style: Sendable { case plain, singleQuoted, doubleQuoted, block, json }
    var contentStart: Int       // byte offset of the first content character
    var end: Int                // byte offset where the raw scalar ends
    var line: Int               // 1-based, at contentStart
    var column: Int             // 1-based, at contentStart
    var style: Style
}

/// Where a site is, for messages.
enum SiteContext: Sendable {
    /// `field "NAME"` (config), or empty (a bare expression).
    case text(String)
    /// A node of `DocumentPlan.paths` (flow).
    case path(Int)
}

struct ExpressionSite: Sendable {
    var analysis: ExpressionAnalysis
    var context: SiteContext
    var span: RawSpan?          // nil: positions are the expression's own
}

enum Piece: Sendable {
    case raw(Range<Int>)
    case text([UInt8])
    case expression(Int, OuterEscaping)
}

/// Flow paths as a tree: each node is one key or index under its parent, so
/// sites at depth 500 share their ancestors instead of each holding a copy of
/// the whole path. Only the nodes some site (or problem) needs are made.
struct FlowPaths: Sendable {
    enum Component: Sendable, Equatable {
        case key(String)
        case index(Int)
    }
    struct Node: Sendable {
        var parent: Int
        var component: Component
    }
    /// The empty path (the document's root).
    static let root = -1
    private(set) var nodes: [Node] = []
    /// `blocks[i].name`, shown after the block's index.
    var blockNames: [Int: String] = [:]

    mutating func add(_ component: Component, under parent: Int) -> Int {
        nodes.append(Node(parent: parent, component: component))
        return nodes.count - 1
    }

    /// `blocks[1] "Ask Claude" inputs.default.config.headers`
    func render(_ node: Int) -> String {
        var path: [Component] = []
        var n = node
        while n != Self.root {
            path.append(nodes[n].component)
            n = nodes[n].parent
        }
        path.reverse()
        var out = ""
        for (n, c) in path.enumerated() {
            switch c {
            case .index(let i):
                out += "[\(i)]"
                if n == 1, case .key("blocks") = path[0], let name = blockNames[i] {
                    out += " \(displayQuoted(name, limit: 80))"
                    if n + 1 < path.count { out += " " }
                    continue
                }
            case .key(let k):
                let simple = !k.isEmpty && k.unicodeScalars.allSatisfy {
                    ($0.value < 0x80 && ($0.properties.isAlphabetic || ("0"..."9").contains($0)))
                        || $0 == "_" || $0 == "$" || $0 == "-"
                }
                let text = simple ? k : "[\(displayQuoted(k, limit: 80))]"
                if !out.isEmpty, !out.hasSuffix(" "), simple { out += "." }
                out += text
            }
        }
        return out
    }
}

struct DocumentPlan: Sendable {
    let source: [UInt8]
    let limits: InjectionLimits
    /// `flow`, `config` or `expression`: how limit messages begin.
    let what: String
    /// Sites that matter: every config field; flow and expression sites that
    /// hold a reference or a problem.
    var sites: [ExpressionSite] = []
    var pieces: [Piece] = []
    var documentProblems: [InjectionProblem] = []
    var paths = FlowPaths()
    /// Expression sites read (kept or not), references found, problems recorded.
    private(set) var siteCount = 0
    private(set) var referenceCount = 0
    private(set) var problemCount = 0
    /// The `.limit` problem that stopped the reading (listed after all others).
    private(set) var stop: InjectionProblem?
    /// `stop != nil`, kept as a flag: the readers test it for every event
    /// and token, and testing the optional copied the whole problem each time.
    private(set) var stopped = false

    init(source: [UInt8], format: InjectionFormat, limits: InjectionLimits) {
        self.source = source
        self.limits = limits
        switch format {
        case .flow: what = "flow"
        case .config: what = "config"
        case .expr: what = "expression"
        }
    }

    var tooManyProblems: String {
        "\(what): more than \(limits.maxProblems) problems; the rest of the document was not read"
    }

    /// A problem of the document itself (not of an expression in it).
    mutating func documentProblem(_ kind: InjectionProblem.Kind = .document, line: Int, column: Int,
                                  _ message: String, context: String = "") {
        guard !stopped else { return }
        guard problemCount < limits.maxProblems else {
            stopReading(line: line, column: column, tooManyProblems, context: context)
            return
        }
        problemCount += 1
        documentProblems.append(InjectionProblem(kind: kind, context: context, line: line, column: column, message: message))
    }

    /// A limit reached: the reader reads no further.
    mutating func stopReading(line: Int, column: Int, _ message: String, context: String = "") {
        guard !stopped else { return }
        stop = InjectionProblem(kind: .limit, context: context, line: line, column: column, message: message)
        stopped = true
    }

    enum SiteAnalysis {
        case analysed(ExpressionAnalysis)
        /// A limit was reached; `partial` is what was read before it.
        case overLimit(String, partial: ExpressionAnalysis?)
    }

    /// Phase 1 of one more expression site, within what the limits leave.
    mutating func analyse(_ value: [UInt8]) -> SiteAnalysis {
        guard siteCount < limits.maxSites else {
            let sites = what == "config" ? "fields" : what == "flow" ? "!expr expressions" : "expressions"
            return .overLimit("\(what): more than \(limits.maxSites) \(sites)", partial: nil)
        }
        siteCount += 1
        let analysis = ExpressionAnalysis(value, budget: AnalysisBudget(
            maxDepth: limits.maxNestingDepth, references: limits.maxReferences - referenceCount,
            problems: limits.maxProblems - problemCount))
        referenceCount += analysis.references.count
        problemCount += analysis.problems.count
        switch analysis.exceeded {
        case .references?: return .overLimit("\(what): more than \(limits.maxReferences) secret references", partial: analysis)
        case .problems?: return .overLimit(tooManyProblems, partial: analysis)
        case nil: return .analysed(analysis)
        }
    }

    /// Records a limit reached at a site, keeping what was found before it.
    /// `line`/`column` is the site's start, used when the limit is not at a
    /// position inside the expression (too many sites).
    mutating func stopReading(at site: ExpressionSite?, _ message: String, context: SiteContext, line: Int, column: Int) {
        var (l, c) = (line, column)
        if let site {
            if let p = site.analysis.exceededAt {
                var locate = SiteLocator(file: source, site: site)
                (l, c) = locate.position(p)
            }
            if !site.analysis.problems.isEmpty { sites.append(site) }
        }
        stopReading(line: l, column: c, message, context: self.context(context))
    }

    mutating func addWholeExpression() {
        switch analyse(source) {
        case .analysed(let analysis):
            sites.append(ExpressionSite(analysis: analysis, context: .text(""), span: nil))
            pieces = [.expression(0, .none)]
        case .overLimit(let message, let partial):
            stopReading(at: partial.map { ExpressionSite(analysis: $0, context: .text(""), span: nil) },
                        message, context: .text(""), line: 1, column: 1)
        }
    }

    func context(_ c: SiteContext) -> String {
        switch c {
        case .text(let s): return s
        case .path(let node): return paths.render(node)
        }
    }

    /// Problems at positions inside sites, at most `max` (then one more
    /// saying the rest are not listed), each site's context rendered once.
    /// `body` gives, for each reference of a site, the problem there if any.
    func referenceProblems(max: Int,
                           _ body: (SecretReference) -> (InjectionProblem.Kind, String, secret: String)?) -> [InjectionProblem] {
        var found: [InjectionProblem] = []
        for site in sites where !site.analysis.references.isEmpty {
            var locate = SiteLocator(file: source, site: site)
            var context: String?
            for r in site.analysis.references {
                guard let (kind, message, secret) = body(r) else { continue }
                let (line, column) = locate.position(r.position)
                if context == nil { context = self.context(site.context) }
                guard found.count < max else {
                    found.append(InjectionProblem(kind: .limit, context: context!, line: line, column: column,
                                                  message: "\(what): more than \(max) problems; the rest are not listed"))
                    return found
                }
                found.append(InjectionProblem(kind: kind, context: context!, line: line, column: column,
                                              message: message, secretName: secret))
            }
        }
        return found
    }
}

/// File positions of positions inside one site's expression. Positions are
/// asked in order (as problems and references are listed): one walk of the
/// site's raw text serves them all.
struct SiteLocator {
    private var aligner: RawAligner?

    init(file: [UInt8], site: ExpressionSite) {
        aligner = site.span.map { RawAligner(file: file, span: $0, value: site.analysis.source) }
    }

    mutating func position(_ p: SourcePosition) -> (Int, Int) {
        guard aligner != nil else { return (p.line, p.column) }
        return aligner!.position(scalarIndex: p.scalarIndex)
    }
}

/// Maps the n-th scalar of a decoded scalar (YAML or JSON string) back to its
/// place in the file by walking the raw text alongside the value: a value
/// character is matched to the next equal raw character, or to the escape
/// that produced it; raw characters that produced nothing (indentation,
/// folded line breaks, quotes of `''`) are skipped; a folded line break
/// matches the value's space or newline. Exact for the characters tokens
/// start with.
///
/// The walk goes forward only: asking for positions in increasing order costs
/// one walk of the span in all (an earlier position starts it again).
struct RawAligner {
    let file: [UInt8]
    let span: RawSpan
    let value: [UInt8]
    private var w: RawWalker
    private var vp = 0      // byte offset in `value` of scalar `k`
    private var k = 0       // the next value scalar to match
    private var last: (index: Int, line: Int, column: Int)?

    init(file: [UInt8], span: RawSpan, value: [UInt8]) {
        self.file = file
        self.span = span
        self.value = value
        w = RawWalker(src: file, pos: span.contentStart, line: span.line, column: span.column,
                      yamlBreaks: span.style != .json)
    }

    mutating func position(scalarIndex: Int) -> (Int, Int) {
        if let last, last.index == scalarIndex { return (last.line, last.column) }
        if scalarIndex < k { self = RawAligner(file: file, span: span, value: value) }
        while vp < value.count {
            let (v, vn) = decodeUTF8(value, vp)
            let here = match(v)
            let index = k
            vp += vn
            k += 1
            if index == scalarIndex {
                last = (index, here.0, here.1)
                return here
            }
        }
        return (w.line, w.column)
    }

    /// Moves past the raw text that produced value scalar `v`; returns where
    /// that text starts.
    private mutating func match(_ v: UInt32) -> (Int, Int) {
        let here = (w.line, w.column)
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
                let at = (w.line, w.column)
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
                return at
            }
            if span.style == .singleQuoted && r == 0x27 {
                let at = (w.line, w.column)
                w.advance(); w.advance()
                return at
            }
            if r == v || ((v == 0x20 || v == 0x0A) && w.isBreak) {
                let at = (w.line, w.column)
                w.advance()
                return at
            }
            w.advance()
        }
        return here
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
