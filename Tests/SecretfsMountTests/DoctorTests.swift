import Foundation
import Glibc
import SecretfsMountSupport
import Testing

/// `secretfs doctor`: one line per check, a hint under each failure, exit 1
/// when anything failed, and nothing changed.
@Suite(.serialized)
struct DoctorTests {
    @Test func aHealthyStoreChecksOut() throws {
        let f = try MountFixture()
        defer { f.close() }
        let o = try f.secretfs(["doctor", "--group", "4242"])
        #expect(o.status == 0, "\(o.stdout) \(o.stderr)")
        let lines = o.stdout.split(separator: "\n")
        // A shared store has no store directory of its own: its line is the database's.
        let storeLines = f.database != nil ? ["ok    database ", "ok    key "] : ["ok    store ", "ok    database ", "ok    key "]
        for prefix in ["ok    /dev/fuse", "ok    fusermount3", "ok    -o group=4242"] + storeLines + ["ok    runtime directory "] {
            #expect(lines.contains { $0.hasPrefix(prefix) }, "no '\(prefix)' line: \(o.stdout)")
        }
    }

    @Test func eachProblemIsAFailLineWithAHint() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.expectOK(f.sh("mkdir -p \(f.runtimeDir) && chmod 0777 \(f.runtimeDir) && chmod 0644 \(f.storeDir)/master.key"))
        let o = try f.secretfs(["doctor"])
        #expect(o.status == 1, "\(o.stdout)")
        #expect(o.stdout.contains("FAIL  runtime directory \(f.runtimeDir)") && o.stdout.contains("FAIL  key \(f.storeDir)/master.key"),
                "\(o.stdout)")
        #expect(o.stdout.components(separatedBy: "hint: ").count - 1 == 2, "\(o.stdout)")
        // It changed nothing.
        var st = stat()
        #expect(stat(f.storeDir + "/master.key", &st) == 0 && st.st_mode & 0o777 == 0o644)
        let missing = try f.secretfs(["doctor", "--store", f.root + "/none"])
        #expect(missing.status == 1 && missing.stdout.contains("does not exist") && missing.stdout.contains("secretfs init"))
    }

    @Test func itTellsAPassphraseStoreFromAKeyFileStore() throws {
        let f = try MountFixture()
        defer { f.close() }
        guard f.database == nil else { return }   // one store directory of its own, made here
        let pstore = f.root + "/pstore", pass = f.root + "/pass"
        try f.expectOK(f.sh("printf 'a long enough passphrase' > \(pass) && chmod 0600 \(pass)"))
        try f.expectOK(f.secretfs(["init", "--store", pstore, "--passphrase-file", pass]))
        let without = try f.secretfs(["doctor", "--store", pstore])
        #expect(without.status == 1 && without.stdout.contains("FAIL  key: the store's master key is derived from a passphrase")
                && without.stdout.contains("hint: pass --passphrase-file"), "\(without.stdout)")
        let with = try f.secretfs(["doctor", "--store", pstore, "--passphrase-file", pass])
        #expect(with.stdout.contains("ok    key \(pass)"), "\(with.stdout)")
        // And the other way round: the fixture's store has a key file.
        let wrong = try f.secretfs(["doctor", "--passphrase-file", pass])
        #expect(wrong.status == 1 && wrong.stdout.contains("FAIL  key: the store uses a key file"), "\(wrong.stdout)")
    }
}
