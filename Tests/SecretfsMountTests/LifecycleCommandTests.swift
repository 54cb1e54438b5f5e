import CSQLite
import Foundation
import Glibc
import SecretfsMountSupport
import SecretfsStore
import Testing

/// No single command loses a secret, on real mounts: rm then undelete,
/// twelve overwrites keep ten and destroy the oldest ciphertext, restore of a
/// version is a new, audited version, and no output of these commands holds
/// a value or a length. Values are checked by opening the store in process.
@Suite(.serialized)
struct LifecycleCommandTests {
    func jsonLines(_ text: String) -> [[String: Any]] {
        text.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
    }

    /// The current ciphertext of NAME, read from the database as any reader of the file could.
    func ciphertext(_ f: MountFixture, _ name: String) -> [UInt8] {
        var db: OpaquePointer?
        sqlite3_open_v2(f.storeDir + "/secretfs.db", &db, SQLITE_OPEN_READONLY, nil)
        defer { sqlite3_close(db) }
        var s: OpaquePointer?
        sqlite3_prepare_v2(db, "SELECT ciphertext FROM secrets WHERE name = ?", -1, &s, nil)
        defer { sqlite3_finalize(s) }
        // SQLITE_TRANSIENT: SQLite copies the text (Swift's temporary C string dies after the call).
        sqlite3_bind_text(s, 1, name, -1, unsafeBitCast(-1, to: sqlite3_destructor_type.self))
        guard sqlite3_step(s) == SQLITE_ROW, let p = sqlite3_column_blob(s, 0) else { return [] }
        return Array(UnsafeRawBufferPointer(start: p, count: Int(sqlite3_column_bytes(s, 0))))
    }

    func fileContains(_ path: String, _ needle: [UInt8]) -> Bool {
        guard !needle.isEmpty, let data = FileManager.default.contents(atPath: path) else { return false }
        return data.range(of: Data(needle)) != nil
    }

    /// A name renamed away has a delete in its history (marked renamed
    /// away), and the name it went to has a rename: what the man page says.
    @Test func historyOfARenameShowsADeleteOnOneSideAndARenameOnTheOther() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount()
        try f.expectOK(f.sh("echo v > $MNT/OTHER && mv $MNT/OTHER $MNT/RENAMED"))
        let away = jsonLines(try f.expectOK(f.secretfs(["history", "demo", "OTHER", "--json"])).stdout)
        #expect(away.map { $0["action"] as? String ?? "" } == ["set", "delete"], "\(away)")
        #expect(away.last?["renamed_away"] as? Bool == true && away.first?["renamed_away"] == nil, "\(away)")
        let table = try f.expectOK(f.secretfs(["history", "demo", "OTHER"])).stdout
        #expect(table.split(separator: "\n").last?.hasSuffix("delete  (renamed away)") == true, "\(table)")
        let arrived = jsonLines(try f.expectOK(f.secretfs(["history", "demo", "RENAMED", "--json"])).stdout)
        #expect(arrived.map { $0["action"] as? String ?? "" } == ["rename"], "\(arrived)")
    }

    @Test func rmThenUndeleteBringsTheValueBack() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount()
        try f.expectOK(f.sh("echo undelete-me > $MNT/API_TOKEN && rm $MNT/API_TOKEN"))
        #expect(try f.storedValue("API_TOKEN") == nil)
        let trash = jsonLines(try f.expectOK(f.secretfs(["trash", "demo", "--json"])).stdout)
        #expect(trash.count == 1 && trash.first?["name"] as? String == "API_TOKEN" && trash.first?["versions"] as? Int == 1,
                "\(trash)")
        #expect(trash.first?["uid"] as? Int == Int(getuid()))
        let o = try f.expectOK(f.secretfs(["undelete", "demo", "API_TOKEN"]))
        #expect(o.stdout.hasPrefix("undeleted API_TOKEN (now version "), "\(o.stdout)")
        #expect(try f.storedValue("API_TOKEN") == "undelete-me")
        #expect(try f.expectOK(f.secretfs(["trash", "demo"])).stdout == "the trash of project demo is empty\n")
        let history = jsonLines(try f.expectOK(f.secretfs(["history", "demo", "API_TOKEN", "--json"])).stdout)
        #expect(history.map { $0["action"] as? String ?? "" } == ["set", "delete", "restore"], "\(history)")
        #expect(history.map { $0["current"] as? Bool ?? true } == [false, false, true])
        // Once more: an undelete of a live name is refused in the one voice.
        let again = try f.secretfs(["undelete", "demo", "API_TOKEN"])
        #expect(again.status == 1 && again.stderr.hasPrefix("secretfs: error: 'API_TOKEN' is not deleted")
                && again.stderr.contains("\nhint: see its versions with 'secretfs history demo API_TOKEN'; bring one back with 'secretfs restore demo API_TOKEN --version N'"),
                "\(again.stderr)")
    }

    @Test(.enabled(if: !TestDatabase.isDefault, "reads the embedded store's SQLite file; the shared store's own check is SharedStoreTests")) func twelveOverwritesKeepTenAndDestroyTheOldest() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount()
        try f.expectOK(f.sh("echo overwrite-0 > $MNT/A"))
        let oldest = ciphertext(f, "A")
        #expect(oldest.count == "overwrite-0".count + 16)
        for i in 1...12 { try f.expectOK(f.sh("echo overwrite-\(i) > $MNT/A")) }
        #expect(try f.storedValue("A") == "overwrite-12")
        let history = jsonLines(try f.expectOK(f.secretfs(["history", "demo", "A", "--json"])).stdout)
        #expect(history.count == 10, "\(history)")
        #expect(history.filter { $0["current"] as? Bool == true }.count == 1)
        let table = try f.expectOK(f.secretfs(["history", "demo", "A"])).stdout
        #expect(table.split(separator: "\n").count == 11 && table.hasPrefix("VERSION  TIME") && table.contains("(current)"), "\(table)")
        let current = ciphertext(f, "A")
        try f.openVault().store.checkpoint()
        #expect(fileContains(f.storeDir + "/secretfs.db", current), "the search finds what is there")
        #expect(!fileContains(f.storeDir + "/secretfs.db", oldest), "the oldest ciphertext is destroyed")
        #expect(!fileContains(f.storeDir + "/secretfs.db-wal", oldest))
    }

    @Test func restoreOfAVersionIsANewAuditedVersion() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount()
        try f.expectOK(f.sh("echo first-value > $MNT/DB_URL && echo second-value > $MNT/DB_URL && echo -more >> $MNT/DB_URL"))
        #expect(try f.storedValue("DB_URL") == "second-value-more")
        let before = jsonLines(try f.expectOK(f.secretfs(["history", "demo", "DB_URL", "--json"])).stdout)
        #expect(before.map { $0["action"] as? String ?? "" } == ["set", "set", "append"], "\(before)")
        let first = try #require(before.first?["version"] as? Int)
        let o = try f.expectOK(f.secretfs(["restore", "demo", "DB_URL", "--version", String(first)]))
        #expect(o.stdout.hasPrefix("restored DB_URL to version \(first) (now version "), "\(o.stdout)")
        #expect(try f.storedValue("DB_URL") == "first-value")
        let after = jsonLines(try f.expectOK(f.secretfs(["history", "demo", "DB_URL", "--json"])).stdout)
        #expect(after.count == 4 && after.last?["action"] as? String == "restore" && after.last?["current"] as? Bool == true)
        #expect((after.last?["version"] as? Int ?? 0) > (before.last?["version"] as? Int ?? .max))
        let audit = jsonLines(try f.expectOK(f.secretfs(["audit", "demo", "--json"])).stdout).filter { $0["action"] as? String == "restore" }
        #expect(audit.count == 1 && audit.first?["names"] as? String == "DB_URL" && audit.first?["uid"] as? Int == Int(getuid()), "\(audit)")
        // A version that is not kept, and the current one, are refused with a
        // hint that names the project.
        let missing = try f.secretfs(["restore", "demo", "DB_URL", "--version", "999"])
        #expect(missing.status == 1 && missing.stderr.contains("keeps no version 999")
                && missing.stderr.contains("hint: list the versions with 'secretfs history demo DB_URL'"), "\(missing.stderr)")
        let current = String(after.last?["version"] as? Int ?? 0)
        let same = try f.secretfs(["restore", "demo", "DB_URL", "--version", current])
        #expect(same.status == 1 && same.stderr.contains("version \(current) is already the current value of 'DB_URL'")
                && same.stderr.contains("hint: nothing to restore"), "\(same.stderr)")
    }

    @Test func purgeNeedsForceAndDestroysDeletedNames() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount()
        try f.expectOK(f.sh("for n in A B C; do echo purge-$n > $MNT/$n; done; rm $MNT/A $MNT/B"))
        let noForce = try f.secretfs(["purge", "demo", "A"])
        #expect(noForce.status == 64 && noForce.stderr.hasPrefix("secretfs: error: purging destroys every version for good")
                && noForce.stderr.contains("hint: see 'secretfs purge --help'"), "\(noForce.stderr)")
        let live = try f.secretfs(["purge", "demo", "C", "--force"])
        #expect(live.status == 1 && live.stderr.contains("'C' is not deleted")
                && live.stderr.contains("hint: purge destroys deleted names only: remove it first (rm on the mount), then 'secretfs purge demo C --force'"),
                "\(live.stderr)")
        try f.expectOK(f.secretfs(["purge", "demo", "A", "--force"]))
        #expect(jsonLines(try f.expectOK(f.secretfs(["trash", "demo", "--json"])).stdout).map { $0["name"] as? String } == ["B"])
        let gone = try f.secretfs(["history", "demo", "A"])
        #expect(gone.status == 1 && gone.stderr.hasPrefix("secretfs: error: no secret named 'A' in project 'demo'")
                && gone.stderr.contains("hint: list its names with 'secretfs ls demo', deleted ones with 'secretfs trash demo'"), "\(gone.stderr)")
        // A restore of a name the project has never had says so, not "keeps no version".
        let never = try f.secretfs(["restore", "demo", "NEVER", "--version", "1"])
        #expect(never.status == 1 && never.stderr.hasPrefix("secretfs: error: no secret named 'NEVER' in project 'demo'"), "\(never.stderr)")
        #expect(try f.expectOK(f.secretfs(["purge", "demo", "--all-deleted", "--force"])).stdout == "purged 1 deleted name\n")
        #expect(try f.expectOK(f.secretfs(["trash", "demo", "--json"])).stdout.isEmpty)
        let noProject = try f.secretfs(["trash", "nope"])
        #expect(noProject.status == 12 && noProject.stderr.hasPrefix("secretfs: error: no project named 'nope'"))
        #expect(try f.secretfs(["purge", "demo", "B", "--all-deleted", "--force"]).status == 64)
    }

    @Test func historyAndTrashNeverShowAValueOrALength() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount()
        // 54321 bytes: a length no time or version number spells out.
        try f.expectOK(f.sh("head -c 54321 /dev/zero | tr '\\\\0' q > $MNT/BIG && echo small-secret-value > $MNT/S"))
        #expect(try f.storedBytes("BIG")?.count == 54321)
        try f.expectOK(f.sh("echo other > $MNT/BIG && echo other > $MNT/S && rm $MNT/S"))
        var outputs: [String] = []
        for args in [["history", "demo", "BIG"], ["history", "demo", "BIG", "--json"], ["history", "demo", "S"],
                     ["history", "demo", "S", "--json"], ["trash", "demo"], ["trash", "demo", "--json"],
                     ["restore", "demo", "BIG", "--version", "1"], ["undelete", "demo", "S"], ["audit", "demo"],
                     ["audit", "demo", "--json"], ["history", "--help"], ["trash", "--help"]] {
            let o = try f.expectOK(f.secretfs(args))
            outputs.append(o.stdout + o.stderr)
        }
        #expect(try f.storedBytes("BIG")?.count == 54321)
        #expect(try f.storedValue("S") == "other", "undelete brings back the last value")
        let all = outputs.joined(separator: "\n") + f.logText
        #expect(!all.contains("qqqq") && !all.contains("small-secret-value"))
        #expect(!all.contains("54321") && !all.contains("54337") && !all.contains("\"length\"") && !all.contains("size"), "\(all)")
    }
}

extension LifecycleCommandTests {
    /// purge destroys for good: after purging 300 deleted names, none of
    /// their ciphertexts is anywhere in the database file (not even a
    /// fragment a page rebalance left behind).
    @Test(.enabled(if: !TestDatabase.isDefault, "reads the embedded store's SQLite file; the shared store's own check is SharedStoreTests")) func purgeLeavesNoCiphertextOfThePurgedNames() throws {
        let f = try MountFixture()
        defer { f.close() }
        let env = f.root + "/many.env"
        _ = FileManager.default.createFile(atPath: env, contents: Data((0..<300).map { "P\($0)=purge-value-\($0)\n" }.joined().utf8))
        try f.expectOK(f.secretfs(["import", "demo", env]))
        let before = (0..<300).map { ciphertext(f, "P\($0)") }
        try f.mount()
        try f.expectOK(f.sh("cd $MNT && for i in $(seq 0 299); do rm P$i; done"))
        try f.unmount()
        try f.expectOK(f.secretfs(["purge", "demo", "--all-deleted", "--force"]))
        try f.openVault().store.checkpoint()
        let left = before.filter { fileContains(f.storeDir + "/secretfs.db", $0) }
        #expect(left.isEmpty, "\(left.count) of 300 purged ciphertexts are still in the file")
    }
}
