import ArgumentParser
import Glibc
import SecretfsStore

/// Options every subcommand shares. Each location is resolved the same way:
/// the flag, else the environment variable, else the system default.
struct GlobalOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("Store directory (env SECRETFS_STORE, default /var/lib/secretfs).", valueName: "dir"))
    var store: String?

    @Option(name: .long, help: ArgumentHelp("Directory for sockets, pid files and logs (env SECRETFS_RUNTIME_DIR, default /run/secretfs).", valueName: "dir"))
    var runtimeDir: String?

    @Option(name: .long, help: ArgumentHelp("Read the store's passphrase from this file (env SECRETFS_PASSPHRASE_FILE) instead of using the key file.", valueName: "file"))
    var passphraseFile: String?

    /// A database URL or libpq conninfo where a store directory goes: this
    /// build keeps its store in a directory, and says so plainly (the value
    /// is not repeated: it may hold a password) instead of treating the URL
    /// as a relative path.
    func validate() throws {
        guard let s = store ?? Self.environment("SECRETFS_STORE") else { return }
        let lower = s.lowercased()
        if lower.hasPrefix("postgresql:") || lower.hasPrefix("postgres:") || lower.contains("host=") || lower.contains("dbname=") {
            throw ValidationError("the store names a PostgreSQL database; this version of secretfs keeps its store in a directory "
                                  + "(--store DIR or SECRETFS_STORE=DIR)")
        }
    }

    static func environment(_ name: String) -> String? {
        guard let p = getenv(name) else { return nil }
        let s = String(cString: p)
        return s.isEmpty ? nil : s
    }

    var storeDirectory: String {
        absolute(store ?? Self.environment("SECRETFS_STORE") ?? "/var/lib/secretfs")
    }

    var runtimeDirectory: String {
        absolute(runtimeDir ?? Self.environment("SECRETFS_RUNTIME_DIR") ?? "/run/secretfs")
    }

    var location: StoreLocation { StoreLocation(directory: storeDirectory) }

    var keySource: MasterKeySource {
        if let p = passphraseFile ?? Self.environment("SECRETFS_PASSPHRASE_FILE") { return .passphraseFile(absolute(p)) }
        return .keyFile
    }

    func openStore() throws -> Store {
        let store = try Store.open(at: location, keySource: keySource)
        for n in store.notices { writeStderr("secretfs: note: \(n)\n") }
        return store
    }

    /// The store without its key: names, counts and the audit trail only.
    func openStoreMetadata() throws -> Store {
        try Store.openMetadataOnly(at: location)
    }

    /// The runtime directory, created if missing and checked before a mount
    /// writes anything there (see RuntimeDirectory).
    func ensureRuntimeDirectory() throws -> RuntimeDirectory {
        try RuntimeDirectory.prepare(runtimeDirectory)
    }
}

/// An absolute version of `path` (relative to the current directory).
func absolute(_ path: String) -> String {
    if path.hasPrefix("/") { return normalise(path) }
    var buf = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
    guard getcwd(&buf, buf.count) != nil else { return path }
    return normalise(cString(buf) + "/" + path)
}

/// Removes `.`, empty components and a trailing slash (not `..`: symlinks).
func normalise(_ path: String) -> String {
    let parts = path.split(separator: "/").filter { $0 != "." }
    return "/" + parts.joined(separator: "/")
}

/// Formats a timestamp as UTC ISO 8601.
func iso8601(_ t: Timestamp) -> String {
    var secs = time_t(t.seconds)
    var tmv = tm()
    gmtime_r(&secs, &tmv)
    var buf = [CChar](repeating: 0, count: 32)
    strftime(&buf, buf.count, "%Y-%m-%dT%H:%M:%SZ", &tmv)
    return cString(buf)
}

/// The NUL-terminated text in a C buffer.
func cString(_ buf: [CChar]) -> String {
    buf.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
}
