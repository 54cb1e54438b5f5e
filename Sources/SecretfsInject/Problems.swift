/// One thing wrong with a document, with where it is.
///
/// `description` reads `CONTEXT LINE:COLUMN: MESSAGE`, for example
/// `blocks[1] "Ask Claude" inputs.default.config.headers 3:17: secrets[key] cannot be resolved statically; hint: use secrets.NAME`.
/// The context is the flow path (with the block's name), `field "NAME"` for an
/// installation config, and empty for a bare expression. Line and column are
/// 1-based positions in the input file (columns count Unicode scalars).
/// Messages quote names and source text, never a secret value.
public struct InjectionProblem: Sendable, Hashable, CustomStringConvertible {
    public enum Kind: String, Sendable, Hashable {
        /// The expression does not tokenize (unterminated string, template,
        /// comment or regular expression; stray character; bad UTF-8).
        case syntax
        /// `secrets[expr]`, `secrets` as a whole, `{ secrets }`, `secrets.#x`.
        case notStatic
        /// `secrets.NAME` where NAME is not `[A-Za-z_][A-Za-z0-9_]*` (at most 255 bytes).
        case invalidName
        /// `secrets.NAME = …`, `secrets.NAME++` and the like.
        case assignment
        /// The project has no secret of that name (phase 2).
        case missingSecret
        /// The value is not valid UTF-8, so it cannot be a JavaScript string (phase 2).
        case invalidUTF8Value
        /// The document itself is malformed (YAML or JSON syntax, wrong shape).
        case document
        /// The document goes past one of the `InjectionLimits` (size, nesting,
        /// expression sites, references, problems, output size); the message
        /// names the limit.
        case limit
    }

    public let kind: Kind
    /// Where in the document: a flow path, `field "NAME"`, or empty.
    public let context: String
    public let line: Int
    public let column: Int
    public let message: String
    /// The secret concerned, for `missingSecret` and `invalidUTF8Value`.
    public let secretName: String?

    public init(kind: Kind, context: String, line: Int, column: Int, message: String, secretName: String? = nil) {
        self.kind = kind
        self.context = context
        self.line = line
        self.column = column
        self.message = message
        self.secretName = secretName
    }

    public var description: String {
        context.isEmpty ? "\(line):\(column): \(message)" : "\(context) \(line):\(column): \(message)"
    }
}

/// Thrown by `InjectionScan.rewrite` and `InjectionScan.bindings`: every
/// problem found, in document order. Contains no secret value.
public struct InjectionError: Error, Sendable, CustomStringConvertible {
    public let problems: [InjectionProblem]
    public init(problems: [InjectionProblem]) { self.problems = problems }
    /// One problem per line.
    public var description: String { problems.map(\.description).joined(separator: "\n") }
}

/// Quoted, length-limited display form of source text for messages.
func displayQuoted(_ s: String, limit: Int = 60) -> String {
    var t = s
    if t.unicodeScalars.count > limit {
        t = String(String.UnicodeScalarView(t.unicodeScalars.prefix(limit))) + "…"
    }
    return String(decoding: jsonQuoted(t), as: UTF8.self)
}
