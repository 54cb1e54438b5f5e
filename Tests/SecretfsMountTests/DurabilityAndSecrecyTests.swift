import Foundation
import Glibc
import SecretfsFS
import SecretfsMountSupport
import SecretfsStore
import Testing

/// Remounts, wrong keys, plaintext never on disk or in logs, concurrent
/// writers, and a crash of the mount process in the middle of a burst.
@Suite(.serialized)
struct DurabilityAndSecrecyTests {
    @Test func valuesSurviveUnmountAndRemount() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount()
        try f.expectOK(f.sh("echo one > $MNT/ONE && printf two > $MNT/TWO && mv $MNT/TWO $MNT/THREE"))
        try f.unmount()
        #expect(try f.sh("ls $MNT").stdout.isEmpty, "nothing is left in the mountpoint directory")
        try f.mount()
        #expect(try f.expectOK(f.sh("ls $MNT")).stdout == "ONE\nTHREE\n")
        #expect(try f.storedValue("ONE") == "one")
        #expect(try f.storedValue("THREE") == "two")
        // Plain fusermount3 works too, and the mount process then exits.
        let pid = try #require(f.mountPID())
        try f.expectOK(f.sh("fusermount3 -u $MNT"))
        #expect(f.eventually { kill(pid, 0) != 0 })
        try f.mount()
        #expect(try f.storedValue("ONE") == "one")
    }

    @Test func aWrongMasterKeyIsRefused() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount()
        try f.expectOK(f.sh("echo v > $MNT/KEEP"))
        try f.unmount()
        let keyPath = f.storeDir + "/master.key"
        let original = try Data(contentsOf: URL(fileURLWithPath: keyPath))
        try f.expectOK(f.sh("chmod 600 \(keyPath) && head -c 32 /dev/urandom > \(keyPath) && chmod 400 \(keyPath)"))
        let o = try f.secretfs(["mount", f.project, f.mnt])
        #expect(o.status == 11)
        #expect(o.stderr.contains("secretfs: error: the master key does not open this store"), "\(o.stderr)")
        #expect(o.stderr.contains("hint: "))
        #expect(MountTable.fuseEntry(at: f.mnt) == nil)
        // The right key still opens it, with nothing lost.
        try f.expectOK(f.sh("chmod 600 \(keyPath)"))
        try original.write(to: URL(fileURLWithPath: keyPath))
        try f.expectOK(f.sh("chmod 400 \(keyPath)"))
        try f.mount()
        #expect(try f.storedValue("KEEP") == "v")
    }

    @Test(.enabled(if: !TestDatabase.isDefault, "reads the embedded store's SQLite file; the shared store's own check is SharedStoreTests")) func plaintextNeverReachesTheDatabaseWALOrLog() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount(["--debug"])
        let values = (0..<20).map { "PlainText-Marker-\($0)-\(UUID().uuidString)" }
        var script = ""
        for (i, v) in values.enumerated() {
            script += "echo '\(v)' > $MNT/S\(i); "
        }
        script += "printf 'Appended-Marker-XYZZY' >> $MNT/S0; mv $MNT/S1 $MNT/MOVED; rm $MNT/S2; "
        script += "head -c 70000 /dev/zero | tr '\\\\0' Q > $MNT/S3 || true; cat $MNT/S4 >/dev/null"
        try f.sh(script)
        #expect(try f.storedValue("S5") == values[5])
        // Look at every file of the store while the WAL still holds the
        // recent frames, then again after a checkpoint moved them.
        func scan() throws {
            let files = try FileManager.default.contentsOfDirectory(atPath: f.storeDir)
            #expect(Set(files).isSubset(of: ["secretfs.db", "secretfs.db-wal", "secretfs.db-shm", "master.key", "demo.mount-lock"]), "\(files)")
            for name in files {
                let data = try Data(contentsOf: URL(fileURLWithPath: f.storeDir + "/" + name))
                for v in values + ["Appended-Marker-XYZZY", "PlainText-Marker"] {
                    #expect(data.range(of: Data(v.utf8)) == nil, "\(v) found in \(name)")
                }
            }
            let log = f.logText
            #expect(log.contains("stored"), "the log is being written")
            #expect(!log.contains("PlainText-Marker") && !log.contains("Appended-Marker"), "a value reached the log")
        }
        #expect(FileManager.default.fileExists(atPath: f.storeDir + "/secretfs.db-wal"))
        try scan()
        try f.openVault().store.checkpoint()
        try scan()
        try f.unmount()
        try scan()
    }

    @Test func concurrentWritersNeverMixValues() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount()
        // 4 processes x 40 writes: to one shared name and to their own name.
        let script = """
            for p in 1 2 3 4; do
              ( for i in $(seq 1 40); do
                  v="writer-$p-write-$i-$(printf '%0200d' $i)"
                  printf '%s' "$v" > $MNT/SHARED
                  printf '%s' "$v" > $MNT/OWN_$p
                done ) &
            done
            wait
            """
        try f.expectOK(f.sh(script))
        let shared = try #require(try f.storedValue("SHARED"))
        #expect(shared.range(of: #"^writer-[1-4]-write-([0-9]+)-0*\1$"#, options: .regularExpression) != nil, "\(shared)")
        for p in 1...4 {
            let own = try f.storedValue("OWN_\(p)")
            #expect(own == "writer-\(p)-write-40-" + String(format: "%0200d", 40), "OWN_\(p) is the last whole write")
        }
        #expect(try f.storedNames() == ["OWN_1", "OWN_2", "OWN_3", "OWN_4", "SHARED"])
    }

    @Test func killingTheMountMidBurstLosesNoAcknowledgedWrite() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount()
        let pid = try #require(f.mountPID())
        // A writer records each value only after its close returned 0. The
        // shell's own printf cannot say that (a shell ignores close errors
        // of a redirection); coreutils' printf closes stdout itself and
        // fails when the close does.
        let burst = """
            ( i=0; while [ $i -lt 100000 ]; do
                i=$((i+1))
                if /usr/bin/printf 'value-%d' $i > $MNT/K$((i % 50)); then echo "$i" >> acked.txt; else break; fi
              done ) >/dev/null 2>&1 &
            sleep 0.7
            kill -9 \(pid)
            wait
            """
        try f.sh(burst)
        #expect(f.eventually { kill(pid, 0) != 0 })
        _ = try MountFixture.shell("fusermount3 -u -z '\(f.mnt)'")
        let acked = try String(contentsOfFile: f.root + "/acked.txt", encoding: .utf8)
            .split(separator: "\n").compactMap { Int($0) }
        #expect(acked.count > 5, "the burst ran (\(acked.count) acknowledged writes)")
        // The last acknowledged write of each name is what the store holds
        // (or a later one whose close did not get to return).
        try f.mount()
        let vault = try f.openVault()
        var lastAcked: [Int: Int] = [:]
        for i in acked { lastAcked[i % 50] = i }
        for (slot, i) in lastAcked {
            let stored = try #require(try f.storedValue("K\(slot)"), "K\(slot) missing")
            let n = Int(stored.dropFirst("value-".count)) ?? -1
            #expect(n >= i && n % 50 == slot, "K\(slot): stored \(stored), last acknowledged value-\(i)")
        }
        _ = vault
        let check = try MountFixture.shell("sqlite3 '\(f.storeDir)/secretfs.db' 'PRAGMA integrity_check'")
        #expect(check.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "ok" || check.status == 127, "\(check.stdout)\(check.stderr)")
    }

    @Test func killingTheMountDuringAConcurrentBurstLosesNoAcknowledgedWrite() throws {
        // Eight writers at once: their closes share syncs of the WAL (group
        // commit), and each close returns only once its own value is durable.
        let f = try MountFixture()
        defer { f.close() }
        try f.mount()
        let pid = try #require(f.mountPID())
        let burst = """
            for p in 1 2 3 4 5 6 7 8; do
              ( i=0; while [ $i -lt 100000 ]; do
                  i=$((i+1))
                  if /usr/bin/printf 'w%d-%d' $p $i > $MNT/W${p}_$((i % 10)); then echo "$p $i" >> acked.txt; else break; fi
                done ) >/dev/null 2>&1 &
            done
            sleep 0.8
            kill -9 \(pid)
            wait
            """
        try f.sh(burst)
        #expect(f.eventually { kill(pid, 0) != 0 })
        _ = try MountFixture.shell("fusermount3 -u -z '\(f.mnt)'")
        let acked = try String(contentsOfFile: f.root + "/acked.txt", encoding: .utf8).split(separator: "\n")
            .compactMap { line -> (Int, Int)? in
                let parts = line.split(separator: " ").compactMap { Int($0) }
                return parts.count == 2 ? (parts[0], parts[1]) : nil
            }
        #expect(Set(acked.map(\.0)).count == 8 && acked.count > 40, "all eight wrote (\(acked.count) acknowledged)")
        var lastAcked: [String: Int] = [:]
        for (p, i) in acked { lastAcked["W\(p)_\(i % 10)"] = i }
        for (name, i) in lastAcked {
            let stored = try #require(try f.storedValue(name), "\(name) missing")
            let n = Int(stored.split(separator: "-").last ?? "") ?? -1
            #expect(n >= i && n % 10 == i % 10, "\(name): stored \(stored), last acknowledged \(i)")
        }
    }

    @Test(.enabled(if: !TestDatabase.isDefault, "a mount of the embedded store"))
    func aMountOfAStoreDirectoryNeverLoadsLibpq() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount()
        try f.expectOK(f.sh("echo v > $MNT/X"))
        let pid = try #require(f.mountPID())
        // Read to the end (String(contentsOfFile:) stops at /proc's first short read).
        let maps = String(decoding: FileHandle(forReadingAtPath: "/proc/\(pid)/maps")?.readDataToEndOfFile() ?? Data(), as: UTF8.self)
        #expect(maps.contains("libsqlite3") && !maps.contains("libpq") && !maps.contains("libssl"),
                "libpq (and its TLS stack) is opened only for a PostgreSQL store: \(maps.split(separator: "\n").filter { $0.contains("libpq") || $0.contains("libssl") }.prefix(3))")
    }

    @Test func theMountProcessIsHardened() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount()
        let pid = try #require(f.mountPID())
        let limits = try String(contentsOfFile: "/proc/\(pid)/limits", encoding: .utf8)
        let core = limits.split(separator: "\n").first { $0.hasPrefix("Max core file size") }
        #expect(core?.split(separator: " ", omittingEmptySubsequences: true).dropFirst(4).first == "0", "\(core ?? "")")
        // Undumpable: a process of another uid may not look into it at all.
        let other = try f.sh("cat /proc/\(pid)/environ", asUID: 65534)
        #expect(other.status != 0)
        let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        #expect(status.contains("VmLck:"), "locked memory is accounted")
    }

    /// The mount process keeps none of the caller's descriptors: with one
    /// left open by the shell, `mount ... 3>&1 | cat` would never end (cat
    /// waits for every writer of its pipe) and a flock(1) lock would be held
    /// for the mount's life.
    @Test func aBackgroundMountKeepsNoneOfTheCallersDescriptors() throws {
        let f = try MountFixture()
        defer { f.close() }
        let o = try f.sh("""
            exec 7>"$PWD/held"
            timeout 20 sh -c '"$0" mount "$1" "$MNT" 3>&1 | cat' '\(MountFixture.binary)' '\(f.project)'
            """)
        #expect(o.status == 0 && o.stdout.contains("mounted project"), "\(o.status) \(o.stdout) \(o.stderr)")
        let pid = try #require(f.mountPID())
        let fds = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")
        let targets = fds.map { (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\($0)")) ?? "" }
        #expect(!targets.contains { $0.hasSuffix("/held") || $0.hasPrefix("pipe:") }, "\(targets)")
        try f.unmount()
    }
}

/// The CLI's errors: one voice, a hint, a fixed exit code, nothing stored lost.
@Suite(.serialized)
struct CommandLineErrorTests {
    @Test func storeAndProjectErrors() throws {
        let f = try MountFixture(initStore: false)
        defer { f.close() }
        let noStore = try f.secretfs(["project", "list"])
        #expect(noStore.status == 10)
        #expect(noStore.stderr.hasPrefix("secretfs: error: no store at \(f.storeDisplayName)\nhint: create one with 'secretfs init'"), "\(noStore.stderr)")
        try f.expectOK(f.secretfs(["init"]))
        let mode = try MountFixture.shell("stat -c %a '\(f.storeDir)/master.key' '\(f.storeDir)'")
        #expect(mode.stdout == "400\n700\n")
        let again = try f.secretfs(["init"])
        if f.database != nil {
            // A shared store: a second init with the key that opens it is how another host checks its key.
            #expect(again.status == 0 && again.stdout.contains("this host's key opens it"), "\(again.stdout) \(again.stderr)")
        } else {
            #expect(again.status == 10)
            #expect(again.stderr.contains("a store already exists"))
        }
        let missing = try f.secretfs(["mount", "nope", f.mnt])
        #expect(missing.status == 12)
        #expect(missing.stderr.contains("no project named 'nope'") && missing.stderr.contains("hint: "), "\(missing.stderr)")
        #expect(access(f.runtimeDir + "/nope.log", F_OK) != 0, "a mount that failed before logging leaves no log")
        let badName = try f.secretfs(["project", "create", "bad-name"])
        #expect(badName.status == 64)
        try f.expectOK(f.secretfs(["project", "create", "demo"]))
        #expect(try f.secretfs(["project", "create", "demo"]).status == 12)
        try f.mount()
        try f.expectOK(f.sh("echo v > $MNT/X"))
        let busy = try f.secretfs(["mount", "demo", f.mnt])
        #expect(busy.status == 13)
        #expect(busy.stderr.contains("already a mount point") || busy.stderr.contains("already mounted"), "\(busy.stderr)")
        try f.expectOK(f.sh("mkdir -p other && touch other/file"))
        try f.unmount()
        let notEmpty = try f.secretfs(["mount", "demo", f.root + "/other"])
        #expect(notEmpty.status == 13)
        #expect(notEmpty.stderr.contains("is not empty"))
        let writeback = try f.secretfs(["mount", "demo", f.mnt, "-o", "writeback_cache"])
        #expect(writeback.status == 64, "writeback caching stays off: the kernel would read write-only files back")
        #expect(writeback.stderr.contains("writeback_cache is refused"), "\(writeback.stderr)")
        let badSize = try f.secretfs(["mount", "demo", f.mnt, "-o", "max_size=lots"])
        #expect(badSize.status == 64 && badSize.stderr.contains("max_size"), "\(badSize.stderr)")
        let notMounted = try f.secretfs(["umount", f.mnt])
        #expect(notMounted.status == 13)
        let deleteFull = try f.secretfs(["project", "delete", "demo"])
        #expect(deleteFull.status == 12)
        #expect(deleteFull.stderr.contains("--force"))
        #expect(try f.storedValue("X") == "v", "a refused delete loses nothing")
        let status = try f.expectOK(f.secretfs(["status"]))
        #expect(status.stdout.contains("demo") && status.stdout.contains("(not mounted)"))
        try f.expectOK(f.secretfs(["project", "delete", "demo", "--force"]))
        #expect(try f.expectOK(f.secretfs(["project", "list"])).stdout.contains("no projects"))
    }

    @Test func passphraseStores() throws {
        let f = try MountFixture(initStore: false)
        defer { f.close() }
        // Passphrase files, like key files, must not be readable by others.
        try f.expectOK(f.sh("umask 077 && echo 'correct horse battery staple' > pass.txt && echo 'wrong' > wrong.txt"))
        try f.expectOK(f.secretfs(["init", "--passphrase-file", f.root + "/pass.txt"]))
        #expect(!FileManager.default.fileExists(atPath: f.storeDir + "/master.key"))
        try f.expectOK(f.secretfs(["project", "create", "demo", "--passphrase-file", f.root + "/pass.txt"]))
        let wrong = try f.secretfs(["mount", "demo", f.mnt, "--passphrase-file", f.root + "/wrong.txt"])
        #expect(wrong.status == 11)
        #expect(wrong.stderr.contains("does not open this store"))
        let none = try f.secretfs(["mount", "demo", f.mnt])
        #expect(none.status == 11)
        #expect(none.stderr.contains("passphrase"))
        try f.mount(["--passphrase-file", f.root + "/pass.txt"])
        try f.expectOK(f.sh("echo v > $MNT/P"))
        let v = try Store.open(at: f.storeLocation, keySource: .passphraseFile(f.root + "/pass.txt"))
            .openProject("demo").value("P")
        #expect(v?.withUnsafeBytes { Array($0) } == Array("v".utf8))
    }
}
