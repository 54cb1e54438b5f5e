import CSQLite
import Foundation
import Glibc
@testable import SecretfsStore
import SecureMemory
import Testing

/// rotate-key in process: a vault opened before (a mount, which dropped the
/// master key) follows the new key; every value and version opens after it;
/// no ciphertext of before remains in the file.
struct RotateKeyTests {
    func bytes(_ s: String) -> SecureBytes { Array(s.utf8).withUnsafeBytes { SecureBytes(copying: $0) } }
    func string(_ b: SecureBytes?) -> String? { b.map { $0.withUnsafeBytes { String(decoding: $0, as: UTF8.self) } } }

    func ciphertexts(_ dir: String) -> [[UInt8]] {
        var db: OpaquePointer?
        sqlite3_open(dir + "/secretfs.db", &db)
        defer { sqlite3_close(db) }
        var s: OpaquePointer?
        sqlite3_prepare_v2(db, "SELECT ciphertext FROM secrets UNION ALL SELECT ciphertext FROM versions WHERE length(ciphertext) > 0", -1, &s, nil)
        defer { sqlite3_finalize(s) }
        var out: [[UInt8]] = []
        while sqlite3_step(s) == SQLITE_ROW {
            out.append(Array(UnsafeRawBufferPointer(start: sqlite3_column_blob(s, 0), count: Int(sqlite3_column_bytes(s, 0)))))
        }
        return out
    }

    @Test func aMountedVaultFollowsAndNothingOldRemains() throws {
        let base = makeTempDirectory("secretfs-rotate")
        defer { removeTree(base) }
        let location = StoreLocation(directory: base + "/store")
        let store = try Store.create(at: location, keySource: .keyFile)
        try store.createProject("alpha")
        // The "mount": opened, then the master key dropped.
        let mountStore = try Store.open(at: location, keySource: .keyFile)
        let mount = try mountStore.openProject("alpha")
        mountStore.discardMasterKey()
        for i in 0..<30 { try mount.put("N\(i % 7)", value: bytes("value-\(i)"), actor: .current) }
        try mount.delete("N6", actor: .current)
        let before = ciphertexts(location.directory)
        var seen: [Store.RotationProgress] = []
        // The mount's StoreWatcher follows the link while the rotation runs (here: at each batch).
        let n = try store.rotateKey(project: "alpha", batchSize: 4, progress: { seen.append($0); do { try mount.followKeyRotation() } catch { Issue.record("follow failed: \(error)") } })
        #expect(n == before.count && seen.count > 2)
        // The mount reads and writes through the new key without a master key.
        #expect(string(try mount.value("N0")) == "value-28")
        try mount.put("AFTER", value: bytes("after-rotation"), actor: .current)
        let fresh = try Store.open(at: location, keySource: .keyFile).openProject("alpha")
        #expect(string(try fresh.value("AFTER")) == "after-rotation")
        #expect(string(try fresh.value("N5")) == "value-26")
        // Every kept version opens as itself under the new key.
        for h in try store.history(project: "alpha", name: "N1") where !h.isCurrent && !h.isDelete {
            try fresh.restore("N1", version: h.version, actor: .current)
        }
        try fresh.undelete("N6", actor: .current)
        #expect(string(try fresh.value("N6")) == "value-27")
        let report = try Store.verifyBackup(at: location.databasePath, key: .keyFile(location.keyFilePath))
        #expect(report.failures.isEmpty && report.opened > n)
        try store.checkpoint()
        let file = try #require(FileManager.default.contents(atPath: location.databasePath))
        let left = before.filter { file.range(of: Data($0)) != nil }
        #expect(left.isEmpty, "\(left.count) ciphertexts of before the rotation remain")
        #expect(try store.auditEvents(project: "alpha").contains { $0.action == "rotate-key" })
    }
}
