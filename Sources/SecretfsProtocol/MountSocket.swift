/// Where a mounted project's privileged socket lives: `PROJECT.sock` in the
/// runtime directory. The mount creates it there, and the CLI and the
/// resolver daemon find it there; this is the one place that says so.
public enum MountSocket {
    static let suffix = ".sock"

    public static func path(runtimeDirectory: String, project: String) -> String {
        "\(runtimeDirectory)/\(project)\(suffix)"
    }

    /// The project a mount socket's path names, for messages; nil for a path
    /// of any other shape (a socket the user named).
    static func project(at path: String) -> String? {
        guard path.hasSuffix(suffix), let slash = path.lastIndex(of: "/") else { return nil }
        let name = path[path.index(after: slash)...].dropLast(suffix.count)
        return name.isEmpty ? nil : String(name)
    }
}
