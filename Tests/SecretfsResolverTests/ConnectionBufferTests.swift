import Foundation
import Glibc
import SecretfsInject
import SecretfsPOSIX
import SecretfsProtocol
@testable import SecretfsResolver
import SecureMemory
import Testing

/// A daemon connection keeps one locked buffer for its requests and one for
/// its replies (instead of a `sodium_malloc` each per request). What must
/// hold: a request never sees what an earlier one on the same connection
/// left behind, a request larger than the buffer grows it (within the frame
/// limit) and the connection goes on serving, and a reply buffer is wiped
/// between replies.
@Suite(.serialized) struct ConnectionBufferTests {
    @Test func requestsOnOneConnectionSeeNothingOfEachOther() throws {
        let f = try ResolverDaemonTests.populated()
        let c = try SocketConnection(socketPath: f.daemonSocket, service: .daemon, timeout: 10)
        defer { c.close() }
        let local = try f.mountSource()

        // A large reply with every value, then small ones, on one connection.
        let flow = try fixture("demo-bot.flow.yaml")
        let first = try DaemonClient.resolve(on: c, project: "demo", document: flow, format: .flow, output: .bindings)
        #expect(bytes(first) == bytes(try Resolver.resolve(flow, format: .flow, output: .bindings, source: local)))
        let short = Array("secrets.DEMO_BOT_SLACK_BOT_TOKEN".utf8)
        for _ in 0..<3 {
            let second = try DaemonClient.resolve(on: c, project: "demo", document: short, format: .expr, output: .document)
            #expect(bytes(second) == bytes(try Resolver.resolve(short, format: .expr, output: .document, source: local)))
            for (name, value) in ResolverDaemonTests.flowValues where name != "DEMO_BOT_SLACK_BOT_TOKEN" {
                for line in value.split(separator: "\n") where line.count >= 6 {
                    #expect(!text(second).contains(line), "a value of an earlier reply on the connection")
                }
            }
        }

        // A document far larger than the connection's buffer (300 KiB of
        // comment around one reference) grows it, and is resolved whole.
        let padding = String(repeating: "x", count: 300 << 10)
        let large = Array("/* \(padding) */ secrets.API_TOKEN".utf8)
        let big = try DaemonClient.resolve(on: c, project: "demo", document: large, format: .expr, output: .document)
        #expect(bytes(big) == bytes(try Resolver.resolve(large, format: .expr, output: .document, source: local)))
        // The connection still serves small requests after it.
        let after = try DaemonClient.resolve(on: c, project: "demo", document: short, format: .expr, output: .bindings)
        #expect(text(after) == "{\"DEMO_BOT_SLACK_BOT_TOKEN\":\"xoxb-daemon-slack-token\"}\n")

        // Past the request limit: frame-too-large, as before the buffer was reused.
        let fd = c.fd
        let header: [UInt8] = [0x01, 0x00, 0x00, 0x03]   // 16 MiB + 3: over the 16 MiB limit
        _ = header.withUnsafeBytes { send(fd, $0.baseAddress!, $0.count, Int32(MSG_NOSIGNAL)) }
        do {
            _ = try c.receive(expect: [], deadline: monotonicSeconds() + 5)
            Issue.record("expected an ERROR")
        } catch {
            #expect(error.serverCode == .frameTooLarge)
        }
        ResolverDaemonTests.assertNoValueLogged(f)
    }

    @Test func allConnectionsShareOneBudgetOfLockedFrameMemory() throws {
        // A client that sends most of a large request and stops holds that
        // much locked memory; with the daemon's budget held, another
        // connection's large request gets ERROR busy (not a lock of memory
        // without end), and once the holder goes the same request is served.
        var limits = ResolverDaemonLimits()
        limits.maxFrameMemory = 1 << 20
        let f = try ResolverDaemonTests.populated(limits: limits)
        let holder = try SocketConnection(socketPath: f.daemonSocket, service: .daemon, timeout: 10)
        let announced = 900 << 10, sent = 800 << 10
        var partial: [UInt8] = [UInt8(announced >> 24), UInt8((announced >> 16) & 0xff), UInt8((announced >> 8) & 0xff), UInt8(announced & 0xff)]
        partial += [DaemonWire.version, 0x10] + [UInt8](repeating: 0x20, count: sent - 2)
        var off = 0
        while off < partial.count {
            let n = partial[off...].withUnsafeBytes { send(holder.fd, $0.baseAddress!, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { break }
            off += n
        }
        #expect(try waitUntil { f.daemon.frameMemory.total >= sent })

        let padding = String(repeating: "x", count: 300 << 10)
        let large = Array("/* \(padding) */ secrets.API_TOKEN".utf8)
        let c = try SocketConnection(socketPath: f.daemonSocket, service: .daemon, timeout: 10)
        do {
            _ = try DaemonClient.resolve(on: c, project: "demo", document: large, format: .expr, output: .document)
            Issue.record("expected ERROR busy while the budget is held")
        } catch {
            #expect((error as? ProtocolError)?.serverCode == .busy, "\(error)")
            #expect("\(error)".contains("locked memory"), "\(error)")
        }
        c.close()
        // Small requests fit beside the holder.
        let small = try SocketConnection(socketPath: f.daemonSocket, service: .daemon, timeout: 10)
        let short = Array("secrets.API_TOKEN".utf8)
        #expect(!bytes(try DaemonClient.resolve(on: small, project: "demo", document: short, format: .expr, output: .document)).isEmpty)
        small.close()

        holder.close()
        #expect(try waitUntil { f.daemon.frameMemory.total == 0 })
        let again = try SocketConnection(socketPath: f.daemonSocket, service: .daemon, timeout: 10)
        defer { again.close() }
        let local = try f.mountSource()
        let resolved = try DaemonClient.resolve(on: again, project: "demo", document: large, format: .expr, output: .document)
        #expect(bytes(resolved) == bytes(try Resolver.resolve(large, format: .expr, output: .document, source: local)))
        ResolverDaemonTests.assertNoValueLogged(f)
    }

    @Test func oneUIDHoldsAtMostItsShareOfTheBudgetWhenSeveralMayConnect() {
        let shared = MemoryBudget(limit: 1000, policy: SocketPolicy(uids: [65534]))
        #expect(shared.perUIDLimit == 750)
        let mine = shared.account(uid: getuid()), theirs = shared.account(uid: 65534)
        #expect(mine.take(700))
        #expect(!mine.take(100) && mine.lastTakeRefused && mine.held == 700)
        #expect(mine.refusal.contains("uid \(getuid())"))
        #expect(theirs.take(300) && !theirs.lastTakeRefused)
        #expect(!theirs.take(1), "the server's limit holds for every uid")
        #expect(mine.resize(from: 700, to: 100) && shared.total == 400)
        #expect(theirs.take(350))
        do {
            // Another connection of the same uid counts toward its share.
            let more = shared.account(uid: 65534)
            #expect(!more.take(101))
            #expect(more.take(100))
            #expect(shared.total == 850)
        }
        // An account that goes gives back what it held.
        #expect(shared.total == 750)
        // With one uid, that uid may hold it all.
        let alone = MemoryBudget(limit: 1000, policy: SocketPolicy())
        #expect(alone.perUIDLimit == 1000)
    }

    @Test func allowedUIDsTogetherLeaveTheOwnerAQuarter() {
        // Two allowed uids, each within its own share, must not take the
        // owner's last quarter between them: of slots or of memory.
        var slots = Holdings(limit: 64, policy: SocketPolicy(uids: [1001, 1002]))
        #expect(slots.share == 48)
        for _ in 0..<40 { #expect(slots.take(1, for: 1001) == nil) }
        for _ in 0..<8 { #expect(slots.take(1, for: 1002) == nil) }
        #expect(slots.take(1, for: 1002) == .othersTogether)
        for _ in 0..<16 { #expect(slots.take(1, for: getuid()) == nil) }
        #expect(slots.take(1, for: getuid()) == .total)
        slots.give(1, for: 1001)
        #expect(slots.heldByOthers == 47 && slots.take(1, for: 1002) == nil)

        let budget = MemoryBudget(limit: 1000, policy: SocketPolicy(uids: [1001, 1002]))
        let a = budget.account(uid: 1001), b = budget.account(uid: 1002), owner = budget.account(uid: getuid())
        #expect(a.take(500) && b.take(250))
        #expect(!b.take(1) && b.lastTakeRefused)
        #expect(owner.take(250) && budget.total == 1000)
    }

    @Test func aReplyBufferIsWipedBetweenReplies() throws {
        let reply = ReplyBuffer(retainedCapacity: 64 << 10)
        let secret = Array("reply-secret-value".utf8)
        func fillAll(_ body: UnsafeMutableRawBufferPointer) {
            for i in 0..<body.count { body[i] = secret[i % secret.count] }
        }
        guard let first = reply.frame(.resolved, prefix: 2000, bodySize: 2000) else { Issue.record("no memory"); return }
        fillAll(first)
        reply.wipe()
        // The next reply's room, before it is filled, is zeros: nothing of the last one.
        guard let second = reply.frame(.resolved, prefix: 3000, bodySize: 3000) else { Issue.record("no memory"); return }
        #expect(second.allSatisfy { $0 == 0 })
        fillAll(second)
        reply.wipe()

        // A reply larger than the buffer gets a larger one; after it, the
        // next reply's room is zeros too.
        guard let large = reply.frame(.resolved, prefix: nil, bodySize: 200 << 10) else { Issue.record("no memory"); return }
        #expect(large.count == 200 << 10 && large.allSatisfy { $0 == 0 })
        fillAll(large)
        reply.wipe()
        guard let small = reply.frame(.valuesReply, prefix: 1, bodySize: 100) else { Issue.record("no memory"); return }
        #expect(small.allSatisfy { $0 == 0 })
        reply.wipe()

        // A room written before the size is known (a RESOLVE written in one
        // pass): when no frame was finished (the output did not fit, or was
        // refused) it is wiped whole; when one was, its body is what was written.
        guard let room = reply.room(headerBytes: 10) else { Issue.record("no memory"); return }
        fillAll(room)
        reply.wipe()
        guard let again = reply.room(headerBytes: 10) else { Issue.record("no memory"); return }
        #expect(again.count == room.count && again.allSatisfy { $0 == 0 })
        fillAll(UnsafeMutableRawBufferPointer(rebasing: again[0..<5]))
        reply.finish(.resolved, prefix: 5, bodySize: 5)
        reply.wipe()
        guard let third = reply.room(headerBytes: 10) else { Issue.record("no memory"); return }
        #expect(third.allSatisfy { $0 == 0 })
        reply.wipe()
    }

    @Test func aConnectionsRememberedScanStillGetsFreshValues() throws {
        let f = try ResolverDaemonTests.populated()
        let c = try SocketConnection(socketPath: f.daemonSocket, service: .daemon, timeout: 10)
        defer { c.close() }
        let doc = Array("`Bearer ${secrets.ANTHROPIC_API_KEY}`".utf8)
        let before = try DaemonClient.resolve(on: c, project: "demo", document: doc, format: .expr, output: .document)
        #expect(text(before).contains("sk-ant-daemon"))
        let invalidations = f.daemon.cacheStats(project: "demo")!.invalidations
        try f.change("ANTHROPIC_API_KEY", "sk-ant-rotated-value")
        #expect(try waitUntil { f.daemon.cacheStats(project: "demo")!.invalidations > invalidations })
        // The same document on the same connection (its scan is reused): the new value.
        let after = try DaemonClient.resolve(on: c, project: "demo", document: doc, format: .expr, output: .document)
        #expect(text(after) == "`Bearer ${\"sk-ant-rotated-value\"}`")
        // The same bytes as another format are scanned as that format: as a
        // config the field is an expression with a reference; as an
        // expression it is an object literal whose string is left alone.
        let both = Array("{\"k\": \"secrets.ANTHROPIC_API_KEY\"}".utf8)
        let asConfig = try DaemonClient.resolve(on: c, project: "demo", document: both, format: .config, output: .document)
        #expect(text(asConfig).contains("sk-ant-rotated-value"))
        let asExpr = try DaemonClient.resolve(on: c, project: "demo", document: both, format: .expr, output: .document)
        #expect(bytes(asExpr) == both)
        ResolverDaemonTests.assertNoValueLogged(f, extra: ["sk-ant-rotated-value"])
    }

    @Test func theScanMemoIsBounded() {
        let memo = ScanMemo(maxEntries: 2, maxBytes: 64)
        let a = Array("secrets.A".utf8), b = Array("secrets.B".utf8), c = Array("secrets.C".utf8)
        #expect(memo.scan(a, format: .expr).scan.referencedNames == ["A"])
        #expect(memo.scan(b, format: .expr).scan.referencedNames == ["B"])
        #expect(memo.count == 2)
        #expect(memo.scan(a, format: .expr).scan.referencedNames == ["A"])   // a hit: A is now the most recent
        #expect(memo.scan(c, format: .expr).scan.referencedNames == ["C"])   // B goes
        #expect(memo.count == 2)
        // A document over the byte budget is scanned, never kept.
        let big = Array(("secrets.D /* " + String(repeating: "x", count: 80) + " */").utf8)
        #expect(memo.scan(big, format: .expr).scan.referencedNames == ["D"])
        #expect(memo.count == 2)
        // The same bytes in another format are another scan.
        #expect(memo.scan(a, format: .config).scan.problems.isEmpty == false)
    }
}
