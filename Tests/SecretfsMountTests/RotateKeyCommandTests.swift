import CSQLite
import Foundation
import Glibc
import SecretfsMountSupport
import SecretfsStore
import Testing

/// `secretfs project rotate-key` while four writers write through the mount:
/// no write is lost, every value and version opens under the new key, no
/// ciphertext of before the rotation remains, and the mount goes on working.
@Suite(.serialized)
struct RotateKeyCommandTests {
    nonisolated(unsafe) static var names: [[UInt8]: String] = [:]
    func ciphertexts(_ dir: String) -> [[UInt8]] {
        var db: OpaquePointer?
        sqlite3_open_v2(dir + "/secretfs.db", &db, SQLITE_OPEN_READONLY, nil)
        defer { sqlite3_close(db) }
        var s: OpaquePointer?
        sqlite3_prepare_v2(db, "SELECT ciphertext, 's:' || name FROM secrets UNION ALL SELECT ciphertext, 'v:' || name FROM versions WHERE length(ciphertext) > 0", -1, &s, nil)
        defer { sqlite3_finalize(s) }
        var out: [[UInt8]] = []
        while sqlite3_step(s) == SQLITE_ROW {
            let c = Array(UnsafeRawBufferPointer(start: sqlite3_column_blob(s, 0), count: Int(sqlite3_column_bytes(s, 0))))
            Self.names[c] = String(cString: sqlite3_column_text(s, 1))
            out.append(c)
        }
        return out
    }

    @Test(.enabled(if: !TestDatabase.isDefault, "reads the embedded store's SQLite file; the shared store's own check is SharedStoreTests")) func rotateWhileFourWritersRun() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount()
        let env = f.root + "/many.env"
        FileManager.default.createFile(atPath: env, contents: Data((0..<400).map { "N\($0)=rotate-value-\($0)\n" }.joined().utf8))
        try f.expectOK(f.secretfs(["import", "demo", env]))
        try f.expectOK(f.sh("for i in 1 2 3; do echo v$i > $MNT/KEPT; done"))
        let before = ciphertexts(f.storeDir)
        let bin = MountFixture.binary
        let o = try f.expectOK(f.sh("""
            for w in 1 2 3 4; do (for i in $(seq 1 40); do echo writer-$w-$i > $MNT/W$w || exit 1; done) & done
            sleep 0.05; \(bin) project rotate-key demo; rc=$?; wait; exit $rc
            """))
        #expect(o.stdout.hasPrefix("rotated the data key of demo: "), "\(o.stdout) \(o.stderr)")
        // No write lost; the mount writes on after the rotation.
        for w in 1...4 { #expect(try f.storedValue("W\(w)") == "writer-\(w)-40") }
        try f.expectOK(f.sh("echo after-rotation > $MNT/AFTER"))
        #expect(try f.storedValue("AFTER") == "after-rotation")
        #expect(try f.storedValue("N399") == "rotate-value-399")
        // Every value and kept version opens under the key the store has now.
        let report = try Store.verifyBackup(at: f.storeDir + "/secretfs.db", key: .keyFile(f.storeDir + "/master.key"))
        #expect(report.failures.isEmpty, "\(report.failures)")
        #expect(report.opened >= 400 + 3 + 4 * 10)
        try f.expectOK(f.secretfs(["restore", "demo", "KEPT", "--version",
                                   String(try f.openVault().store.history(project: "demo", name: "KEPT")[0].version)]))
        #expect(try f.storedValue("KEPT") == "v1")
        try f.openVault().store.checkpoint()
        let file = try #require(FileManager.default.contents(atPath: f.storeDir + "/secretfs.db"))
        let walSize = (try? FileManager.default.attributesOfItem(atPath: f.storeDir + "/secretfs.db-wal")[.size] as? Int) ?? -1
        let remaining = before.filter { file.range(of: Data($0)) != nil }
        #expect(remaining.isEmpty, "\(remaining.map { Self.names[$0] ?? "?" }) \(remaining.count) of \(before.count) ciphertexts of before the rotation remain; wal \(walSize)")
        #expect(!(o.stdout + o.stderr + f.logText).contains("rotate-value") && !f.logText.contains("writer-"))
    }
}
