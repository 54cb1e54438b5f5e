import Foundation
import Glibc
import SecretfsMountSupport
import SecretfsTestSupport
import Testing

/// The Node.js client (clients/node) and the example runner
/// (examples/node-runner) under the real `node`, against a real resolver
/// daemon serving a real mount. The scripts they run are in
/// clients/node/test/daemon; each prints what it got, and the checks are here.
@Suite(.serialized)
struct NodeClientTests {
    struct NotJSON: Error, CustomStringConvertible {
        var text: String
        var description: String { "not a JSON object: \(text)" }
    }

    static let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path
    static let scripts = repo + "/clients/node/test/daemon"
    static let fixtures = repo + "/Tests/Fixtures"

    /// A resolver daemon on `ROOT/daemon.sock` for the fixture's runtime directory.
    final class Daemon {
        let f: MountFixture
        let socket: String
        let arguments: String
        init(_ f: MountFixture, _ arguments: String = "") throws {
            self.f = f
            socket = f.root + "/daemon.sock"
            self.arguments = arguments
            try f.expectOK(f.sh(startCommand))
        }
        /// Starts the daemon in the background and waits for its socket.
        var startCommand: String {
            "\(MountFixture.binary) resolver --listen \(socket) \(arguments) >/dev/null 2>>\(f.root)/daemon.log </dev/null & "
                + "echo $! > \(f.root)/daemon.pid; for i in $(seq 1 300); do [ -S \(socket) ] && break; sleep 0.02; done"
        }
        /// Stops the daemon and waits until it is gone (so a new one can bind).
        var stopCommand: String {
            "kill $(cat \(f.root)/daemon.pid) 2>/dev/null; while kill -0 $(cat \(f.root)/daemon.pid) 2>/dev/null; do sleep 0.02; done"
        }
        func stop() { _ = try? f.sh(stopCommand + "; true") }
        var log: String { (try? String(contentsOfFile: f.root + "/daemon.log", encoding: .utf8)) ?? "" }
    }

    /// `node ARGS` with the fixture's environment and SECRETFS_RESOLVER set.
    func node(_ daemon: Daemon, _ args: [String], env extra: [String: String] = [:]) throws -> ProcessOutput {
        var env = daemon.f.environment
        env["SECRETFS_RESOLVER"] = daemon.socket
        env["MNT"] = daemon.f.mnt
        for (k, v) in extra { env[k] = v }
        return try Processes.run("/usr/bin/env", ["node"] + args, environment: env)
    }

    func json(_ text: String) throws -> [String: Any] {
        let line = text.split(separator: "\n").last.map(String.init) ?? ""
        guard let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
            throw NotJSON(text: text)
        }
        return object
    }

    func write(_ f: MountFixture, _ name: String, _ text: String) throws -> String {
        let path = f.root + "/" + name
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// Values with the characters that need escaping in JavaScript, YAML and JSON.
    func storeDemoSecrets(_ f: MountFixture) throws {
        try f.expectOK(f.sh("""
            printf '%s' 'sk-ant-"quoted"\\back' > $MNT/ANTHROPIC_API_KEY
            printf '%s' 'tok-value-12345' > $MNT/API_TOKEN
            printf '%s' 'xoxb-bot-token' > $MNT/DEMO_BOT_SLACK_BOT_TOKEN
            printf '%s' "it's-signing" > $MNT/DEMO_BOT_SLACK_SIGNING_SECRET
            """))
    }

    @Test func resolvesFlowsAndConfigsToTheSameBytesAsTheCommandLine() throws {
        let f = try MountFixture()
        let daemon = try Daemon(f)
        defer { daemon.stop(); f.close() }
        try f.mount()
        try storeDemoSecrets(f)
        let cases = [("flow", "demo-bot.flow.yaml", "document"), ("config", "demo-bot.installation.json", "document"),
                     ("flow", "demo-bot.flow.yaml", "bindings"), ("config", "demo-bot.installation.json", "bindings")]
        for (format, file, output) in cases {
            let path = Self.fixtures + "/" + file
            let viaNode = try node(daemon, [Self.scripts + "/resolve.js", "demo", format, path, output])
            #expect(viaNode.status == 0 && viaNode.stderr.isEmpty, "\(file) \(output): \(viaNode.status) \(viaNode.stdout) \(viaNode.stderr)")
            let local = try f.expectOK(f.secretfs(["resolve", "--project", "demo", "--format", format]
                                                  + (output == "bindings" ? ["--bindings"] : []) + [path]))
            #expect(!local.stdout.isEmpty)
            #expect(viaNode.stdout == local.stdout, "\(file) \(output):\n\(viaNode.stdout)\n---\n\(local.stdout)")
        }
        let flow = try node(daemon, [Self.scripts + "/resolve.js", "demo", "flow", Self.fixtures + "/demo-bot.flow.yaml"])
        #expect(flow.stdout.contains(#"botToken: !expr "\"xoxb-bot-token\"""#), "\(flow.stdout)")
        #expect(!flow.stdout.contains("secrets.API_TOKEN"))
        #expect(flow.stdout.contains("secrets.ANTHROPIC_API_KEY at runtime"), "an untagged scalar is left as it was")
    }

    @Test func namesValuesAndBindingsComeBackAndValuesCanBeZeroed() throws {
        let f = try MountFixture()
        let daemon = try Daemon(f)
        defer { daemon.stop(); f.close() }
        try f.mount()
        try storeDemoSecrets(f)
        let o = try node(daemon, [Self.scripts + "/calls.js", "demo", #"{"auth": "`Bearer ${secrets.API_TOKEN}`"}"#])
        #expect(o.status == 0 && o.stderr.isEmpty, "\(o.stdout) \(o.stderr)")
        let r = try json(o.stdout)
        #expect(r["names"] as? [String] == ["ANTHROPIC_API_KEY", "API_TOKEN", "DEMO_BOT_SLACK_BOT_TOKEN", "DEMO_BOT_SLACK_SIGNING_SECRET"])
        #expect(r["found"] as? [String] == ["API_TOKEN"])
        #expect(r["missing"] as? [String] == ["NOT_THERE"])
        #expect(r["valueLength"] as? Int == 15)
        #expect(r["zeroed"] as? Bool == true)
        #expect(r["bindings"] as? [String: String] == ["API_TOKEN": "tok-value-12345"])
        #expect(!daemon.log.contains("tok-value-12345"))
    }

    @Test func anIdleConnectionTheDaemonClosedIsOpenedAgain() throws {
        let f = try MountFixture()
        let daemon = try Daemon(f, "--idle-timeout 1")
        defer { daemon.stop(); f.close() }
        try f.mount()
        try storeDemoSecrets(f)
        let o = try node(daemon, [Self.scripts + "/calls.js", "demo", "{}", "1600"])
        #expect(o.status == 0, "\(o.stdout) \(o.stderr)")
        let r = try json(o.stdout)
        #expect(r["namesAfterIdle"] as? [String] == r["names"] as? [String] && (r["names"] as? [String])?.count == 4, "\(o.stdout)")
    }

    @Test func aMissingSecretIsAnErrorWithItsLocationAndNoValue() throws {
        let f = try MountFixture()
        let daemon = try Daemon(f)
        defer { daemon.stop(); f.close() }
        try f.mount()
        try storeDemoSecrets(f)
        let doc = try write(f, "missing.yaml", """
            blocks:
              - name: Ask
                config:
                  url: !expr '`https://x.test/?k=${secrets.API_TOKEN}`'
                  key: !expr secrets.NOT_SET

            """)
        let o = try node(daemon, [Self.scripts + "/resolve.js", "demo", "flow", doc])
        #expect(o.status == 3, "\(o.status) \(o.stdout) \(o.stderr)")
        let e = try json(o.stdout)
        #expect(e["name"] as? String == "SecretfsError")
        #expect(e["code"] as? Int == 100 && e["codeName"] as? String == "problems", "\(e)")
        let problems = e["problems"] as? [[String: Any]] ?? []
        #expect(problems.count == 1, "\(problems)")
        if let p = problems.first {
            #expect(p["kind"] as? String == "missingSecret")
            #expect(p["secretName"] as? String == "NOT_SET")
            #expect(p["context"] as? String == #"blocks[0] "Ask" config.key"#)
            #expect(p["line"] as? Int == 5 && p["column"] as? Int == 18, "\(p)")
            #expect(p["message"] as? String == "secret NOT_SET does not exist in the project")
        }
        #expect((e["message"] as? String ?? "").contains(#"blocks[0] "Ask" config.key 5:18: secret NOT_SET does not exist"#), "\(e)")
        #expect(!o.stdout.contains("tok-value") && !o.stderr.contains("tok-value"))

        // A project with no mount: the daemon's own code and a hint.
        let other = try node(daemon, [Self.scripts + "/resolve.js", "other", "flow", doc])
        let n = try json(other.stdout)
        #expect(other.status == 3 && n["code"] as? Int == 20 && n["codeName"] as? String == "not-mounted", "\(other.stdout)")
        #expect((n["hint"] as? String ?? "").contains("--runtime-dir"))
    }

    @Test func aValueSplitAcrossWritesAndAcrossDataFramesIsRedacted() throws {
        let f = try MountFixture()
        let daemon = try Daemon(f)
        defer { daemon.stop(); f.close() }
        try f.mount()
        let value = "split-value-98765"
        try f.expectOK(f.sh("printf '%s' '\(value)' > $MNT/SPLIT; printf '%s' 'abc' > $MNT/SHORT"))
        let o = try node(daemon, [Self.scripts + "/redact.js", "demo"], env: ["VALUE": value])
        #expect(o.status == 0, "\(o.status) \(o.stderr)")
        var expected = ""
        for k in 1..<value.utf8.count { expected += "\(k)=[REDACTED]\n" }
        let before = 65536 - 5
        expected += String(repeating: "x", count: before) + "[REDACTED]"
            + String(repeating: "x", count: 200_000 - before - value.utf8.count - 1) + "\n" + "end"
        #expect(o.stdout == expected, "\(o.stdout.prefix(400)) … (\(o.stdout.utf8.count) bytes, expected \(expected.utf8.count))")
        #expect(!o.stdout.contains(value))
        // The secret too short to mask is reported, by name.
        #expect(o.stderr == "skipped: SHORT\n", "\(o.stderr)")
    }

    @Test func aWatchSeesAChangeAndComesBackAfterTheDaemonRestarts() throws {
        let f = try MountFixture()
        let daemon = try Daemon(f)
        defer { daemon.stop(); f.close() }
        try f.mount()
        try storeDemoSecrets(f)
        let o = try node(daemon, [Self.scripts + "/watch.js", "demo"], env: [
            "CHANGE": "echo changed-1 > \(f.mnt)/API_TOKEN",
            "RESTART": "\(daemon.stopCommand); \(daemon.startCommand)",
            "CHANGE_AGAIN": "echo changed-2 > \(f.mnt)/NEW_ONE",
        ])
        #expect(o.status == 0, "\(o.stdout) \(o.stderr)")
        let lines = o.stdout.split(separator: "\n").map(String.init)
        func index(_ line: String) -> Int { lines.firstIndex(of: line) ?? -1 }
        #expect(lines.first == "watching mountWatched=true", "\(lines)")
        let changed = index("change API_TOKEN complete=true")
        let lost = index("lost connection-closed")
        let restored = index("restored mountWatched=true")
        let again = index("change NEW_ONE complete=true")
        #expect(changed > 0 && lost > changed && restored > lost && again > restored, "\(lines)")
        #expect(lines.last == "closed", "\(lines)")
    }

    @Test func aUidTheDaemonDoesNotAllowIsRefusedByTheKernelAndByTheDaemon() throws {
        let f = try MountFixture()
        let daemon = try Daemon(f)
        defer { daemon.stop(); f.close() }
        try f.mount()
        try storeDemoSecrets(f)
        // A copy of the client that the other uid can read wherever the checkout is.
        let client = f.root + "/node-client"
        try f.expectOK(f.sh("cp -R '\(Self.repo)/clients/node' '\(client)' && chmod -R a+rX '\(client)'"))
        let script = """
            require('\(client)').names('demo').then((n) => console.log(JSON.stringify({ names: n })),
              (e) => console.log(JSON.stringify({ name: e.name, code: e.code, codeName: e.codeName, errno: e.errno, message: e.message })));
            """
        var env = f.environment
        env["SECRETFS_RESOLVER"] = daemon.socket
        func asStranger() throws -> [String: Any] {
            let o = try Processes.runAs(uid: 65000, gid: 65000, "/usr/bin/env", ["node", "-e", script], environment: env)
            #expect(o.status == 0 && o.stderr.isEmpty, "\(o.stdout) \(o.stderr)")
            return try json(o.stdout)
        }
        // The socket file is 0600: connect(2) fails with EACCES.
        let kernel = try asStranger()
        #expect(kernel["name"] as? String == "SecretfsError")
        #expect(kernel["code"] as? Int == 103 && kernel["codeName"] as? String == "permission-denied", "\(kernel)")
        #expect(kernel["errno"] as? String == "EACCES")
        // Opened wide by mistake: the daemon's SO_PEERCRED check refuses, and the client reads why.
        try f.expectOK(f.sh("chmod 0666 \(daemon.socket)"))
        let peer = try asStranger()
        #expect(peer["code"] as? Int == 7 && peer["codeName"] as? String == "not-allowed", "\(peer)")
        #expect((peer["message"] as? String ?? "").contains("uid 65000 is not allowed"), "\(peer)")
        #expect(daemon.log.contains("refused a connection") && daemon.log.contains("uid=65000"), "\(daemon.log)")
        // The owner is still served.
        let owner = try node(daemon, ["-e", script])
        #expect(try json(owner.stdout)["names"] as? [String] == ["ANTHROPIC_API_KEY", "API_TOKEN", "DEMO_BOT_SLACK_BOT_TOKEN", "DEMO_BOT_SLACK_SIGNING_SECRET"])
    }

    @Test func theRunnerEvaluatesABlockAndItsOutputIsRedacted() throws {
        let f = try MountFixture()
        let daemon = try Daemon(f)
        defer { daemon.stop(); f.close() }
        try f.mount()
        try storeDemoSecrets(f)
        let runner = Self.repo + "/examples/node-runner/run.js"
        let outputs = #"{"helloEndpoint":{"params":{"name":"world"}}}"#
        // The README's example, as it is.
        let o = try node(daemon, [runner, "--project", "demo", "--outputs", outputs, Self.repo + "/examples/node-runner/flow.yaml", "Call API"])
        #expect(o.status == 0 && o.stderr.isEmpty, "\(o.status) \(o.stderr)")
        #expect(o.stdout == """
            Call API inputs.default.config.url: "https://api.example.com/greet?name=world"
            Call API inputs.default.config.headers: {"Authorization":"Bearer [REDACTED]","content-type":"application/json"}
            Call API inputs.default.config.body: "{\\"greeting\\":\\"Hello, world\\",\\"tokenLength\\":15}"

            """, "\(o.stdout)")

        // A value inside an error message, and a value that needs escaping, are masked too.
        let flow = try write(f, "errors.yaml", """
            blocks:
              - name: B
                config:
                  quoted: !expr 'secrets.ANTHROPIC_API_KEY'
                  thrown: !expr 'secrets.API_TOKEN.nope()'

            """)
        let e = try node(daemon, [runner, "--project", "demo", flow, "B"])
        #expect(e.status == 0, "\(e.status) \(e.stderr)")
        // V8 quotes the string in its message: `"tok-value-12345".nope is not a function`.
        #expect(e.stdout == """
            B config.quoted: "[REDACTED]"
            B config.thrown: error: TypeError: "[REDACTED]".nope is not a function

            """, "\(e.stdout)")
        #expect(!e.stdout.contains("tok-value") && !e.stdout.contains("sk-ant"))

        // A flow that cannot be resolved: nothing on stdout, the problem and its place on stderr.
        let missing = try write(f, "missing.yaml", "blocks:\n  - name: B\n    config:\n      x: !expr secrets.NOPE\n")
        let m = try node(daemon, [runner, "--project", "demo", missing, "B"])
        #expect(m.status == 14 && m.stdout.isEmpty, "\(m.status) \(m.stdout)")
        #expect(m.stderr.contains(#"blocks[0] "B" config.x 4:16: secret NOPE does not exist in the project"#), "\(m.stderr)")
    }

    @Test func theClientsUnitTestsPass() throws {
        let o = try Processes.run("/usr/bin/env", ["node", "--test", Self.repo + "/clients/node/test/unit.test.js"])
        #expect(o.status == 0 && o.stdout.contains("# fail 0"), "\(o.stdout.suffix(3000)) \(o.stderr)")
    }
}
