import Foundation
import Glibc
import SecretfsFS
import SecretfsMountSupport
import SecretfsPOSIX
import Testing

/// The usual ways of writing files, with the real tools: rsync's temp files
/// and mkstemp's are staging files (a `.` name: locked memory only, never
/// stored, listed or audited, committed by a rename onto a valid name), and
/// mode, owner and time changes succeed without changing anything.
@Suite(.serialized)
struct StagingFileTests {
    /// A source tree of three values, one with a trailing newline.
    private func source(_ f: MountFixture) throws -> String {
        let src = f.root + "/src"
        try f.expectOK(f.sh("mkdir -p \(src) && printf 'rsync-a-value' > \(src)/API_TOKEN && printf 'line\\n' > \(src)/WITH_NL "
                            + "&& printf 'x%.0s' $(seq 1 5000) > \(src)/LONG_VALUE && chmod 640 \(src)/API_TOKEN"))
        return src
    }

    private func expectCopied(_ f: MountFixture) throws {
        #expect(try f.storedNames() == ["API_TOKEN", "LONG_VALUE", "WITH_NL"])
        #expect(try f.storedValue("API_TOKEN") == "rsync-a-value")
        #expect(try f.storedValue("WITH_NL") == "line")   // one trailing newline dropped, as for cp
        #expect(try f.storedValue("LONG_VALUE") == String(repeating: "x", count: 5000))
    }

    @Test func rsyncArchiveCopiesThroughStagingFiles() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount()
        let src = try source(f)
        let o = try f.sh("rsync -a \(src)/ $MNT/")
        #expect(o.status == 0, "rsync -a exit \(o.status): \(o.stderr)")
        try expectCopied(f)
        // No staging file was stored, listed or audited.
        #expect(try f.expectOK(f.sh("ls -a $MNT")).stdout == ".\n..\nAPI_TOKEN\nLONG_VALUE\nWITH_NL\n")
        let audit = try f.expectOK(f.secretfs(["audit", "demo"])).stdout
        #expect(!audit.contains("  ."), "\(audit)")
        // Again, unchanged and changed: still exit 0.
        try f.expectOK(f.sh("rsync -a \(src)/ $MNT/ && printf 'second' > \(src)/API_TOKEN && rsync -a --checksum \(src)/ $MNT/"))
        #expect(try f.storedValue("API_TOKEN") == "second")
    }

    @Test func rsyncInplaceCpPreserveAndInstallExitZero() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount()
        let src = try source(f)
        for (tool, cmd) in [("rsync --inplace", "rsync -r --inplace --perms --times \(src)/ $MNT/"),
                            ("cp -p", "cp -p \(src)/* $MNT/"),
                            ("install -m", "for n in API_TOKEN LONG_VALUE WITH_NL; do install -m 600 \(src)/$n $MNT/$n || exit 1; done")] {
            try f.expectOK(f.sh("rm -f $MNT/*"))
            let o = try f.sh(cmd)
            #expect(o.status == 0, "\(tool) exit \(o.status): \(o.stderr)")
            try expectCopied(f)
        }
        // The modes stay what the mount says: no change added a read bit.
        try f.expectOK(f.sh("chmod 644 $MNT/API_TOKEN && chown 1:1 $MNT/API_TOKEN && touch -d 2001-01-01 $MNT/API_TOKEN"))
        #expect(try f.expectOK(f.sh("stat -c '%A %u' $MNT/API_TOKEN")).stdout == "--w------- 0\n")
    }

    @Test func strictModesRefusesModeChanges() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount(["-o", "strict_modes"])
        try f.expectOK(f.sh("echo v > $MNT/A"))
        for cmd in ["chmod 644 $MNT/A", "chown 1:1 $MNT/A", "chmod 755 $MNT", "touch -d 2001-01-01 $MNT/A", "touch $MNT/A",
                    "touch -d 2001-01-01 $MNT"] {
            let o = try f.sh(cmd)
            #expect(o.status != 0 && o.stderr.contains("Operation not permitted"), "\(cmd): \(o.stderr)")
        }
        // A truncate sets mtime too (the kernel asks with the size): not refused.
        try f.expectOK(f.sh("printf 'abc' > $MNT/B && truncate -s 1 $MNT/B"))
        #expect(try f.storedValue("B") == "a")
    }

    @Test func aMktempFileMovedOntoANameIsOneDurableWrite() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount()
        try f.expectOK(f.sh("echo old > $MNT/TOKEN"))
        let o = try f.expectOK(f.sh("t=$(mktemp $MNT/.tmp.XXXXXX) && printf 'from-mktemp' > \"$t\" && ls -a $MNT && mv \"$t\" $MNT/TOKEN"))
        #expect(!o.stdout.contains(".tmp."), "a staging file was listed: \(o.stdout)")
        #expect(try f.storedValue("TOKEN") == "from-mktemp")
        #expect(try f.expectOK(f.sh("ls -a $MNT")).stdout == ".\n..\nTOKEN\n")
    }

    @Test func stagingFilesAreDiscardedAndNeverSeenByOthers() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount(["-o", "group=4242"])
        try f.expectOK(f.sh("printf 'staged-by-root' > $MNT/.work && stat $MNT/.work >/dev/null"))
        // A member of the group does not see root's staging file.
        let other = try f.sh("stat $MNT/.work; ls -a $MNT", asUID: 65534, gid: 4242)
        #expect(other.stderr.contains("No such file") && !other.stdout.contains(".work"), "\(other.stdout) \(other.stderr)")
        #expect(try f.storedNames().isEmpty)
        // Nor does the name collide: the member's own `.work` (even O_EXCL,
        // as mkstemp opens) is another file, so no EEXIST tells it root's is
        // there, and no uid can take a staging name before another.
        try f.expectOK(f.sh("set -C && printf 'staged-by-member' > $MNT/.work && mv $MNT/.work $MNT/BY_MEMBER", asUID: 65534, gid: 4242))
        let noSource = try f.sh("mv $MNT/.work $MNT/STOLEN", asUID: 65534, gid: 4242)
        #expect(noSource.status != 0 && noSource.stderr.contains("No such file"), "\(noSource.stderr)")
        #expect(try f.storedValue("BY_MEMBER") == "staged-by-member")
        try f.expectOK(f.sh("mv $MNT/.work $MNT/BY_ROOT && printf 'again' > $MNT/.work"))
        #expect(try f.storedValue("BY_ROOT") == "staged-by-root")
        try f.expectOK(f.sh("rm $MNT/BY_MEMBER $MNT/BY_ROOT"))
        // Unlink discards it; so does an unmount.
        try f.expectOK(f.sh("rm $MNT/.work && ! stat $MNT/.work 2>/dev/null && printf 'kept-in-memory' > $MNT/.later"))
        try f.unmount()
        try f.mount()
        #expect(try f.sh("stat $MNT/.later").status != 0)
        #expect(try f.storedNames().isEmpty)
        // A secret never becomes a staging file.
        try f.expectOK(f.sh("echo v > $MNT/A"))
        let mv = try f.sh("mv $MNT/A $MNT/.A")
        #expect(mv.status != 0 && mv.stderr.contains("Operation not permitted"), "\(mv.stderr)")
        #expect(try f.storedValue("A") == "v")
        // And staging values are never written to the store's files.
        try f.expectOK(f.sh("printf 'PlainStaging-Marker' > $MNT/.s"))
        for name in try FileManager.default.contentsOfDirectory(atPath: f.storeDir) {
            let data = try Data(contentsOf: URL(fileURLWithPath: f.storeDir + "/" + name))
            #expect(data.range(of: Data("PlainStaging-Marker".utf8)) == nil, "\(name)")
        }
        #expect(!f.logText.contains("PlainStaging-Marker"))
    }
}

extension StagingFileTests {
    @Test func inodeNumbersDoNotCountOtherUIDsStagingFiles() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount(["-o", "group=4242"])
        func ino(_ name: String) throws -> UInt64 {
            try #require(UInt64(f.expectOK(f.sh("printf v > $MNT/\(name) && stat -c %i $MNT/\(name)", asUID: 65534, gid: 4242))
                .stdout.trimmingCharacters(in: .whitespacesAndNewlines)))
        }
        let first = try ino("MEMBER_A")
        // Root's staging files, which the member must not learn of...
        try f.expectOK(f.sh("for i in 1 2 3; do printf x > $MNT/.root$i; done"))
        // ...leave no gap in the numbers the member's next file gets.
        #expect(try ino("MEMBER_B") == first + 1)
        let staged = try ino(".member")
        #expect(staged >= 1 << 63, "\(staged)")
    }
}

/// Staging files nobody can list must not outlive their use: one a killed
/// rsync left would hold a slot and locked bytes until the unmount.
@Suite(.serialized)
struct StagingFileExpiryTests {
    /// Mounts with `staging_timeout` and runs `fill` (which makes files that
    /// must not have expired yet, and returns what it found wrong), then
    /// `check` once the last of them has lain idle longer than the timeout. A fill that
    /// took most of the timeout (a loaded machine) proves nothing, its
    /// findings included, so it is tried again, remounted, with a longer one.
    /// A fill that returns nil could not set the scene (memory the system
    /// would not lock, say): tried again too.
    private func afterIdle(_ f: MountFixture, options: String = "", fill: () throws -> [String]?, check: () throws -> Void) throws {
        for timeout in [2.0, 5.0, 15.0] {
            try f.mount(["-o", "staging_timeout=\(Int(timeout))" + options])
            let started = monotonicSeconds()
            let found = try fill()
            let took = monotonicSeconds() - started
            if (found != nil && took < timeout * 0.6) || timeout == 15 {
                let problems = found ?? ["the fill could not fill the uid's buffered bytes, three times"]
                #expect(took < timeout, "filling took \(took) s, the timeout is \(timeout) s")
                for p in problems { Issue.record(Comment(rawValue: p)) }
                // Every file the fill closed, the last one too, has lain idle past the timeout.
                usleep(UInt32((timeout + 0.3) * 1e6))
                try check()
                return
            }
            try f.unmount()
        }
    }

    @Test func aClosedStagingFileIdleForStagingTimeoutIsDiscarded() throws {
        let f = try MountFixture()
        defer { f.close() }
        var held: Int32 = -1
        try afterIdle(f, fill: {
            var problems: [String] = []
            if held >= 0 { close(held); held = -1 }   // an earlier attempt's
            // The uid's 128 staging slots, all taken by closed, abandoned files.
            try f.expectOK(f.sh("for i in $(seq 1 128); do printf 'abandoned-value' > $MNT/.left$i || exit 1; done"))
            let full = try f.sh("printf v > $MNT/.one_more")
            if !(full.status != 0 && full.stderr.contains("Too many open files")) { problems.append("the 129th: \(full.stderr)") }
            // One kept open is not idle, however long it is held.
            try f.expectOK(f.sh("rm $MNT/.left128"))
            held = open("\(f.mnt)/.held", O_WRONLY | O_CREAT | O_TRUNC, 0o600)
            if held < 0 { problems.append("cannot open .held: errno \(errno)") }
            return problems
        }, check: {
            // The next staging file finds the idle ones gone and its slot free.
            try f.expectOK(f.sh("printf 'fresh-value' > $MNT/.fresh"))
            let gone = try f.sh("stat $MNT/.left1; mv $MNT/.left2 $MNT/FROM_EXPIRED")
            #expect(gone.stderr.components(separatedBy: "No such file").count == 3, "\(gone.stderr)")
            #expect(Array("held-value".utf8).withUnsafeBytes { write(held, $0.baseAddress, $0.count) } == 10)
            #expect(close(held) == 0)
            try f.expectOK(f.sh("mv $MNT/.held $MNT/HELD && mv $MNT/.fresh $MNT/FRESH"))
            #expect(try f.storedNames() == ["FRESH", "HELD"])
            #expect(try f.storedValue("HELD") == "held-value")
            // The log names what went, never what it held.
            let log = f.logText
            #expect(log.contains("staging file expired") && log.contains(".left1"), "\(log)")
            #expect(!log.contains("abandoned-value"))
        })
    }

    @Test func idleStagingFilesGiveBackTheBytesTheirUIDNeeds() throws {
        let f = try MountFixture()
        defer { f.close() }
        let chunk = [UInt8](repeating: 0x42, count: 1 << 20)
        func writeFile(_ name: String) -> Int32 {
            let fd = open("\(f.mnt)/\(name)", O_WRONLY | O_CREAT | O_TRUNC, 0o600)
            guard fd >= 0 else { return errno }
            let n = chunk.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            let failure = n < 0 ? errno : 0
            close(fd)
            return failure
        }
        try afterIdle(f, options: ",max_size=1M", fill: {
            var problems: [String] = []
            let refusals = f.logText.components(separatedBy: "buffered bytes limit reached").count
            // Closed staging files fill the uid's 16 MiB of locked bytes,
            // until a write gets ENOMEM.
            var staged = 0
            var refusal: Int32 = 0
            while staged < 40 {
                refusal = writeFile(".part\(staged)")
                if refusal != 0 { break }
                staged += 1
            }
            if !(refusal == ENOMEM && staged >= 8) { problems.append("errno \(refusal) after \(staged) files") }
            // The bound said no, not the system's locked memory.
            if refusal == ENOMEM && f.logText.components(separatedBy: "buffered bytes limit reached").count == refusals { return nil }
            let big = writeFile("BIG")
            if big != ENOMEM { problems.append("BIG while the staging files are fresh: errno \(big)") }
            return problems
        }, check: {
            // Once they are idle, the write that needs their bytes gets them.
            #expect(writeFile("BIG") == 0)
            let stored = try f.eventually { try f.storedBytes("BIG")?.count == 1 << 20 }
            #expect(stored)
            #expect(try f.sh("stat $MNT/.part0").status != 0)
        })
    }

    @Test func stagingTimeoutZeroKeepsThemAndABadOneIsAUsageError() throws {
        let f = try MountFixture()
        defer { f.close() }
        for value in ["-1", "abc", "nan", "604801", ""] {
            let o = try f.secretfs(["mount", f.project, f.mnt, "-o", "staging_timeout=\(value)"])
            #expect(o.status == 64 && o.stderr.contains("-o staging_timeout needs seconds"), "\(value): \(o.status) \(o.stderr)")
        }
        try f.mount(["-o", "staging_timeout=0"])
        try f.expectOK(f.sh("printf kept > $MNT/.old"))
        usleep(1_100_000)
        try f.expectOK(f.sh("printf new > $MNT/.new && mv $MNT/.old $MNT/OLD"))
        #expect(try f.storedValue("OLD") == "kept")
    }
}
