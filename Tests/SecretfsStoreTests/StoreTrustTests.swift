import CSQLite
import Foundation
import Glibc
import SecretfsPOSIX
import SecretfsStore
import Testing

/// What the store trusts on disk: its directory and every directory above it,
/// the key and passphrase files, the database file and its schema, and the
/// key derivation parameters read from it. Tests run as root; "another user"
/// is uid 65534.
struct StoreTrustTests {
    /// A new key-file store at BASE/store; BASE is removed by the caller.
    func makeStore() throws -> (base: String, dir: String) {
        let base = makeTempDirectory("secretfs-store-trust")
        let dir = base + "/store"
        let store = try Store.create(at: StoreLocation(directory: dir), keySource: .keyFile)
        try store.createProject("alpha")
        try store.openProject("alpha").put("A", value: Array("v".utf8).withUnsafeBytes { .init(copying: $0) }, actor: .current)
        return (base, dir)
    }

    func open(_ dir: String, _ source: MasterKeySource = .keyFile) throws {
        _ = try Store.open(at: StoreLocation(directory: dir), keySource: source)
    }

    /// Runs SQL on the database file directly, as someone with write access to it would.
    func tamper(_ dir: String, _ sql: String) {
        var db: OpaquePointer?
        #expect(sqlite3_open(dir + "/secretfs.db", &db) == SQLITE_OK)
        defer { sqlite3_close(db) }
        #expect(sqlite3_exec(db, sql, nil, nil, nil) == SQLITE_OK, "\(String(cString: sqlite3_errmsg(db)))")
    }

    func rowCount(_ dir: String, _ table: String) -> Int64 {
        var db: OpaquePointer?
        sqlite3_open(dir + "/secretfs.db", &db)
        defer { sqlite3_close(db) }
        var s: OpaquePointer?
        sqlite3_prepare_v2(db, "SELECT count(*) FROM \(table)", -1, &s, nil)
        defer { sqlite3_finalize(s) }
        return sqlite3_step(s) == SQLITE_ROW ? sqlite3_column_int64(s, 0) : -1
    }

    func mode(_ path: String) -> mode_t {
        var st = stat()
        return lstat(path, &st) == 0 ? st.st_mode & 0o7777 : 0
    }

    // MARK: The store directory

    @Test func aStoreDirectoryOwnedByAnotherUserIsRefused() throws {
        let (base, dir) = try makeStore()
        defer { removeTree(base) }
        chown(dir, otherUID, otherUID)
        let expected = StoreError.storeUntrusted(directory: dir, TrustError(path: dir, problem: .ownedByOther(uid: otherUID)))
        #expect(throws: expected) { try open(dir) }
        #expect(throws: expected) { _ = try Store.openMetadataOnly(at: StoreLocation(directory: dir)) }
        #expect(expected.description.contains(dir) && expected.hint?.contains("chown") == true)
        chown(dir, 0, 0)
        try open(dir)
    }

    @Test func anAncestorOwnedByAnotherUserIsRefused() throws {
        let base = makeTempDirectory("secretfs-store-trust")
        defer { removeTree(base) }
        mkdir(base + "/shared", 0o755)
        let dir = base + "/shared/store"
        _ = try Store.create(at: StoreLocation(directory: dir), keySource: .keyFile)
        chown(base + "/shared", otherUID, otherUID)
        #expect(throws: StoreError.storeUntrusted(directory: dir, TrustError(path: base + "/shared", problem: .ownedByOther(uid: otherUID)))) {
            try open(dir)
        }
        #expect(throws: StoreError.self) { _ = try Store.create(at: StoreLocation(directory: base + "/shared/other"), keySource: .keyFile) }
        #expect(access(base + "/shared/other", F_OK) != 0, "init creates nothing under an untrusted directory")
    }

    @Test func aWorldOrGroupWritableStoreDirectoryIsRefused() throws {
        let (base, dir) = try makeStore()
        defer { removeTree(base) }
        for bad: mode_t in [0o777, 0o770, 0o1777] {
            chmod(dir, bad)
            #expect(throws: StoreError.storeUntrusted(directory: dir, TrustError(path: dir, problem: .writableByOthers(mode: UInt32(bad))))) {
                try open(dir)
            }
        }
        chmod(dir, 0o755)   // readable by others is the operator's choice; writable is not
        try open(dir)
    }

    @Test func aDatabaseThatIsASymlinkIsRefused() throws {
        let (base, dir) = try makeStore()
        defer { removeTree(base) }
        rename(dir + "/secretfs.db", base + "/elsewhere.db")
        symlink(base + "/elsewhere.db", dir + "/secretfs.db")
        #expect(throws: StoreError.storeUntrusted(directory: dir, TrustError(path: dir + "/secretfs.db", problem: .symbolicLink))) {
            try open(dir)
        }
    }

    @Test func aStoreReachedThroughARootOwnedSymlinkOpens() throws {
        let (base, dir) = try makeStore()
        defer { removeTree(base) }
        symlink(dir, base + "/link")
        // SQLITE_OPEN_NOFOLLOW refuses any symlink in a path: the store hands
        // SQLite the canonical one.
        try open(base + "/link")
        lchown(base + "/link", otherUID, otherUID)
        #expect(throws: StoreError.storeUntrusted(directory: base + "/link",
                                                  TrustError(path: base + "/link", problem: .symlinkOwnedByOther(uid: otherUID)))) {
            try open(base + "/link")
        }
    }

    // MARK: The key file

    @Test func aKeyFileOwnedByAnotherUserIsRefused() throws {
        let (base, dir) = try makeStore()
        defer { removeTree(base) }
        let key = dir + "/master.key"
        chown(key, otherUID, otherUID)
        #expect(throws: StoreError.keyFileUntrusted(TrustError(path: key, problem: .ownedByOther(uid: otherUID)))) {
            try open(dir)
        }
        chown(key, 0, 0)
        try open(dir)
    }

    @Test func aKeyFileThatIsASymlinkOrNotARegularFileIsRefused() throws {
        let (base, dir) = try makeStore()
        defer { removeTree(base) }
        let key = dir + "/master.key"
        rename(key, base + "/real.key")
        symlink(base + "/real.key", key)
        #expect(mode(base + "/real.key") == 0o400, "the target itself would pass")
        #expect(throws: StoreError.keyFileUntrusted(TrustError(path: key, problem: .symbolicLink))) { try open(dir) }
        unlink(key)
        mkfifo(key, 0o400)
        #expect(throws: StoreError.keyFileUntrusted(TrustError(path: key, problem: .notARegularFile(kind: "FIFO")))) {
            try open(dir)
        }
        let e = StoreError.keyFileUntrusted(TrustError(path: key, problem: .symbolicLink))
        #expect(e.description.contains(key) && e.hint != nil)
    }

    // MARK: The passphrase file

    @Test func aPassphraseFileReadableByOthersIsRefused() throws {
        let base = makeTempDirectory("secretfs-store-trust")
        defer { removeTree(base) }
        let dir = base + "/store"
        let pass = base + "/pass"
        makeFile(pass, "correct horse\n", mode: 0o644)
        #expect(throws: StoreError.passphraseFileInsecure(path: pass, mode: 0o644)) {
            _ = try Store.create(at: StoreLocation(directory: dir), keySource: .passphraseFile(pass))
        }
        #expect(access(dir, F_OK) != 0, "a refused init leaves nothing behind")
        chmod(pass, 0o600)
        _ = try Store.create(at: StoreLocation(directory: dir), keySource: .passphraseFile(pass))
        try open(dir, .passphraseFile(pass))
        chmod(pass, 0o640)
        #expect(throws: StoreError.passphraseFileInsecure(path: pass, mode: 0o640)) { try open(dir, .passphraseFile(pass)) }
        chmod(pass, 0o400)
        symlink(pass, base + "/link")
        #expect(throws: StoreError.passphraseFileUntrusted(TrustError(path: base + "/link", problem: .symbolicLink))) {
            try open(dir, .passphraseFile(base + "/link"))
        }
        chown(pass, otherUID, otherUID)
        #expect(throws: StoreError.passphraseFileUntrusted(TrustError(path: pass, problem: .ownedByOther(uid: otherUID)))) {
            try open(dir, .passphraseFile(pass))
        }
    }

    // MARK: Limits from the database

    @Test func aProjectsLimitsFromTheDatabaseAreClampedNotATrap() throws {
        // keep_deleted_days times a day's nanoseconds overflowed Int64 past
        // 106,751 days: whoever could write the row trapped the next delete.
        let (base, dir) = try makeStore()
        defer { removeTree(base) }
        tamper(dir, "UPDATE projects SET keep_deleted_days = 200000, keep_versions = 9000000000000000000 WHERE name = 'alpha'")
        let vault = try Store.open(at: StoreLocation(directory: dir), keySource: .keyFile).openProject("alpha")
        try vault.put("B", value: Array("w".utf8).withUnsafeBytes { .init(copying: $0) }, actor: .current)
        #expect(try vault.delete("A", actor: .current))
        let entry = try #require(try vault.store.trash(project: "alpha").first)
        let days = (entry.purgeAt.nanoseconds - entry.deletedAt.nanoseconds) / (86_400 * 1_000_000_000)
        #expect(days == Int64(Retention.maxKeepDeletedDays), "\(days)")
    }

    // MARK: Key derivation parameters from the database

    @Test func outOfRangeKeyDerivationParametersAreADamagedStore() throws {
        let base = makeTempDirectory("secretfs-store-trust")
        defer { removeTree(base) }
        let dir = base + "/store"
        let pass = base + "/pass"
        makeFile(pass, "correct horse\n", mode: 0o600)
        _ = try Store.create(at: StoreLocation(directory: dir), keySource: .passphraseFile(pass))
        let cases: [(String, String)] = [
            ("kdf_opslimit", "0"),          // below Argon2id's minimum of 1 pass
            ("kdf_memlimit", "1024"),       // below its 8 KiB minimum
            ("kdf_memlimit", "\(UInt64(1) << 62)"),   // above its maximum
            // Within libsodium's range, but hours of work or 16 GiB per open.
            ("kdf_opslimit", "4294967295"),
            ("kdf_memlimit", "17179869184"),
        ]
        for (key, value) in cases {
            tamper(dir, "UPDATE meta SET value = CAST('\(value)' AS BLOB) WHERE key = '\(key)'")
            do {
                try open(dir, .passphraseFile(pass))
                Issue.record("\(key)=\(value) was accepted")
            } catch let e as StoreError {
                guard case .corrupt(let m) = e else { Issue.record("\(key)=\(value): \(e)"); continue }
                #expect(m.contains(value), "\(m)")
                #expect(e.description.hasPrefix("the store is damaged") && e.hint != nil)
            }
            tamper(dir, "UPDATE meta SET value = CAST('\(key == "kdf_opslimit" ? "3" : "67108864")' AS BLOB) WHERE key = '\(key)'")
        }
        try open(dir, .passphraseFile(pass))
        // A salt of the wrong length would have libsodium read past its end.
        tamper(dir, "UPDATE meta SET value = x'0102' WHERE key = 'kdf_salt'")
        #expect(throws: StoreError.corrupt("the key derivation salt is 2 bytes, not 16")) { try open(dir, .passphraseFile(pass)) }
    }

    // MARK: The schema

    @Test func aSchemaWithAnExtraTriggerIsRefusedBeforeAnyWrite() throws {
        let (base, dir) = try makeStore()
        defer { removeTree(base) }
        // On the next audit row (every write, every socket read) this would
        // wipe the secrets.
        tamper(dir, "CREATE TRIGGER wipe AFTER INSERT ON audit BEGIN DELETE FROM secrets; END")
        do {
            let store = try Store.open(at: StoreLocation(directory: dir), keySource: .keyFile)
            try store.createProject("beta")
            Issue.record("a store with a trigger was opened")
        } catch let e as StoreError {
            guard case .corrupt(let m) = e else { Issue.record("\(e)"); return }
            #expect(m.contains("unexpected trigger 'wipe'"), "\(m)")
        }
        #expect(throws: StoreError.self) { _ = try Store.openMetadataOnly(at: StoreLocation(directory: dir)) }
        #expect(rowCount(dir, "secrets") == 1, "the trigger never ran")
    }

    @Test func aSchemaWithAnotherObjectOrChangedTableIsRefused() throws {
        let changes: [(sql: String, expect: String)] = [
            ("CREATE VIEW v AS SELECT name FROM secrets", "unexpected view 'v'"),
            ("CREATE INDEX i ON audit(project)", "unexpected index 'i'"),
            ("CREATE TABLE extra(x)", "unexpected table 'extra'"),
            ("ALTER TABLE secrets ADD COLUMN note TEXT", "table 'secrets' is not as schema version 3 defines it"),
            ("ALTER TABLE audit RENAME TO audit_old", "table 'audit' is missing"),
        ]
        for c in changes {
            let (base, dir) = try makeStore()
            defer { removeTree(base) }
            try open(dir)
            tamper(dir, c.sql)
            do {
                try open(dir)
                Issue.record("accepted after \(c.sql)")
            } catch let e as StoreError {
                guard case .corrupt(let m) = e else { Issue.record("\(c.sql): \(e)"); continue }
                #expect(m.contains(c.expect), "\(c.sql): \(m)")
            }
        }
    }

    // MARK: init

    @Test func initCreatesTheDatabaseFilesOwnerOnly() throws {
        let base = makeTempDirectory("secretfs-store-trust")
        defer { removeTree(base) }
        let dir = base + "/store"
        let store = try Store.create(at: StoreLocation(directory: dir), keySource: .keyFile)
        try store.createProject("alpha")
        // While the connection is open the WAL and its index exist.
        #expect(mode(dir) == 0o700)
        #expect(mode(dir + "/secretfs.db") == 0o600)
        #expect(mode(dir + "/secretfs.db-wal") == 0o600)
        #expect(mode(dir + "/secretfs.db-shm") == 0o600)
        #expect(mode(dir + "/master.key") == 0o400)
    }

    @Test func initNarrowsOnlyAnEmptyDirectoryOfYourOwn() throws {
        let base = makeTempDirectory("secretfs-store-trust")
        defer { removeTree(base) }
        // Empty and the caller's: narrowed to 0700 on its descriptor.
        let empty = base + "/empty"
        mkdir(empty, 0o700)
        chmod(empty, 0o755)
        _ = try Store.create(at: StoreLocation(directory: empty), keySource: .keyFile)
        #expect(mode(empty) == 0o700)
        // Not empty: others may already hold files or descriptors in it.
        let used = base + "/used"
        mkdir(used, 0o700)
        chmod(used, 0o755)
        makeFile(used + "/notes.txt")
        #expect(throws: StoreError.storeDirectoryOpenToOthers(path: used, mode: 0o755)) {
            _ = try Store.create(at: StoreLocation(directory: used), keySource: .keyFile)
        }
        #expect(mode(used) == 0o755, "a refused directory is left as it was")
        #expect(access(used + "/master.key", F_OK) != 0 && access(used + "/secretfs.db", F_OK) != 0)
        // Another user's directory: refused whatever its mode.
        let theirs = base + "/theirs"
        mkdir(theirs, 0o700)
        chown(theirs, otherUID, otherUID)
        #expect(throws: StoreError.storeUntrusted(directory: theirs, TrustError(path: theirs, problem: .ownedByOther(uid: otherUID)))) {
            _ = try Store.create(at: StoreLocation(directory: theirs), keySource: .keyFile)
        }
        // A non-empty private directory is fine.
        let privateDir = base + "/private"
        mkdir(privateDir, 0o700)
        makeFile(privateDir + "/README")
        _ = try Store.create(at: StoreLocation(directory: privateDir), keySource: .keyFile)
    }

    @Test func initRefusesLeftoverStoreFilesAndNeverFollowsThem() throws {
        let base = makeTempDirectory("secretfs-store-trust")
        defer { removeTree(base) }
        let dir = base + "/store"
        mkdir(dir, 0o700)
        makeFile(base + "/target", "keep")
        for name in ["secretfs.db-wal", "master.key", "secretfs.db"] {
            symlink(base + "/target", dir + "/" + name)
            #expect(throws: StoreError.storeExists(dir)) {
                _ = try Store.create(at: StoreLocation(directory: dir), keySource: .keyFile)
            }
            unlink(dir + "/" + name)
        }
        #expect(try String(contentsOfFile: base + "/target", encoding: .utf8) == "keep")
        _ = try Store.create(at: StoreLocation(directory: dir), keySource: .keyFile)
    }
}
