import CSQLite
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

    /// The schema check's fast path: the digest it accepts without building
    /// the expected schema is the digest of what the migrations make, and
    /// the digest tells any change in any field apart.
    @Test func theSchemaDigestIsThatOfWhatTheMigrationsMake() throws {
        let expected = try Store.expectedSchema.get()
        let digest = hex(Store.schemaDigest(expected))
        // The digest is of SQLite's text for the schema, which its ALTER TABLE
        // writes: pinned for the SQLite this project builds on. (Another
        // SQLite takes the slow path, which the other schema tests cover.)
        if String(cString: sqlite3_libversion()).hasPrefix(Store.expectedSchemaDigest.sqlite) {
            #expect(digest == Store.expectedSchemaDigest.digest,
                    "the migrations changed: set Store.expectedSchemaDigest's digest to \"\(digest)\"")
        }
        for o in expected {
            var changed = expected
            changed.remove(o)
            #expect(hex(Store.schemaDigest(changed)) != digest, "without \(o.name)")
            var altered = o
            altered.sql = (o.sql ?? "") + " "
            #expect(hex(Store.schemaDigest(changed.union([altered]))) != digest, "\(o.name) altered")
            altered.sql = nil
            if o.sql != nil { #expect(hex(Store.schemaDigest(changed.union([altered]))) != digest, "\(o.name) without SQL") }
        }
    }
}
