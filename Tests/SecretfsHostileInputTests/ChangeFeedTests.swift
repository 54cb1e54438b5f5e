import Foundation
import Glibc
import SecretfsMountSupport
import SecretfsTestSupport
import Testing

/// The redactor must never go quiet and fail open: after an idle timeout, a
/// remount or a resolver daemon restart, a value changed afterwards is still
/// masked, and stderr says when the feed was down. Before the fix, each of
/// these printed the new value in clear.
@Suite(.serialized)
struct ChangeFeedTests {
    /// `secretfs redact` reading a script's output: `steps` run first (with
    /// pauses), then the line that carries the value.
    private func redact(_ f: MountFixture, _ steps: String, line: String, extra: String = "") throws -> ProcessOutput {
        let bin = MountFixture.binary
        return try f.sh("(\(steps); echo 'log: \(line)') | \(bin) redact --project demo \(extra)")
    }

    @Test func aChangeAfterTheMountsIdleTimeoutIsMasked() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount(["--socket-idle-timeout", "1"])
        try f.expectOK(f.sh("echo old-value-1111 > $MNT/X"))
        // Idle past the timeout (the mount closes the value connection), then a change.
        let o = try redact(f, "sleep 2.5; echo new-value-2222 > $MNT/X; sleep 2", line: "new-value-2222")
        #expect(o.status == 0, "\(o.stderr)")
        #expect(o.stdout == "log: [REDACTED]\n", "\(o.stdout)")
    }

    @Test func aChangeAfterARemountIsMaskedAndTheOutageIsReported() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount()
        try f.expectOK(f.sh("echo old-value-1111 > $MNT/X"))
        let bin = MountFixture.binary
        let steps = "sleep 0.5; \(bin) umount $MNT >/dev/null; sleep 0.5; \(bin) mount demo $MNT >/dev/null; "
            + "echo new-value-3333 > $MNT/X; sleep 3"
        let o = try redact(f, steps, line: "new-value-3333")
        #expect(o.status == 0, "\(o.stderr)")
        #expect(o.stdout == "log: [REDACTED]\n", "\(o.stdout)")
        #expect(o.stderr.contains("warning: lost the change feed of project demo"), "\(o.stderr)")
        #expect(o.stderr.contains("still masking the 1 values known"), "\(o.stderr)")
        #expect(o.stderr.contains("the change feed of project demo is back"), "\(o.stderr)")
        #expect(!o.stderr.contains("new-value") && !o.stderr.contains("old-value"))
    }

    @Test func aChangeAfterAResolverDaemonRestartIsMasked() throws {
        let f = try MountFixture()
        defer {
            _ = try? f.sh("[ -f $MNT.daemon.pid ] && kill $(cat $MNT.daemon.pid) 2>/dev/null; true")
            f.close()
        }
        try f.mount()
        try f.expectOK(f.sh("echo old-value-1111 > $MNT/X"))
        let bin = MountFixture.binary
        let socket = f.root + "/daemon.sock"
        func startDaemon() -> String {
            "\(bin) resolver --listen \(socket) --idle-timeout 1 >/dev/null 2>>\(f.root)/daemon.log </dev/null & echo $! > $MNT.daemon.pid; "
                + "for i in $(seq 1 200); do [ -S \(socket) ] && break; sleep 0.02; done"
        }
        try f.expectOK(f.sh(startDaemon()))
        // Idle past the daemon's timeout, restart it, then change the value.
        let steps = "sleep 2; kill $(cat $MNT.daemon.pid); sleep 0.3; \(startDaemon()); "
            + "echo new-value-4444 > $MNT/X; sleep 3"
        let o = try redact(f, steps, line: "new-value-4444", extra: "--resolver \(socket)")
        #expect(o.status == 0, "\(o.stderr)")
        #expect(o.stdout == "log: [REDACTED]\n", "\(o.stdout)")
        #expect(o.stderr.contains("lost the change feed"), "\(o.stderr)")
    }

    @Test func aChangeWhileTheFirstValuesAreFetchedIsNotMissed() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount()
        // A large value makes the first build slow enough for a change to fall into it.
        try f.expectOK(f.sh("head -c 24000 /dev/urandom | base64 -w0 | head -c 32000 > $MNT/BIG && echo old-value-1111 > $MNT/X"))
        let o = try redact(f, "sleep 0.05; echo during-build-6666 > $MNT/NEW; sleep 4", line: "during-build-6666")
        #expect(o.stdout == "log: [REDACTED]\n", "\(o.stdout)")
    }

    @Test func runMasksWhatItPutInTheEnvironmentEvenIfTheProjectChangedMeanwhile() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount()
        try f.expectOK(f.sh("echo first-env-value-7777 > $MNT/T"))
        let bin = MountFixture.binary
        // T changes right after run started: the child may hold either value.
        let o = try f.sh("(sleep 0.05; echo second-env-value-8888 > $MNT/T) & "
                         + "\(bin) run --project demo --env T -- sh -c 'sleep 3; echo \"out: $T\"'; wait")
        #expect(o.status == 0, "\(o.stderr)")
        #expect(o.stdout == "out: [REDACTED]\n", "\(o.stdout)")
    }

    @Test func runMasksAValueChangedAfterTheIdleTimeout() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount(["--socket-idle-timeout", "1"])
        try f.expectOK(f.sh("echo old-value-1111 > $MNT/X"))
        let bin = MountFixture.binary
        let o = try f.sh("\(bin) run --project demo -- sh -c 'sleep 2.5; echo new-value-5555 > $MNT/X; sleep 2; echo out: new-value-5555'")
        #expect(o.status == 0, "\(o.stderr)")
        #expect(o.stdout == "out: [REDACTED]\n", "\(o.stdout)")
    }
}
