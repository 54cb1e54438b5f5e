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
    /// the fetched values are wiped before returning.
    public static func resolve(_ document: [UInt8], format: InjectionFormat, output: ResolveOutput,
                               source: ValueSource) throws -> SecureBytes {
        let scan = Injector.scan(document, format: format)
        if !scan.problems.isEmpty {
            // Report every problem at once: missing secrets too, found from
            // the project's names alone (no value is fetched for a document
            // that will not be written).
            let existing = Set(try source.names())
            let all = (scan.problems + scan.missingSecretProblems(existing: existing))
                .sorted { ($0.line, $0.column) < ($1.line, $1.column) }
            throw ResolveFailure(problems: all)
        }
        let values = scan.referencedNames.isEmpty ? [:] : try source.values(scan.referencedNames)
        defer { for v in values.values { v.wipe() } }
        do {
            switch output {
            case .document: return try scan.rewrite { (name: String) -> SecureBytes? in values[name] }
            case .bindings: return try scan.bindings { (name: String) -> SecureBytes? in values[name] }
            }
        } catch {
            throw ResolveFailure(problems: error.problems)
        }
    }
}
