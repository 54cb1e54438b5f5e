import CSQLite
import Glibc
import SecretfsNames
import SecretfsPOSIX
import SecureMemory

/// What a backup holds, recorded inside it (the `backup_manifest` row of its
/// `meta` table, JSON text): which store, when, and what it counts.
public struct BackupManifest: Sendable, Equatable {
    public struct Project: Sendable, Equatable {
        public var name: String
        public var secrets: Int
        public var versions: Int
    }
    public var storeID: String
    public var createdAt: Timestamp
    public var schemaVersion: Int
    public var keyCheck: String
    public var projects: [Project]
}

/// The result of `verifyBackup`: how many sealed blobs opened, and each one
/// that did not, by project, name and version. Never a value.
public struct BackupReport: Sendable, Equatable {
    public struct Failure: Sendable, Equatable, CustomStringConvertible {
        public var project: String
        public var name: String?
        public var version: Int64?
        public var description: String {
            name.map { "project \(project), \($0), version \(version ?? 0)" } ?? "project \(project): its data key"
        }
    }
    public var manifest: BackupManifest?
    public var projects: Int
    public var opened: Int
    public var failures: [Failure]
}

/// Where the key that verifies a backup comes from.
public enum BackupKey: Sendable {
    case keyFile(String)
    case passphraseFile(String)

    /// For messages: which key was tried (also of a store's own key,
    /// `MasterKeySource.triedKey`).
    var described: String {
        switch self {
        case .keyFile(let p): return "key file \(p)"
        case .passphraseFile(let p): return "the passphrase in \(p)"
        }
    }
}

extension Store {
    static let manifestKey = "backup_manifest"

    /// A consistent snapshot of the whole store into a new file at `path`
    /// (`VACUUM INTO`: one read transaction, so mounts go on writing; freed
    /// pages are not copied). Only what the database holds: ciphertexts,
    /// wrapped keys, names, times, audit. The snapshot is made and given its
    /// manifest in the store's own directory, switched out of WAL into one
    /// file, then copied into the new file (created 0600 with O_EXCL through
    /// the checked directory's descriptor) and fsync'd with its directory.
    /// A failure removes both.
    public func createBackup(to path: String) throws -> BackupManifest {
        guard !location.isShared else { throw StoreError.notOnSharedStore("backup create") }
        // The backup's directory may be a sticky one (/tmp) where others
        // create files too: the new file is made through its descriptor, and
        // SQLite never opens anything there by path, or it would read what
        // another user put beside it (a hot FILE-journal it replays, turning
        // the backup into their database; a FILE-wal). Otherwise it is
        // trusted as a store directory is.
        let (dir, name) = TrustedDirectory.split(path)
        let trusted: TrustedDirectory
        do throws(TrustError) { trusted = try TrustedDirectory.openForOneFile(dir) } catch {
            throw StoreError.backupDirectoryUntrusted(directory: dir, error)
        }
        let target: Int32
        do throws(SystemError) {
            target = try trusted.create(name, O_WRONLY, mode: 0o600)
        } catch {
            throw StoreError.io(path: path, errno: error.errno, action: "create the backup")
        }
        var done = false
        defer {
            close(target)
            if !done { trusted.remove(name) }
        }
        // The snapshot, in the store's directory (nobody else may write
        // there); its name is this process's, and it goes whatever happens.
        let storeDirectory = try Self.trustedDirectory(location, creating: false)
        Self.removeAbandonedSnapshots(storeDirectory)
        let snapshot = "\(Self.snapshotPrefix)\(getpid())-\(UInt32.random(in: 0...UInt32.max)).db"
        defer { for suffix in ["", "-journal", "-wal", "-shm"] { storeDirectory.remove(snapshot + suffix) } }
        // Made 0600 first (VACUUM INTO fills an empty file), not with the
        // umask's mode: it holds what the store holds.
        do throws(SystemError) { close(try storeDirectory.create(snapshot, O_WRONLY, mode: 0o600)) } catch {
            throw StoreError.io(path: storeDirectory.canonicalPath(of: snapshot), errno: error.errno, action: "create the snapshot")
        }
        let snapshotPath = storeDirectory.canonicalPath(of: snapshot)
        try lock.withLock { _ in
            try db.statement("VACUUM INTO ?").bind(1, snapshotPath).run("copying the store")
        }
        let copy = try SQLiteConnection(path: snapshotPath)
        try copy.execute("PRAGMA trusted_schema = OFF", context: "opening the backup")
        let manifest = try Self.countManifest(copy, createdAt: now())
        try copy.statement("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)")
            .bind(1, Self.manifestKey).bind(2, blob: Array(manifest.json.utf8)).run("writing the manifest")
        try copy.execute("PRAGMA journal_mode = DELETE", context: "finishing the backup")
        copy.close()
        let source: Int32
        do throws(SystemError) { source = try storeDirectory.open(snapshot, O_RDONLY) } catch {
            throw StoreError.io(path: snapshotPath, errno: error.errno, action: "open the snapshot")
        }
        defer { close(source) }
        try Self.copyFile(from: source, to: target, path: path)
        // The directory checked above, by its descriptor: not opened again by path.
        fsync(trusted.descriptor)
        done = true
        return manifest
    }

    static let snapshotPrefix = ".backup-"

    /// Snapshots that a killed `backup create` left in the store's directory
    /// (`.backup-PID-N.db`, its process gone): removed by the next one.
    static func removeAbandonedSnapshots(_ dir: TrustedDirectory) {
        for name in (try? dir.names()) ?? [] where name.hasPrefix(snapshotPrefix) {
            let pid = name.dropFirst(snapshotPrefix.count).prefix { $0.isASCII && $0.isNumber }
            guard let p = Int32(pid), p != getpid(), kill(p, 0) != 0, errno == ESRCH else { continue }
            dir.remove(name)
        }
    }

    /// Copies all of `from` into `to` and fsyncs it (`path` names `to` in errors).
    static func copyFile(from: Int32, to: Int32, path: String) throws {
        var buf = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = retryOnInterrupt { read(from, &buf, buf.count) }
            if n < 0 { throw StoreError.io(path: path, errno: errno, action: "read") }
            if n == 0 { break }
            let failed: SystemError? = buf.withUnsafeBytes { b in
                do throws(SystemError) { try writeAll(to, UnsafeRawBufferPointer(rebasing: b[..<n])) } catch { return error }
                return nil
            }
            if let failed { throw StoreError.io(path: path, errno: failed.errno, action: "write") }
        }
        guard fsync(to) == 0 else { throw StoreError.io(path: path, errno: errno, action: "fsync") }
    }

    static func countManifest(_ db: SQLiteConnection, createdAt: Timestamp) throws -> BackupManifest {
        let id = try getMeta(db, "store_id") ?? []
        let check = try getMeta(db, "key_check") ?? []
        let s = try db.statement("""
            SELECT p.name,
                   (SELECT COUNT(*) FROM secrets s WHERE s.project_id = p.id),
                   (SELECT COUNT(*) FROM versions v WHERE v.project_id = p.id AND length(v.ciphertext) > 0)
            FROM projects p ORDER BY p.name
            """)
        var projects: [BackupManifest.Project] = []
        while try s.step("counting the backup") {
            projects.append(.init(name: s.string(0) ?? "", secrets: Int(s.int64(1)), versions: Int(s.int64(2))))
        }
        return BackupManifest(storeID: hex(id), createdAt: createdAt, schemaVersion: Int(schemaVersion),
                              keyCheck: hex(check), projects: projects)
    }

    /// A backup is an SQLite database: its first 16 bytes say so. Checked
    /// before SQLite opens it, so any other file is named as not a backup
    /// rather than reported as an SQLite error.
    /// Returns whether the file is in WAL mode (a live store's database,
    /// not a backup, which `backup create` leaves in one file).
    @discardableResult
    static func requireSQLiteHeader(_ path: String) throws -> Bool {
        let fd = Glibc.open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { throw StoreError.io(path: path, errno: errno, action: "open the backup") }
        defer { close(fd) }
        var header = [UInt8](repeating: 0, count: 20)
        let n = retryOnInterrupt { read(fd, &header, header.count) }
        guard n == 20, header[..<16].elementsEqual("SQLite format 3\0".utf8) else { throw StoreError.notABackup(path) }
        return header[18] == 2   // the file format's write version: 2 is WAL
    }

    /// Opens every sealed blob of the backup at `path` (the key check, every
    /// project's data key, every current value and kept version) with the
    /// master key, and reports what does not open. Reads the backup only.
    public static func verifyBackup(at path: String, key: BackupKey) throws -> BackupReport {
        Sodium.ensureInitialised()
        var st = stat()
        guard lstat(path, &st) == 0 else { throw StoreError.io(path: path, errno: errno, action: "open the backup") }
        guard st.st_mode & S_IFMT == S_IFREG else {
            throw StoreError.io(path: path, errno: EINVAL, action: "open the backup (not a regular file)")
        }
        // A backup is read as the file is (immutable: no journal, WAL or
        // lock beside it is read, whoever put one there). A database in WAL
        // mode is a live store's, in its own directory: read with its WAL,
        // or its latest writes would go unchecked.
        let wal = try requireSQLiteHeader(path)
        if wal {
            // Its WAL and shared-memory files are read (and made) beside
            // it: only where nobody else may put them, a store's directory.
            let (dir, _) = TrustedDirectory.split(path)
            do throws(TrustError) { _ = try TrustedDirectory.open(dir) } catch {
                throw StoreError.liveDatabaseNotBackup(path, inPlace: false)
            }
        }
        let db = try SQLiteConnection(path: path, readOnly: true, immutable: !wal)
        try db.execute("PRAGMA trusted_schema = OFF", context: "opening the backup")
        try checkSchema(db)
        guard let storeID = try getMeta(db, "store_id"), let check = try getMeta(db, "key_check"),
              check.count >= Envelope.nonceBytes + Envelope.tagBytes else {
            throw StoreError.corrupt("the backup has no key check record")
        }
        let manifest = try getMeta(db, manifestKey).flatMap { BackupManifest(json: String(decoding: $0, as: UTF8.self)) }
        let masterKey: SecureBytes
        switch key {
        case .keyFile(let p):
            if try getMeta(db, "kdf") != nil { throw StoreError.passphraseRequired }
            masterKey = try readKeyFile(at: AT_FDCWD, p, path: p)
        case .passphraseFile(let p):
            guard try getMeta(db, "kdf") != nil else { throw StoreError.passphraseNotExpected }
            let params = try storedKeyDerivation(db)
            masterKey = try params.deriveKey(from: try readPassphrase(path: p))
        }
        let sealedCheck = Envelope.Sealed(ciphertext: Array(check[Envelope.nonceBytes...]), nonce: Array(check[..<Envelope.nonceBytes]))
        guard Envelope.open(sealedCheck, key: masterKey, associatedData: Envelope.keyCheckAD(storeID: storeID)) != nil else {
            throw StoreError.wrongKey(tried: key.described, backup: true)
        }
        return try openEverySealedBlob(db, storeID: storeID, masterKey: masterKey, manifest: manifest)
    }

    /// Opens every data key and every kept value of the database `db` with
    /// `masterKey` (the key check already passed): the check of a backup and
    /// of a store copy. Plaintexts are wiped as soon as they open.
    static func openEverySealedBlob(_ db: DatabaseConnection, storeID: [UInt8], masterKey: SecureBytes,
                                    manifest: BackupManifest?) throws -> BackupReport {
        var report = BackupReport(manifest: manifest, projects: 0, opened: 1, failures: [])
        let p = try db.statement("SELECT id, name, wrapped_key, wrap_nonce, key_generation FROM projects ORDER BY name")
        var projects: [(Int64, String, Envelope.Sealed, Int64)] = []
        while try p.step("reading the backup's projects") {
            projects.append((p.int64(0), p.string(1) ?? "", Envelope.Sealed(ciphertext: p.blob(2), nonce: p.blob(3)), p.int64(4)))
        }
        for (id, name, wrapped, newest) in projects {
            report.projects += 1
            guard let dataKey = Envelope.open(wrapped, key: masterKey,
                                              associatedData: Envelope.projectKeyAD(storeID: storeID, projectID: id, projectName: name)) else {
                report.failures.append(.init(project: name, name: nil, version: nil))
                continue
            }
            report.opened += 1
            // A backup taken during a rotation: older generations through the backward links.
            var keys: [Int64: SecureBytes] = [newest: dataKey]
            let links = try db.statement("SELECT generation, backward_key, backward_nonce FROM key_links WHERE project_id = ? ORDER BY generation DESC")
                .bind(1, id)
            while try links.step("reading the key chain") {
                let g = links.int64(0)
                if let k = keys[g], let older = Envelope.open(Envelope.Sealed(ciphertext: links.blob(1), nonce: links.blob(2)), key: k,
                                                             associatedData: Envelope.keyLinkAD(projectID: id, generation: g, forward: false)) {
                    keys[g - 1] = older
                }
            }
            let rows = try db.statement("""
                SELECT name, version, ciphertext, nonce, key_generation FROM secrets WHERE project_id = ?
                UNION ALL
                SELECT name, version, ciphertext, nonce, key_generation FROM versions WHERE project_id = ? AND length(ciphertext) > 0
                ORDER BY 1, 2
                """).bind(1, id).bind(2, id)
            while try rows.step("reading the backup's values") {
                let secret = rows.string(0) ?? "", version = rows.int64(1)
                let sealed = Envelope.Sealed(ciphertext: rows.blob(2), nonce: rows.blob(3))
                if let key = keys[rows.int64(4)], let plain = Envelope.open(sealed, key: key,
                                             associatedData: Envelope.valueAD(projectID: id, version: version, name: secret)) {
                    plain.wipe()
                    report.opened += 1
                } else {
                    report.failures.append(.init(project: name, name: secret, version: version))
                }
            }
        }
        return report
    }
}

func hex(_ b: [UInt8]) -> String {
    let digits = Array("0123456789abcdef")
    return String(b.flatMap { [digits[Int($0 >> 4)], digits[Int($0 & 15)]] })
}

extension BackupManifest {
    /// One line of JSON (names are [A-Za-z0-9_], so no escaping is needed).
    var json: String {
        "{\"storeID\":\"\(storeID)\",\"createdAt\":\(createdAt.nanoseconds),\"schemaVersion\":\(schemaVersion),"
            + "\"keyCheck\":\"\(keyCheck)\",\"projects\":["
            + projects.map { "{\"name\":\"\($0.name)\",\"secrets\":\($0.secrets),\"versions\":\($0.versions)}" }.joined(separator: ",")
            + "]}"
    }

    /// Reads back what `json` wrote (and nothing else).
    init?(json: String) {
        func field(_ key: String, in text: Substring) -> Substring? {
            guard let r = text.firstRange(of: "\"\(key)\":") else { return nil }
            var rest = text[r.upperBound...]
            if rest.first == "\"" {
                rest = rest.dropFirst()
                guard let end = rest.firstIndex(of: "\"") else { return nil }
                return rest[..<end]
            }
            let end = rest.firstIndex { $0 == "," || $0 == "}" || $0 == "]" } ?? rest.endIndex
            return rest[..<end]
        }
        let text = Substring(json)
        guard let id = field("storeID", in: text), let atText = field("createdAt", in: text), let at = Int64(atText),
              let schemaText = field("schemaVersion", in: text), let schema = Int(schemaText),
              let check = field("keyCheck", in: text), let list = text.firstRange(of: "\"projects\":[") else { return nil }
        var projects: [Project] = []
        for part in text[list.upperBound...].split(separator: "},") where part.contains("\"name\"") {
            guard let n = field("name", in: part), let sText = field("secrets", in: part), let s = Int(sText),
                  let vText = field("versions", in: part), let v = Int(vText) else { return nil }
            projects.append(Project(name: String(n), secrets: s, versions: v))
        }
        // What a manifest holds is hex and names; a backup's bytes are
        // anyone's, and verify prints these (an escape sequence would hide
        // the lines after it on a terminal): anything else is no manifest.
        func isHex(_ t: Substring) -> Bool { t.utf8.allSatisfy { ($0 >= 48 && $0 <= 57) || ($0 >= 97 && $0 <= 102) } }
        guard isHex(id), isHex(check), projects.allSatisfy({ Names.isValid($0.name) }) else { return nil }
        self.init(storeID: String(id), createdAt: Timestamp(nanoseconds: at), schemaVersion: schema,
                  keyCheck: String(check), projects: projects)
    }
}

extension Store {
    /// Creates a new store at `location` from the backup at `path`: the
    /// directory under `init`'s rules (refused if it holds a store), the
    /// database copied (0600, O_EXCL, fsync'd) without its manifest, and for
    /// a key-file store the key file `keyFile` copied to master.key (0400).
    /// The new store is then opened with its key; a failure removes what
    /// this created.
    public static func restoreBackup(from path: String, to location: StoreLocation, keyFile: String?,
                                     passphraseFile: String?) throws -> Store {
        Sodium.ensureInitialised()
        let source = Glibc.open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        guard source >= 0 else { throw StoreError.io(path: path, errno: errno, action: "open the backup") }
        defer { close(source) }
        guard !location.isShared else { throw StoreError.notOnSharedStore("backup restore") }
        // A database in WAL mode is a live store's: its latest writes are in
        // the WAL beside it, which a copy of the one file would lose.
        if try requireSQLiteHeader(path) { throw StoreError.liveDatabaseNotBackup(path, inPlace: true) }
        // A directory this makes goes again on failure, after the files in
        // it (defers run last first): nothing is left behind.
        var before = stat()
        let directoryExisted = lstat(location.directory, &before) == 0
        var done = false
        defer { if !done && !directoryExisted { rmdir(location.directory) } }
        let dir = try trustedDirectory(location, creating: true)
        try narrowNewStoreDirectory(dir)
        for name in fileNames {
            if (try? dir.status(of: name)) ?? nil != nil { throw StoreError.storeExists(location.directory) }
        }
        var created: [String] = []
        defer { if !done { for name in created.reversed() { dir.remove(name) } } }
        func create(_ name: String, mode: mode_t) throws -> Int32 {
            do {
                let fd = try dir.create(name, O_WRONLY, mode: mode)
                created.append(name)
                return fd
            } catch {
                if error.errno == EEXIST { throw StoreError.storeExists(location.directory) }
                throw StoreError.io(path: dir.path(of: name), errno: error.errno, action: "create")
            }
        }
        let dbFD = try create(databaseName, mode: 0o600)
        do { defer { close(dbFD) }; try copyFile(from: source, to: dbFD, path: location.databasePath) }
        created += [databaseName + "-wal", databaseName + "-shm"]
        do {
            let db = try SQLiteConnection(path: dir.canonicalPath(of: databaseName))
            try configure(db)
            try checkSchemaOrMigrate(db)
            try db.statement("DELETE FROM meta WHERE key = ?").bind(1, manifestKey).run("removing the manifest")
            db.close()
        }
        let probe = try SQLiteConnection(path: dir.canonicalPath(of: databaseName), readOnly: true)
        let isPassphrase = try getMeta(probe, "kdf") != nil
        probe.close()
        if !isPassphrase {
            guard let keyFile else { throw StoreError.keyFileRequired }
            let key = try readKeyFile(at: AT_FDCWD, keyFile, path: keyFile)
            let fd = try create(keyFileName, mode: 0o400)
            defer { close(fd) }
            try writeKey(key, to: fd, path: location.keyFilePath)
        }
        if isPassphrase && passphraseFile == nil { throw StoreError.passphraseRequired }
        let store: Store
        do {
            store = try open(at: location, keySource: isPassphrase ? .passphraseFile(passphraseFile ?? "") : .keyFile)
        } catch StoreError.wrongKey {
            // Said of the backup and of the key the user gave, not of the copy.
            let given: BackupKey = isPassphrase ? .passphraseFile(passphraseFile ?? "") : .keyFile(keyFile ?? "")
            throw StoreError.wrongKey(tried: given.described, backup: true)
        }
        done = true
        return store
    }

    /// A backup of an older schema is brought up to date; then its schema
    /// must be exactly what the migrations make.
    static func checkSchemaOrMigrate(_ db: SQLiteConnection) throws {
        try migrate(db)
        try checkSchema(db)
    }
}
