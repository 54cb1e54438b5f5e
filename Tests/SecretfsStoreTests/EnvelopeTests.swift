import CSQLite
import Foundation
import SecretfsStore
import SecureMemory
import Testing

/// The store in process: envelope encryption binds each ciphertext to its
/// row, and every mutation leaves an audit row without the value.
struct EnvelopeTests {
    func makeStore() throws -> (Store, String) {
        var template = Array("/tmp/secretfs-store-test-XXXXXX".utf8CString)
        _ = mkdtemp(&template)
        let dir = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) } + "/store"
        return (try Store.create(at: StoreLocation(directory: dir), keySource: .keyFile), dir)
    }

    func bytes(_ s: String) -> SecureBytes {
        Array(s.utf8).withUnsafeBytes { SecureBytes(copying: $0) }
    }

    func string(_ b: SecureBytes?) -> String? {
        b.map { $0.withUnsafeBytes { String(decoding: $0, as: UTF8.self) } }
    }

    /// Runs SQL on the database file directly, as an attacker with write access would.
    func tamper(_ dir: String, _ sql: String) throws {
        var db: OpaquePointer?
        #expect(sqlite3_open(dir + "/secretfs.db", &db) == SQLITE_OK)
        defer { sqlite3_close(db) }
        #expect(sqlite3_exec(db, sql, nil, nil, nil) == SQLITE_OK, "\(String(cString: sqlite3_errmsg(db)))")
    }

    /// A GET of many names reads them in batches of 64 (one statement each):
    /// every value comes back under its own name, in any number of batches,
    /// repeated names once, and a name that only looks like a stored one to
    /// Swift's String equality (U+212A KELVIN SIGN is canonically "K") is
    /// missing, never answered with the other's value.
    @Test func aBatchedReadAnswersEachNameWithItsOwnValue() throws {
        let (store, dir) = try makeStore()
        defer { try? FileManager.default.removeItem(atPath: (dir as NSString).deletingLastPathComponent) }
        try store.createProject("alpha")
        let v = try store.openProject("alpha")
        for i in 0..<150 { try v.put("N\(i)", value: bytes("value-\(i)"), actor: .current) }
        try v.put("KEY", value: bytes("the key"), actor: .current)
        var asked = (0..<150).reversed().map { "N\($0)" } + ["N7", "ABSENT", "N149"]
        let got = try v.values(asked, actor: .current)
        #expect(got.count == 150)
        for i in 0..<150 { #expect(string(got["N\(i)"]) == "value-\(i)") }
        #expect(got["ABSENT"] == nil)
        asked = ["\u{212A}EY", "KEY"]
        var missing: [String] = []
        var found: [String] = []
        try v.openValues(asked, actor: .current) { rows, absent in
            found = rows.map(\.name)
            missing = absent
            return nil
        }
        #expect(found == ["KEY"] && missing == ["\u{212A}EY"], "\(found) \(missing)")
        let alone = try v.values(["\u{212A}EY"], actor: .current)
        #expect(alone.isEmpty)
    }

    @Test func roundTripAndVersions() throws {
        let (store, dir) = try makeStore()
        defer { try? FileManager.default.removeItem(atPath: (dir as NSString).deletingLastPathComponent) }
        try store.createProject("alpha")
        let v = try store.openProject("alpha")
        let a = try v.put("A", value: bytes("one"), actor: .current)
        let b = try v.put("A", value: bytes("two"), actor: .current)
        #expect(b.version > a.version)
        #expect(b.createdAt == a.createdAt)
        #expect(string(try v.value("A")) == "two")
        #expect(try v.value("MISSING") == nil)
        try v.rename("A", to: "B", actor: .current)
        #expect(string(try v.value("B")) == "two")
        #expect(try v.list().map(\.name) == ["B"])
        #expect(throws: StoreError.secretExists("B")) {
            _ = try v.put("C", value: bytes("c"), actor: .current)
            try v.rename("C", to: "B", mode: .noReplace, actor: .current)
        }
        try v.rename("C", to: "B", mode: .exchange, actor: .current)
        #expect(string(try v.value("B")) == "c")
        #expect(string(try v.value("C")) == "two")
        #expect(try v.delete("C", actor: .current))
        #expect(try !v.delete("C", actor: .current))
        let actions = try store.auditEvents(project: "alpha").map(\.action)
        #expect(actions == ["project-create", "create", "update", "rename", "create", "exchange", "delete"])
    }

    @Test func aCiphertextMovedToAnotherRowFailsToOpen() throws {
        let (store, dir) = try makeStore()
        try store.createProject("alpha")
        try store.createProject("beta")
        let alpha = try store.openProject("alpha")
        try alpha.put("A", value: bytes("value-of-A"), actor: .current)
        try alpha.put("B", value: bytes("value-of-B"), actor: .current)
        try store.openProject("beta").put("A", value: bytes("beta-A"), actor: .current)
        // Another name, same project.
        try tamper(dir, """
            UPDATE secrets SET ciphertext = (SELECT ciphertext FROM secrets WHERE name='A' AND project_id=1),
                               nonce = (SELECT nonce FROM secrets WHERE name='A' AND project_id=1)
            WHERE name='B' AND project_id=1
            """)
        #expect(throws: StoreError.self) { _ = try alpha.value("B") }
        #expect(string(try alpha.value("A")) == "value-of-A")
        // Same name, version rolled forward without a new seal.
        try tamper(dir, "UPDATE secrets SET version = version + 100 WHERE name='A' AND project_id=1")
        #expect(throws: StoreError.self) { _ = try alpha.value("A") }
        // Another project's row under this project's id.
        try tamper(dir, "UPDATE secrets SET project_id = 1, name = 'Z' WHERE project_id = 2")
        #expect(throws: StoreError.self) { _ = try alpha.value("Z") }
    }

    @Test func projectKeysAreBoundToTheirProject() throws {
        let (store, dir) = try makeStore()
        try store.createProject("alpha")
        try store.createProject("beta")
        try tamper(dir, """
            UPDATE projects SET wrapped_key = (SELECT wrapped_key FROM projects WHERE name='alpha'),
                                wrap_nonce = (SELECT wrap_nonce FROM projects WHERE name='alpha')
            WHERE name='beta'
            """)
        #expect(throws: StoreError.self) { _ = try store.openProject("beta") }
        _ = try store.openProject("alpha")
    }

    @Test func metadataOnlyOpenCannotReadValues() throws {
        let (store, dir) = try makeStore()
        try store.createProject("alpha")
        try store.openProject("alpha").put("A", value: bytes("v"), actor: .current)
        let meta = try Store.openMetadataOnly(at: StoreLocation(directory: dir))
        #expect(try meta.listProjects().map(\.secretCount) == [1])
        #expect(throws: StoreError.keyNotLoaded) { _ = try meta.openProject("alpha") }
    }

    @Test func insecureOrMalformedKeyFilesAreRefused() throws {
        let (_, dir) = try makeStore()
        let key = dir + "/master.key"
        chmod(key, 0o644)
        #expect(throws: StoreError.keyFileInsecure(path: key, mode: 0o644)) {
            _ = try Store.open(at: StoreLocation(directory: dir), keySource: .keyFile)
        }
        chmod(key, 0o600)
        try Data(count: 31).write(to: URL(fileURLWithPath: key))
        #expect(throws: StoreError.keyFileMalformed(path: key)) {
            _ = try Store.open(at: StoreLocation(directory: dir), keySource: .keyFile)
        }
    }

    @Test func errorsNeverCarryValues() throws {
        let (store, _) = try makeStore()
        try store.createProject("alpha")
        let v = try store.openProject("alpha")
        #expect(throws: StoreError.invalidSecretName("bad name")) {
            try v.put("bad name", value: bytes("Top-Secret-Value"), actor: .current)
        }
        do {
            try v.put("bad name", value: bytes("Top-Secret-Value"), actor: .current)
        } catch {
            #expect(!"\(error)".contains("Top-Secret"))
        }
    }

    @Test func aDiscardedMasterKeyOpensNothingMore() throws {
        let (store, _) = try makeStore()
        try store.createProject("alpha")
        let vault = try store.openProject("alpha")
        store.discardMasterKey()
        try vault.put("A", value: bytes("still works"), actor: .current)
        #expect(string(try vault.value("A")) == "still works", "the data key is separate")
        #expect(throws: StoreError.keyNotLoaded) { _ = try store.openProject("alpha") }
        #expect(throws: StoreError.keyNotLoaded) { try store.createProject("beta") }
    }
}
