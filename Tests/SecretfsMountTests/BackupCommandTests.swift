import CSQLite
import Foundation
import Glibc
import SecretfsMountSupport
import SecretfsStore
import Testing

/// `backup create` while a mount writes, `verify` (a flipped byte is named by
/// project, name and version), `restore` into a new store; the backup holds
/// no value and is mode 0600.
@Suite(.serialized, .enabled(if: !TestDatabase.isDefault, "file backups are the embedded store's; a shared store is copied with store copy (SharedStoreTests)"))
struct BackupCommandTests {
    func sql(_ path: String, _ text: String) {
        var db: OpaquePointer?
        #expect(sqlite3_open(path, &db) == SQLITE_OK)
        defer { sqlite3_close(db) }
        #expect(sqlite3_exec(db, text, nil, nil, nil) == SQLITE_OK, "\(String(cString: sqlite3_errmsg(db)))")
    }

    /// SQLite reopens the backup by its path: in a directory another user
    /// may write, they could rename a file of theirs over it and receive the
    /// whole store. Such a directory is refused, nothing is written; a sticky
    /// one (/tmp) is fine.
    @Test func aBackupIntoADirectoryOthersMayWriteIsRefused() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.expectOK(MountFixture.shell("mkdir '\(f.root)/theirs' '\(f.root)/open' && chown 65534 '\(f.root)/theirs' && chmod 0777 '\(f.root)/open'"))
        for dir in ["theirs", "open"] {
            let o = try f.secretfs(["backup", "create", "\(f.root)/\(dir)/b.db"])
            #expect(o.status == 10 && o.stderr.hasPrefix("secretfs: error: the backup's directory \(f.root)/\(dir) is not safe to use")
                    && o.stderr.contains("could put a file of theirs in the backup's place"), "\(o.stderr)")
            #expect(access("\(f.root)/\(dir)/b.db", F_OK) != 0)
        }
        let sticky = "/tmp/secretfs-backup-test-\(getpid()).db"
        // In a sticky directory anyone may create the names SQLite would
        // look for beside the file (a hot journal it would replay into the
        // backup, a WAL): nothing there is opened but the backup itself.
        let planted = ["-journal", "-wal", "-shm"].map { sticky + $0 }
        defer { unlink(sticky); for p in planted { unlink(p) } }
        for p in planted { #expect(symlink("/nonexistent/secretfs-planted", p) == 0) }
        // What a killed backup left in the store's directory goes with the next.
        try f.expectOK(f.sh("printf x > \(f.storeDir)/.backup-999999-1.db && printf x > \(f.storeDir)/.backup-999999-1.db-journal"))
        try f.expectOK(f.secretfs(["backup", "create", sticky]))
        try f.expectOK(f.secretfs(["backup", "verify", sticky]))
        for p in planted {
            var st = stat()
            #expect(lstat(p, &st) == 0 && st.st_mode & S_IFMT == S_IFLNK, "\(p) was touched")
        }
        // Nothing of the snapshot is left in the store's directory.
        #expect(try FileManager.default.contentsOfDirectory(atPath: f.storeDir).filter { $0.hasPrefix(".backup-") } == [])
    }

    @Test func createDuringWritesThenVerifyAndRestore() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount()
        try f.expectOK(f.sh("echo backup-value-0001 > $MNT/A && echo backup-value-0002 > $MNT/A && echo backup-value-0003 > $MNT/B"))
        let backup = f.root + "/store.backup"
        // A writer runs through the mount while the snapshot is taken.
        let o = try f.expectOK(f.sh("(for i in $(seq 1 40); do echo during-$i > $MNT/W; done) & "
                                    + "\(MountFixture.binary) backup create \(backup); wait"))
        #expect(o.stdout.hasPrefix("backed up 1 project ("), "\(o.stdout)")
        let over = try f.secretfs(["backup", "create", backup])
        #expect(over.status != 0 && over.stderr.contains("File exists")
                && over.stderr.contains("hint: give a path that does not exist yet"), "\(over.stderr)")
        for args in [["import", f.project, f.root + "/missing.env"], ["resolve", "--project", f.project, f.root + "/missing.yaml"]] {
            let missing = try f.secretfs(args)
            #expect(missing.status == 1 && missing.stderr.contains("No such file") && missing.stderr.contains("hint: check the path"),
                    "\(args[0]): \(missing.stderr)")
        }
        var st = stat()
        #expect(stat(backup, &st) == 0 && st.st_mode & 0o777 == 0o600)
        #expect(access(backup + "-wal", F_OK) != 0, "one file, no WAL left beside it")
        let data = try #require(FileManager.default.contents(atPath: backup))
        #expect(data.range(of: Data("backup-value".utf8)) == nil && data.range(of: Data("during-".utf8)) == nil)
        #expect(try f.secretfs(["backup", "create", backup]).status == 10, "an existing file is refused")

        let verify = try f.expectOK(f.secretfs(["backup", "verify", backup]))
        #expect(verify.stdout.contains("1 project, ") && verify.stdout.hasSuffix("; all good\n"), "\(verify.stdout)")
        #expect(verify.stdout.hasPrefix("backup of store "), "\(verify.stdout)")

        // Restore into a new store, with the key file; then it mounts and holds the values.
        let restored = f.root + "/restored"
        let r = try f.expectOK(f.secretfs(["backup", "restore", backup, "--store", restored, "--key-file", f.storeDir + "/master.key"]))
        #expect(r.stdout == "restored 1 project into \(restored)\n", "\(r.stdout)")
        let vault = try Store.open(at: StoreLocation(directory: restored), keySource: .keyFile).openProject("demo")
        #expect(try vault.value("B").map { $0.withUnsafeBytes { String(decoding: $0, as: UTF8.self) } } == "backup-value-0003")
        #expect(try vault.store.history(project: "demo", name: "A").count == 2)
        // The original's mount (same runtime directory, same project name)
        // is not the restored store's: status and project delete say so.
        #expect(try f.expectOK(f.secretfs(["status"])).stdout.contains(f.mnt))
        let restoredStatus = try f.expectOK(f.secretfs(["status", "--store", restored])).stdout
        #expect(restoredStatus.contains("(not mounted)") && !restoredStatus.contains(f.mnt), "\(restoredStatus)")
        let again = try f.secretfs(["backup", "restore", backup, "--store", restored, "--key-file", f.storeDir + "/master.key"])
        #expect(again.status == 10 && again.stderr.hasPrefix("secretfs: error: a store already exists at \(restored)"), "\(again.stderr)")
        let noKey = try f.secretfs(["backup", "restore", backup, "--store", f.root + "/other"])
        #expect(noKey.status == 11 && noKey.stderr.contains("hint: pass --key-file FILE"), "\(noKey.stderr)")
        #expect(access(f.root + "/other", F_OK) != 0, "a failed restore leaves no store, nor the directory it made")
        // A directory that was there before stays, empty as it was.
        mkdir(f.root + "/empty-before", 0o700)
        let noKeyThere = try f.secretfs(["backup", "restore", backup, "--store", f.root + "/empty-before"])
        #expect(noKeyThere.status == 11, "\(noKeyThere.stderr)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: f.root + "/empty-before") == [])

        // One flipped byte in one ciphertext: named by project, name and version.
        let version = try #require(try f.openVault().store.history(project: "demo", name: "B").first?.version)
        sql(backup, "UPDATE secrets SET ciphertext = CAST(CASE WHEN substr(ciphertext, 1, 1) = X'00' THEN X'01' ELSE X'00' END "
            + "|| substr(ciphertext, 2) AS BLOB) WHERE name = 'B'")
        let bad = try f.secretfs(["backup", "verify", backup])
        #expect(bad.status == 10, "\(bad.stdout) \(bad.stderr)")
        #expect(bad.stdout.contains("FAIL  project demo, B, version \(version) does not open"), "\(bad.stdout)")
        #expect(bad.stderr.hasPrefix("secretfs: error: 1 sealed blob of the backup do not open"), "\(bad.stderr)")
        try f.expectOK(f.secretfs(["project", "delete", "demo", "--force", "--store", restored]))
        // A manifest's text is the backup's bytes, anyone's: a store id with
        // an escape sequence is no manifest, and never reaches the terminal.
        sql(backup, "UPDATE meta SET value = CAST(replace(CAST(value AS TEXT), '\"storeID\":\"', '\"storeID\":\"X' || char(27) || '[8m') AS BLOB) "
            + "WHERE key = 'backup_manifest'")
        let forged = try f.secretfs(["backup", "verify", backup])
        #expect(forged.status == 10 && !(forged.stdout + forged.stderr).contains("\u{1b}"), "\(forged.stdout)")
        #expect(!forged.stdout.hasPrefix("backup of store "), "\(forged.stdout)")
        // A live store's database (WAL mode) is not a backup: restoring it
        // would lose what is in its WAL, and outside a store directory its
        // WAL would be anyone's.
        let live = try f.secretfs(["backup", "restore", f.storeDir + "/secretfs.db", "--store", f.root + "/from-live", "--key-file", f.storeDir + "/master.key"])
        #expect(live.status == 10 && live.stderr.contains("is a live store's database (WAL mode), not a backup"), "\(live.stderr)")
        let copied = "/tmp/secretfs-live-copy-\(getpid()).db"
        defer { unlink(copied) }
        try f.expectOK(f.sh("cp \(f.storeDir)/secretfs.db \(copied)"))
        let outside = try f.secretfs(["backup", "verify", copied])
        #expect(outside.status == 10 && outside.stderr.contains("checked only in a store directory"), "\(outside.stderr)")
        #expect(access(copied + "-shm", F_OK) != 0 && access(copied + "-wal", F_OK) != 0)
        // Any other file is named as not a backup, with a hint, not an SQLite error.
        try f.expectOK(f.sh("printf 'hello' > \(f.root)/not-a-backup && chmod 0600 \(f.root)/not-a-backup"))
        for args in [["backup", "verify", f.root + "/not-a-backup"],
                     ["backup", "restore", f.root + "/not-a-backup", "--store", f.root + "/from-junk", "--key-file", f.storeDir + "/master.key"]] {
            let junk = try f.secretfs(args)
            #expect(junk.status == 10 && junk.stderr.contains("\(f.root)/not-a-backup is not a secretfs backup (not an SQLite database)")
                    && junk.stderr.contains("hint: give a file made by 'secretfs backup create'"), "\(args[1]): \(junk.stderr)")
        }
        #expect(access(f.root + "/from-junk", F_OK) != 0)
        let printed = [o, verify, r, again, noKey, bad].map { $0.stdout + $0.stderr }.joined()
        #expect(!printed.contains("backup-value") && !printed.contains("during-"), "\(printed)")
    }
}
