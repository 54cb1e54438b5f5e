import CSQLite
import CSodium
import Glibc
import SecretfsNames
import SecretfsPOSIX
import SecureMemory
import Synchronization

/// Where a store lives: a directory holding the embedded SQLite database
/// and its key file, or a PostgreSQL database that many hosts share (each
/// with its own copy of the key file, which never enters the database).
public struct StoreLocation: Sendable {
    public enum Kind: Sendable, Equatable {
        case directory(String)
        case postgres(PostgresTarget)
    }
    public let kind: Kind
    /// The master key file: STORE/master.key in a directory store; this
    /// host's own file for a database (default `defaultSharedKeyFile`).
    public let keyFilePath: String

    public static let defaultSharedKeyFile = "/etc/secretfs/master.key"

    public init(directory: String) {
        kind = .directory(directory)
        keyFilePath = directory + "/master.key"
    }

    public init(postgres target: PostgresTarget, keyFile: String? = nil) {
        kind = .postgres(target)
        keyFilePath = keyFile ?? Self.defaultSharedKeyFile
    }

    /// The store directory, or the database as messages show it (no password).
    public var directory: String {
        switch kind {
        case .directory(let d): return d
        case .postgres(let t): return t.displayName
        }
    }
    public var databasePath: String { isShared ? directory : directory + "/secretfs.db" }
    public var isShared: Bool { if case .postgres = kind { return true } else { return false } }
    var postgresTarget: PostgresTarget? { if case .postgres(let t) = kind { return t } else { return nil } }

    /// The directory that holds the key file, and its name there (the
    /// trust rule and rekey's crash-safe swap work in that directory).
    var keyDirectoryPath: String {
        guard let slash = keyFilePath.lastIndex(of: "/") else { return "." }
        let d = String(keyFilePath[..<slash])
        return d.isEmpty ? "/" : d
    }
    var keyFileName: String {
        keyFilePath.lastIndex(of: "/").map { String(keyFilePath[keyFilePath.index(after: $0)...]) } ?? keyFilePath
    }
}

/// How the master key is supplied.
public enum MasterKeySource: Sendable {
    /// The store's own key file (STORE/master.key, mode 0400).
    case keyFile
    /// A passphrase read from a file, stretched with Argon2id.
    case passphraseFile(String)

    /// For messages: which key was tried on the store at `location`.
    func triedKey(_ location: StoreLocation) -> String {
        switch self {
        case .keyFile: return BackupKey.keyFile(location.keyFilePath).described
        case .passphraseFile(let p): return BackupKey.passphraseFile(p).described
        }
    }
}

public struct ProjectInfo: Sendable, Equatable {
    public var id: Int64
    public var name: String
    public var createdAt: Timestamp
    public var secretCount: Int
    public var lastUpdate: Timestamp?
    /// How many values each name keeps, the current one included (0: none
    /// kept, a delete is final).
    public var keepVersions: Int = Retention.defaultKeepVersions
    /// How long a deleted name stays in the trash before it is purged.
    public var keepDeletedDays: Int = Retention.defaultKeepDeletedDays
}

/// A project's history limits (see docs/store-format.md, "Versions and trash").
public enum Retention {
    public static let defaultKeepVersions = 10
    public static let defaultKeepDeletedDays = 30
    /// Upper bounds, so that a typo cannot make a store grow without end
    /// (or a day count overflow nanoseconds).
    public static let maxKeepVersions = 1000
    public static let maxKeepDeletedDays = 3650

    /// A project's limits as read back from its row: within the bounds the
    /// commands accept, whatever the row holds. Whoever can write the
    /// database (a shared store's operator, a crafted backup) must not be
    /// able to make a day count overflow nanoseconds and trap a mount.
    static func clamped(keepVersions: Int64, keepDeletedDays: Int64) -> (versions: Int64, days: Int64) {
        (min(max(0, keepVersions), Int64(maxKeepVersions)), min(max(0, keepDeletedDays), Int64(maxKeepDeletedDays)))
    }
}

/// Metadata of one secret. Deliberately no length: it would leak.
public struct SecretInfo: Sendable, Equatable {
    public var name: String
    public var version: Int64
    public var createdAt: Timestamp
    public var updatedAt: Timestamp
    public var updatedBy: UInt32
}

/// Nanoseconds since the Unix epoch.
public struct Timestamp: Sendable, Equatable, Comparable, Hashable {
    public var nanoseconds: Int64
    public init(nanoseconds: Int64) { self.nanoseconds = nanoseconds }
    public static func now() -> Timestamp {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Timestamp(nanoseconds: Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec))
    }
    public var seconds: Int64 { nanoseconds / 1_000_000_000 }
    public var subsecondNanoseconds: Int64 { nanoseconds % 1_000_000_000 }
    public static func < (a: Timestamp, b: Timestamp) -> Bool { a.nanoseconds < b.nanoseconds }
}

/// Who did something, for the audit trail.
public struct Actor: Sendable, Equatable {
    public var uid: UInt32
    public var pid: Int32
    public init(uid: UInt32, pid: Int32) { self.uid = uid; self.pid = pid }
    public static var current: Actor { Actor(uid: getuid(), pid: getpid()) }
}

public struct AuditEvent: Sendable, Equatable {
    public var id: Int64
    public var project: String
    public var at: Timestamp
    public var uid: UInt32
    public var pid: Int32
    public var action: String
    public var names: String?
    public var detail: String?
}

/// The encrypted store: one database (the embedded SQLite file, WAL,
/// synchronous=FULL, secure_delete=ON; or a shared PostgreSQL database, see
/// SharedStore.swift) plus a master key that never leaves locked memory.
///
/// Thread safety: one connection, every use under `lock`. A mount process
/// calls in from FUSE threads and its socket thread at once; the database
/// serialises writers across processes and hosts (`DatabaseConnection.transaction`).
public final class Store: @unchecked Sendable {
    public let location: StoreLocation
    let lock = Mutex(())
    let db: DatabaseConnection
    let masterKey: SecureBytes
    let storeID: [UInt8]
    /// The clock every time written to the store comes from (and that trash
    /// expiry is judged by). Tests inject one; set it before using the store.
    public let clock: @Sendable () -> Timestamp
    /// What opening the store had to repair (an interrupted `rekey`), for the
    /// command to say.
    public internal(set) var notices: [String] = []

    static var schemaVersion: Int32 { Int32(migrations.count) }

    /// Changes of the current write transaction, for the shared store's
    /// change log (written just before COMMIT; see `recordChangeLocked`).
    var pendingChanges: [(projectID: Int64, name: String?)] = []
    /// When each project's expired trash was last looked for by a commit
    /// (`purgeExpiredIfDueLocked`; under `lock`).
    var lastTrashSweep: [Int64: Timestamp] = [:]
    /// The change-log sequences this process wrote (the newest few thousand,
    /// under `lock`): its own mount has applied them already, so its watcher
    /// skips them (`ProjectVault.changedNames`).
    var ownSequences = Set<Int64>()
    /// The sequences of the transaction being committed: this process's own
    /// only once its COMMIT is known to have succeeded (a commit whose outcome
    /// is unknown is news to the watcher, which then reads what was stored).
    var pendingOwnSequences: [Int64] = []
    /// The newest change-log sequence this process has committed, and the one
    /// at which it last pruned the log (`writeChangeLogLocked`; under `lock`).
    var newestOwnSequence: Int64?
    var prunedChangeLogAt: Int64 = 0
    /// Group commit, when a mount turned it on (GroupCommit.swift; under `lock`).
    var groupCommit: GroupCommit?

    init(location: StoreLocation, db: DatabaseConnection, masterKey: SecureBytes, storeID: [UInt8],
         clock: @escaping @Sendable () -> Timestamp) {
        self.location = location
        self.db = db
        self.masterKey = masterKey
        self.storeID = storeID
        self.clock = clock
        if location.isShared {
            db.beforeCommit = { [unowned self] in try self.writeChangeLogLocked() }
            db.afterTransaction = { [unowned self] committed in self.finishChangeLogLocked(committed: committed) }
        }
    }

    func now() -> Timestamp { clock() }

    /// Whether a store is there. For a database: it answers and holds one;
    /// one that cannot be reached counts as there (opening it then says why),
    /// so `status` never calls an unreachable store missing.
    public static func exists(at location: StoreLocation) -> Bool {
        if location.isShared {
            do { _ = try openMetadataOnly(at: location); return true } catch StoreError.storeMissing { return false } catch { return true }
        }
        return access(location.databasePath, F_OK) == 0
    }

    // MARK: Creating and opening

    static let databaseName = "secretfs.db"
    static let keyFileName = "master.key"
    /// Every name a store's files may have; `init` refuses a directory holding
    /// any of them (a stray WAL would be replayed into the new database).
    static let fileNames = [databaseName, databaseName + "-wal", databaseName + "-shm", keyFileName]

    /// Creates a new store. Refuses to touch a directory that already holds one.
    public static func create(at location: StoreLocation, keySource: MasterKeySource,
                              clock: @escaping @Sendable () -> Timestamp = Timestamp.now) throws -> Store {
        Sodium.ensureInitialised()
        if let target = location.postgresTarget {
            return try createShared(target, location: location, keySource: keySource, clock: clock)
        }
        // A bad passphrase file is found before anything is created.
        let passphrase: SecureBytes?
        if case .passphraseFile(let path) = keySource { passphrase = try readPassphrase(path: path) } else { passphrase = nil }
        let dir = try trustedDirectory(location, creating: true)
        try narrowNewStoreDirectory(dir)
        for name in fileNames {
            let existing: stat?
            do { existing = try dir.status(of: name) } catch {
                throw StoreError.io(path: dir.path(of: name), errno: error.errno, action: "examine")
            }
            if existing != nil { throw StoreError.storeExists(location.directory) }
        }

        // Whatever this creates is removed again if a later step fails, so a
        // failed init leaves no half store that the next init calls existing.
        var created: [String] = []
        var done = false
        defer { if !done { for name in created.reversed() { dir.remove(name) } } }
        func createFile(_ name: String, _ flags: Int32, mode: mode_t) throws -> Int32 {
            do {
                let fd = try dir.create(name, flags, mode: mode)
                created.append(name)
                return fd
            } catch {
                if error.errno == EEXIST { throw StoreError.storeExists(location.directory) }
                throw StoreError.io(path: dir.path(of: name), errno: error.errno, action: "create")
            }
        }

        let masterKey: SecureBytes
        var kdf: KeyDerivation?
        if let passphrase {
            let params = KeyDerivation.fresh()
            masterKey = try params.deriveKey(from: passphrase)
            kdf = params
        } else {
            masterKey = SecureBytes.random(count: Envelope.keyBytes)
            let fd = try createFile(keyFileName, O_WRONLY, mode: 0o400)
            defer { close(fd) }
            try writeKey(masterKey, to: fd, path: location.keyFilePath)
        }
        // The database and (through SQLite, which gives them the database's
        // mode) its -wal and -shm are 0600 whatever the umask.
        close(try createFile(databaseName, O_RDWR, mode: 0o600))
        created += [databaseName + "-wal", databaseName + "-shm"]

        var storeID = [UInt8](repeating: 0, count: 16)
        randombytes_buf(&storeID, 16)
        let db = try SQLiteConnection(path: dir.canonicalPath(of: databaseName))
        try configure(db)
        try migrate(db)
        try checkSchema(db)
        try db.transaction("initialising the store") {
            try putMeta(db, "store_id", storeID)
            try putKeyRecords(db, key: masterKey, storeID: storeID, kdf: kdf)
        }
        done = true
        return Store(location: location, db: db, masterKey: masterKey, storeID: storeID, clock: clock)
    }

    /// Opens an existing store and checks the master key against it.
    public static func open(at location: StoreLocation, keySource: MasterKeySource,
                            clock: @escaping @Sendable () -> Timestamp = Timestamp.now) throws -> Store {
        Sodium.ensureInitialised()
        let db: DatabaseConnection
        if let target = location.postgresTarget {
            db = try openSharedDatabase(target)
        } else {
            db = try openDatabase(try trustedDirectory(location, creating: false), location)
        }
        guard let storeID = try getMeta(db, "store_id"), let check = try getMeta(db, "key_check"),
              check.count >= Envelope.nonceBytes + Envelope.tagBytes else {
            throw StoreError.corrupt("the store has no key check record")
        }
        let kdfName = try getMeta(db, "kdf").map { String(decoding: $0, as: UTF8.self) }
        let masterKey: SecureBytes
        var notices: [String] = []
        switch (keySource, kdfName) {
        case (.keyFile, nil):
            masterKey = try keyFileFinishingRekey(try keyDirectory(location), location, storeID: storeID, check: check, notices: &notices)
        case (.passphraseFile(let path), "argon2id13"?):
            // Checked before the passphrase is read: a damaged store is
            // reported as one whatever passphrase file is given.
            let params = try storedKeyDerivation(db)
            let passphrase = try readPassphrase(path: path)
            masterKey = try params.deriveKey(from: passphrase)
        case (.keyFile, _?):
            throw StoreError.passphraseRequired
        case (.passphraseFile, nil):
            throw StoreError.passphraseNotExpected
        case (.passphraseFile, _?):
            throw StoreError.corrupt("unknown key derivation '\(kdfName ?? "")'")
        }
        let sealed = Envelope.Sealed(ciphertext: Array(check[Envelope.nonceBytes...]),
                                     nonce: Array(check[..<Envelope.nonceBytes]))
        guard Envelope.open(sealed, key: masterKey, associatedData: Envelope.keyCheckAD(storeID: storeID)) != nil else {
            throw StoreError.wrongKey(tried: keySource.triedKey(location), backup: false)
        }
        if kdfName != nil, let dir = try? keyDirectory(location) { removeKeyFileLeftByRekey(dir, location, notices: &notices) }
        let store = Store(location: location, db: db, masterKey: masterKey, storeID: storeID, clock: clock)
        store.notices = notices
        try store.purgeExpiredTrash()
        return store
    }

    /// Opens the store without any key: project names, counts and the audit
    /// trail can be read, no project can be opened. For `status`, `project
    /// list` and `audit`, which have no business holding key material.
    public static func openMetadataOnly(at location: StoreLocation,
                                        clock: @escaping @Sendable () -> Timestamp = Timestamp.now) throws -> Store {
        Sodium.ensureInitialised()
        let db: DatabaseConnection
        if let target = location.postgresTarget {
            db = try openSharedDatabase(target)
        } else {
            db = try openDatabase(try trustedDirectory(location, creating: false), location)
        }
        guard let storeID = try getMeta(db, "store_id") else { throw StoreError.corrupt("the store has no identity record") }
        let store = Store(location: location, db: db, masterKey: SecureBytes(capacity: 0), storeID: storeID, clock: clock)
        try store.purgeExpiredTrash()
        return store
    }

    /// Whether the master key is derived from a passphrase (recorded at
    /// init), rather than kept in a key file: what `doctor` checks for.
    public func usesPassphrase() throws -> Bool {
        try lock.withLock { _ in try Self.getMeta(db, "kdf") != nil }
    }

    // MARK: One mount per project

    /// `STORE/PROJECT.mount-lock`, flock'ed by the mount of that project for
    /// as long as it runs. Released when this object is (or the process ends).
    public final class MountClaim: @unchecked Sendable {
        private let fd: Int32
        init(fd: Int32) { self.fd = fd }
        deinit { if fd >= 0 { close(fd) } }
    }

    static func mountLockName(_ project: String) -> String { "\(project).mount-lock" }

    /// Claims `project` for one mount: nil when another mount of this store
    /// holds it (a second mount, through another runtime directory, would
    /// never hear of the first one's changes and would serve stale values).
    /// The lock file is opened in the checked store directory, never through
    /// a link, and must be the caller's own regular file.
    ///
    /// A shared store is mounted by many hosts at once, each following the
    /// change feed, so it claims nothing (the claim is always granted).
    public func claimMount(of project: String) throws -> MountClaim? {
        guard Names.isValid(project) else { throw StoreError.invalidProjectName(project) }
        if location.isShared { return MountClaim(fd: -1) }
        let dir = try Self.trustedDirectory(location, creating: false)
        let name = Self.mountLockName(project)
        var fd: Int32
        do {
            fd = try dir.create(name, O_RDWR, mode: 0o600)
        } catch where error.errno == EEXIST {
            do { fd = try dir.openOwnFile(name, O_RDWR) } catch {
                throw StoreError.storeUntrusted(directory: location.directory, error)
            }
        } catch {
            throw StoreError.io(path: dir.path(of: name), errno: error.errno, action: "create the mount lock")
        }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            close(fd)
            return nil
        }
        return MountClaim(fd: fd)
    }

    /// Whether a mount of this store holds `project` now.
    /// (Always false for a shared store: its mounts are on other hosts too.)
    public func isMounted(_ project: String) -> Bool {
        guard !location.isShared, Names.isValid(project), let dir = try? Self.trustedDirectory(location, creating: false),
              let fd = try? dir.open(Self.mountLockName(project), O_RDONLY | O_NONBLOCK) else { return false }
        defer { close(fd) }
        return flock(fd, LOCK_SH | LOCK_NB) != 0
    }

    /// The Argon2id parameters recorded in a passphrase store, checked: a
    /// missing or out-of-range one is a damaged store (for open and backup verify).
    static func storedKeyDerivation(_ db: DatabaseConnection) throws -> KeyDerivation {
        guard let salt = try getMeta(db, "kdf_salt"),
              let ops = try getMeta(db, "kdf_opslimit").flatMap({ UInt64(String(decoding: $0, as: UTF8.self)) }),
              let mem = try getMeta(db, "kdf_memlimit").flatMap({ UInt64(String(decoding: $0, as: UTF8.self)) }) else {
            throw StoreError.corrupt("incomplete key derivation parameters")
        }
        let params = KeyDerivation(opsLimit: ops, memLimit: mem, salt: salt)
        try params.validate()
        return params
    }

    /// The store directory, checked under the directory-trust rule
    /// (TrustedDirectory): it and every directory above it owned by the caller
    /// or root and writable by nobody else, or another user could swap in
    /// their own master.key and secretfs.db. `creating` (init) makes it 0700
    /// if it is missing and leaves its own mode to `narrowNewStoreDirectory`.
    static func trustedDirectory(_ location: StoreLocation, creating: Bool) throws -> TrustedDirectory {
        do {
            return try TrustedDirectory.open(location.directory, creatingWith: creating ? 0o700 : nil,
                                             checkingOwnMode: !creating)
        } catch {
            switch error.problem {
            case .system(ENOENT) where !creating: throw StoreError.storeMissing(location.directory)
            case .system(let e):
                throw StoreError.io(path: error.path, errno: e, action: creating ? "create store directory" : "open store directory")
            default: throw StoreError.storeUntrusted(directory: location.directory, error)
            }
        }
    }

    /// The directory holding the master key file, checked under the same
    /// rule: the store directory itself, or (a shared store) the directory of
    /// this host's key file.
    static func keyDirectory(_ location: StoreLocation) throws -> TrustedDirectory {
        if !location.isShared { return try trustedDirectory(location, creating: false) }
        do {
            return try TrustedDirectory.open(location.keyDirectoryPath, creatingWith: nil, checkingOwnMode: true)
        } catch {
            switch error.problem {
            case .system(let e): throw StoreError.keyFileUnreadable(path: location.keyFilePath, errno: e)
            default: throw StoreError.keyFileUntrusted(error)
            }
        }
    }

    /// `init` on a directory that exists: it is the store's outer wall, so it
    /// must end up 0700. The caller's own directory is narrowed to 0700 on its
    /// descriptor, but if it had a group or other bit only while it is empty
    /// (and still empty once narrowed: until then others could add entries);
    /// a directory of someone else (root) with such bits is refused.
    static func narrowNewStoreDirectory(_ dir: TrustedDirectory) throws {
        if dir.mode & 0o777 == 0o700 { return }
        let openToOthers = dir.mode & 0o077 != 0
        func refuse() -> StoreError { StoreError.storeDirectoryOpenToOthers(path: dir.path, mode: dir.mode) }
        guard dir.owner == geteuid() else {
            if openToOthers { throw refuse() }
            return   // root's private directory: creating the files says whether the caller may
        }
        if openToOthers && (try? dir.isEmpty()) != true { throw refuse() }
        do {
            try dir.setMode(0o700)
        } catch {
            throw StoreError.io(path: dir.path, errno: error.errno, action: "restrict the permissions of")
        }
        if openToOthers && (try? dir.isEmpty()) != true { throw refuse() }
    }

    /// The database of an existing store: a regular file owned by the caller
    /// or root (not a symlink), opened with SQLITE_OPEN_NOFOLLOW through the
    /// directory's canonical path, configured, migrated, and its schema checked.
    private static func openDatabase(_ dir: TrustedDirectory, _ location: StoreLocation) throws -> SQLiteConnection {
        let st: stat?
        do { st = try dir.status(of: databaseName) } catch {
            throw StoreError.io(path: location.databasePath, errno: error.errno, action: "examine")
        }
        guard let st else { throw StoreError.storeMissing(location.directory) }
        if st.st_mode & S_IFMT == S_IFLNK {
            throw StoreError.storeUntrusted(directory: location.directory, TrustError(path: location.databasePath, problem: .symbolicLink))
        }
        if st.st_mode & S_IFMT != S_IFREG {
            throw StoreError.storeUntrusted(directory: location.directory,
                                            TrustError(path: location.databasePath, problem: .notARegularFile(kind: fileKind(st.st_mode))))
        }
        if st.st_uid != geteuid() && st.st_uid != 0 {
            throw StoreError.storeUntrusted(directory: location.directory,
                                            TrustError(path: location.databasePath, problem: .ownedByOther(uid: st.st_uid)))
        }
        let db = try SQLiteConnection(path: dir.canonicalPath(of: databaseName))
        try configure(db)
        try migrate(db)
        try checkSchema(db)
        return db
    }

    /// Applies the pragmas the design requires on every connection.
    static func configure(_ db: SQLiteConnection) throws {
        // busy_timeout first: other processes (another mount, the CLI) may hold the lock.
        try db.execute("PRAGMA busy_timeout = 10000", context: "configuring the database")
        // Whatever the file holds, no view, trigger, default or CHECK in its
        // schema may call a function with side effects (checkSchema then
        // refuses any object the migrations did not make).
        try db.execute("PRAGMA trusted_schema = OFF", context: "distrusting the schema")
        try db.execute("PRAGMA journal_mode = WAL", context: "enabling WAL")
        try db.execute("PRAGMA synchronous = FULL", context: "configuring durability")
        try db.execute("PRAGMA secure_delete = ON", context: "configuring secure delete")
        try db.execute("PRAGMA foreign_keys = ON", context: "configuring foreign keys")
        // Sorting and temporary indices stay in memory: no temp files at all.
        try db.execute("PRAGMA temp_store = MEMORY", context: "configuring temp store")
        // A mount reads every row once (its listing) and then only looks up
        // single names: SQLite's default 2 MiB page cache would keep the whole
        // secrets table of a large project resident for nothing (about 1.5 MB
        // of a mount's memory at 10,000 secrets). 512 KiB keeps the B-trees'
        // interior pages; a leaf page missed is a pread from the OS's cache.
        try db.execute("PRAGMA cache_size = -512", context: "configuring the page cache")
    }

    /// Versioned schema migrations; `PRAGMA user_version` is the schema version.
    static let migrations: [String] = [
        // 1: the first schema. See docs/store-format.md. Each commit of a
        // value writes the secret's page, its project's page (the version
        // counter) and the audit page: no AUTOINCREMENT (its sqlite_sequence
        // page; audit rows are never deleted, so plain rowids only grow) and
        // no audit index (another page per commit, for a rarely run report).
        """
        CREATE TABLE meta (
            key   TEXT PRIMARY KEY,
            value BLOB NOT NULL
        );
        CREATE TABLE projects (
            id            INTEGER PRIMARY KEY,
            name          TEXT NOT NULL UNIQUE,
            wrapped_key   BLOB NOT NULL,
            wrap_nonce    BLOB NOT NULL,
            created_at    INTEGER NOT NULL,
            last_version  INTEGER NOT NULL DEFAULT 0
        );
        CREATE TABLE secrets (
            project_id  INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
            name        TEXT NOT NULL,
            ciphertext  BLOB NOT NULL,
            nonce       BLOB NOT NULL,
            version     INTEGER NOT NULL,
            created_at  INTEGER NOT NULL,
            updated_at  INTEGER NOT NULL,
            updated_by  INTEGER NOT NULL,
            PRIMARY KEY (project_id, name)
        ) WITHOUT ROWID;
        CREATE TABLE audit (
            id       INTEGER PRIMARY KEY,
            project  TEXT NOT NULL,
            at       INTEGER NOT NULL,
            uid      INTEGER NOT NULL,
            pid      INTEGER NOT NULL,
            action   TEXT NOT NULL,
            names    TEXT,
            detail   TEXT
        );
        """,
        // 2: versions and trash (docs/store-format.md, "Versions and trash").
        // Plain tables, integer times, composite primary keys and
        // ALTER TABLE ADD COLUMN with constant defaults: the same statements
        // (BLOB read as BYTEA) make the same schema in PostgreSQL.
        """
        ALTER TABLE projects ADD COLUMN keep_versions INTEGER NOT NULL DEFAULT 10;
        ALTER TABLE projects ADD COLUMN keep_deleted_days INTEGER NOT NULL DEFAULT 30;
        ALTER TABLE secrets ADD COLUMN action TEXT NOT NULL DEFAULT 'set';
        CREATE TABLE versions (
            project_id  INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
            name        TEXT NOT NULL,
            version     INTEGER NOT NULL,
            ciphertext  BLOB NOT NULL,
            nonce       BLOB NOT NULL,
            action      TEXT NOT NULL,
            made_at     INTEGER NOT NULL,
            made_by     INTEGER NOT NULL,
            PRIMARY KEY (project_id, name, version)
        );
        CREATE TABLE trash (
            project_id  INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
            name        TEXT NOT NULL,
            deleted_at  INTEGER NOT NULL,
            deleted_by  INTEGER NOT NULL,
            purge_at    INTEGER NOT NULL,
            PRIMARY KEY (project_id, name)
        );
        """,
        // 3: data key rotation (docs/store-format.md, "Rotating a data
        // key"): each sealed value records the generation of the data key
        // it is sealed under; key_links chains generations during a rotation.
        """
        ALTER TABLE projects ADD COLUMN key_generation INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE secrets ADD COLUMN key_generation INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE versions ADD COLUMN key_generation INTEGER NOT NULL DEFAULT 0;
        CREATE TABLE key_links (
            project_id      INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
            generation      INTEGER NOT NULL,
            forward_key     BLOB NOT NULL,
            forward_nonce   BLOB NOT NULL,
            backward_key    BLOB NOT NULL,
            backward_nonce  BLOB NOT NULL,
            PRIMARY KEY (project_id, generation)
        );
        """,
    ]

    static func migrate(_ db: SQLiteConnection) throws {
        let s = try db.statement("PRAGMA user_version")
        _ = try s.step("reading schema version")
        let current = Int32(s.int64(0))
        s.reset()
        if current > Int32(migrations.count) { throw StoreError.unsupportedSchema(Int(current)) }
        if current == Int32(migrations.count) { return }
        try db.transaction("migrating the schema") {
            for v in Int(current)..<migrations.count {
                try db.execute(migrations[v], context: "migrating the schema to version \(v + 1)")
            }
            try db.execute("PRAGMA user_version = \(migrations.count)", context: "recording the schema version")
        }
    }

    static func putMeta(_ db: DatabaseConnection, _ key: String, _ value: [UInt8]) throws {
        try db.statement("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value")
            .bind(1, key).bind(2, blob: value).run("writing store metadata")
    }

    /// What says which key opens the store: the key check (nothing, sealed
    /// under `key`) and, for a passphrase, its Argon2id parameters (init on
    /// either backend, rekey). Earlier key derivation rows go.
    static func putKeyRecords(_ db: DatabaseConnection, key: SecureBytes, storeID: [UInt8], kdf: KeyDerivation?) throws {
        let check = Envelope.seal(SecureBytes(capacity: 0), key: key, associatedData: Envelope.keyCheckAD(storeID: storeID))
        try putMeta(db, "key_check", check.nonce + check.ciphertext)
        for k in ["kdf", "kdf_salt", "kdf_opslimit", "kdf_memlimit"] {
            try db.statement("DELETE FROM meta WHERE key = ?").bind(1, k).run("replacing the key derivation")
        }
        if let kdf {
            try putMeta(db, "kdf", Array("argon2id13".utf8))
            try putMeta(db, "kdf_salt", kdf.salt)
            try putMeta(db, "kdf_opslimit", Array(String(kdf.opsLimit).utf8))
            try putMeta(db, "kdf_memlimit", Array(String(kdf.memLimit).utf8))
        }
    }

    static func getMeta(_ db: DatabaseConnection, _ key: String) throws -> [UInt8]? {
        let s = try db.statement("SELECT value FROM meta WHERE key = ?").bind(1, key)
        defer { s.reset() }
        return try s.step("reading store metadata") ? s.blob(0) : nil
    }

    // MARK: Schema check

    /// The schema objects a database holds: type, name, table and SQL text of
    /// every entry of sqlite_schema (auto-indexes have no SQL).
    struct SchemaObject: Hashable, Comparable {
        var type: String
        var name: String
        var table: String
        var sql: String?
        static func < (a: Self, b: Self) -> Bool { (a.type, a.name) < (b.type, b.name) }
    }

    private static func schemaObjects(_ db: SQLiteConnection) throws -> Set<SchemaObject> {
        let s = try db.statement("SELECT type, name, tbl_name, sql FROM sqlite_schema")
        defer { s.reset() }
        var out: Set<SchemaObject> = []
        while try s.step("reading the schema") {
            out.insert(SchemaObject(type: s.string(0) ?? "", name: s.string(1) ?? "", table: s.string(2) ?? "", sql: s.string(3)))
        }
        return out
    }

    /// A digest of a set of schema objects: BLAKE2b-256 over each object's
    /// fields (sorted, each field ended by a NUL, the SQL's absence marked).
    static func schemaDigest(_ objects: Set<SchemaObject>) -> [UInt8] {
        Sodium.ensureInitialised()
        var text: [UInt8] = []
        for o in objects.sorted(by: { ($0.type, $0.name, $0.table, $0.sql ?? "") < ($1.type, $1.name, $1.table, $1.sql ?? "") }) {
            for field in [o.type, o.name, o.table] { text += Array(field.utf8); text.append(0) }
            if let sql = o.sql { text.append(1); text += Array(sql.utf8); text.append(0) } else { text.append(2) }
        }
        var digest = [UInt8](repeating: 0, count: 32)
        _ = crypto_generichash(&digest, 32, text, UInt64(text.count), nil, 0)
        return digest
    }

    /// `schemaDigest(expectedSchema)` as SQLite 3.40 (Debian 12) writes the
    /// migrations' schema. Building the expected schema runs every migration
    /// in an in-memory database, its ALTER TABLEs each re-reading the whole
    /// schema: 5.2M instructions, a sixth of a `secretfs project list`, at
    /// every open. A store whose schema has this digest is exactly that
    /// schema, so it passes without building it, whatever SQLite reads it;
    /// any other (another SQLite's text, an old or tampered store) is compared
    /// object by object as before. When a migration changes, a test fails
    /// until this is updated (SQLiteHardeningTests); a stale value would only
    /// cost the slow path.
    static let expectedSchemaDigest = (sqlite: "3.40.", digest: "a86ac5684bf87b3d4bff8839f635171875213f1c9d60b68ac2c51ced006f3cfe")

    /// What the migrations make, read back from an in-memory database once per
    /// process: the reference `checkSchema` compares every store with.
    static let expectedSchema: Result<Set<SchemaObject>, StoreError> = {
        do {
            let memory = try SQLiteConnection(path: ":memory:")
            try migrate(memory)
            return .success(try schemaObjects(memory))
        } catch let e as StoreError {
            return .failure(e)
        } catch {
            return .failure(.corrupt("\(error)"))
        }
    }()

    /// Refuses a database whose schema is not exactly what the migrations make:
    /// a missing or altered table, or any extra object (a trigger, a view, an
    /// index, a table) that someone with write access to the file could use to
    /// act on every later write. Runs before any row is read.
    static func checkSchema(_ db: SQLiteConnection) throws {
        let actual = try schemaObjects(db)
        if hex(schemaDigest(actual)) == expectedSchemaDigest.digest { return }
        let expected = try expectedSchema.get()
        if actual == expected { return }
        let described = { (o: SchemaObject) in "\(o.type) '\(o.name)'" }
        var problems: [String] = []
        let missingOrChanged = expected.subtracting(actual).sorted()
        let extra = actual.subtracting(expected).sorted()
        for o in missingOrChanged {
            problems.append(extra.contains { $0.type == o.type && $0.name == o.name }
                            ? "\(described(o)) is not as schema version \(migrations.count) defines it"
                            : "\(described(o)) is missing")
        }
        for o in extra where !expected.contains(where: { $0.type == o.type && $0.name == o.name }) {
            problems.append("unexpected \(described(o))")
        }
        throw StoreError.corrupt("its schema differs from what secretfs creates: " + problems.joined(separator: ", "))
    }

    // MARK: Key and passphrase files

    /// Writes `key` into the new key file `fd` and fsyncs it (init, backup
    /// restore, rekey, store copy); the error names `path`.
    static func writeKey(_ key: SecureBytes, to fd: Int32, path: String) throws {
        let failed: SystemError? = key.withUnsafeBytes { b in
            do throws(SystemError) { try writeAll(fd, b) } catch { return error }
            return retryOnInterrupt({ fsync(fd) }) == 0 ? nil : .current
        }
        if let failed { throw StoreError.io(path: path, errno: failed.errno, action: "write key file") }
    }

    /// The key file: a regular file in the store directory (never through a
    /// symlink), owned by the caller or root, no group or other bit.
    private static func readKeyFile(in dir: TrustedDirectory, path: String) throws -> SecureBytes {
        try readKeyFile(at: dir.descriptor, keyFileName, path: path)
    }

    /// A key file `name` relative to `dirFD` (AT_FDCWD for a path of its own).
    static func readKeyFile(at dirFD: Int32, _ name: String, path: String) throws -> SecureBytes {
        let fd = try openSecret(at: dirFD, name, path: path,
                                insecure: { StoreError.keyFileInsecure(path: path, mode: $0) },
                                untrusted: StoreError.keyFileUntrusted,
                                unreadable: { StoreError.keyFileUnreadable(path: path, errno: $0) })
        defer { close(fd) }
        // Read straight into locked memory; one byte of room detects an overlong file.
        let key = SecureBytes(capacity: Envelope.keyBytes + 1)
        let n = key.withUnsafeMutableCapacity { b in retryOnInterrupt { Glibc.read(fd, b.baseAddress, b.count) } }
        if n < 0 { throw StoreError.keyFileUnreadable(path: path, errno: errno) }
        guard n == Envelope.keyBytes else { throw StoreError.keyFileMalformed(path: path) }
        key.setCount(n)
        return key.copy()
    }

    /// `openSecretFile`, its refusals sorted into the store's errors.
    static func openSecret(at dirFD: Int32, _ name: String, path: String,
                                   insecure: (UInt32) -> StoreError, untrusted: (TrustError) -> StoreError,
                                   unreadable: (Int32) -> StoreError) throws -> Int32 {
        do {
            return try openSecretFile(at: dirFD, name, path: path)
        } catch {
            switch error.problem {
            case .accessibleByOthers(let mode): throw insecure(mode)
            case .system(let e): throw unreadable(e)
            default: throw untrusted(error)
            }
        }
    }

    /// Reads a passphrase into locked memory; one trailing newline is dropped
    /// (as `echo pass > file` adds). The file is held to the key file's rules:
    /// a regular file (not a symlink) owned by the caller or root, no group or
    /// other bit.
    static func readPassphrase(path: String) throws -> SecureBytes {
        let fd = try openSecret(at: AT_FDCWD, path, path: path,
                                insecure: { StoreError.passphraseFileInsecure(path: path, mode: $0) },
                                untrusted: StoreError.passphraseFileUntrusted,
                                unreadable: { StoreError.passphraseUnreadable(path: path, errno: $0) })
        defer { close(fd) }
        let buf = SecureBytes(capacity: 4097)
        var total = 0
        while total < buf.capacity {
            let n = buf.withUnsafeMutableCapacity { b in retryOnInterrupt { Glibc.read(fd, b.baseAddress! + total, b.count - total) } }
            if n < 0 { throw StoreError.passphraseUnreadable(path: path, errno: errno) }
            if n == 0 { break }
            total += n
        }
        // 4096 bytes is plenty; a longer file is more likely the wrong file
        // than a passphrase, and silently using a prefix would hide that.
        if total > 4096 { throw StoreError.passphraseUnreadable(path: path, errno: EFBIG) }
        buf.setCount(total)
        let trimmed = buf.withUnsafeBytes { $0.last == 0x0A } ? total - 1 : total
        buf.setCount(trimmed)
        if trimmed == 0 { throw StoreError.passphraseUnreadable(path: path, errno: ENODATA) }
        return buf
    }

    // MARK: Projects

    public func createProject(_ name: String, keepVersions: Int = Retention.defaultKeepVersions,
                              keepDeletedDays: Int = Retention.defaultKeepDeletedDays, actor: Actor = .current) throws {
        guard Names.isValid(name) else { throw StoreError.invalidProjectName(name) }
        try Self.checkRetention(keepVersions: keepVersions, keepDeletedDays: keepDeletedDays)
        guard masterKey.count == Envelope.keyBytes else { throw StoreError.keyNotLoaded }
        try lock.withLock { _ in
            try db.transaction("creating project \(name)") {
                let exists = try db.statement("SELECT 1 FROM projects WHERE name = ?").bind(1, name)
                if try exists.step("looking up project") { throw StoreError.projectExists(name) }
                let now = self.now()
                let insert = try db.statement("""
                    INSERT INTO projects(name, wrapped_key, wrap_nonce, created_at, keep_versions, keep_deleted_days)
                    VALUES (?, ?, ?, ?, ?, ?) RETURNING id
                    """)
                insert.bind(1, name).bind(2, blob: []).bind(3, blob: []).bind(4, now.nanoseconds)
                    .bind(5, Int64(keepVersions)).bind(6, Int64(keepDeletedDays))
                guard try insert.step("creating project") else { throw StoreError.corrupt("creating a project returned no id") }
                let id = insert.int64(0)
                insert.reset()
                // The id is part of the wrapping's associated data, so wrap after insert.
                let dataKey = SecureBytes.random(count: Envelope.keyBytes)
                let wrapped = Envelope.seal(dataKey, key: masterKey,
                                            associatedData: Envelope.projectKeyAD(storeID: storeID, projectID: id, projectName: name))
                try db.statement("UPDATE projects SET wrapped_key = ?, wrap_nonce = ? WHERE id = ?")
                    .bind(1, blob: wrapped.ciphertext).bind(2, blob: wrapped.nonce).bind(3, id)
                    .run("storing the project key")
                try insertAudit(project: name, actor: actor, action: "project-create", names: nil,
                                detail: "keep \(keepVersions) versions, \(keepDeletedDays) days")
            }
        }
    }

    public func listProjects() throws -> [ProjectInfo] {
        try lock.withLock { _ in
            // The last change is the newest write or delete: a name in the
            // trash was deleted at deleted_at. (A UNION rather than SQLite's
            // two-argument MAX, which PostgreSQL spells GREATEST.)
            let s = try db.statement("""
                SELECT p.id, p.name, p.created_at, COUNT(s.name),
                       (SELECT MAX(c.at) FROM (SELECT updated_at AS at FROM secrets WHERE project_id = p.id
                                               UNION ALL SELECT deleted_at FROM trash WHERE project_id = p.id) c),
                       p.keep_versions, p.keep_deleted_days
                FROM projects p LEFT JOIN secrets s ON s.project_id = p.id
                GROUP BY p.id, p.name, p.created_at, p.keep_versions, p.keep_deleted_days ORDER BY p.name
                """)
            var out: [ProjectInfo] = []
            while try s.step("listing projects") {
                out.append(ProjectInfo(id: s.int64(0), name: s.string(1) ?? "", createdAt: Timestamp(nanoseconds: s.int64(2)),
                                       secretCount: Int(s.int64(3)),
                                       lastUpdate: s.isNull(4) ? nil : Timestamp(nanoseconds: s.int64(4)),
                                       keepVersions: Int(s.int64(5)), keepDeletedDays: Int(s.int64(6))))
            }
            return out
        }
    }

    public func project(named name: String) throws -> ProjectInfo {
        guard let p = try listProjects().first(where: { $0.name == name }) else { throw StoreError.projectNotFound(name) }
        return p
    }

    /// Deletes a project, its data key and (with `force`) all its secrets.
    public func deleteProject(_ name: String, force: Bool, actor: Actor = .current) throws {
        let info = try project(named: name)
        if info.secretCount > 0 && !force { throw StoreError.projectNotEmpty(name, secrets: info.secretCount) }
        try lock.withLock { _ in
            try db.transaction("deleting project \(name)") {
                try db.statement("DELETE FROM projects WHERE id = ?").bind(1, info.id).run("deleting project")
                recordChangeLocked(projectID: info.id, name: nil)
                try insertAudit(project: name, actor: actor, action: "project-delete", names: nil,
                                detail: "\(info.secretCount) secrets")
            }
        }
    }

    /// Unwraps a project's data key and returns the handle for its secrets.
    public func openProject(_ name: String) throws -> ProjectVault {
        guard masterKey.count == Envelope.keyBytes else { throw StoreError.keyNotLoaded }
        return try lock.withLock { _ in
            let s = try db.statement("SELECT id, wrapped_key, wrap_nonce, key_generation FROM projects WHERE name = ?").bind(1, name)
            defer { s.reset() }
            guard try s.step("opening project") else { throw StoreError.projectNotFound(name) }
            let id = s.int64(0)
            let sealed = Envelope.Sealed(ciphertext: s.blob(1), nonce: s.blob(2))
            guard let dataKey = Envelope.open(sealed, key: masterKey,
                                              associatedData: Envelope.projectKeyAD(storeID: storeID, projectID: id, projectName: name)) else {
                throw StoreError.corrupt("the data key of project '\(name)' does not open with this master key")
            }
            return ProjectVault(store: self, id: id, name: name, dataKey: dataKey, generation: s.int64(3))
        }
    }

    // MARK: Audit

    /// Must be called with `lock` held (inside a transaction or alone).
    func insertAudit(project: String, actor: Actor, action: String, names: String?, detail: String?) throws {
        try db.statement("INSERT INTO audit(project, at, uid, pid, action, names, detail) VALUES (?, ?, ?, ?, ?, ?, ?)")
            .bind(1, project).bind(2, now().nanoseconds).bind(3, Int64(actor.uid)).bind(4, Int64(actor.pid))
            .bind(5, action).bind(6, names).bind(7, detail)
            .run("writing the audit trail")
    }

    public func auditEvents(project: String, since: Timestamp? = nil) throws -> [AuditEvent] {
        try lock.withLock { _ in
            let s = try db.statement("""
                SELECT id, project, at, uid, pid, action, names, detail FROM audit
                WHERE project = ? AND at >= ? ORDER BY id
                """).bind(1, project).bind(2, since?.nanoseconds ?? Int64.min)
            var out: [AuditEvent] = []
            while try s.step("reading the audit trail") {
                out.append(AuditEvent(id: s.int64(0), project: s.string(1) ?? "", at: Timestamp(nanoseconds: s.int64(2)),
                                      uid: UInt32(truncatingIfNeeded: s.int64(3)), pid: Int32(truncatingIfNeeded: s.int64(4)),
                                      action: s.string(5) ?? "", names: s.string(6), detail: s.string(7)))
            }
            return out
        }
    }

    /// Wipes the master key. A mount needs only its project's data key once
    /// it is unwrapped, so it drops the key that opens every project;
    /// afterwards `openProject` and `createProject` fail with `keyNotLoaded`.
    public func discardMasterKey() {
        lock.withLock { _ in masterKey.wipe() }
    }

    /// Forces the WAL into the main database file (used by tests and `status`).
    public func checkpoint() throws {
        guard !location.isShared else { return }
        try lock.withLock { _ in try db.execute("PRAGMA wal_checkpoint(TRUNCATE)", context: "checkpointing") }
    }
}
