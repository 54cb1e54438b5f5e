import CSQLite
import Foundation
import Glibc
@testable import SecretfsStore
import SecureMemory
import Synchronization
import Testing

/// A clock tests move forward (trash expiry is judged by the store's clock).
final class TestClock: Sendable {
    private let offset = Mutex<Int64>(0)
    func advance(days: Int64) { offset.withLock { $0 += days * 86_400 * 1_000_000_000 } }
    var read: @Sendable () -> Timestamp {
        { [self] in Timestamp(nanoseconds: Timestamp.now().nanoseconds + offset.withLock { $0 }) }
    }
}

/// Schema version 2 in process: every replaced or deleted value is kept as a
/// version sealed for its own version only, limits destroy the oldest in the
/// same transaction, deleted names wait in the trash, and a store of schema
/// version 1 upgrades itself at open.
struct VersionTests {
    func bytes(_ s: String) -> SecureBytes { Array(s.utf8).withUnsafeBytes { SecureBytes(copying: $0) } }
    func string(_ b: SecureBytes?) -> String? { b.map { $0.withUnsafeBytes { String(decoding: $0, as: UTF8.self) } } }

    func makeStore(_ clock: TestClock = TestClock()) throws -> (Store, String, String) {
        let base = makeTempDirectory("secretfs-versions")
        let dir = base + "/store"
        return (try Store.create(at: StoreLocation(directory: dir), keySource: .keyFile, clock: clock.read), dir, base)
    }

    func sql(_ dir: String, _ text: String) {
        var db: OpaquePointer?
        #expect(sqlite3_open(dir + "/secretfs.db", &db) == SQLITE_OK)
        defer { sqlite3_close(db) }
        #expect(sqlite3_exec(db, text, nil, nil, nil) == SQLITE_OK, "\(String(cString: sqlite3_errmsg(db)))")
    }

    func count(_ dir: String, _ query: String) -> Int64 {
        var db: OpaquePointer?
        sqlite3_open(dir + "/secretfs.db", &db)
        defer { sqlite3_close(db) }
        var s: OpaquePointer?
        sqlite3_prepare_v2(db, query, -1, &s, nil)
        defer { sqlite3_finalize(s) }
        return sqlite3_step(s) == SQLITE_ROW ? sqlite3_column_int64(s, 0) : -1
    }

    func blob(_ dir: String, _ query: String) -> [UInt8] {
        var db: OpaquePointer?
        sqlite3_open(dir + "/secretfs.db", &db)
        defer { sqlite3_close(db) }
        var s: OpaquePointer?
        sqlite3_prepare_v2(db, query, -1, &s, nil)
        defer { sqlite3_finalize(s) }
        guard sqlite3_step(s) == SQLITE_ROW, let p = sqlite3_column_blob(s, 0) else { return [] }
        return Array(UnsafeRawBufferPointer(start: p, count: Int(sqlite3_column_bytes(s, 0))))
    }

    func fileContains(_ path: String, _ needle: [UInt8]) -> Bool {
        guard let data = FileManager.default.contents(atPath: path) else { return false }
        let hay = [UInt8](data)
        guard needle.count > 0, hay.count >= needle.count else { return false }
        for i in 0...(hay.count - needle.count) where hay[i] == needle[0] {
            if Array(hay[i..<(i + needle.count)]) == needle { return true }
        }
        return false
    }

    @Test func overwritesKeepTheNewestTenAndDestroyTheRest() throws {
        let (store, dir, base) = try makeStore()
        defer { removeTree(base) }
        try store.createProject("alpha")
        let v = try store.openProject("alpha")
        try v.put("A", value: bytes("value-0"), actor: .current)
        let first = blob(dir, "SELECT ciphertext FROM secrets WHERE name = 'A'")
        #expect(first.count == 7 + 16)
        for i in 1...12 { try v.put("A", value: bytes("value-\(i)"), actor: .current) }
        let history = try store.history(project: "alpha", name: "A")
        #expect(history.count == 10)
        #expect(history.filter(\.isCurrent).map(\.version) == [history.last!.version])
        #expect(history.allSatisfy { $0.action == .set && !$0.isDelete })
        #expect(count(dir, "SELECT COUNT(*) FROM versions") == 9)
        // Every kept version opens as itself: restore the oldest kept.
        try v.restore("A", version: history[0].version, actor: .current)
        #expect(string(try v.value("A")) == "value-3")
        #expect(try store.history(project: "alpha", name: "A").last?.action == .restore)
        let current = blob(dir, "SELECT ciphertext FROM secrets WHERE name = 'A'")
        try store.checkpoint()
        #expect(fileContains(dir + "/secretfs.db", current), "the search finds what is there")
        #expect(!fileContains(dir + "/secretfs.db", first), "the oldest ciphertext is destroyed")
        #expect(!fileContains(dir + "/secretfs.db-wal", first))
    }

    @Test func anOldVersionOpensOnlyAsItself() throws {
        let (store, dir, base) = try makeStore()
        defer { removeTree(base) }
        try store.createProject("alpha")
        let v = try store.openProject("alpha")
        try v.put("A", value: bytes("one"), actor: .current)
        try v.put("A", value: bytes("two"), actor: .current)
        try v.put("B", value: bytes("b"), actor: .current)
        let old = try store.history(project: "alpha", name: "A")[0].version
        // Renumbered, or moved to another name: it no longer opens.
        sql(dir, "UPDATE versions SET version = version + 1000 WHERE name = 'A'")
        #expect(throws: StoreError.self) { try v.restore("A", version: old + 1000, actor: .current) }
        sql(dir, "UPDATE versions SET version = version - 1000, name = 'B' WHERE name = 'A'")
        #expect(throws: StoreError.self) { try v.restore("B", version: old, actor: .current) }
        #expect(string(try v.value("A")) == "two")
        #expect(string(try v.value("B")) == "b")
    }

    @Test func deleteGoesToTheTrashAndUndeleteBringsTheValueBack() throws {
        let (store, _, base) = try makeStore()
        defer { removeTree(base) }
        try store.createProject("alpha")
        let v = try store.openProject("alpha")
        try v.put("A", value: bytes("one"), actor: Actor(uid: 1000, pid: 1))
        try v.put("A", value: bytes("two"), actor: .current)
        #expect(try v.delete("A", actor: Actor(uid: 1234, pid: 2)))
        #expect(try v.value("A") == nil)
        let trash = try store.trash(project: "alpha")
        #expect(trash.map(\.name) == ["A"] && trash[0].deletedBy == 1234 && trash[0].versionsKept == 2)
        #expect(trash[0].purgeAt.nanoseconds - trash[0].deletedAt.nanoseconds == 30 * Store.nanosecondsPerDay)
        let history = try store.history(project: "alpha", name: "A")
        #expect(history.map(\.action) == [.set, .set, .delete] && history.last?.isDelete == true)
        #expect(!history.contains { $0.isCurrent })
        #expect(throws: StoreError.secretNotDeleted("B", project: "alpha", purging: false)) {
            try v.put("B", value: bytes("b"), actor: .current)
            try v.undelete("B", actor: .current)
        }
        let info = try v.undelete("A", actor: .current)
        #expect(string(try v.value("A")) == "two")
        #expect(try store.trash(project: "alpha").isEmpty)
        #expect(try store.history(project: "alpha", name: "A").last == VersionInfo(
            version: info.version, action: .restore, at: info.updatedAt, uid: getuid(), isCurrent: true, isDelete: false))
        let audit = try store.auditEvents(project: "alpha").filter { $0.action == "undelete" }
        #expect(audit.count == 1 && audit[0].names == "A")
        #expect(throws: StoreError.versionNotFound("A", version: history[2].version, delete: true, project: "alpha")) {
            try v.restore("A", version: history[2].version, actor: .current)
        }
        // The current version is not restored, and the error says why.
        #expect(throws: StoreError.versionIsCurrent("A", version: info.version, project: "alpha")) {
            try v.restore("A", version: info.version, actor: .current)
        }
        #expect(StoreError.versionIsCurrent("A", version: 7, project: "alpha").description
                == "version 7 is already the current value of 'A'")
        #expect(StoreError.versionNotFound("A", version: 9, delete: false, project: "alpha").hint?.contains("secretfs history alpha A") == true)
    }

    @Test func renameOverKeepsBothValues() throws {
        let (store, _, base) = try makeStore()
        defer { removeTree(base) }
        try store.createProject("alpha")
        let v = try store.openProject("alpha")
        try v.put("A", value: bytes("a"), actor: .current)
        try v.put("B", value: bytes("b"), actor: .current)
        try v.rename("A", to: "B", actor: .current)
        #expect(string(try v.value("B")) == "a")
        #expect(try store.history(project: "alpha", name: "B").map(\.action) == [.set, .rename])
        #expect(try store.trash(project: "alpha").map(\.name) == ["A"])
        let old = try store.history(project: "alpha", name: "B")[0].version
        try v.restore("B", version: old, actor: .current)
        #expect(string(try v.value("B")) == "b")
        try v.undelete("A", actor: .current)
        #expect(string(try v.value("A")) == "a")
    }

    @Test func limitsAreEnforcedAndZeroKeepsNothing() throws {
        let (store, dir, base) = try makeStore()
        defer { removeTree(base) }
        try store.createProject("none", keepVersions: 0, keepDeletedDays: 1)
        try store.createProject("two", keepVersions: 2)
        #expect(throws: StoreError.self) { try store.createProject("bad", keepVersions: -1) }
        #expect(try store.project(named: "none").keepVersions == 0)
        let none = try store.openProject("none")
        try none.put("A", value: bytes("a1"), actor: .current)
        try none.put("A", value: bytes("a2"), actor: .current)
        #expect(try store.history(project: "none", name: "A").count == 1)
        #expect(try none.delete("A", actor: .current))
        #expect(try store.trash(project: "none").isEmpty)
        #expect(throws: StoreError.secretNotFound("A", project: "none")) { _ = try store.history(project: "none", name: "A") }
        let two = try store.openProject("two")
        for i in 0..<5 { try two.put("A", value: bytes("a\(i)"), actor: .current) }
        #expect(try store.history(project: "two", name: "A").count == 2)
        try store.setRetention(project: "two", keepVersions: 1, keepDeletedDays: 7)
        #expect(try store.history(project: "two", name: "A").count == 1)
        #expect(try store.project(named: "two").keepDeletedDays == 7)
        #expect(count(dir, "SELECT COUNT(*) FROM versions") == 0)
    }

    /// A write of a name with no current value prunes only when the name
    /// came out of the trash (nothing else can have versions): one that does
    /// is held to the limit as any other, and a `rm` that keeps versions
    /// keeps the trash row that says so.
    @Test func aNameBackFromTheTrashIsHeldToTheLimit() throws {
        let (store, dir, base) = try makeStore()
        defer { removeTree(base) }
        try store.createProject("two", keepVersions: 2)
        let v = try store.openProject("two")
        for i in 0..<3 { try v.put("A", value: bytes("a\(i)"), actor: .current) }
        #expect(try v.delete("A", actor: .current))
        #expect(try store.trash(project: "two").map(\.versionsKept) == [2])
        #expect(try store.history(project: "two", name: "A").map(\.action) == [.set, .set, .delete])
        try v.put("A", value: bytes("a3"), actor: .current)   // a create, from the trash
        #expect(try store.trash(project: "two").isEmpty)
        // The current value and one earlier one (a2), with the delete marker after it.
        #expect(try store.history(project: "two", name: "A").map(\.action) == [.set, .delete, .set])
        #expect(count(dir, "SELECT COUNT(*) FROM versions WHERE name = 'A' AND length(ciphertext) > 0") == 1)
        try v.rename("A", to: "B", actor: .current)
        try v.put("A", value: bytes("a4"), actor: .current)   // from the trash again, after a rename
        #expect(try store.history(project: "two", name: "A").filter { !$0.isDelete }.count == 2)
        try v.put("C", value: bytes("c"), actor: .current)    // a name never seen: no history
        #expect(try store.history(project: "two", name: "C").count == 1)
    }

    @Test func expiredTrashIsPurgedAsItAges() throws {
        let clock = TestClock()
        let (store, dir, base) = try makeStore(clock)
        defer { removeTree(base) }
        try store.createProject("alpha", keepDeletedDays: 30)
        try store.createProject("beta", keepDeletedDays: 30)
        let v = try store.openProject("alpha")
        try v.put("OLD", value: bytes("old-value"), actor: .current)
        try v.delete("OLD", actor: .current)
        try store.openProject("beta").put("X", value: bytes("x"), actor: .current)
        try store.openProject("beta").delete("X", actor: .current)
        clock.advance(days: 29)
        try store.purgeExpiredTrash()
        try v.put("NEW", value: bytes("n"), actor: .current)
        #expect(try store.trash(project: "alpha").map(\.name) == ["OLD"])
        clock.advance(days: 2)
        // A commit purges its own project's expired trash, in its transaction...
        try v.put("NEW", value: bytes("n2"), actor: .current)
        #expect(try store.trash(project: "alpha").isEmpty)
        #expect(throws: StoreError.secretNotFound("OLD", project: "alpha")) { _ = try store.history(project: "alpha", name: "OLD") }
        #expect(try store.trash(project: "beta").map(\.name) == ["X"])
        // ...and every open purges all projects'.
        let reopened = try Store.openMetadataOnly(at: StoreLocation(directory: dir), clock: clock.read)
        #expect(try reopened.trash(project: "beta").isEmpty)
        #expect(count(dir, "SELECT COUNT(*) FROM versions") == 1)
        let purged = try store.auditEvents(project: "alpha").filter { $0.action == "purge-expired" }
        #expect(purged.map(\.names) == ["OLD"])
    }

    @Test func purgeDestroysOnlyDeletedNames() throws {
        let (store, dir, base) = try makeStore()
        defer { removeTree(base) }
        try store.createProject("alpha")
        let v = try store.openProject("alpha")
        for n in ["A", "B", "C"] {
            try v.put(n, value: bytes(n), actor: .current)
            try v.put(n, value: bytes(n + "2"), actor: .current)
        }
        try v.delete("A", actor: .current)
        try v.delete("B", actor: .current)
        #expect(throws: StoreError.secretNotDeleted("C", project: "alpha", purging: true)) { try store.purge(project: "alpha", name: "C") }
        #expect(throws: StoreError.secretNotFound("Z", project: "alpha")) { try store.purge(project: "alpha", name: "Z") }
        try store.purge(project: "alpha", name: "A")
        #expect(try store.trash(project: "alpha").map(\.name) == ["B"])
        #expect(try store.purgeAllDeleted(project: "alpha") == ["B"])
        #expect(try store.trash(project: "alpha").isEmpty)
        #expect(count(dir, "SELECT COUNT(*) FROM versions") == 1)   // C's earlier value
    }

    // MARK: Migration from schema version 1

    /// Schema version 1 exactly as the first release (commit 2a7d641) writes it.
    static let schemaV1 = """
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
        PRAGMA user_version = 1;
        """

    func hex(_ b: [UInt8]) -> String { "x'" + b.map { String(format: "%02x", $0) }.joined() + "'" }

    @Test func aVersionOneStoreUpgradesItselfAtOpen() throws {
        let base = makeTempDirectory("secretfs-migrate")
        defer { removeTree(base) }
        let dir = base + "/store"
        let location = StoreLocation(directory: dir)
        // A key-file store's directory and key, then a database as schema
        // version 1 writes it: its SQL, its rows, its seals.
        do { _ = try Store.create(at: location, keySource: .keyFile) }
        for f in ["secretfs.db", "secretfs.db-wal", "secretfs.db-shm"] { unlink(dir + "/" + f) }
        close(open(dir + "/secretfs.db", O_CREAT | O_EXCL | O_RDWR, 0o600))
        let keyData = [UInt8](FileManager.default.contents(atPath: dir + "/master.key")!)
        let master = keyData.withUnsafeBytes { SecureBytes(copying: $0) }
        let storeID = [UInt8](repeating: 7, count: 16)
        let check = Envelope.seal(SecureBytes(capacity: 0), key: master, associatedData: Envelope.keyCheckAD(storeID: storeID))
        let dataKey = SecureBytes.random(count: 32)
        let wrapped = Envelope.seal(dataKey, key: master, associatedData: Envelope.projectKeyAD(storeID: storeID, projectID: 1, projectName: "legacy"))
        let a = Envelope.seal(bytes("legacy-a"), key: dataKey, associatedData: Envelope.valueAD(projectID: 1, version: 1, name: "A"))
        let b = Envelope.seal(bytes("legacy-b"), key: dataKey, associatedData: Envelope.valueAD(projectID: 1, version: 2, name: "B"))
        sql(dir, Self.schemaV1 + """
            INSERT INTO meta VALUES ('store_id', \(hex(storeID))), ('key_check', \(hex(check.nonce + check.ciphertext)));
            INSERT INTO projects VALUES (1, 'legacy', \(hex(wrapped.ciphertext)), \(hex(wrapped.nonce)), 1, 2);
            INSERT INTO secrets VALUES (1, 'A', \(hex(a.ciphertext)), \(hex(a.nonce)), 1, 5, 5, 1000);
            INSERT INTO secrets VALUES (1, 'B', \(hex(b.ciphertext)), \(hex(b.nonce)), 2, 6, 6, 1000);
            INSERT INTO audit(project, at, uid, pid, action, names) VALUES ('legacy', 5, 1000, 1, 'create', 'A');
            """)
        #expect(count(dir, "PRAGMA user_version") == 1)

        let store = try Store.open(at: location, keySource: .keyFile)
        #expect(count(dir, "PRAGMA user_version") == 3)
        let v = try store.openProject("legacy")
        #expect(string(try v.value("A")) == "legacy-a")
        #expect(string(try v.value("B")) == "legacy-b")
        let p = try store.project(named: "legacy")
        #expect(p.keepVersions == 10 && p.keepDeletedDays == 30 && p.secretCount == 2)
        #expect(try store.history(project: "legacy", name: "A").map(\.action) == [.set])
        #expect(try store.auditEvents(project: "legacy").count == 1)
        // From now on it keeps versions like any new store.
        try v.put("A", value: bytes("new-a"), actor: .current)
        try v.restore("A", version: 1, actor: .current)
        #expect(string(try v.value("A")) == "legacy-a")
        try v.delete("B", actor: .current)
        try v.undelete("B", actor: .current)
        #expect(string(try v.value("B")) == "legacy-b")
        // And opens again with the schema check passing.
        _ = try Store.open(at: location, keySource: .keyFile)
    }
}
