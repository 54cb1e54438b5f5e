import Glibc

/// Where a mounted project's privileged socket lives: `PROJECT.sock` in the
/// runtime directory. The mount creates it there, and the CLI and the
/// resolver daemon find it there; this is the one place that says so.
public enum MountSocket {
    static let suffix = ".sock"

    public static func path(runtimeDirectory: String, project: String) -> String {
        "\(runtimeDirectory)/\(project)\(suffix)"
    }

    /// The projects with a socket in `runtimeDirectory`, sorted (for a
    /// message; nil when the directory cannot be read). At most `limit`.
    static func projects(in runtimeDirectory: String, limit: Int = 20) -> [String]? {
        guard let dir = opendir(runtimeDirectory) else { return nil }
        defer { closedir(dir) }
        var names: [String] = []
        while names.count < limit, let entry = readdir(dir) {
            guard entry.pointee.d_type == UInt8(DT_SOCK) || entry.pointee.d_type == UInt8(DT_UNKNOWN) else { continue }
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if let project = project(at: "/" + name) { names.append(project) }
        }
        return names.sorted()
    }

    /// The project a mount socket's path names, for messages; nil for a path
    /// of any other shape (a socket the user named).
    static func project(at path: String) -> String? {
        guard path.hasSuffix(suffix), let slash = path.lastIndex(of: "/") else { return nil }
        let name = path[path.index(after: slash)...].dropLast(suffix.count)
        return name.isEmpty ? nil : String(name)
    }
}
