import Foundation
import Glibc
import SecretfsFS
import SecretfsMountSupport
import Testing

/// DESIGN.md "Filesystem contract", bullet by bullet, driven by real shell
/// tools against a real mount, with the stored value read back in process.
@Suite(.serialized)
struct FilesystemContractTests {
    @Test func listingShowsNamesWithSizeZeroWriteOnlyModeAndUpdateTime() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount()
        try f.expectOK(f.sh("echo one > $MNT/API_TOKEN && printf two > $MNT/OTHER_KEY"))
        let ls = try f.expectOK(f.sh("ls $MNT"))
        #expect(ls.stdout == "API_TOKEN\nOTHER_KEY\n")
        let long = try f.expectOK(f.sh("ls -l $MNT"))
        let lines = long.stdout.split(separator: "\n").filter { !$0.hasPrefix("total") }
        #expect(lines.count == 2)
        for line in lines {
            #expect(line.hasPrefix("--w------- 1 root root 0 "), "\(line)")
        }
        let stat = try f.expectOK(f.sh("stat -c '%s %A %Y' $MNT/API_TOKEN"))
        let parts = stat.stdout.split(separator: " ")
        #expect(parts[0] == "0")
        #expect(parts[1] == "--w-------")
        let mtime = Int(parts[2].trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
        #expect(abs(mtime - Int(time(nil))) < 60)
        // The update time moves when the value changes.
        try f.expectOK(f.sh("touch -d '2001-01-01' $MNT/API_TOKEN || true"))
        sleep(1)
        try f.expectOK(f.sh("echo again > $MNT/API_TOKEN"))
        let after = try f.expectOK(f.sh("stat -c '%Y' $MNT/API_TOKEN"))
        #expect(Int(after.stdout.trimmingCharacters(in: .whitespacesAndNewlines))! >= mtime + 1)
    }

    @Test func catPrintsNothingAndSucceeds() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount()
        try f.expectOK(f.sh("echo s3cr3t-value > $MNT/TOKEN"))
        let cat = try f.sh("cat $MNT/TOKEN")
        #expect(cat.status == 0)
        #expect(cat.stdout.isEmpty)
        let dd = try f.sh("dd if=$MNT/TOKEN bs=1 count=100 2>/dev/null | wc -c")
        #expect(dd.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "0")
        #expect(try f.storedValue("TOKEN") == "s3cr3t-value")
    }

    @Test func everyWriterCreatesOrReplacesTheValue() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount()
        try f.expectOK(f.sh("""
            set -e
            echo via-echo > $MNT/ECHO
            printf 'via-printf\\n\\n' > $MNT/PRINTF
            printf 'exact' > $MNT/EXACT
            printf 'from-a-file\\n' > src.txt && cp src.txt $MNT/COPIED
            echo via-tee | tee $MNT/TEED >/dev/null
            printf 'via-dd' | dd of=$MNT/DD 2>/dev/null
            echo first > $MNT/REPLACED && echo second > $MNT/REPLACED
            echo longer-old-value > $MNT/SHORTER && echo new > $MNT/SHORTER
            printf 'old-value-xyz' > $MNT/DD_OVER && printf 'ab' | dd of=$MNT/DD_OVER 2>/dev/null
            """))
        #expect(try f.storedValue("ECHO") == "via-echo")
        #expect(try f.storedValue("PRINTF") == "via-printf\n", "only one trailing newline is dropped")
        #expect(try f.storedValue("EXACT") == "exact")
        #expect(try f.storedValue("COPIED") == "from-a-file")
        #expect(try f.storedValue("TEED") == "via-tee")
        #expect(try f.storedValue("DD") == "via-dd")
        #expect(try f.storedValue("REPLACED") == "second")
        #expect(try f.storedValue("SHORTER") == "new", "no stale bytes survive O_TRUNC")
        #expect(try f.storedValue("DD_OVER") == "ab", "dd truncates (ftruncate) unless conv=notrunc")
        try f.expectOK(f.sh("printf 'XY' | dd of=$MNT/DD_OVER conv=notrunc 2>/dev/null"))
        #expect(try f.storedValue("DD_OVER") == "XY")
        try f.expectOK(f.sh("printf 'abcdef' > $MNT/SEEK && printf 'Z' | dd of=$MNT/SEEK bs=1 seek=2 conv=notrunc 2>/dev/null"))
        #expect(try f.storedValue("SEEK") == "abZdef")
    }

    @Test func binaryValuesAreStoredExactly() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount()
        try f.expectOK(f.sh("head -c 3000 /dev/urandom > blob.bin && cp blob.bin $MNT/BLOB && printf '\\000\\001\\377' > $MNT/NULS"))
        let blob = try Data(contentsOf: URL(fileURLWithPath: f.root + "/blob.bin"))
        var expected = Array(blob)
        if expected.last == 0x0A { expected.removeLast() }
        #expect(try f.storedBytes("BLOB") == expected)
        #expect(try f.storedBytes("NULS") == [0, 1, 255])
    }

    @Test func appendAddsToTheStoredValue() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount()
        try f.expectOK(f.sh("printf 'abc' > $MNT/APP && printf 'def' >> $MNT/APP && echo ghi >> $MNT/APP"))
        #expect(try f.storedValue("APP") == "abcdefghi")
        try f.expectOK(f.sh("printf 'new' >> $MNT/FRESH"))
        #expect(try f.storedValue("FRESH") == "new")
    }

    @Test func removeAndRename() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount()
        try f.expectOK(f.sh("echo a > $MNT/A && echo b > $MNT/B && echo c > $MNT/C"))
        try f.expectOK(f.sh("rm $MNT/C"))
        #expect(try f.storedValue("C") == nil)
        try f.expectOK(f.sh("mv $MNT/A $MNT/RENAMED"))
        #expect(try f.storedValue("A") == nil)
        #expect(try f.storedValue("RENAMED") == "a")
        try f.expectOK(f.sh("mv $MNT/RENAMED $MNT/B"))
        #expect(try f.storedNames() == ["B"])
        #expect(try f.storedValue("B") == "a", "mv onto an existing name replaces it")
        #expect(try f.expectOK(f.sh("ls $MNT")).stdout == "B\n")
        let missing = try f.sh("rm $MNT/NOPE")
        #expect(missing.status != 0)
        #expect(missing.stderr.contains("No such file or directory"))
        let noClobber = try f.sh("echo z > $MNT/Z && mv -n $MNT/Z $MNT/B; echo rc=$?")
        _ = noClobber
        #expect(try f.storedValue("B") == "a", "mv -n never replaces")
        let badTarget = try f.sh("mv $MNT/B \"$MNT/not-valid\"")
        #expect(badTarget.status != 0)
        #expect(badTarget.stderr.contains("Operation not permitted"), "\(badTarget.stderr)")
        #expect(try f.storedValue("B") == "a")
    }

    @Test func truncateAndTouch() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount()
        try f.expectOK(f.sh("echo value > $MNT/T && truncate -s 0 $MNT/T"))
        #expect(try f.storedValue("T") == "")
        try f.expectOK(f.sh("touch $MNT/EMPTY"))
        #expect(try f.eventually { try f.storedValue("EMPTY") == "" }, "touch creates an empty secret")
        try f.expectOK(f.sh("echo keep > $MNT/K && touch $MNT/K"))
        #expect(try f.storedValue("K") == "keep", "touching an existing secret keeps its value")
        try f.expectOK(f.sh(": > $MNT/K"))
        #expect(try f.eventually { try f.storedValue("K") == "" })
    }

    @Test func oversizeValueFailsWithEFBIGAndKeepsTheOldValue() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount()
        try f.expectOK(f.sh("echo old > $MNT/BIG"))
        let big = try f.sh("head -c 70000 /dev/zero | tr '\\0' x > $MNT/BIG")
        #expect(big.status != 0)
        #expect(big.stderr.contains("File too large"), "\(big.stderr)")
        #expect(try f.storedValue("BIG") == "old")
        let cp = try f.sh("head -c 65537 /dev/zero > big.bin; cp big.bin $MNT/BIG")
        #expect(cp.status != 0)
        #expect(try f.storedValue("BIG") == "old")
        let new = try f.sh("head -c 70000 /dev/zero > $MNT/NEWBIG")
        #expect(new.status != 0)
        #expect(try f.storedValue("NEWBIG") == nil)
        #expect(try f.eventually { try !f.sh("ls $MNT").stdout.contains("NEWBIG") }, "a failed create leaves no name")
        // Exactly at the limit (plus echo's newline) is fine.
        try f.expectOK(f.sh("head -c 65536 /dev/zero | tr '\\0' y > $MNT/EXACT && echo >> /dev/null"))
        #expect(try f.storedValue("EXACT")?.count == 65536)
        try f.expectOK(f.sh("printf '%65536s\\n' '' > $MNT/WITH_NL"))
        #expect(try f.storedValue("WITH_NL")?.count == 65536)
    }

    @Test func mountOptionsForNewlineAndSizeLimit() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount(["-o", "keep_newline,max_size=10"])
        try f.expectOK(f.sh("echo kept > $MNT/NL"))
        #expect(try f.storedValue("NL") == "kept\n")
        let over = try f.sh("head -c 11 /dev/zero > $MNT/SMALL")
        #expect(over.stderr.contains("File too large"))
        try f.expectOK(f.sh("printf 'tenbytes!!' > $MNT/SMALL"))
        #expect(try f.storedValue("SMALL") == "tenbytes!!")
    }

    @Test func badNamesAndFileTypesAreRefused() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount()
        // (".hidden" is a staging file now: StagingFileTests.)
        let invalid = ["has space", "dash-name", "1starts_with_digit", "dot.name", "ünïcode"]
        for name in invalid {
            let o = try f.sh("echo v > \"$MNT/\(name)\"")
            #expect(o.status != 0 && o.stderr.contains("Invalid argument"), "\(name): \(o.stderr)")
        }
        // Past 255 bytes, as on a disk filesystem, whatever the call.
        let long = String(repeating: "A", count: 256), longStaging = "." + String(repeating: "s", count: 255)
        for op in ["echo v > $MNT/\(long)", "stat $MNT/\(long)", "rm $MNT/\(long)", "echo v > $MNT/\(longStaging)",
                   "echo v > $MNT/SHORT && mv $MNT/SHORT $MNT/\(long)"] {
            let o = try f.sh(op)
            #expect(o.status != 0 && o.stderr.contains("File name too long"), "\(op.prefix(40)): \(o.stderr)")
        }
        try f.expectOK(f.sh("rm $MNT/SHORT"))
        try f.expectOK(f.sh("echo v > $MNT/\(String(repeating: "A", count: 255))"))
        try f.expectOK(f.sh("echo v > $MNT/REAL"))
        let refused: [(String, String)] = [
            ("mkdir $MNT/DIR", "Operation not permitted"),
            ("ln -s REAL $MNT/LINK", "Operation not permitted"),
            ("ln $MNT/REAL $MNT/HARD", "Operation not permitted"),
            ("mkfifo $MNT/FIFO", "Operation not permitted"),
            ("mknod $MNT/DEV c 1 3", "Operation not permitted"),
            ("touch $MNT/REAL/sub", "Not a directory"),
            ("rmdir $MNT/REAL", "Not a directory"),
        ]
        for (cmd, message) in refused {
            let o = try f.sh(cmd)
            #expect(o.status != 0, "\(cmd) succeeded")
            #expect(o.stderr.contains(message), "\(cmd): \(o.stderr)")
        }
        #expect(try f.storedNames() == [String(repeating: "A", count: 255), "REAL"])
        #expect(try f.storedValue("REAL") == "v")
        // A staging name is never stored, even when written and closed.
        try f.expectOK(f.sh("echo v > $MNT/.hidden"))
        #expect(try f.storedNames() == [String(repeating: "A", count: 255), "REAL"])
    }

    @Test func callersWithoutAccessGetEACCESEverywhere() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount()
        try f.expectOK(f.sh("echo v > $MNT/SECRET"))
        let ops = ["ls $MNT", "ls -l $MNT/SECRET", "stat $MNT/SECRET", "cat $MNT/SECRET", "echo x > $MNT/SECRET",
                   "echo x > $MNT/NEW", "echo x >> $MNT/SECRET", "rm $MNT/SECRET", "mv $MNT/SECRET $MNT/MOVED",
                   "touch $MNT/SECRET", "mkdir $MNT/D", "cd $MNT"]
        for op in ops {
            let o = try f.sh(op, asUID: 65534)
            #expect(o.status != 0, "\(op) succeeded for uid 65534")
            #expect(o.stderr.contains("Permission denied") || o.stderr.contains("can't cd"), "\(op): \(o.stderr)")
        }
        // statfs is answered by the kernel itself for a uid the mount does not
        // admit (no allow_other): all zeros, not even the number of names.
        let fs = try f.expectOK(f.sh("stat -f -c '%c %l' $MNT", asUID: 65534))
        #expect(fs.stdout == "0 0\n")
        #expect(try f.storedNames() == ["SECRET"])
        #expect(try f.storedValue("SECRET") == "v")
    }

    @Test func aGrantedGroupMayUseTheMount() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount(["-o", "group=4242"])
        let perms = try f.expectOK(f.sh("echo v > $MNT/SHARED && stat -c '%A %g' $MNT/SHARED $MNT"))
        #expect(perms.stdout == "--w--w---- 4242\ndrwxrwx--- 4242\n")
        // Primary group, then supplementary group.
        try f.expectOK(f.sh("echo member > $MNT/BY_MEMBER && ls $MNT && mv $MNT/BY_MEMBER $MNT/MOVED", asUID: 65534, gid: 4242))
        try f.expectOK(f.sh("echo supp > $MNT/BY_SUPP && rm $MNT/SHARED", asUID: 65534, gid: 65534, groups: [4242]))
        #expect(try f.storedValue("MOVED") == "member")
        #expect(try f.storedValue("BY_SUPP") == "supp")
        #expect(try f.storedValue("SHARED") == nil)
        let outsider = try f.sh("ls $MNT", asUID: 65534, gid: 65534)
        #expect(outsider.stderr.contains("Permission denied"))
        // The audit trail names who did it.
        let audit = try f.expectOK(f.secretfs(["audit", f.project]))
        #expect(audit.stdout.contains("uid=65534"))
        #expect(audit.stdout.contains("rename  BY_MEMBER,MOVED"))
    }

    @Test func listingsStayInByteOrderThroughCreatesRenamesAndDeletes() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount()
        try f.expectOK(f.sh("""
            set -e
            for n in zeta Alpha _under B2 b10 b2 A_1 a Z9 m; do echo v > $MNT/$n; done
            mv $MNT/zeta $MNT/AA; mv $MNT/m $MNT/b2; rm $MNT/B2; echo w > $MNT/M
            """))
        let listed = try f.expectOK(f.sh("ls -f $MNT | grep -v '^\\.'")).stdout
        let expected = try f.expectOK(f.sh("ls -f $MNT | grep -v '^\\.' | LC_ALL=C sort")).stdout
        #expect(listed == expected)
        #expect(listed == "AA\nA_1\nAlpha\nM\nZ9\n_under\na\nb10\nb2\n")
        // A remount lists the same names in the same order.
        try f.unmount()
        try f.mount()
        #expect(try f.expectOK(f.sh("ls -f $MNT | grep -v '^\\.'")).stdout == listed)
    }

    @Test func aFileRenamedOverAStoredSecretWhileBeingWrittenNeverLosesBoth() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount(["-o", "max_size=10"])
        try f.expectOK(f.sh("printf kept > $MNT/TARGET && printf old > $MNT/OTHER"))
        // Created and renamed while open; the write then fails (over the limit).
        try f.sh("exec 3> $MNT/PENDING; mv $MNT/PENDING $MNT/TARGET; head -c 20 /dev/zero >&3; exec 3>&-")
        #expect(try f.eventually { try f.storedValue("TARGET") == "kept" }, "the stored value survives a failed replacement")
        #expect(try f.eventually { try f.sh("ls $MNT").stdout == "OTHER\nTARGET\n" })
        // The same with a write that fits: the new value replaces the old.
        try f.expectOK(f.sh("exec 3> $MNT/PENDING; mv $MNT/PENDING $MNT/OTHER; printf new >&3; exec 3>&-"))
        #expect(try f.storedValue("OTHER") == "new")
        // rm of a name whose new value is still being written removes the stored one too.
        try f.expectOK(f.sh("exec 3> $MNT/PENDING; mv $MNT/PENDING $MNT/TARGET; rm $MNT/TARGET; exec 3>&-"))
        #expect(try f.eventually { try f.storedNames() == ["OTHER"] })
    }
}
