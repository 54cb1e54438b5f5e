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
        var held = secrets
        self.init(secrets: &held, options: options, denseBudget: Redactor.defaultDenseBudget)
    }

    /// Takes the values over: once their forms are collected the array is
    /// emptied, so values nobody else holds are freed (and wiped) before the
    /// automaton's tables are built. Each value is a locked page of its own;
    /// 1,000 of them and the tables for 1,000 secrets together would not fit
    /// a non-root user's default 8 MiB of locked memory, the tables alone do.
    public convenience init(consuming secrets: inout [(name: String, value: SecureBytes)],
                            options: RedactionOptions = RedactionOptions()) {
        self.init(secrets: &secrets, options: options, denseBudget: Redactor.defaultDenseBudget)
    }

    /// Most entries the dense table may take (4 bytes each, so 2 MiB of
    /// locked memory). It takes what every state of depth 2 needs, and at
    /// least 1 MiB (`Automaton.denseFloor`): for the benchmark's mix (~90 byte
    /// classes), 1 MiB up to about 1,800 secrets (2 MiB measured no faster at
    /// 1,000), 1.3 MiB at 3,000 (where a 1 MiB table scanned at a quarter of
    /// the speed) and 1.9 MiB at 10,000.
    static let defaultDenseBudget = 1 << 19

    /// `denseBudget` and `continuationLimit` are the automaton's (tests
    /// lower them to reach its deep paths with small sets).
    init(secrets: inout [(name: String, value: SecureBytes)], options: RedactionOptions, denseBudget: Int,
         continuationLimit: Int = Automaton.maxContinuation) {
        self.options = options
        maskBytes = Array(options.mask.utf8)
        let meter = LockedMeter()
        var skipped: [SkippedSecret] = []
        var registered: [String] = []
        var forms: FormSet? = Redactor.collectForms(secrets, options, meter, &skipped, &registered)
        secrets.removeAll()
        self.skipped = skipped
        self.registeredNames = registered
        if forms!.count > 0 {
            automaton = Automaton(forms: &forms, denseBudget: denseBudget, meter: meter,
                                  continuationLimit: continuationLimit)
        } else {
            forms = nil
            automaton = nil
        }
        lockedBytes = automaton?.lockedBytes ?? 0
        peakBuildLockedBytes = meter.peak
    }

    /// The distinct forms of every value that is long enough; the others are
    /// listed with the reason.
    private static func collectForms(_ secrets: [(name: String, value: SecureBytes)], _ options: RedactionOptions,
                                     _ meter: LockedMeter, _ skipped: inout [SkippedSecret],
                                     _ registered: inout [String]) -> FormSet {
        let forms = FormSet(meter: meter)
        let generator = FormGenerator(minimumLength: options.minimumLength, meter: meter) { forms.insert($0) }
        for (name, value) in secrets {
            if value.count == 0 {
                skipped.append(SkippedSecret(name: name, reason: "the value is empty"))
                continue
            }
            if value.count < options.minimumLength {
                skipped.append(SkippedSecret(
                    name: name,
                    reason: "the value is shorter than the minimum of \(options.minimumLength) bytes"))
                continue
            }
            if value.withUnsafeBytes({ $0.allSatisfy(isASCIIWhitespace) }) {
                skipped.append(SkippedSecret(name: name, reason: "the value is only whitespace"))
                continue
            }
            value.withUnsafeBytes { generator.addForms(of: $0) }
            registered.append(name)
        }
        return forms
    }

    /// Locked memory held by the matcher tables, in bytes (whole pages, as
    /// `sodium_malloc` locks them). Streams add their held-back tail.
    @_spi(Testing)
    public let lockedBytes: Int

    /// The most locked memory the build held at once (forms, scratch and
    /// tables), in bytes.
    @_spi(Testing)
    public let peakBuildLockedBytes: Int

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
