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

    /// The one resolve pipeline: scan, then the scan's pipeline below with
    /// values from `fetch` (wiped here when `ownsValues`: the command line's,
    /// from a `ValueSource`) into a new buffer holding just the output
    /// (`InjectionScan.produce(_:maximum:values:)`).
    /// Throws `ResolveFailure` with every problem and its location, or
    /// whatever `names` and `values` throw.
    static func resolve(_ document: [UInt8], format: InjectionFormat, output: ResolveOutput, maximum: Int,
                        names: () throws -> [String], values fetch: ([String]) throws -> [String: SecureBytes],
                        ownsValues: Bool) throws -> SecureBytes {
        var fetched: [String: SecureBytes] = [:]
        defer { if ownsValues { for v in fetched.values { v.wipe() } } }
        return try resolve(Injector.scan(document, format: format), names: names,
                           values: { names in
                               fetched = try fetch(names)
                               return names.map { fetched[$0] }
                           }) { (scan: InjectionScan, values: [SecureBytes?]) throws(InjectionError) -> SecureBytes in
            try scan.produce(InjectionOutput(output), maximum: maximum, values: values)
        }
    }

    /// The pipeline after the scan (the daemon reuses a connection's scans):
    /// the problems, or the referenced names' values from `fetch` (in the
    /// order of the names it is given, nil: no such secret; borrowed, never
    /// wiped here) handed to `write`, which produces the output (see
    /// `InjectionScan.produce`). Throws `ResolveFailure` for the problems
    /// `write` throws.
    static func resolve<R>(_ scan: InjectionScan, names: () throws -> [String],
                           values fetch: ([String]) throws -> [SecureBytes?],
                           write: (InjectionScan, [SecureBytes?]) throws(InjectionError) -> R) throws -> R {
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
        do {
            return try write(scan, values)
        } catch {
            throw ResolveFailure(problems: error.problems)
        }
    }
}

extension InjectionOutput {
    init(_ output: ResolveOutput) { self = output == .document ? .document : .bindings }
}
