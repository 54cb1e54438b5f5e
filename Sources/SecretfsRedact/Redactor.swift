import SecureMemory

/// How a `Redactor` masks.
public struct RedactionOptions: Sendable, Equatable {
    /// Values shorter than this many bytes are not registered (masking them
    /// would garble ordinary text); they are listed in `Redactor.skipped`.
    public var minimumLength: Int
    /// What replaces every match, whatever its length. Must not be empty.
    public var mask: String

    public init(minimumLength: Int = 4, mask: String = "[REDACTED]") {
        precondition(!mask.isEmpty, "the mask must not be empty")
        self.minimumLength = max(minimumLength, 1)
        self.mask = mask
    }
}

/// A secret that was not registered, and why. The reason never contains the
/// value or its length.
public struct SkippedSecret: Sendable, Equatable, CustomStringConvertible {
    public let name: String
    public let reason: String
    public var description: String { "\(name): \(reason)" }
}

/// Masks every registered form of a set of secret values in byte streams.
///
/// Build one from the current values (cheap enough to rebuild on every change
/// notification: well under a second for a thousand values), then redact whole
/// buffers with `redact(_:)` or streams with `RedactingStream`. A `Redactor`
/// is immutable once built, so one instance may serve any number of streams
/// on any threads.
///
/// The values are not kept: only the matcher tables derived from them, all in
/// `sodium_malloc`'d memory that is wiped when the redactor is released.
/// What is masked (each value, each line of a multi-line value, base64 and
/// base64url at every alignment, percent, JSON, quote and XML/HTML escaping)
/// and what is not is described in docs/redaction.md.
public final class Redactor: @unchecked Sendable {
    // @unchecked: all stored state is written during init only.

    /// The options it was built with.
    public let options: RedactionOptions
    /// Names that were not registered, with the reason, in input order.
    public let skipped: [SkippedSecret]
    /// Names whose forms are registered, in input order.
    public let registeredNames: [String]

    let automaton: Automaton?
    let maskBytes: [UInt8]

    /// Builds the matcher for `secrets`. The caller keeps ownership of the
    /// values (nothing retains them after init returns).
    public convenience init(secrets: [(name: String, value: SecureBytes)], options: RedactionOptions = RedactionOptions()) {
        self.init(secrets: secrets, options: options, denseBudget: Redactor.defaultDenseBudget)
    }

    /// Dense-table budget in entries (4 bytes each): sized so the hot part
    /// of the table stays in the CPU's second-level cache.
    static let defaultDenseBudget = 1 << 19

    init(secrets: [(name: String, value: SecureBytes)], options: RedactionOptions, denseBudget: Int) {
        self.options = options
        maskBytes = Array(options.mask.utf8)
        var skipped: [SkippedSecret] = []
        var registered: [String] = []
        let trie = Trie()
        let generator = FormGenerator(minimumLength: options.minimumLength) { trie.insert($0) }
        for (name, value) in secrets {
            if value.count == 0 {
                skipped.append(SkippedSecret(name: name, reason: "the value is empty"))
                continue
            }
            if value.count < options.minimumLength {
                skipped.append(SkippedSecret(
                    name: name,
                    reason: "the value is shorter than the minimum of \(options.minimumLength) bytes, so it is not masked"))
                continue
            }
            if value.withUnsafeBytes({ $0.allSatisfy(isASCIIWhitespace) }) {
                skipped.append(SkippedSecret(name: name, reason: "the value is only whitespace, so it is not masked"))
                continue
            }
            value.withUnsafeBytes { generator.addForms(of: $0) }
            registered.append(name)
        }
        self.skipped = skipped
        self.registeredNames = registered
        automaton = trie.formCount > 0 ? Automaton(trie: trie, denseBudget: denseBudget) : nil
    }

    /// Number of distinct registered forms (all values, all encodings).
    public var formCount: Int { automaton?.formCount ?? 0 }

    /// Length in bytes of the longest registered form: a stream never holds
    /// back more than this.
    public var longestForm: Int { automaton?.maxLength ?? 0 }

    /// Redacts a whole buffer. The result holds no registered form by
    /// construction, so an ordinary array is fine.
    public func redact(_ bytes: UnsafeRawBufferPointer) -> [UInt8] {
        var output: [UInt8] = []
        output.reserveCapacity(bytes.count + 64)
        let stream = RedactingStream(redactor: self) { output.append(contentsOf: $0) }
        // The sink cannot throw.
        try! stream.write(bytes)
        try! stream.finish()
        return output
    }

    public func redact(_ bytes: [UInt8]) -> [UInt8] {
        bytes.withUnsafeBytes { redact($0) }
    }

    /// Redacts text, e.g. an error message before it is shown or logged.
    /// Invalid UTF-8 around a masked region is repaired with U+FFFD.
    public func redact(_ text: String) -> String {
        var t = text
        return t.withUTF8 { String(decoding: redact(UnsafeRawBufferPointer($0)), as: UTF8.self) }
    }

    /// Calls `body` with each distinct registered form. For benchmarks (to
    /// give another tool the same patterns) and tests; the buffer is locked
    /// memory valid only during the call.
    @_spi(Testing)
    public func forEachRegisteredForm(_ body: (UnsafeRawBufferPointer) -> Void) {
        automaton?.forEachForm(body)
    }
}

extension Trie {
    func contains(_ form: UnsafeRawBufferPointer) -> Bool {
        guard form.count > 0 else { return false }
        var node: UInt32 = 0
        for b in form {
            var c = firstChild[Int(node)]
            while c != Trie.none && byte[Int(c)] != b { c = nextSibling[Int(c)] }
            if c == Trie.none { return false }
            node = c
        }
        return terminal[Int(node)] != 0
    }
}
