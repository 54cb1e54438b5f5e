import Foundation
import Glibc
import SecretfsMountSupport
import SecretfsStore
import SecretfsTestSupport
import Testing

/// One PostgreSQL store, two "hosts": two mounts of the same project on one
/// database, each with its own runtime directory, key file copy and
/// mountpoint (PLATFORM-NOTES: separate runtime directories and a socket or
/// TCP connection are the simple second host). The database is a fresh one
/// on the test cluster scripts/test starts; the fault tests stop and start
/// that cluster with scripts/lib/pg-ctl-test.
@Suite(.serialized)
struct SharedStoreTests {
    /// Host A (creates the store and the project) and host B (shares it).
    static func twoHosts() throws -> (MountFixture, MountFixture) {
        let a = try MountFixture(shared: true)
        let b = try MountFixture(sharing: a)
        try a.mount()
        try b.mount()
        return (a, b)
    }

    /// Up to `seconds`, polling; the contract's bound for a change to show on another host is 1 s.
    static func within(_ seconds: Double, _ condition: () throws -> Bool) rethrows -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        repeat {
            if try condition() { return true }
            usleep(5_000)
        } while Date() < deadline
        return try condition()
    }

    static func listing(_ f: MountFixture) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: f.mnt)) ?? []).sorted()
    }

    /// Runs scripts/lib/pg-ctl-test (stop-immediate, stop, start).
    static func cluster(_ action: String) throws {
        let ctl = ProcessInfo.processInfo.environment["SECRETFS_TEST_PG_CTL"] ?? "scripts/lib/pg-ctl-test"
        try MountFixture.shell("'\(ctl)' \(action)").requireSuccess()
    }

    static func resolve(_ f: MountFixture, _ expression: String) throws -> ProcessOutput {
        try f.secretfs(["resolve", "--project", f.project, "--format", "expr", "-"], stdin: expression)
    }

    // MARK: Two hosts

    @Test func aWriteOnOneHostShowsOnTheOtherWithinASecond() throws {
        let (a, b) = try Self.twoHosts()
        defer { b.close(); a.close() }
        try a.expectOK(a.sh("/usr/bin/printf 'token-from-A' > $MNT/API_TOKEN"))
        #expect(Self.within(1) { Self.listing(b).contains("API_TOKEN") }, "B's listing: \(Self.listing(b))")
        let o = try Self.resolve(b, "secrets.API_TOKEN")
        #expect(o.status == 0 && o.stdout == "\"token-from-A\"", "\(o.stdout) \(o.stderr)")
        // An overwrite and a delete on A: B's resolver and listing follow.
        try a.expectOK(a.sh("/usr/bin/printf 'second' > $MNT/API_TOKEN && /usr/bin/printf x > $MNT/OTHER"))
        #expect(Self.within(1) { (try? Self.resolve(b, "secrets.API_TOKEN").stdout) == "\"second\"" })
        try a.expectOK(a.sh("rm $MNT/OTHER"))
        #expect(Self.within(1) { !Self.listing(b).contains("OTHER") }, "B's listing: \(Self.listing(b))")
        // And the other way round.
        try b.expectOK(b.sh("/usr/bin/printf 'from-B' > $MNT/B_NAME"))
        #expect(Self.within(1) { Self.listing(a).contains("B_NAME") })
    }

    @Test func theOtherHostsResolverDaemonDropsItsCachedValue() throws {
        let (a, b) = try Self.twoHosts()
        defer { b.close(); a.close() }
        try a.expectOK(a.sh("/usr/bin/printf 'first-value' > $MNT/KEY"))
        #expect(Self.within(1) { Self.listing(b).contains("KEY") })
        let sock = b.root + "/resolver.sock"
        let script = """
            "$SECRETFS" resolver --listen \(sock) > resolver.log 2>&1 & d=$!
            i=0; while [ ! -S \(sock) ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
            echo 'secrets.KEY' | "$SECRETFS" resolve --project demo --resolver \(sock) --format expr - > before.txt
            /usr/bin/printf 'changed-on-A' > \(a.mnt)/KEY
            i=0; while [ $i -lt 100 ]; do
              echo 'secrets.KEY' | "$SECRETFS" resolve --project demo --resolver \(sock) --format expr - > after.txt
              grep -q changed-on-A after.txt && break
              sleep 0.01; i=$((i+1))
            done
            echo "tries=$i"
            kill $d; wait $d
            """
        var env = b.environment
        env["SECRETFS"] = MountFixture.binary
        let o = try MountFixture.run("/bin/sh", ["-c", "cd '\(b.root)' || exit 1\n" + script], environment: env, stdin: nil)
        let read = { (n: String) in (try? String(contentsOfFile: b.root + "/" + n, encoding: .utf8)) ?? "" }
        let before = read("before.txt"), after = read("after.txt"), log = read("resolver.log")
        #expect(before.contains("\"first-value\""), "\(before) \(log)")
        #expect(after.contains("\"changed-on-A\""), "\(o.stdout) \(log)")
    }

    @Test func concurrentWritersOnTwoHostsEndWithWholeValuesAndLoseNoAcknowledgedWrite() throws {
        let (a, b) = try Self.twoHosts()
        defer { b.close(); a.close() }
        // Each host: 30 writes to one shared name and to names of its own,
        // recording a write only after its close returned 0.
        func burst(_ f: MountFixture, _ host: String) -> String {
            """
            ( for i in $(seq 1 30); do
                v="\(host)-$i-$(printf '%0300d' $i)"
                /usr/bin/printf '%s' "$v" > \(f.mnt)/SHARED && echo "SHARED $v" >> \(f.root)/acked.txt
                /usr/bin/printf '%s' "$v" > \(f.mnt)/\(host)_$((i % 5)) && echo "\(host)_$((i % 5)) $v" >> \(f.root)/acked.txt
              done ) &
            """
        }
        try a.expectOK(a.sh(burst(a, "A") + "\n" + burst(b, "B") + "\nwait"))
        var lastAcked: [String: String] = [:]
        var sharedValues = Set<String>()
        for f in [a, b] {
            let lines = try String(contentsOfFile: f.root + "/acked.txt", encoding: .utf8).split(separator: "\n")
            #expect(lines.count == 60, "every close returned 0 on \(f.root)")
            for l in lines {
                let parts = l.split(separator: " ", maxSplits: 1).map(String.init)
                if parts[0] == "SHARED" { sharedValues.insert(parts[1]) } else { lastAcked[parts[0]] = parts[1] }
            }
        }
        let shared = try #require(try a.storedValue("SHARED"))
        #expect(sharedValues.contains(shared), "SHARED is one whole acknowledged write: \(shared.prefix(40))")
        for (name, value) in lastAcked {
            #expect(try a.storedValue(name) == value, "\(name) holds its last acknowledged write")
        }
        // Versions stay strictly increasing and unique across both hosts' writes.
        let history = try a.expectOK(a.secretfs(["history", "demo", "SHARED", "--json"])).stdout
        let versions = history.matches(of: /"version":\s*([0-9]+)/).compactMap { Int($0.1) }
        #expect(versions.count == Set(versions).count && versions == versions.sorted(), "\(versions)")
        #expect(Self.within(1) { Self.listing(b) == Self.listing(a) })
    }

    @Test func aSecondHostsInitChecksItsKey() throws {
        let a = try MountFixture(shared: true)
        defer { a.close() }
        let b = try MountFixture(sharing: a)
        defer { b.close() }
        let same = try b.expectOK(b.secretfs(["init"]))
        #expect(same.stdout.contains("already holds a store, and this host's key opens it"), "\(same.stdout)")
        // Another key: refused, nothing touched.
        try MountFixture.shell("rm -f '\(b.storeDir)/master.key' && head -c 32 /dev/urandom > '\(b.storeDir)/master.key' && chmod 0400 '\(b.storeDir)/master.key'")
            .requireSuccess()
        let other = try b.secretfs(["init"])
        #expect(other.status == 11 && other.stderr.contains("already holds a secretfs store, and this host's master key does not open it (tried key file \(b.storeDir)/master.key)")
                && other.stderr.contains("hint: copy the master key file from a host whose key opens it"), "\(other.status) \(other.stderr)")
        // No key at all: told to copy it.
        try MountFixture.shell("rm -f '\(b.storeDir)/master.key'").requireSuccess()
        let none = try b.secretfs(["init"])
        #expect(none.status == 11 && none.stderr.contains("copy the master key file"), "\(none.status) \(none.stderr)")
        #expect(access(b.storeDir + "/master.key", F_OK) != 0, "init on an existing store makes no key file")
        #expect(try a.storedNames() == [])
    }

    @Test func initOfANewDatabaseWithAKeyAlreadyThereSaysItIsShared() throws {
        // The key file of one store, given to init of a new database: the
        // two stores could then be swapped by whoever runs both databases.
        let a = try MountFixture(shared: true)
        defer { a.close() }
        let other = try TestDatabase.create()
        defer { other.drop() }
        var env = ProcessInfo.processInfo.environment
        env["SECRETFS_KEY_FILE"] = a.storeDir + "/master.key"
        let o = try Processes.run(MountFixture.binary, ["init", "--store", other.conninfo], environment: env)
        #expect(o.status == 0 && o.stdout.contains("is now this store's key too") && o.stdout.contains("--key-file NEW"), "\(o.stdout) \(o.stderr)")
    }

    @Test func aConnectionStringWithAPasswordIsRefusedWithoutEchoingIt() throws {
        let a = try MountFixture(initStore: false)
        defer { a.close() }
        let o = try a.secretfs(["ls", "demo", "--store", "postgresql://u:hunter2-secret@127.0.0.1/db"])
        #expect(o.status == 64 && o.stderr.contains("~/.pgpass") && !o.stderr.contains("hunter2"), "\(o.stderr)")
    }

    @Test func rotateKeyWhileBothHostsWrite() throws {
        let (a, b) = try Self.twoHosts()
        defer { b.close(); a.close() }
        for i in 0..<50 { try a.expectOK(a.sh("/usr/bin/printf 'seed-\(i)' > $MNT/S\(i)")) }
        // Writers on both hosts while A's CLI rotates the data key; each host's
        // mount follows the new key through its link (it never has the master key).
        let script = """
            ( for i in $(seq 1 40); do /usr/bin/printf "a-$i" > \(a.mnt)/WA || echo fail; done ) > wa.out &
            ( for i in $(seq 1 40); do /usr/bin/printf "b-$i" > \(b.mnt)/WB || echo fail; done ) > wb.out &
            "$SECRETFS" project rotate-key demo
            wait
            cat wa.out wb.out
            """
        var env = a.environment
        env["SECRETFS"] = MountFixture.binary
        let o = try MountFixture.run("/bin/sh", ["-c", "cd '\(a.root)' || exit 1\n" + script], environment: env, stdin: nil)
        #expect(o.status == 0 && o.stdout.contains("rotated the data key of demo") && !o.stdout.contains("fail"), "\(o.stdout) \(o.stderr)")
        #expect(try a.storedValue("WA") == "a-40" && a.storedValue("WB") == "b-40" && a.storedValue("S7") == "seed-7")
        // Both mounts still write and serve values under the new key.
        try b.expectOK(b.sh("/usr/bin/printf after-rotation > $MNT/LATE"))
        #expect(Self.within(1) { (try? Self.resolve(a, "secrets.LATE").stdout) == "\"after-rotation\"" })
        #expect(try Self.resolve(b, "secrets.S3").stdout == "\"seed-3\"")
    }

    @Test func theChangeLogNamesWhatChangedSinceASequence() throws {
        let f = try MountFixture(shared: true)
        defer { f.close() }
        // Another process's view (its own Store): what this one writes is
        // the change of someone else.
        let vault = try f.openVault()
        let writer = try f.openVault()
        func put(_ name: String, _ value: String) throws {
            try Array(value.utf8).withUnsafeBytes { _ = try writer.put(name, bytes: $0, actor: .current) }
        }
        let start = try vault.storeDataVersion()
        try put("ONE", "1")
        try put("TWO", "2")
        let mid = try vault.storeDataVersion()
        #expect(mid > start)
        _ = try writer.delete("ONE", actor: .current)
        try put("TWO", "2b")
        #expect(try vault.changedNames(since: start) == ["ONE", "TWO"])
        #expect(try vault.changedNames(since: mid) == ["ONE", "TWO"])
        #expect(try vault.changedNames(since: try vault.storeDataVersion()) == [])
        // A process's own changes are not news to it: its mount applied them as it made them.
        let before = try vault.storeDataVersion()
        try Array("own".utf8).withUnsafeBytes { _ = try vault.put("OWN", bytes: $0, actor: .current) }
        #expect(try vault.changedNames(since: before) == [])
        #expect(try writer.changedNames(since: before) == ["OWN"])
        // A change to the whole project (a key rotation) cannot be listed by name: re-read everything.
        _ = try f.expectOK(f.secretfs(["project", "rotate-key", "demo"]))
        #expect(try vault.changedNames(since: mid) == nil)
        // The log holds names, sequences and times only.
        let db = try #require(f.database)
        #expect(try db.sql("SELECT string_agg(column_name, ',' ORDER BY ordinal_position) FROM information_schema.columns WHERE table_name = 'change_log'")
                    .trimmingCharacters(in: .whitespacesAndNewlines) == "seq,project_id,name,at")
    }

    /// A write transaction's statements are pipelined (Postgres.swift): one
    /// that fails unanswered must still fail the whole transaction, roll back
    /// what went before it, and say which statement it was; and a transaction
    /// longer than the pipeline's depth must go through whole.
    @Test func aStatementThatFailsInThePipelineFailsTheWholeWrite() throws {
        let f = try MountFixture(shared: true)
        defer { f.close() }
        let db = try #require(f.database)
        // 300 names in one transaction: thousands of statements, far past
        // the 64 sent before their answers are read.
        var env = ""
        for i in 0..<300 { env += "BULK_\(i)=bulk-value-\(i)\n" }
        let bulk = f.storeDir + "/../bulk.env"
        try env.write(toFile: bulk, atomically: true, encoding: .utf8)
        try f.expectOK(f.secretfs(["import", "demo", bulk]))
        #expect(try f.storedNames().count == 300)
        #expect(try f.storedValue("BULK_299") == "bulk-value-299")
        // A role that may do everything but write the audit trail: the audit
        // row is the import's last statement, sent after every value's.
        let role = db.name + "_noaudit"
        _ = try db.sql("CREATE ROLE \(role) LOGIN; GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO \(role); REVOKE INSERT ON audit FROM \(role)")
        defer { _ = try? db.sql("DROP OWNED BY \(role); DROP ROLE \(role)") }
        var again = ""
        for i in 0..<300 { again += "BULK_\(i)=changed-\(i)\n" }
        again += "NEW_ONE=new\n"
        try again.write(toFile: bulk, atomically: true, encoding: .utf8)
        let limited = db.conninfo.replacingOccurrences(of: "user=postgres", with: "user=\(role)")
        let o = try f.secretfs(["import", "demo", bulk, "--store", limited])
        #expect(o.status == 10 && o.stderr.contains("writing the audit trail") && o.stderr.contains("42501"),
                "\(o.status) \(o.stderr)")
        // Nothing of it stayed: not the new name, not one changed value, no version.
        #expect(try f.storedNames().count == 300)
        #expect(try f.storedValue("NEW_ONE") == nil)
        #expect(try f.storedValue("BULK_0") == "bulk-value-0" && f.storedValue("BULK_299") == "bulk-value-299")
        #expect(try db.sql("SELECT count(*) FROM versions").trimmingCharacters(in: .whitespacesAndNewlines) == "0")
        // And the store takes the next write as usual.
        try f.mount()
        try f.expectOK(f.sh("/usr/bin/printf after > $MNT/AFTER"))
        #expect(try f.storedValue("AFTER") == "after")
    }

    @Test func doctorChecksTheDatabaseAndHowItIsReached() throws {
        let f = try MountFixture(shared: true)
        defer { f.close() }
        let local = try f.secretfs(["doctor"])
        #expect(local.stdout.contains("ok    database postgresql://") && local.stdout.contains("ok    database connection: a local Unix socket")
                && local.stdout.contains("ok    key \(f.storeDir)/master.key"), "\(local.stdout)")
        // Over TCP without TLS: a warning with the fix.
        let db = try #require(f.database)
        if let server = TestDatabase.server {
            let tcp = try f.secretfs(["doctor", "--store", "postgresql://postgres@127.0.0.1:\(server.port)/\(db.name)?sslmode=disable"])
            #expect(tcp.stdout.contains("warn  database connection: TCP without TLS") && tcp.stdout.contains("sslmode=verify-full"), "\(tcp.stdout)")
        }
        // Unreachable: a FAIL line with a hint, exit 1.
        let down = try f.secretfs(["doctor", "--store", "postgresql://postgres@127.0.0.1:1/\(db.name)"])
        #expect(down.status == 1 && down.stdout.contains("FAIL  database: store unavailable: cannot reach postgresql://postgres@127.0.0.1:1/"),
                "\(down.status) \(down.stdout)")
    }

    @Test func anEmptyValueAskedForLastIsServed() throws {
        // The values of a GET share one buffer; an empty one at its end is a
        // slice of nothing at the guard page (found by review: the mount crashed).
        let (a, b) = try Self.twoHosts()
        defer { b.close(); a.close() }
        try a.expectOK(a.sh("/usr/bin/printf full > $MNT/FULL && : > $MNT/EMPTY"))
        #expect(Self.within(1) { Self.listing(b).contains("EMPTY") })
        for f in [a, b] {
            let o = try Self.resolve(f, "secrets.FULL + secrets.EMPTY")
            #expect(o.status == 0 && o.stdout == "\"full\" + \"\"", "\(o.stdout) \(o.stderr)")
        }
        try a.expectOK(a.sh("/usr/bin/printf again > $MNT/AFTER"))
        #expect(try a.storedValue("AFTER") == "again", "the mount is still up")
    }

    @Test func aWriterWhoseLockWaitFailsLeavesTheMountWorking() throws {
        let a = try MountFixture(shared: true)
        defer { a.close() }
        let db = try #require(a.database)
        _ = try db.sql("ALTER DATABASE \(db.name) SET lock_timeout = '200ms'")
        try a.mount()
        // Someone holds the store's write lock for two seconds.
        let hold = "psql '\(db.conninfo)' -qXAt -c 'BEGIN' -c 'SELECT pg_advisory_xact_lock(\(0x7365_6372_6574_6673))' -c 'SELECT pg_sleep(2)' -c 'COMMIT' >/dev/null &"
        let o = try a.sh(hold + " sleep 0.5; /usr/bin/printf v > $MNT/DURING; echo during=$?; wait")
        #expect(o.stdout.contains("during=1"), "the close failed with the lock wait: \(o.stdout) \(o.stderr)")
        // The session was rolled back, not left in an aborted transaction.
        try a.expectOK(a.sh("/usr/bin/printf after > $MNT/AFTER"))
        #expect(try a.storedValue("AFTER") == "after")
        #expect(try a.storedValue("DURING") == nil)
    }

    @Test func namesNoSecretfsWouldStoreNeverShow() throws {
        let (a, b) = try Self.twoHosts()
        defer { b.close(); a.close() }
        try a.expectOK(a.sh("/usr/bin/printf x > $MNT/GOOD"))
        let db = try #require(a.database)
        // Rows written into the database by hand, announced in the change log.
        for bad in ["a/b", ".staged", "tab\tname"] {
            _ = try db.sql("""
                INSERT INTO secrets(project_id, name, ciphertext, nonce, version, created_at, updated_at, updated_by, action, key_generation) \
                SELECT id, E'\(bad.replacingOccurrences(of: "\t", with: "\\\\t"))', '\\\\x00', '\\\\x00', 99, 0, 0, 0, 'set', 0 FROM projects WHERE name = 'demo'
                """)
            _ = try db.sql("INSERT INTO change_log(project_id, name, at) SELECT id, E'\(bad.replacingOccurrences(of: "\t", with: "\\\\t"))', 0 FROM projects WHERE name = 'demo'")
        }
        try a.expectOK(a.sh("/usr/bin/printf y > $MNT/LATER"))
        #expect(Self.within(2) { Self.listing(b).contains("LATER") })
        #expect(Self.listing(b) == ["GOOD", "LATER"] && Self.listing(a) == ["GOOD", "LATER"], "\(Self.listing(b))")
        let o = try Self.resolve(b, "secrets.GOOD")
        #expect(o.status == 0 && o.stdout == "\"x\"", "\(o.stderr)")
    }

    // MARK: What the database sees

    @Test func aDumpOfTheDatabaseHoldsNoValue() throws {
        let a = try MountFixture(shared: true)
        defer { a.close() }
        try a.mount()
        let values = (1...5).map { "plaintext-needle-\($0)-\(UUID().uuidString)" }
        for (i, v) in values.enumerated() { try a.expectOK(a.sh("/usr/bin/printf '%s' '\(v)' > $MNT/NAME_\(i)")) }
        // Overwritten (a kept version), deleted (the trash), imported.
        try a.expectOK(a.sh("/usr/bin/printf 'next' > $MNT/NAME_0 && rm $MNT/NAME_1"))
        try a.expectOK(a.secretfs(["import", "demo", "-"], stdin: "IMPORTED=\(values[4])-imported\n"))
        let db = try #require(a.database)
        let dump = try MountFixture.shell("pg_dump '\(db.conninfo)'").requireSuccess().stdout
        #expect(dump.contains("NAME_0") && dump.contains("IMPORTED"), "the dump has the names (the grep can find things)")
        for v in values + ["\(values[4])-imported"] {
            #expect(!dump.contains(v), "a value is in the dump")
            #expect(!dump.contains(Data(v.utf8).base64EncodedString()), "a value's base64 is in the dump")
            #expect(!dump.contains(Data(v.utf8).map { String(format: "%02x", $0) }.joined()), "a value's hex is in the dump")
        }
    }

    // MARK: Faults

    @Test(.enabled(if: ProcessInfo.processInfo.environment["SECRETFS_TEST_PG_CTL"] != nil, "stops and starts the server: needs the private cluster of scripts/test")) func aCrashOfTheServerDuringABurstLosesNoAcknowledgedWrite() throws {
        let (a, b) = try Self.twoHosts()
        defer { b.close(); a.close() }
        let burst = """
            ( i=0; while [ $i -lt 400 ]; do
                i=$((i+1))
                if /usr/bin/printf 'value-%d' $i > $MNT/K$((i % 40)) 2>/dev/null; then echo "$i" >> acked.txt; else echo "$i" >> failed.txt; fi
              done ) &
            w=$!
            sleep 0.5
            '\(ProcessInfo.processInfo.environment["SECRETFS_TEST_PG_CTL"] ?? "scripts/lib/pg-ctl-test")' stop-immediate
            sleep 1
            '\(ProcessInfo.processInfo.environment["SECRETFS_TEST_PG_CTL"] ?? "scripts/lib/pg-ctl-test")' start
            wait $w
            """
        try a.expectOK(a.sh(burst))
        let read = { (n: String) in
            ((try? String(contentsOfFile: a.root + "/" + n, encoding: .utf8)) ?? "").split(separator: "\n").compactMap { Int($0) }
        }
        let acked = read("acked.txt"), failed = read("failed.txt")
        #expect(acked.count > 5, "the burst ran (\(acked.count) acknowledged)")
        #expect(!failed.isEmpty, "some closes met the stopped server and failed (\(failed.count))")
        var lastAcked: [Int: Int] = [:]
        for i in acked { lastAcked[i % 40] = i }
        for (slot, i) in lastAcked {
            let stored = try #require(try a.storedValue("K\(slot)"))
            let n = Int(stored.dropFirst("value-".count)) ?? -1
            // The last acknowledged value, or a later write whose close failed
            // after its commit (the server can crash between the two).
            #expect(n == i || (n > i && failed.contains(n)), "K\(slot): stored \(stored), last acknowledged value-\(i)")
        }
        // Both mounts recovered by themselves: a new write shows on the other host.
        try a.expectOK(a.sh("/usr/bin/printf after > $MNT/AFTER_CRASH"))
        #expect(Self.within(2) { Self.listing(b).contains("AFTER_CRASH") }, "\(Self.listing(b))")
    }

    @Test(.enabled(if: ProcessInfo.processInfo.environment["SECRETFS_TEST_PG_CTL"] != nil, "stops and starts the server: needs the private cluster of scripts/test")) func tenSecondsWithoutTheDatabase() throws {
        let (a, b) = try Self.twoHosts()
        defer { b.close(); a.close() }
        try a.expectOK(a.sh("/usr/bin/printf old > $MNT/KEEP"))
        #expect(Self.within(1) { Self.listing(b).contains("KEEP") })
        try Self.cluster("stop")
        var restarted = false
        defer { if !restarted { try? Self.cluster("start") } }
        // A close fails with EIO and the old value stays; listings and stat still answer.
        let w = try a.sh("/usr/bin/printf new > $MNT/KEEP")
        #expect(w.status != 0 && w.stderr.contains("Input/output error"), "\(w.status) \(w.stderr)")
        #expect(Self.listing(a) == ["KEEP"] && Self.listing(b) == ["KEEP"])
        try a.expectOK(a.sh("stat $MNT/KEEP >/dev/null"))
        // A GET over B's socket: a clear error frame, not a hang or a crash.
        let r = try Self.resolve(b, "secrets.KEEP")
        #expect(r.status != 0 && r.stderr.contains("store unavailable"), "\(r.status) \(r.stderr)")
        sleep(10)
        try Self.cluster("start")
        restarted = true
        // Writes after it comes back are seen on both hosts.
        try a.expectOK(a.sh("/usr/bin/printf back > $MNT/AFTER"))
        #expect(Self.within(2) { Self.listing(b).contains("AFTER") }, "\(Self.listing(b))")
        #expect(try a.storedValue("KEEP") == "old")
        #expect(Self.within(2) { (try? Self.resolve(b, "secrets.AFTER").stdout) == "\"back\"" })
        // The outage is logged once, and once again on recovery.
        let log = b.logText
        #expect(log.components(separatedBy: "store unavailable: cannot follow").count - 1 == 1, "\(log)")
        #expect(log.components(separatedBy: "store available again").count - 1 == 1, "\(log)")
    }

    @Test func aLostListenConnectionStillSeesTheNextChange() throws {
        let (a, b) = try Self.twoHosts()
        defer { b.close(); a.close() }
        let db = try #require(a.database)
        let killed = try db.sql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'secretfs-listen' AND datname = current_database()")
        #expect(Int(killed.trimmingCharacters(in: .whitespacesAndNewlines)) == 2, "both mounts' LISTEN connections: \(killed)")
        try a.expectOK(a.sh("/usr/bin/printf v > $MNT/AFTER_KILL"))
        #expect(Self.within(1) { Self.listing(b).contains("AFTER_KILL") }, "\(Self.listing(b))")
        // And they listen again.
        #expect(Self.within(5) {
            (try? db.sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'secretfs-listen' AND datname = current_database()"))?
                .trimmingCharacters(in: .whitespacesAndNewlines) == "2"
        })
    }

    // MARK: store copy

    @Test func storeCopyToPostgreSQLAndBackKeepsNamesVersionsValuesAndAudit() throws {
        let local = try MountFixture(shared: false)
        defer { local.close() }
        try local.mount()
        try local.expectOK(local.sh("""
            /usr/bin/printf one > $MNT/A && /usr/bin/printf two > $MNT/A && /usr/bin/printf b > $MNT/B && \
            /usr/bin/printf c > $MNT/C && rm $MNT/C
            """))
        try local.unmount()
        let db = try TestDatabase.create()
        defer { db.drop() }
        let keyFile = local.root + "/host-key/master.key"
        let up = try local.secretfs(["store", "copy", "--from", local.storeDir, "--to", db.conninfo, "--key-file", keyFile])
        #expect(up.status == 0 && up.stdout.contains("verified"), "\(up.stdout) \(up.stderr)")
        let back = local.root + "/back"
        let down = try local.secretfs(["store", "copy", "--from", db.conninfo, "--to", back, "--key-file", keyFile])
        #expect(down.status == 0, "\(down.stdout) \(down.stderr)")

        let stores = try [local.storeLocation,
                          StoreLocation(postgres: PostgresTarget(db.conninfo), keyFile: keyFile),
                          StoreLocation(directory: back)].map { try Store.open(at: $0, keySource: .keyFile) }
        func snapshot(_ s: Store) throws -> String {
            let v = try s.openProject("demo")
            var out = try v.list().map { "\($0.name) v\($0.version) " + String(decoding: try v.value($0.name)!.withUnsafeBytes { Array($0) }, as: UTF8.self) }
            out += try s.history(project: "demo", name: "A").map { "A history v\($0.version) \($0.action)" }
            out += try s.trash(project: "demo").map { "trash \($0.name)" }
            out += try s.auditEvents(project: "demo").map { "\($0.id) \($0.at.nanoseconds) \($0.uid) \($0.action) \($0.names ?? "")" }
            return out.joined(separator: "\n")
        }
        let original = try snapshot(stores[0])
        #expect(original.contains("A v2 two") && original.contains("trash C"))
        #expect(try snapshot(stores[1]) == original)
        #expect(try snapshot(stores[2]) == original)
        // The copy keeps working: a new project and audit rows number after the copied ones.
        try stores[1].createProject("second")
        #expect(try stores[1].listProjects().map(\.name) == ["demo", "second"])
        // A target that holds a store is refused.
        let again = try local.secretfs(["store", "copy", "--from", local.storeDir, "--to", db.conninfo, "--key-file", keyFile])
        #expect(again.status == 10 && again.stderr.contains("already exists"), "\(again.stderr)")
    }
}
