/// Bounds on what one document may cost, checked before the memory is
/// committed (DESIGN.md, "Trust boundaries"). A document over a limit is not
/// an error of the reader: it gets one `.limit` problem that names the limit,
/// and nothing is written.
///
/// The defaults are far above any real flow (the platform's flows nest 7
/// levels: `blocks[i].inputs.default.config.FIELD` and a map under it; the
/// sample flows hold a handful of expressions) and low enough that a hostile
/// document costs at most a small multiple of its own size.
/// `docs/injection.md` lists them with the reasons.
///
/// The resolver daemon passes its own (for example a `maxOutputBytes` that
/// leaves room for its frame header).
public struct InjectionLimits: Sendable, Hashable {
    /// Largest document, in bytes. The default is the resolver daemon's
    /// largest request frame (16 MiB).
    public var maxDocumentBytes: Int
    /// Deepest nesting of YAML collections (flow), JSON arrays and objects
    /// (config), and of brackets, braces, parentheses and template `${`
    /// substitutions inside one expression. (libyaml stops at 1000 levels by
    /// itself, so a flow never nests deeper than that whatever this says.)
    public var maxNestingDepth: Int
    /// Most expression sites: `!expr` scalars in a flow, fields in a config.
    public var maxSites: Int
    /// Most secret references (occurrences of `secrets.NAME`) in the document.
    public var maxReferences: Int
    /// Most problems listed; past this many the scan stops and says so.
    public var maxProblems: Int
    /// Largest output of `rewrite` and `bindings`, in bytes, unless the call
    /// gives its own `maximum`. The default is the daemon's largest reply
    /// frame (64 MiB).
    public var maxOutputBytes: Int

    public init(maxDocumentBytes: Int = 16 << 20, maxNestingDepth: Int = 512, maxSites: Int = 100_000,
                maxReferences: Int = 100_000, maxProblems: Int = 1_000, maxOutputBytes: Int = 64 << 20) {
        self.maxDocumentBytes = maxDocumentBytes
        self.maxNestingDepth = maxNestingDepth
        self.maxSites = maxSites
        self.maxReferences = maxReferences
        self.maxProblems = maxProblems
        self.maxOutputBytes = maxOutputBytes
    }

    public static let `default` = InjectionLimits()
}
