import Foundation
import Glibc
import SecretfsMountSupport
import SecretfsTestSupport
import Testing

/// Hostile documents sent to the shared resolver daemon (and to the one-shot
/// resolver): each is answered with a problem naming the limit, and the
/// daemon goes on serving another client. Before the fix, the nested config
/// killed the daemon (SIGSEGV) and the CLI, and the amplified reference asked
/// for about 1.2 GB of locked memory.
@Suite(.serialized)
struct DocumentTests {
    final class Daemon {
        let f: MountFixture
        let socket: String
        init(_ f: MountFixture) throws {
            self.f = f
            socket = f.root + "/daemon.sock"
            try f.expectOK(f.sh("\(MountFixture.binary) resolver --listen \(socket) >/dev/null 2>>\(f.root)/daemon.log </dev/null & "
                                + "echo $! > \(f.root)/daemon.pid; for i in $(seq 1 300); do [ -S \(socket) ] && break; sleep 0.02; done"))
        }
        func stop() { _ = try? f.sh("kill $(cat \(f.root)/daemon.pid) 2>/dev/null; true") }
        var isRunning: Bool { (try? f.sh("kill -0 $(cat \(f.root)/daemon.pid)"))?.status == 0 }
        var log: String { (try? String(contentsOfFile: f.root + "/daemon.log", encoding: .utf8)) ?? "" }

        /// `secretfs resolve` of the file at `path`, through the daemon (or not).
        func resolve(_ path: String, format: String, throughDaemon: Bool = true) throws -> ProcessOutput {
            try f.sh("\(MountFixture.binary) resolve --project demo --format \(format) "
                     + (throughDaemon ? "--resolver \(socket) " : "") + path)
        }
    }

    private func write(_ f: MountFixture, _ name: String, _ bytes: [UInt8]) throws -> String {
        let path = f.root + "/" + name
        #expect(FileManager.default.createFile(atPath: path, contents: Data(bytes)))
        return path
    }

    @Test func aMillionNestedBracketsAreAProblemAndTheDaemonStaysUp() throws {
        let f = try MountFixture()
        let daemon = try Daemon(f)
        defer { daemon.stop(); f.close() }
        try f.mount()
        try f.expectOK(f.sh("echo served-value > $MNT/TOKEN"))
        let deep = try write(f, "deep.json", Array("{\"token\": \"".utf8) + [UInt8](repeating: 0x5B, count: 1_000_000) + Array("\"}".utf8))
        let deepYAML = try write(f, "deep.yaml", Array("blocks:\n".utf8) + [UInt8](repeating: 0x5B, count: 200_000))
        // The config reader names its limit; libyaml stops a flow at its own
        // (1000 levels) with a YAML error at the position.
        for (path, format, says) in [(deep, "config", "nesting"), (deepYAML, "flow", "flow: YAML:")] {
            for viaDaemon in [true, false] {
                let o = try daemon.resolve(path, format: format, throughDaemon: viaDaemon)
                #expect(o.status == 14 && o.stdout.isEmpty, "\(format) daemon=\(viaDaemon): \(o.status) \(o.stderr.prefix(300))")
                #expect(o.stderr.contains(says), "\(o.stderr.prefix(300))")
            }
        }
        #expect(daemon.isRunning)
        // Another client is still served.
        let ok = try write(f, "ok.json", Array("{\"token\": \"secrets.TOKEN\"}".utf8))
        let o = try f.expectOK(daemon.resolve(ok, format: "config"))
        #expect(o.stdout.contains("served-value"))
    }

    @Test func anAmplifiedReferenceIsRefusedBeforeTheOutputIsBuilt() throws {
        let f = try MountFixture()
        let daemon = try Daemon(f)
        defer { daemon.stop(); f.close() }
        try f.mount()
        try f.expectOK(f.sh("head -c 60000 /dev/zero | tr '\\0' 'v' > $MNT/BIG"))
        let expression = Array(repeating: "secrets.BIG", count: 20_000).joined(separator: "+")
        let doc = try write(f, "amp.json", Array("{\"x\": \"\(expression)\"}".utf8))
        for viaDaemon in [true, false] {
            let o = try daemon.resolve(doc, format: "config", throughDaemon: viaDaemon)
            #expect(o.status == 14 && o.stdout.isEmpty, "daemon=\(viaDaemon): \(o.status) \(o.stderr.prefix(300))")
            #expect(o.stderr.contains("over the limit"), "\(o.stderr.prefix(300))")
            #expect(!o.stderr.contains("vvvvvvvv"))
        }
        #expect(daemon.isRunning)
        // The daemon's log records who asked; never a value.
        #expect(!daemon.log.contains("vvvvvvvv"))
    }

    @Test func resolvesThroughTheDaemonAreAuditedWithUidPidAndNames() throws {
        let f = try MountFixture()
        let daemon = try Daemon(f)
        defer { daemon.stop(); f.close() }
        try f.mount()
        try f.expectOK(f.sh("echo audited-value > $MNT/TOKEN"))
        let doc = try write(f, "one.json", Array("{\"token\": \"secrets.TOKEN\"}".utf8))
        try f.expectOK(daemon.resolve(doc, format: "config"))
        try f.expectOK(daemon.resolve(doc, format: "config"))   // the second one from the cache
        let lines = daemon.log.split(separator: "\n").filter { $0.contains("resolved") }
        #expect(lines.count == 2, "\(daemon.log)")
        for l in lines { #expect(l.contains("uid=0") && l.contains("names=TOKEN") && l.contains("pid="), "\(l)") }
        #expect(!daemon.log.contains("audited-value"))
    }

    @Test func anAliasCarryingARewrittenExpressionIsRefused() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount()
        try f.expectOK(f.sh("echo alias-value > $MNT/TOKEN"))
        let flow = "blocks:\n  - name: a\n    config:\n      x: &v !expr secrets.TOKEN\n  - name: *v\n"
        let doc = try write(f, "alias.yaml", Array(flow.utf8))
        let o = try f.sh("\(MountFixture.binary) resolve --project demo --format flow \(doc)")
        #expect(o.status == 14 && o.stdout.isEmpty, "\(o.status) \(o.stderr)")
        #expect(o.stderr.contains("alias") && o.stderr.contains("5:"), "\(o.stderr)")
        #expect(!o.stderr.contains("alias-value"))
    }
}
