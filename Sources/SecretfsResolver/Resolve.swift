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
        if !scan.problems.isEmpty { throw ResolveFailure(problems: scan.problems) }
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
