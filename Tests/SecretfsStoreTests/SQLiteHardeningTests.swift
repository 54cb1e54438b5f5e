import Foundation
import Glibc
@testable import SecretfsStore
import Testing

/// How the store's SQLite connection is opened and configured, seen from inside.
struct SQLiteHardeningTests {
    @Test func connectionsRefuseSymlinksAndDistrustTheSchema() throws {
        let base = makeTempDirectory("secretfs-sqlite")
        defer { removeTree(base) }
        let store = try Store.create(at: StoreLocation(directory: base + "/store"), keySource: .keyFile)
        let s = try store.db.statement("PRAGMA trusted_schema")
        #expect(try s.step("reading trusted_schema") && s.int64(0) == 0)
        s.reset()
        // SQLITE_OPEN_NOFOLLOW: a symlink anywhere in the path is refused.
        symlink(base + "/store", base + "/link")
        #expect(throws: StoreError.self) { _ = try SQLiteConnection(path: base + "/link/secretfs.db") }
        symlink(base + "/store/secretfs.db", base + "/db-link")
        #expect(throws: StoreError.self) { _ = try SQLiteConnection(path: base + "/db-link") }
        _ = try SQLiteConnection(path: base + "/store/secretfs.db")
    }
}
