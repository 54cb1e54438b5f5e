import SecureMemory

/// Where a resolver gets values from: the mount's privileged socket, or the
/// resolver daemon's cache. Values arrive in locked memory.
public protocol ValueSource: AnyObject {
    /// The values of exactly these names (least privilege: callers ask only
    /// for what a document references). Names with no secret are absent.
    func values(_ names: [String]) throws -> [String: SecureBytes]

    /// Every name of the project (for redaction, which must know all values).
    func names() throws -> [String]
}
