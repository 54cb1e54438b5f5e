import Foundation
import Glibc
@testable import SecretfsStore
import Testing

/// How the store's SQLite connection is opened and configured, seen from inside.
struct SQLiteHardeningTests {
    @Test func connectionsRefuseSymlinks() throws {
        let base = makeTempDirectory("secretfs-sqlite")
        defer { removeTree(base) }
        _ = try Store.create(at: StoreLocation(directory: base + "/store"), keySource: .keyFile)
        // SQLITE_OPEN_NOFOLLOW: a symlink anywhere in the path is refused.
        symlink(base + "/store", base + "/link")
        #expect(throws: StoreError.self) { _ = try SQLiteConnection(path: base + "/link/secretfs.db") }
        symlink(base + "/store/secretfs.db", base + "/db-link")
        #expect(throws: StoreError.self) { _ = try SQLiteConnection(path: base + "/db-link") }
        _ = try SQLiteConnection(path: base + "/store/secretfs.db")
    }
}
