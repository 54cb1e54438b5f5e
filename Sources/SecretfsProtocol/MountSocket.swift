import Glibc
import SecretfsNames

/// Where a mounted project's privileged socket lives: `PROJECT.sock` in the
/// runtime directory. The mount creates it there, and the CLI and the
/// resolver daemon find it there; this is the one place that says so.
public enum MountSocket {
    static let suffix = ".sock"

    public static func path(runtimeDirectory: String, project: String) -> String {
        "\(runtimeDirectory)/\(project)\(suffix)"
    }

    /// The projects with a socket in `runtimeDirectory`, the first `limit`
    /// in byte order (for a message; nil when the directory cannot be read).
    /// Only valid project names: anything else there is not a mount's.
    static func projects(in runtimeDirectory: String, limit: Int = 20) -> [String]? {
        guard let dir = opendir(runtimeDirectory) else { return nil }
        defer { closedir(dir) }
        var names: [String] = []
        while names.count < 10_000, let entry = readdir(dir) {
            guard entry.pointee.d_type == UInt8(DT_SOCK) || entry.pointee.d_type == UInt8(DT_UNKNOWN) else { continue }
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if let project = project(at: "/" + name), Names.isValid(project) { names.append(project) }
        }
        return Array(names.sorted().prefix(limit))
    }

    /// The project a mount socket's path names, for messages; nil for a path
    /// of any other shape (a socket the user named).
    static func project(at path: String) -> String? {
        guard path.hasSuffix(suffix), let slash = path.lastIndex(of: "/") else { return nil }
        let name = path[path.index(after: slash)...].dropLast(suffix.count)
        return name.isEmpty ? nil : String(name)
    }
}
