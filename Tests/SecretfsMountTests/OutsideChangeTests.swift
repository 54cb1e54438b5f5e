import Foundation
import Glibc
import SecretfsPOSIX
import SecretfsMountSupport
import Testing

/// A mounted project sees what `restore` and `undelete` do from outside it
/// within a second, without a remount: the listing, `ls -l` times, and
/// CHANGED to socket watchers (a running redactor masks the value brought back).
@Suite(.serialized)
struct OutsideChangeTests {
    /// Seconds until `condition` holds (polled every 20 ms), or nil after 5 s.
    func secondsUntil(_ condition: () throws -> Bool) rethrows -> Double? {
        let start = monotonicSeconds()
        while monotonicSeconds() - start < 5 {
            if try condition() { return monotonicSeconds() - start }
            usleep(20_000)
        }
        return nil
    }

    @Test func undeleteShowsInTheListingWithinASecond() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount()
        try f.expectOK(f.sh("echo back-again > $MNT/TOKEN && echo x > $MNT/OTHER && rm $MNT/TOKEN"))
        #expect(try f.sh("ls $MNT").stdout == "OTHER\n")
        try f.expectOK(f.secretfs(["undelete", "demo", "TOKEN"]))
        let took = try secondsUntil { try f.sh("ls $MNT").stdout == "OTHER\nTOKEN\n" }
        #expect(took != nil && took! < 1.0, "undelete showed after \(took ?? -1) s")
        // And the name is a working file again: a write through the mount replaces it.
        try f.expectOK(f.sh("echo rewritten > $MNT/TOKEN"))
        #expect(try f.storedValue("TOKEN") == "rewritten")
        #expect(try f.expectOK(f.secretfs(["history", "demo", "TOKEN", "--json"])).stdout.split(separator: "\n").count == 4)
    }

    @Test func restoreChangesTheTimeLsShowsWithinASecond() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount()
        try f.expectOK(f.sh("echo v1 > $MNT/A && echo v2 > $MNT/A"))
        let before = try f.expectOK(f.sh("stat -c %Y $MNT/A")).stdout
        let first = try #require(try f.openVault().store.history(project: "demo", name: "A").first?.version)
        usleep(1_100_000)
        try f.expectOK(f.secretfs(["restore", "demo", "A", "--version", String(first)]))
        let took = try secondsUntil { try f.sh("stat -c %Y $MNT/A").stdout != before }
        #expect(took != nil && took! < 1.0, "the new time showed after \(took ?? -1) s")
        #expect(try f.storedValue("A") == "v1")
        #expect(try f.sh("ls -l $MNT/A").stdout.hasPrefix("--w-------"))
    }

    @Test func aRunningRedactorHearsOfAnUndelete() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount()
        try f.expectOK(f.sh("echo other-value-1111 > $MNT/X && echo undeleted-value-9999 > $MNT/Y && rm $MNT/Y"))
        let bin = MountFixture.binary
        // The redactor starts without Y; Y comes back from outside the mount.
        let o = try f.sh("(sleep 0.5; \(bin) undelete demo Y >/dev/null; sleep 1.5; echo 'log: undeleted-value-9999') "
                         + "| \(bin) redact --project demo")
        #expect(o.status == 0, "\(o.stderr)")
        #expect(o.stdout == "log: [REDACTED]\n", "\(o.stdout)")
    }
}
