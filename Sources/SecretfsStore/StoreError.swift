import Glibc
import SecretfsPOSIX

/// Every failure of the store, each with a message a person can act on and a
/// hint. Messages name stores, projects and secrets, never values.
public enum StoreError: Error, Equatable, CustomStringConvertible, Sendable {
    case storeExists(String)
    case storeMissing(String)
    case keyFileUnreadable(path: String, errno: Int32)
    case keyFileInsecure(path: String, mode: UInt32)
    case keyFileMalformed(path: String)
    /// The key file is a symlink, not a regular file, or owned by someone else.
    case keyFileUntrusted(TrustError)
    case passphraseRequired
    /// Restoring a key-file store's backup without its key file.
    case keyFileRequired
    case passphraseNotExpected
    case passphraseUnreadable(path: String, errno: Int32)
    case passphraseFileInsecure(path: String, mode: UInt32)
    /// The passphrase file is a symlink, not a regular file, or owned by someone else.
    case passphraseFileUntrusted(TrustError)
    /// The store directory, an ancestor, or the database file fails the
    /// directory-trust rule (see TrustedDirectory).
    case storeUntrusted(directory: String, TrustError)
    /// Where `backup create` would write: another user could swap the file.
    case backupDirectoryUntrusted(directory: String, TrustError)
    /// `init` on an existing directory with group or other permission bits
    /// that it cannot narrow (not the caller's, or not empty).
    case storeDirectoryOpenToOthers(path: String, mode: UInt32)
    /// The key `tried` ("key file P", "the passphrase in P") does not open
    /// the store, or the backup of one.
    case wrongKey(tried: String, backup: Bool)
    case keyNotLoaded
    case keyDerivationFailed
    case projectExists(String)
    case projectNotFound(String)
    case projectNotEmpty(String, secrets: Int)
    case invalidProjectName(String)
    case invalidSecretName(String)
    case secretNotFound(String, project: String)
    case secretExists(String)
    /// `undelete` or `purge` of a name that is not in the trash (it is live).
    /// `purging`: purge was asked (else undelete).
    case secretNotDeleted(String, project: String, purging: Bool)
    /// `restore --version N` of a version the name does not keep (or a delete
    /// marker), in the project named.
    case versionNotFound(String, version: Int64, delete: Bool, project: String)
    /// `restore --version N` of the version that is the current value.
    case versionIsCurrent(String, version: Int64, project: String)
    case invalidRetention(String)
    case corrupt(String)
    /// A file given as a backup that is not an SQLite database at all.
    case notABackup(String)
    /// A store's own database (WAL mode) given as a backup: to restore
    /// (`inPlace` true), or to verify outside a store directory.
    case liveDatabaseNotBackup(String, inPlace: Bool)
    case unsupportedSchema(Int)
    case io(path: String, errno: Int32, action: String)
    case sqlite(code: Int32, message: String, context: String)
    /// The shared store's database cannot be reached (its display name, never
    /// a password, and libpq's reason).
    case unavailable(String, String)
    case postgres(sqlstate: String, message: String, context: String)
    /// `init` on a database that holds a store, on a host without its key file.
    case sharedStoreNeedsKey(database: String, keyFile: String)
    /// `init` on a database that holds a store this host's key does not open.
    case sharedStoreOtherKey(database: String, tried: String)
    /// An operation of the embedded store only (a file backup).
    case notOnSharedStore(String)
    /// A library loaded when needed (libpq) is not there.
    case libraryMissing(String, String)
    /// No locked memory for the values asked for.
    case outOfLockedMemory

    public var description: String {
        switch self {
        case .storeExists(let p): return "a store already exists at \(p)"
        case .storeMissing(let p): return "no store at \(p)"
        case .keyFileUnreadable(let p, let e): return "cannot read master key file \(p): \(errnoText(e))"
        case .keyFileInsecure(let p, let m): return "master key file \(p) has mode \(String(m, radix: 8)); it must not be readable by group or others"
        case .keyFileMalformed(let p): return "master key file \(p) is not a 32-byte key"
        case .keyFileUntrusted(let t): return "cannot trust the master key file: \(t)"
        case .passphraseRequired: return "this store is protected by a passphrase"
        case .keyFileRequired: return "this backup is of a store with a master key file, and no key file was given"
        case .passphraseNotExpected: return "this store uses a master key file, not a passphrase"
        case .passphraseUnreadable(let p, let e): return "cannot read passphrase file \(p): \(errnoText(e))"
        case .passphraseFileInsecure(let p, let m): return "passphrase file \(p) has mode \(String(m, radix: 8)); it must not be readable by group or others"
        case .passphraseFileUntrusted(let t): return "cannot trust the passphrase file: \(t)"
        case .storeUntrusted(let d, let t): return "store directory \(d) is not safe to use: \(t)"
        case .backupDirectoryUntrusted(let d, let t): return "the backup's directory \(d) is not safe to use: \(t)"
        case .storeDirectoryOpenToOthers(let p, let m):
            return "store directory \(p) has mode \(String(m, radix: 8)); a new store needs a directory only its owner can enter"
        case .wrongKey(let tried, let backup): return "the master key does not open this \(backup ? "backup" : "store") (tried \(tried))"
        case .keyNotLoaded: return "this operation needs the store's master key"
        case .keyDerivationFailed: return "deriving the key from the passphrase failed (out of memory?)"
        case .projectExists(let n): return "project '\(n)' already exists"
        case .projectNotFound(let n): return "no project named '\(n)'"
        case .projectNotEmpty(let n, let c): return "project '\(n)' still has \(c) secret\(c == 1 ? "" : "s")"
        case .invalidProjectName(let n): return "'\(n)' is not a valid project name"
        case .invalidSecretName(let n): return "'\(n)' is not a valid secret name"
        case .secretNotFound(let n, let p): return "no secret named '\(n)' in project '\(p)'"
        case .secretExists(let n): return "a secret named '\(n)' already exists"
        case .secretNotDeleted(let n, _, _): return "'\(n)' is not deleted: it has a current value"
        case .versionNotFound(let n, let v, let delete, _):
            return delete ? "version \(v) of '\(n)' is a delete, not a value" : "'\(n)' keeps no version \(v)"
        case .versionIsCurrent(let n, let v, _): return "version \(v) is already the current value of '\(n)'"
        case .invalidRetention(let m): return m
        case .corrupt(let m): return "the store is damaged: \(m)"
        case .notABackup(let p): return "\(p) is not a secretfs backup (not an SQLite database)"
        case .liveDatabaseNotBackup(let p, true): return "\(p) is a live store's database (WAL mode), not a backup: a copy of it would lose its latest writes"
        case .liveDatabaseNotBackup(let p, false):
            return "\(p) is a live store's database (WAL mode), which is checked only in a store directory (its WAL beside it is read too)"
        case .unsupportedSchema(let v): return "the store has schema version \(v), newer than this secretfs understands"
        case .io(let p, let e, let a): return "cannot \(a) \(p): \(errnoText(e))"
        case .sqlite(let c, let m, let ctx): return "database error while \(ctx): \(m) (SQLite code \(c))"
        case .unavailable(let db, let why): return "store unavailable: cannot reach \(db): \(why)"
        case .postgres(let state, let m, let ctx): return "database error while \(ctx): \(m) (SQLSTATE \(state))"
        case .sharedStoreNeedsKey(let db, let k): return "\(db) already holds a secretfs store, and this host has no key file \(k)"
        case .sharedStoreOtherKey(let db, let tried):
            return "\(db) already holds a secretfs store, and this host's master key does not open it (tried \(tried))"
        case .notOnSharedStore(let what): return "\(what) works on a store directory, not on a shared PostgreSQL store"
        case .libraryMissing(let lib, let why): return "cannot load \(lib): \(why)"
        case .outOfLockedMemory: return "out of locked memory for the values asked for"
        }
    }

    /// What the person should try next.
    public var hint: String? {
        switch self {
        case .storeExists: return "use that store, or pass another --store directory"
        case .storeMissing: return "create one with 'secretfs init', or point --store / SECRETFS_STORE at an existing store"
        case .keyFileUnreadable: return "run as the store's owner (the key file is mode 0400)"
        case .keyFileInsecure(let p, _): return "chmod 0400 \(p)"
        case .keyFileMalformed: return "restore the key file from your backup; without it the store cannot be opened"
        case .keyFileUntrusted(let t):
            return (t.fix.map { $0 + "; " } ?? "") + "the key file must be a regular file owned by you or root, mode 0400"
        case .passphraseRequired: return "pass --passphrase-file FILE (or set SECRETFS_PASSPHRASE_FILE)"
        case .keyFileRequired: return "pass --key-file FILE with the store's master.key (from your key backup)"
        case .passphraseNotExpected: return "drop --passphrase-file"
        case .passphraseUnreadable: return "check the path and its permissions"
        case .passphraseFileInsecure(let p, _): return "chmod 0600 \(p)"
        case .passphraseFileUntrusted(let t):
            return (t.fix.map { $0 + "; " } ?? "") + "the passphrase file must be a regular file owned by you or root, mode 0600 or 0400"
        case .backupDirectoryUntrusted(_, let t):
            return (t.fix.map { $0 + "; " } ?? "")
                + "another user who can write that directory could put a file of theirs in the backup's place; "
                + "write it into a directory that only you and root can write (and every one above it)"
        case .storeUntrusted(_, let t):
            return (t.fix.map { $0 + "; " } ?? "")
                + "the store directory and every directory above it must be owned by you or root and writable by nobody else"
        case .storeDirectoryOpenToOthers(let p, _):
            return "chmod 0700 \(p) (or let 'secretfs init' create the directory)"
        case .wrongKey(_, true):
            return "a backup opens with the key file or passphrase its store had when the backup was made; "
                + "after a rekey that is the old one (keep it with the backups made before)"
        case .wrongKey: return "check that the key file or passphrase belongs to this store"
        case .keyNotLoaded: return nil
        case .keyDerivationFailed: return "free some memory and try again"
        case .projectExists: return "choose another name, or use the existing project"
        case .projectNotFound: return "list projects with 'secretfs project list', or create it with 'secretfs project create NAME'"
        case .projectNotEmpty: return "pass --force to delete the project and all its secrets"
        case .invalidProjectName, .invalidSecretName: return "names match [A-Za-z_][A-Za-z0-9_]* and are at most 255 bytes"
        case .secretNotFound(_, let p): return "list its names with 'secretfs ls \(p)', deleted ones with 'secretfs trash \(p)'"
        case .secretExists: return nil
        case .secretNotDeleted(let n, let p, false):
            return "see its versions with 'secretfs history \(p) \(n)'; bring one back with 'secretfs restore \(p) \(n) --version N'"
        case .secretNotDeleted(let n, let p, true):
            return "purge destroys deleted names only: remove it first (rm on the mount), then 'secretfs purge \(p) \(n) --force'; "
                + "'secretfs project set \(p) --keep-versions N' limits the versions a live name keeps"
        case .versionNotFound(let n, _, _, let p): return "list the versions with 'secretfs history \(p) \(n)'"
        case .versionIsCurrent(let n, _, let p): return "nothing to restore; 'secretfs history \(p) \(n)' lists the earlier versions"
        case .invalidRetention: return nil
        case .corrupt: return "restore the store from a backup"
        case .notABackup: return "give a file made by 'secretfs backup create'"
        case .liveDatabaseNotBackup: return "make a backup of that store with 'secretfs backup create FILE --store DIR', and use that"
        case .unsupportedSchema: return "upgrade secretfs"
        case .io(_, let e, _): return pathErrorHint(e)
        case .unavailable:
            return "check that the database server is running and reachable (libpq settings: PGHOST, PGPORT, ~/.pgpass, PGSSLMODE); mounts reconnect by themselves"
        case .postgres(let state, _, _):
            if state.hasPrefix("42501") { return "grant the database user rights on the secretfs tables" }
            if state.hasPrefix("25006") { return "the database is read-only (a standby?); point the store at the primary" }
            return nil
        case .sharedStoreNeedsKey(_, let k):
            return "copy the master key file from a host that has it to \(k) (mode 0400), or pass --key-file FILE"
        case .sharedStoreOtherKey:
            return "copy the master key file from a host whose key opens it (after a 'secretfs rekey', the new one), "
                + "or pass --key-file FILE; for a new store, use another database"
        case .libraryMissing:
            return "a PostgreSQL store needs libpq: apt-get install libpq5"
        case .outOfLockedMemory:
            return "ask for fewer values at once, or raise RLIMIT_MEMLOCK (ulimit -l)"
        case .notOnSharedStore:
            return "copy the shared store to a directory with 'secretfs store copy --from URL --to DIR' (that is its backup)"
        case .sqlite(let code, _, _):
            if code & 0xff == 5 || code & 0xff == 6 { return "another process holds the store busy; try again" }
            if code & 0xff == 8 { return "the store is read-only for this user" }
            return nil
        }
    }
}
