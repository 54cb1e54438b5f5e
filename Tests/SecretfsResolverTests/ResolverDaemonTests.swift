import Foundation
import Glibc
import SecretfsInject
import SecretfsPOSIX
import SecretfsProtocol
import SecretfsRedact
import SecretfsResolver
import SecretfsStore
import SecureMemory
import Synchronization
import Testing

@Suite(.serialized) struct ResolverDaemonTests {
    static let flowValues: [String: String] = [
        "DEMO_BOT_SLACK_BOT_TOKEN": "xoxb-daemon-slack-token",
        "DEMO_BOT_SLACK_SIGNING_SECRET": "signing-\"quoted\"-\\secret",
        "ANTHROPIC_API_KEY": "sk-ant-daemon-`${x}`-key",
        "API_TOKEN": "api-token-line1\nline2\u{2028}😀",
    ]

    static func populated(policy: SocketPolicy = SocketPolicy(), limits: ResolverDaemonLimits = ResolverDaemonLimits()) throws -> DaemonFixture {
        let f = try DaemonFixture(policy: policy, limits: limits)
        for (n, v) in flowValues { try f.put(n, v) }
        try f.put("UNREFERENCED", "never-asked-for-value")
        return f
    }

    /// Every value the tests wrote, for the "never logged" checks.
    static func assertNoValueLogged(_ f: DaemonFixture, extra: [String] = []) {
        let log = f.log.all
        #expect(!log.isEmpty)
        for v in Array(flowValues.values) + extra + ["never-asked-for-value"] {
            #expect(!log.contains(v), "a value reached the log")
            for line in v.split(separator: "\n") where line.count >= 6 {
                #expect(!log.contains(line), "a value's line reached the log")
            }
        }
    }

    @Test func flowResolvesExactlyAsLocalResolution() throws {
        let f = try Self.populated()
        let doc = try fixture("demo-bot.flow.yaml")
        let local = try Resolver.resolve(doc, format: .flow, output: .document, source: f.mountSource())
        let remote = try DaemonClient.resolve(socketPath: f.daemonSocket, project: "demo", document: doc,
                                              format: .flow, output: .document)
        #expect(bytes(remote) == bytes(local))
        #expect(text(remote).contains("xoxb-daemon-slack-token"))
        #expect(text(remote).contains("!expr"))
        // Again, from the cache: same bytes, no new GET on the mount.
        let getsBefore = try f.gets().count
        let again = try DaemonClient.resolve(socketPath: f.daemonSocket, project: "demo", document: doc,
                                             format: .flow, output: .document)
        #expect(bytes(again) == bytes(local))
        #expect(try f.gets().count == getsBefore)
        // Least privilege: the daemon asked the mount for the referenced names only.
        let asked = try f.gets().compactMap(\.names).flatMap { $0.split(separator: ",").map(String.init) }
        #expect(Set(asked) == Set(Self.flowValues.keys))

        // Bindings, and the config format.
        let lb = try Resolver.resolve(doc, format: .flow, output: .bindings, source: f.mountSource())
        let rb = try DaemonClient.resolve(socketPath: f.daemonSocket, project: "demo", document: doc,
                                          format: .flow, output: .bindings)
        #expect(bytes(rb) == bytes(lb))
        let json = try JSONSerialization.jsonObject(with: Data(bytes(rb))) as? [String: String]
        #expect(json == Self.flowValues)
        let config = try fixture("demo-bot.installation.json")
        let lc = try Resolver.resolve(config, format: .config, output: .document, source: f.mountSource())
        let rc = try DaemonClient.resolve(socketPath: f.daemonSocket, project: "demo", document: config,
                                          format: .config, output: .document)
        #expect(bytes(rc) == bytes(lc))
        Self.assertNoValueLogged(f)
    }

    @Test func problemsComeBackWithLocationsAndNoValue() throws {
        let f = try Self.populated()
        try f.put("BINARY", [0x66, 0xff, 0xfe, 0x41, 0x42, 0x43])
        let doc = Array("""
            blocks:
              - name: One
                inputs:
                  default:
                    config:
                      a: !expr secrets.NOPE
                      b: !expr 'secrets.BINARY + secrets.API_TOKEN'
              - name: Two
                config:
                  c: !expr secrets[key]
            """.utf8)
        let local = #expect(throws: ResolveFailure.self) {
            _ = try Resolver.resolve(doc, format: .flow, output: .document, source: f.mountSource())
        }
        let remote = #expect(throws: ResolveFailure.self) {
            _ = try DaemonClient.resolve(socketPath: f.daemonSocket, project: "demo", document: doc,
                                         format: .flow, output: .document)
        }
        #expect(remote?.problems == local?.problems)
        // Static problems, and the missing secret found from the names alone.
        #expect(remote?.problems.map(\.kind) == [.missingSecret, .notStatic])
        #expect(remote?.problems.map(\.line) == [6, 10])

        // Phase 2: missing secret and a value that is not UTF-8, each located.
        let doc2 = Array(doc.split(separator: UInt8(ascii: "\n")).prefix(7).joined(separator: [10]))
        let l2 = #expect(throws: ResolveFailure.self) {
            _ = try Resolver.resolve(doc2, format: .flow, output: .document, source: f.mountSource())
        }
        let r2 = #expect(throws: ResolveFailure.self) {
            _ = try DaemonClient.resolve(socketPath: f.daemonSocket, project: "demo", document: doc2,
                                         format: .flow, output: .document)
        }
        #expect(r2?.problems == l2?.problems)
        #expect(Set(r2?.problems.map(\.kind) ?? []) == [.missingSecret, .invalidUTF8Value])
        #expect(r2?.problems.first { $0.kind == .missingSecret }?.secretName == "NOPE")
        #expect(r2?.problems.first { $0.kind == .missingSecret }?.line == 6)
        let described = r2?.description ?? ""
        #expect(!described.contains("ABC") && !described.contains("api-token-line1"))

        // Not mounted: a ProtocolError naming the project, not a ResolveFailure.
        let e = #expect(throws: ProtocolError.self) {
            _ = try DaemonClient.resolve(socketPath: f.daemonSocket, project: "other", document: Array("secrets.A".utf8),
                                         format: .expr, output: .document)
        }
        #expect(e?.serverCode == .notMounted)
        #expect(e?.message.contains("project other is not mounted (no socket at ") == true && e?.message.contains("project other:") == false,
                "named once: \(e?.message ?? "")")
        #expect(e?.hint != nil)
        // No daemon at all.
        let e2 = #expect(throws: ProtocolError.self) {
            _ = try DaemonClient.resolve(socketPath: f.dir + "/nothing.sock", project: "demo", document: [],
                                         format: .expr, output: .document)
        }
        #expect(e2?.kind == .notListening)
        Self.assertNoValueLogged(f, extra: ["ABC"])
    }

    @Test func cachedValuesAreDroppedWhenTheMountReportsAChange() throws {
        let f = try DaemonFixture()
        try f.put("TOKEN", "first-value-1111")
        let doc = Array("'Bearer ' + secrets.TOKEN".utf8)
        func resolve() throws -> String {
            text(try DaemonClient.resolve(socketPath: f.daemonSocket, project: "demo", document: doc,
                                          format: .expr, output: .document))
        }
        #expect(try resolve() == "'Bearer ' + \"first-value-1111\"")
        #expect(try waitUntil { f.daemon.cacheStats(project: "demo")?.watching == true })
        #expect(f.daemon.cacheStats(project: "demo")?.cachedValues == 1)

        try f.change("TOKEN", "second-value-2222")
        #expect(try waitUntil { f.daemon.cacheStats(project: "demo")?.cachedValues == 0 })
        #expect(try resolve() == "'Bearer ' + \"second-value-2222\"")

        // A deleted secret becomes a missing one.
        _ = try f.vault.delete("TOKEN", actor: .current)
        f.server.notifyChanged(["TOKEN"])
        #expect(try waitUntil { f.daemon.cacheStats(project: "demo")?.cachedValues == 0 })
        let e = #expect(throws: ResolveFailure.self) { _ = try resolve() }
        #expect(e?.problems.first?.kind == .missingSecret)
        // ...and a created one is found (the negative entry was dropped too).
        try f.change("TOKEN", "third-value-3333")
        #expect(try waitUntil { (try? resolve()) == "'Bearer ' + \"third-value-3333\"" })

        // The mount goes away: everything is dropped, and requests say so.
        f.server.stop()
        #expect(try waitUntil { f.daemon.cacheStats(project: "demo")?.watching == false })
        #expect(f.daemon.cacheStats(project: "demo")?.cachedValues == 0)
        let gone = #expect(throws: ProtocolError.self) { _ = try resolve() }
        #expect(gone?.serverCode == .notMounted)
        Self.assertNoValueLogged(f, extra: ["first-value-1111", "second-value-2222", "third-value-3333"])
    }

    @Test func valueSourceAndWatchThroughTheDaemon() throws {
        let f = try Self.populated()
        let source = try DaemonValueSource(socketPath: f.daemonSocket, project: "demo")
        #expect(Set(try source.names()) == Set(Self.flowValues.keys).union(["UNREFERENCED"]))
        let got = try source.values(["API_TOKEN", "NOPE"])
        #expect(got.keys.sorted() == ["API_TOKEN"])
        #expect(text(got["API_TOKEN"]!) == Self.flowValues["API_TOKEN"])
        // Local resolution through the daemon's values equals the mount's.
        let doc = try fixture("demo-bot.flow.yaml")
        #expect(bytes(try Resolver.resolve(doc, format: .flow, output: .document, source: source))
                == bytes(try Resolver.resolve(doc, format: .flow, output: .document, source: f.mountSource())))

        let calls = Mutex(0)
        let watch = try DaemonClient.changeFeed(socketPath: f.daemonSocket, project: "demo") { _ in calls.withLock { $0 += 1 }; return true }
        #expect(try waitUntil { f.daemon.cacheStats(project: "demo")?.watching == true })
        try f.change("API_TOKEN", "rotated-token-value")
        #expect(try waitUntil { calls.withLock { $0 } >= 1 })
        #expect(text(try source.values(["API_TOKEN"])["API_TOKEN"]!) == "rotated-token-value")
        watch.cancel()

        // Only a mounted project can be watched (a watch holds a cache slot for good).
        let bogus = #expect(throws: ProtocolError.self) {
            _ = try DaemonClient.changeFeed(socketPath: f.daemonSocket, project: "BOGUS") { _ in true }
        }
        #expect(bogus?.serverCode == .notMounted)

        let e = #expect(throws: ProtocolError.self) { _ = try DaemonValueSource(socketPath: f.dir + "/none.sock", project: "demo") }
        #expect(e?.kind == .notListening)
        Self.assertNoValueLogged(f, extra: ["rotated-token-value"])
    }

    @Test func redactorsKeptPerProjectAreBoundedWhateverMasksClientsChoose() throws {
        // Each REDACT chooses its own mask and minimum length; the daemon
        // keeps only the few it used last, or a client cycling through masks
        // would make it lock memory without end.
        let f = try Self.populated()
        // Redactors are kept only while the mount is watched: the first
        // request starts the watch (with the mask the loop starts with).
        let first = try DaemonRedaction(socketPath: f.daemonSocket, project: "demo", mask: "<m0>")
        _ = try first.finish()
        #expect(try waitUntil { f.daemon.cacheStats(project: "demo")?.watching == true })
        for i in 0..<12 {
            let mask = "<m\(i)>"
            let r = try DaemonRedaction(socketPath: f.daemonSocket, project: "demo", mask: mask)
            #expect(bytes(try r.write(Array("a xoxb-daemon-slack-token b\n".utf8))) == Array("a \(mask) b\n".utf8))
            _ = try r.finish()
            #expect(f.daemon.cacheStats(project: "demo")!.redactors == min(i + 1, f.daemon.limits.maxRedactorsPerProject))
        }
        // The one used most lately is still cached: asking again builds nothing.
        let before = f.log.all.components(separatedBy: "built a redactor").count
        let again = try DaemonRedaction(socketPath: f.daemonSocket, project: "demo", mask: "<m11>")
        #expect(bytes(try again.write(Array("xoxb-daemon-slack-token\n".utf8))) == Array("<m11>\n".utf8))
        _ = try again.finish()
        let after = f.log.all.components(separatedBy: "built a redactor").count
        #expect(after == before)
    }

    @Test func redactorsAliveAtOnceAreBoundedAndARebuildIsNeverRefused() throws {
        // Streams keep their own redactor when the cache lets it go, so the
        // cache's bound alone left one locked matcher per open stream.
        let f = try Self.populated()
        let warm = try DaemonRedaction(socketPath: f.daemonSocket, project: "demo", mask: "<warm>")
        _ = try warm.finish()
        #expect(try waitUntil { f.daemon.cacheStats(project: "demo")?.watching == true })
        let most = f.daemon.limits.maxLiveRedactorsPerProject
        var open: [DaemonRedaction] = []
        for i in 0..<most {
            let r = try DaemonRedaction(socketPath: f.daemonSocket, project: "demo", mask: "<s\(i)>")
            #expect(bytes(try r.write(Array("xoxb-daemon-slack-token\n".utf8))) == Array("<s\(i)>\n".utf8))
            open.append(r)
        }
        // One more mask: refused while they are all held.
        let refused = #expect(throws: ProtocolError.self) {
            _ = try DaemonRedaction(socketPath: f.daemonSocket, project: "demo", mask: "<one-more>")
        }
        #expect(refused?.serverCode == .busy && refused?.message.contains("redaction matchers") == true, "\(String(describing: refused))")
        // A mask already in use shares its matcher, even one the cache let go.
        let shared = try DaemonRedaction(socketPath: f.daemonSocket, project: "demo", mask: "<s0>")
        #expect(bytes(try shared.write(Array("xoxb-daemon-slack-token\n".utf8))) == Array("<s0>\n".utf8))
        _ = try shared.finish()
        // A change: every stream rebuilds (each replaces its own) and masks
        // the new value, at the bound, all of them at once.
        for round in 0..<3 {
            let value = "rotated-slack-token-value-\(round)"
            try f.change("DEMO_BOT_SLACK_BOT_TOKEN", value)
            #expect(try waitUntil { f.daemon.cacheStats(project: "demo")?.invalidations ?? 0 >= round + 1 })
            let outputs = Mutex([Int: [UInt8]]())
            nonisolated(unsafe) let streams = open   // each one used by one thread only
            DispatchQueue.concurrentPerform(iterations: streams.count) { i in
                let out = (try? streams[i].write(Array("\(value)\n".utf8))).map(bytes) ?? Array("failed".utf8)
                outputs.withLock { $0[i] = out }
            }
            for i in open.indices {
                #expect(outputs.withLock { $0[i] } == Array("<s\(i)>\n".utf8), "round \(round), stream \(i)")
            }
        }
        // Once one stream ends, a new mask has room again.
        _ = try open.removeLast().finish()
        #expect(try waitUntil {
            guard let r = try? DaemonRedaction(socketPath: f.daemonSocket, project: "demo", mask: "<one-more>") else { return false }
            _ = try? r.finish()
            return true
        })
        for r in open { _ = try r.finish() }
    }

    @Test func aStreamsProjectIsNotEvictedSoItKeepsSeeingChanges() throws {
        // Requests for other projects fill the daemon's project caches; the
        // one a stream runs on stays (its feed goes on), or the stream would
        // never see another change.
        var limits = ResolverDaemonLimits()
        limits.maxProjects = 2
        let f = try Self.populated(limits: limits)
        let warm = try DaemonRedaction(socketPath: f.daemonSocket, project: "demo")
        _ = try warm.finish()
        #expect(try waitUntil { f.daemon.cacheStats(project: "demo")?.watching == true })
        let stream = try DaemonRedaction(socketPath: f.daemonSocket, project: "demo", mask: "[M]")
        #expect(bytes(try stream.write(Array("xoxb-daemon-slack-token\n".utf8))) == Array("[M]\n".utf8))
        for i in 0..<5 { _ = try? DaemonValueSource(socketPath: f.daemonSocket, project: "bogus\(i)").names() }
        #expect(f.daemon.cacheStats(project: "demo")?.watching == true)
        try f.change("DEMO_BOT_SLACK_BOT_TOKEN", "changed-after-the-flood")
        #expect(try waitUntil { f.daemon.cacheStats(project: "demo")?.invalidations ?? 0 >= 1 })
        #expect(bytes(try stream.write(Array("x changed-after-the-flood\n".utf8))) == Array("x [M]\n".utf8))
        _ = try stream.finish()
    }

    @Test func redactionStreamMasksValuesSplitAcrossChunks() throws {
        let f = try Self.populated()
        try f.put("SHORT", "abc")
        let r = try DaemonRedaction(socketPath: f.daemonSocket, project: "demo")
        #expect(r.skipped.map(\.name) == ["SHORT"])
        let secret = "xoxb-daemon-slack-token"
        let b64 = Data("user:\(secret)".utf8).base64EncodedString()
        let input = Array("line one \(secret) end\nauth \(b64)\nclean line\npartial \(secret)".utf8)
        var output: [UInt8] = []
        // Odd chunk sizes, one of them 1 byte: values straddle every boundary.
        var i = 0
        var size = 1
        while i < input.count {
            let n = min(size, input.count - i)
            output += bytes(try r.write(Array(input[i..<(i + n)])))
            i += n
            size = size % 7 + 1
        }
        // Complete lines are out before the end of the stream (flushed per line).
        #expect(String(decoding: output, as: UTF8.self).contains("clean line\n"))
        output += bytes(try r.finish())
        let out = String(decoding: output, as: UTF8.self)
        // Exactly what the library does locally with the same values.
        var all: [(name: String, value: SecureBytes)] = [("SHORT", Array("abc".utf8).withUnsafeBytes { SecureBytes(copying: $0) })]
        for (n, v) in Self.flowValues { all.append((n, Array(v.utf8).withUnsafeBytes { SecureBytes(copying: $0) })) }
        all.append(("UNREFERENCED", Array("never-asked-for-value".utf8).withUnsafeBytes { SecureBytes(copying: $0) }))
        #expect(output == Redactor(secrets: all).redact(input))
        #expect(out.hasPrefix("line one [REDACTED] end\nauth dXNlcjp[REDACTED]\nclean line\npartial [REDACTED]"))
        #expect(!contains(output, Array(secret.utf8)))

        // A change is followed: the new value is masked on the next stream chunk.
        let r2 = try DaemonRedaction(socketPath: f.daemonSocket, project: "demo", mask: "***")
        #expect(bytes(try r2.write(Array("a xoxb-daemon-slack-token b\n".utf8))) == Array("a *** b\n".utf8))
        try f.change("DEMO_BOT_SLACK_BOT_TOKEN", "brand-new-slack-token")
        #expect(try waitUntil { f.daemon.cacheStats(project: "demo")?.invalidations ?? 0 >= 1 })
        #expect(bytes(try r2.write(Array("c brand-new-slack-token d\n".utf8))) == Array("c *** d\n".utf8))
        _ = try r2.finish()
        Self.assertNoValueLogged(f, extra: ["brand-new-slack-token"])
    }

    @Test func anotherUidIsRefusedWithAnErrorFrameAndNoValue() throws {
        // The socket file lets uid 65534 in (group 65534, 0660); the allow-list does not.
        let f = try Self.populated(policy: SocketPolicy(socketGroup: 65534))
        let out = try runAs(uid: 65534, gid: 65534, socket: f.daemonSocket, document: "secrets.API_TOKEN")
        #expect(!out.hasPrefix("connect-error"), "\(out)")
        let data = hexBytes(out)
        #expect(data.count >= 8)
        #expect(data.count >= 6 && data[5] == 0xFF)                  // ERROR
        #expect(Array(data.dropFirst(6).prefix(2)) == [0, 7])         // not-allowed
        #expect(String(decoding: data.dropFirst(10), as: UTF8.self) == "uid 65534 is not allowed on this socket")
        #expect(!contains(data, Array("api-token-line1".utf8)))
        // The owner is still served.
        #expect(text(try DaemonClient.resolve(socketPath: f.daemonSocket, project: "demo",
                                              document: Array("secrets.DEMO_BOT_SLACK_BOT_TOKEN".utf8),
                                              format: .expr, output: .document)) == "\"xoxb-daemon-slack-token\"")
        #expect(f.log.all.contains("refused a connection"))
        Self.assertNoValueLogged(f)
    }

    @Test func manyClientsAtOnce() throws {
        let f = try Self.populated()
        let doc = try fixture("demo-bot.installation.json")
        let expected = bytes(try Resolver.resolve(doc, format: .config, output: .document, source: f.mountSource()))
        let failures = Mutex(0)
        DispatchQueue.concurrentPerform(iterations: 8) { _ in
            for _ in 0..<40 {
                let ok = (try? DaemonClient.resolve(socketPath: f.daemonSocket, project: "demo", document: doc,
                                                    format: .config, output: .document)).map(bytes) == expected
                if !ok { failures.withLock { $0 += 1 } }
            }
        }
        #expect(failures.withLock { $0 } == 0)
        #expect(try waitUntil { f.daemon.connectionCount == 0 })
    }

    @Test func malformedRequestsGetErrorFrames() throws {
        let f = try Self.populated()
        func exchange(_ data: [UInt8]) -> [UInt8] {
            let fd = SocketIO.connect(to: f.daemonSocket)
            defer { close(fd) }
            _ = data.withUnsafeBytes { send(fd, $0.baseAddress!, $0.count, Int32(MSG_NOSIGNAL)) }
            shutdown(fd, Int32(SHUT_WR))
            var out: [UInt8] = []
            var buf = [UInt8](repeating: 0, count: 4096)
            while SocketIO.waitReadable(fd, deadline: monotonicSeconds() + 2) {
                let n = read(fd, &buf, buf.count)
                if n <= 0 { break }
                out += buf[0..<n]
            }
            return out
        }
        func frame(_ type: UInt8, _ body: [UInt8], version: UInt8 = 1) -> [UInt8] {
            let n = UInt32(2 + body.count)
            return [UInt8(n >> 24), UInt8((n >> 16) & 0xff), UInt8((n >> 8) & 0xff), UInt8(n & 0xff), version, type] + body
        }
        func code(_ reply: [UInt8]) -> Int? { reply.count >= 8 && reply[5] == 0xFF ? Int(reply[6]) << 8 | Int(reply[7]) : nil }
        #expect(code(exchange(frame(0x11, [0, 4] + Array("demo".utf8) + [3]))) == 1)              // truncated RESOLVE
        #expect(code(exchange(frame(0x11, [0, 3] + Array("../".utf8) + [3, 1, 0, 0, 0, 0]))) == 23)  // project name
        #expect(code(exchange(frame(0x11, [0, 4] + Array("demo".utf8) + [9, 1, 0, 0, 0, 0]))) == 24) // format
        #expect(code(exchange(frame(0x02, []))) == 3)                                              // a mount request
        #expect(code(exchange(frame(0x11, [], version: 9))) == 2)
        #expect(code(exchange([0xff, 0xff, 0xff, 0xff, 1, 0x11])) == 4)
        #expect(code(exchange(frame(0x16, [1, 2, 3]))) == 12)                                     // DATA outside REDACT
        // Still serving.
        #expect(text(try DaemonClient.resolve(socketPath: f.daemonSocket, project: "demo",
                                              document: Array("secrets.API_TOKEN".utf8), format: .expr,
                                              output: .bindings)).contains("api-token-line1"))
        Self.assertNoValueLogged(f)
    }
}
