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

    /// The daemon's locked memory (VmLck), in KiB.
    private func lockedKiB(_ daemon: Daemon) throws -> Int {
        let pid = try String(contentsOfFile: daemon.f.root + "/daemon.pid", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        let line = status.split(separator: "\n").first { $0.hasPrefix("VmLck:") } ?? ""
        return Int(line.split(separator: " ").dropFirst().first ?? "") ?? -1
    }

    @Test func announcedButUnsentFramesDoNotCommitLockedMemory() throws {
        let f = try MountFixture()
        let daemon = try Daemon(f)
        defer { daemon.stop(); f.close() }
        let before = try lockedKiB(daemon)
        // 40 connections each announce a 16 MiB frame and send nothing more
        // (640 MiB of locked memory when the body was allocated up front).
        var fds: [Int32] = []
        defer { for fd in fds { close(fd) } }
        for _ in 0..<40 {
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            var addr = sockaddr_un()
            addr.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in daemon.socket.utf8.enumerated() { raw[i] = b } }
            let rc = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            #expect(rc == 0)
            let header: [UInt8] = [0x01, 0x00, 0x00, 0x00, 0x01, 0x11]
            _ = header.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
            fds.append(fd)
        }
        usleep(500_000)
        let after = try lockedKiB(daemon)
        #expect(after - before < 40 * 1024, "locked memory grew from \(before) KiB to \(after) KiB")
        #expect(daemon.isRunning)
    }

    private func connectRaw(_ path: String) -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in path.utf8.enumerated() { raw[i] = b } }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        #expect(rc == 0)
        var tv = timeval(tv_sec: 5, tv_usec: 0)
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        return fd
    }

    private func sendFrame(_ fd: Int32, type: UInt8, _ body: [UInt8]) {
        let n = UInt32(2 + body.count)
        let frame = [UInt8(n >> 24), UInt8((n >> 16) & 0xff), UInt8((n >> 8) & 0xff), UInt8(n & 0xff), 1, type] + body
        var off = 0
        while off < frame.count {
            let w = frame.withUnsafeBytes { send(fd, $0.baseAddress! + off, frame.count - off, Int32(MSG_NOSIGNAL)) }
            if w <= 0 { return }
            off += w
        }
    }

    /// The type and the error code (for ERROR) of the next frame.
    private func readReply(_ fd: Int32) -> (type: UInt8, code: UInt16)? {
        var header = [UInt8](repeating: 0, count: 6)
        guard recv(fd, &header, 6, Int32(MSG_WAITALL)) == 6 else { return nil }
        let length = Int(header[0]) << 24 | Int(header[1]) << 16 | Int(header[2]) << 8 | Int(header[3])
        var body = [UInt8](repeating: 0, count: max(length - 2, 0))
        if !body.isEmpty { _ = recv(fd, &body, body.count, Int32(MSG_WAITALL)) }
        return (header[5], body.count >= 2 ? UInt16(body[0]) << 8 | UInt16(body[1]) : 0)
    }

    @Test func aRedactStreamTakesBoundedChunksAndMasks() throws {
        let f = try MountFixture()
        let daemon = try Daemon(f)
        defer { daemon.stop(); f.close() }
        try f.mount()
        try f.expectOK(f.sh("printf abcd > $MNT/A"))
        func text(_ s: String) -> [UInt8] { [UInt8(s.utf8.count >> 8), UInt8(s.utf8.count & 0xff)] + Array(s.utf8) }
        let fd = connectRaw(daemon.socket)
        defer { close(fd) }
        // REDACT demo, minimum 1, a mask over the limit: refused.
        sendFrame(fd, type: 0x15, text("demo") + [0, 1] + text(String(repeating: "M", count: 65)))
        #expect(readReply(fd).map { [$0.type: $0.code] } == [0xFF: 24])   // invalid-request
        sendFrame(fd, type: 0x15, text("demo") + [0, 1] + text(String(repeating: "M", count: 64)))
        #expect(readReply(fd)?.type == 0x97)   // REDACTING
        sendFrame(fd, type: 0x16, Array("x abcd y\n".utf8))
        #expect(readReply(fd)?.type == 0x98)   // REDACTED
        // A DATA frame over 64 KiB ends the stream (it could expand to 64x its size).
        sendFrame(fd, type: 0x16, [UInt8](repeating: 0x61, count: (64 << 10) + 1))
        #expect(readReply(fd).map { [$0.type: $0.code] } == [0xFF: 4])   // frame-too-large
        // The daemon goes on serving.
        let doc = try write(f, "ok.json", Array("{\"a\": \"secrets.A\"}".utf8))
        #expect(try f.expectOK(daemon.resolve(doc, format: "config")).stdout.contains("abcd"))
        #expect(daemon.isRunning)
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
