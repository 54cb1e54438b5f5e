import SecretfsInject
import SecureMemory

/// What `resolve` writes: the rewritten document, or just the bindings
/// (a JSON object of the referenced names and their values).
public enum ResolveOutput: String, Sendable {
    case document
    case bindings
}

/// A document that cannot be resolved: every problem, each with its location.
/// Never contains a value.
public struct ResolveFailure: Error, CustomStringConvertible, Sendable {
    public let problems: [InjectionProblem]
    public var description: String { problems.map(\.description).joined(separator: "\n") }
}

public enum Resolver {
    /// Resolves one document: scan it for references, fetch only the names it
    /// references, rewrite. The result holds values, so it is locked memory;
    /// the fetched values are wiped before returning. The output's size is
    /// checked against `maximum` before it is built.
    public static func resolve(_ document: [UInt8], format: InjectionFormat, output: ResolveOutput,
                               source: ValueSource,
                               maximum: Int = InjectionLimits.default.maxOutputBytes) throws -> SecureBytes {
        try resolve(document, format: format, output: output, maximum: maximum,
                    names: { try source.names() }, values: { try source.values($0) }, ownsValues: true)
    }

    /// The one resolve pipeline, for the command line (values from a
    /// `ValueSource`, owned and wiped here) and the resolver daemon (values
    /// borrowed from its cache: `ownsValues` false, never wiped here).
    /// Throws `ResolveFailure` with every problem and its location, or
    /// whatever `names` and `values` throw.
    static func resolve(_ document: [UInt8], format: InjectionFormat, output: ResolveOutput, maximum: Int,
                        names: () throws -> [String], values fetch: ([String]) throws -> [String: SecureBytes],
                        ownsValues: Bool) throws -> SecureBytes {
        var fetched: [String: SecureBytes] = [:]
        defer { if ownsValues { for v in fetched.values { v.wipe() } } }
        return try resolve(Injector.scan(document, format: format), output: output, maximum: maximum, names: names,
                           values: { names in
                               fetched = try fetch(names)
                               return names.map { fetched[$0] }
                           }) { size, fill in
            let out = SecureBytes(capacity: size, count: size)
            out.withUnsafeMutableBytes(fill)
            return out
        }
    }

    /// The pipeline after the scan (the daemon reuses a connection's scans),
    /// writing the output where `place` says (see
    /// `InjectionScan.produce(_:maximum:values:into:)`): the daemon's reply buffer.
    /// `fetch` returns the values in the order of the names it is given (nil:
    /// no such secret); they are borrowed, never wiped here.
    static func resolve<R>(_ scan: InjectionScan, output: ResolveOutput, maximum: Int,
                           names: () throws -> [String], values fetch: ([String]) throws -> [SecureBytes?],
                           into place: (_ size: Int, _ fill: (UnsafeMutableRawBufferPointer) -> Void) -> R) throws -> R {
        if !scan.problems.isEmpty {
            // Report every problem at once: missing secrets too, found from
            // the project's names alone (no value is fetched for a document
            // that will not be written).
            let existing = Set(try names())
            let all = (scan.problems + scan.missingSecretProblems(existing: existing))
                .sorted { ($0.line, $0.column) < ($1.line, $1.column) }
            throw ResolveFailure(problems: all)
        }
        let values = scan.referencedNames.isEmpty ? [] : try fetch(scan.referencedNames)
        var result: R?
        do {
            try scan.produce(output == .document ? .document : .bindings, maximum: maximum, values: values) { size, fill in
                // Both closures are non-escaping; one cannot be handed to the other directly.
                result = withoutActuallyEscaping(fill) { place(size, $0) }
            }
        } catch {
            throw ResolveFailure(problems: error.problems)
        }
        return result!
    }
}
