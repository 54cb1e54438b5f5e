import Foundation
import Glibc
import SecretfsMountSupport
import SecretfsStore
import Testing

/// `secretfs rekey` while a project is mounted: the mount keeps writing, a
/// remount works with the new key, the old key is refused.
@Suite(.serialized)
struct RekeyCommandTests {
    @Test func rekeyWhileMountedThenWritesAndARemount() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount()
        try f.expectOK(f.sh("echo before-rekey > $MNT/A"))
        try f.expectOK(f.sh("cp \(f.storeDir)/master.key \(f.root)/old.key && head -c 32 /dev/urandom > \(f.root)/new.key && chmod 0400 \(f.root)/new.key"))
        // Backups are of a store directory (a shared store's are PostgreSQL's own).
        let backs = f.database == nil
        if backs { try f.expectOK(f.secretfs(["backup", "create", f.root + "/before.db"])) }
        let o = try f.expectOK(f.secretfs(["rekey", "--new-key-file", f.root + "/new.key"]))
        // A backup from before the rekey: the new key is refused with the reason, the old one opens it.
        if backs {
            let stale = try f.secretfs(["backup", "verify", f.root + "/before.db"])
            #expect(stale.status == 11 && stale.stderr.contains("the master key does not open this backup (tried key file \(f.storeDir)/master.key)")
                    && stale.stderr.contains("after a rekey that is the old one"), "\(stale.stderr)")
            try f.expectOK(f.secretfs(["backup", "verify", f.root + "/before.db", "--key-file", f.root + "/old.key"]))
            let restore = try f.secretfs(["backup", "restore", f.root + "/before.db", "--store", f.root + "/restored", "--key-file", f.root + "/new.key"])
            #expect(restore.status == 11 && restore.stderr.contains("does not open this backup (tried key file \(f.root)/new.key)"), "\(restore.stderr)")
            #expect(access(f.root + "/restored", F_OK) != 0, "nothing is left of a refused restore")
        }
        #expect(o.stdout.hasPrefix("re-wrapped 1 project key under the new key, now \(f.storeDir)/master.key"), "\(o.stdout)")
        #expect(o.stdout.contains(backs ? "note: backups made before now open only with the old key" : "note: the other hosts of this store still have the old key"),
                "\(o.stdout)")
        try f.expectOK(f.sh("echo after-rekey > $MNT/B && echo again >> $MNT/A"))
        try f.unmount()
        try f.mount()
        try f.expectOK(f.sh("echo after-remount > $MNT/C"))
        #expect(try f.storedValue("A") == "before-rekeyagain" && f.storedValue("B") == "after-rekey" && f.storedValue("C") == "after-remount")
        try f.unmount()
        try f.expectOK(f.sh("chmod 0600 \(f.storeDir)/master.key && cp \(f.root)/old.key \(f.storeDir)/master.key && chmod 0400 \(f.storeDir)/master.key"))
        let refused = try f.secretfs(["mount", "demo", f.mnt])
        #expect(refused.status == 11 && refused.stderr.contains("the master key does not open this store (tried key file \(f.storeDir)/master.key)"), "\(refused.stderr)")
        let usage = try f.secretfs(["rekey"])
        #expect(usage.status == 64 && usage.stderr.contains("exactly one of --new-key-file"))
        #expect(!(o.stdout + o.stderr + f.logText).contains("before-rekey"))
    }

    @Test func fromAPassphraseItSaysThePassphraseAndNoKeyFile() throws {
        let f = try MountFixture()
        defer { f.close() }
        guard f.database == nil else { return }   // a store directory of its own, made here
        let pstore = f.root + "/pstore"
        try f.expectOK(f.sh("printf 'the first passphrase' > \(f.root)/p1 && printf 'the second passphrase' > \(f.root)/p2 && chmod 0600 \(f.root)/p1 \(f.root)/p2"))
        try f.expectOK(f.secretfs(["init", "--store", pstore, "--passphrase-file", f.root + "/p1"]))
        let o = try f.expectOK(f.secretfs(["rekey", "--store", pstore, "--passphrase-file", f.root + "/p1", "--new-passphrase-file", f.root + "/p2"]))
        #expect(o.stdout.hasPrefix("re-wrapped 0 project keys under the new passphrase; the old passphrase no longer opens this store\n"), "\(o.stdout)")
        #expect(!o.stdout.contains("master.key"), "\(o.stdout)")
        try f.expectOK(f.secretfs(["project", "list", "--store", pstore, "--passphrase-file", f.root + "/p2"]))
    }

    /// kill -9 at random points of `rekey` (before, during and after each
    /// step), again and again: afterwards exactly one of the two keys opens
    /// the store, the next command says which when it had to repair, and the
    /// values are intact.
    @Test func killNineAnywhereLeavesExactlyOneWorkingKey() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount()
        try f.expectOK(f.sh("echo survives-kill > $MNT/A"))
        try f.unmount()
        let bin = MountFixture.binary
        var outcomes: Set<String> = []
        // 0 to 44 ms at first; each further dozen of rounds doubles the step,
        // so a slow machine (or a sanitizer build) still lands kills on both
        // sides of the commit. At least 24 rounds; stop once both were seen.
        for round in 0..<60 {
            if round >= 24 && outcomes.count == 2 { break }
            let delay = Double(round % 12) * 0.004 * Double(1 << (round / 12))
            try f.expectOK(f.sh("""
                cp \(f.storeDir)/master.key \(f.root)/old.key
                rm -f \(f.root)/new.key; head -c 32 /dev/urandom > \(f.root)/new.key; chmod 0400 \(f.root)/new.key
                \(bin) rekey --new-key-file \(f.root)/new.key >/dev/null 2>&1 & pid=$!
                sleep \(delay); kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null; true
                """))
            // The next command opens the store (finishing or discarding the rekey).
            let ls = try f.secretfs(["ls", "demo"])
            let opened = try f.secretfs(["project", "create", "probe\(round)"])
            #expect(ls.status == 0 && opened.status == 0, "round \(round): \(opened.stderr)")
            let current = try #require(FileManager.default.contents(atPath: f.storeDir + "/master.key"))
            let old = try #require(FileManager.default.contents(atPath: f.root + "/old.key"))
            let new = try #require(FileManager.default.contents(atPath: f.root + "/new.key"))
            #expect(current == old || current == new, "round \(round): master.key is neither key")
            outcomes.insert(current == new ? "new" : "old")
            #expect(access(f.storeDir + "/master.key.new", F_OK) != 0, "round \(round): master.key.new left behind")
            // The other key does not open the store.
            let other = current == new ? f.root + "/old.key" : f.root + "/new.key"
            try f.expectOK(f.sh("cp \(f.storeDir)/master.key \(f.root)/cur.key && chmod 0600 \(f.storeDir)/master.key && "
                                + "cp \(other) \(f.storeDir)/master.key && chmod 0400 \(f.storeDir)/master.key"))
            let refused = try f.secretfs(["project", "create", "refused\(round)"])
            #expect(refused.status == 11, "round \(round): the other key opened the store")
            try f.expectOK(f.sh("chmod 0600 \(f.storeDir)/master.key && cp \(f.root)/cur.key \(f.storeDir)/master.key && chmod 0400 \(f.storeDir)/master.key"))
            #expect(try f.storedValue("A") == "survives-kill")
        }
        #expect(outcomes.count == 2, "kills landed only \(outcomes) of the rekey; widen the delays")
    }
}
