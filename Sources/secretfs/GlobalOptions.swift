import ArgumentParser
import Glibc
import SecretfsStore

/// Options every subcommand shares. Each location is resolved the same way:
/// the flag, else the environment variable, else the system default.
struct GlobalOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("Store directory, or a PostgreSQL URL or libpq conninfo for a store shared by many hosts (env SECRETFS_STORE, default /var/lib/secretfs).", valueName: "dir|url"))
    var store: String?

    @Option(name: .long, help: ArgumentHelp("Directory for sockets, pid files and logs (env SECRETFS_RUNTIME_DIR, default /run/secretfs).", valueName: "dir"))
    var runtimeDir: String?

    @Option(name: .long, help: ArgumentHelp("Read the store's passphrase from this file (env SECRETFS_PASSPHRASE_FILE) instead of using the key file.", valueName: "file"))
    var passphraseFile: String?

    @Option(name: .long, help: ArgumentHelp("This host's master key file for a PostgreSQL store (env SECRETFS_KEY_FILE, default /etc/secretfs/master.key); for backup verify and restore, the backup's key. A store directory keeps its key in DIR/master.key.", valueName: "file"))
    var keyFile: String?

    /// The store option as given (flag, else environment), if any.
    private var storeText: String? { store ?? Self.environment("SECRETFS_STORE") }

    /// A PostgreSQL URL or conninfo is parsed now: a malformed one, or one
    /// holding a password, is a usage error (and the text is never repeated:
    /// it may hold a password).
    func validate() throws {
        guard let s = storeText, PostgresTarget.looksLikeDatabase(s) else { return }
        do { _ = try PostgresTarget(s) } catch { throw ValidationError(error.description) }
    }

    /// The shared store named by the store option, if it names a database.
    var sharedTarget: PostgresTarget? {
        guard let s = storeText, PostgresTarget.looksLikeDatabase(s) else { return nil }
        return try? PostgresTarget(s)
    }

    /// A store named on the command line (`store copy --from/--to`): a
    /// directory, or a database with this host's key file.
    func location(named text: String) throws -> StoreLocation {
        guard PostgresTarget.looksLikeDatabase(text) else { return StoreLocation(directory: absolute(text)) }
        do { return StoreLocation(postgres: try PostgresTarget(text), keyFile: keyFileOption) } catch {
            throw ValidationError(error.description)
        }
    }

    static func environment(_ name: String) -> String? {
        guard let p = getenv(name) else { return nil }
        let s = String(cString: p)
        return s.isEmpty ? nil : s
    }

    /// The store directory, or the database as messages show it.
    var storeDirectory: String {
        if let t = sharedTarget { return t.displayName }
        return absolute(storeText ?? "/var/lib/secretfs")
    }

    /// The store as a mount records it in its pid file, so that `status` and
    /// `project delete` tell this store's mounts from those of another store
    /// (a restored backup, say) that share the runtime directory: the
    /// database as messages show it, or the directory with symlinks resolved.
    var storeIdentity: String {
        if let t = sharedTarget { return t.displayName }
        guard let p = realpath(storeDirectory, nil) else { return storeDirectory }
        defer { free(p) }
        return String(cString: p)
    }

    /// The key file option as given (flag, else environment), absolute.
    var keyFileOption: String? { (keyFile ?? Self.environment("SECRETFS_KEY_FILE")).map(absolute) }

    var runtimeDirectory: String {
        absolute(runtimeDir ?? Self.environment("SECRETFS_RUNTIME_DIR") ?? "/run/secretfs")
    }

    var location: StoreLocation {
        if let t = sharedTarget { return StoreLocation(postgres: t, keyFile: keyFileOption) }
        return StoreLocation(directory: storeDirectory)
    }

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
