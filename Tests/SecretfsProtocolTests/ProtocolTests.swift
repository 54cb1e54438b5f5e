import CShims
import Foundation
import Glibc
@testable import SecretfsProtocol
import SecretfsStore
import SecureMemory
import Synchronization
import Testing

/// The privileged socket in process: a temp store, a server on a temp path,
/// the library's client and hand-made frames.
struct ProtocolTests {
    // MARK: Requests

    @Test func listGetAndMissingNames() throws {
        let f = try Fixture()
        let binary: [UInt8] = [0, 1, 0xFF, 0x0A, 0x00, 0xC3]
        try f.put("API_KEY", "sk-live-1234")
        try f.put("BINARY", binary)
        try f.put("OTHER", "not-asked-for")

        let c = try PrivilegedClient(socketPath: f.socketPath)
        let listing = try c.list()
        #expect(listing.project == "demo")
        #expect(listing.secrets.map(\.name) == ["API_KEY", "BINARY", "OTHER"])
        let stored = try f.vault.list()
        #expect(listing.secrets.map(\.version) == stored.map(\.version))
        #expect(listing.secrets.map(\.updatedAt) == stored.map(\.updatedAt))
        #expect(listing.secrets.allSatisfy { $0.updatedBy == getuid() })
        #expect(listing.projectVersion == (try f.vault.currentVersion()))

        let got = try c.values(["API_KEY", "NOPE", "BINARY", "API_KEY"])
        #expect(Set(got.values.keys) == ["API_KEY", "BINARY"])
        #expect(bytes(got.values["API_KEY"]) == Array("sk-live-1234".utf8))
        #expect(bytes(got.values["BINARY"]) == binary)
        #expect(got.missing == ["NOPE"])
        #expect(got.projectVersion == (try f.vault.currentVersion()))

        // The same connection keeps serving; an empty GET is answered without a store read.
        let none = try c.values([])
        #expect(none.values.isEmpty && none.missing.isEmpty)

        let gets = try f.audit("get")
        #expect(gets.count == 1)
        #expect(gets.first?.names == "API_KEY,NOPE,BINARY")
        #expect(gets.first?.uid == getuid())
        #expect(gets.first?.pid == getpid())
        #expect(gets.first?.detail?.contains("sk-live") == false)
    }

    @Test func valuesThatDoNotFitOneReplyAreFetchedInBatches() throws {
        var limits = ServerLimits()
        limits.maxReplyFrame = 300
        let f = try Fixture(limits: limits)
        try f.put("A", [UInt8](repeating: 0x41, count: 200))
        try f.put("B", [UInt8](repeating: 0x42, count: 200))
        try f.put("C", [UInt8](repeating: 0x43, count: 400))
        let c = try PrivilegedClient(socketPath: f.socketPath)
        let got = try c.values(["A", "B"])
        #expect(bytes(got.values["A"])?.count == 200 && bytes(got.values["B"])?.count == 200)
        #expect(try f.audit("get").count == 3)   // A+B refused as one reply, then A, then B
        let e = #expect(throws: ProtocolError.self) { _ = try c.values(["C"]) }
        #expect(e?.serverCode == .replyTooLarge)
        #expect(e?.hint == "ask for fewer names at a time")
    }

    @Test func connectionsShareOneBudgetOfLockedFrameMemory() throws {
        // A peer that sends most of a large request and stops holds that
        // much locked memory; while it does, a GET whose reply would pass the
        // server's budget gets ERROR busy, and once it goes the GET is served.
        var limits = ServerLimits()
        limits.maxFrameMemory = 1 << 20
        let f = try Fixture(limits: limits)
        let big = [UInt8](repeating: 0x5a, count: 300 << 10)
        try f.put("BIG", big)
        let holder = rawConnect(f.socketPath)
        #expect(holder >= 0)
        let sent = 800 << 10
        #expect(rawSend(holder, be32(UInt32(900 << 10)) + [1, 0x02] + [UInt8](repeating: 0, count: sent - 2)))
        try waitUntil { f.server.frameMemory.total >= sent }

        let c = try PrivilegedClient(socketPath: f.socketPath)
        let e = #expect(throws: ProtocolError.self) { _ = try c.values(["BIG"]) }
        #expect(e?.serverCode == .busy)
        #expect(e.map { "\($0)" }?.contains("locked memory") == true, "\(String(describing: e))")
        c.close()

        close(holder)
        try waitUntil { f.server.frameMemory.total == 0 }
        let again = try PrivilegedClient(socketPath: f.socketPath)
        #expect(bytes(try again.values(["BIG"]).values["BIG"]) == big)
        again.close()
        try waitUntil { f.server.frameMemory.total == 0 }
    }

    // MARK: Watch
    // MARK: Watch

    @Test func feedReportsChangesAndEnds() throws {
        let f = try Fixture()
        try f.put("A", "one")
        let events = Mutex<[ChangeFeed.Event]>([])
        let feed = try PrivilegedClient.changeFeed(socketPath: f.socketPath) { e in events.withLock { $0.append(e) }; return true }
        #expect(f.server.watcherCount == 1)

        try f.put("A", "two")
        f.server.notifyChanged(["A"])
        try waitUntil { events.withLock { $0.count } == 1 }
        guard case .changed(let names, let complete)? = events.withLock({ $0.first }) else {
            Issue.record("no CHANGED event"); return
        }
        #expect(names == ["A"] && complete)

        try f.vault.rename("A", to: "B", actor: .current)
        f.server.notifyChanged(["A", "B"])
        try waitUntil { events.withLock { $0.count } == 2 }
        if case .changed(let names, _)? = events.withLock({ $0.last }) { #expect(names == ["A", "B"]) }

        // A delete does not move the project's version; the sequence still moves,
        // so a GET answered before it (sequence 2) is recognisably older.
        let before = try PrivilegedClient(socketPath: f.socketPath).values(["B"])
        #expect(before.sequence == 2)
        try f.vault.delete("B", actor: .current)
        f.server.notifyChanged(["B"])
        try waitUntil { events.withLock { $0.count } == 3 }
        #expect(f.server.changeSequence == 3)

        feed.cancel()
        try waitUntil { f.server.watcherCount == 0 }
        f.server.notifyChanged(["C"])
        usleep(100_000)
        #expect(events.withLock { $0.count } == 3)   // nothing after cancel, not even .lost
    }

    @Test func aFeedReconnectsAfterTheServerRestartsAndSaysSo() throws {
        let f = try Fixture()
        let events = Mutex<[ChangeFeed.Event]>([])
        let feed = try PrivilegedClient.changeFeed(socketPath: f.socketPath) { e in events.withLock { $0.append(e) }; return true }
        defer { feed.cancel() }
        f.server.notifyChanged(["X"])
        try waitUntil { events.withLock { $0.count } == 1 }
        f.server.stop()
        try waitUntil { events.withLock { $0.count } == 2 }
        guard case .lost(let e)? = events.withLock({ $0.last }) else { Issue.record("no .lost"); return }
        #expect(e.kind == .connectionClosed)
        #expect(access(f.socketPath, F_OK) != 0)   // unlinked at stop

        // The mount comes back (a remount): the feed subscribes again by itself.
        let again = PrivilegedSocketServer(vault: f.vault, socketPath: f.socketPath)
        try again.start()
        defer { again.stop() }
        try waitUntil { events.withLock { $0.count } == 3 }
        guard case .restored? = events.withLock({ $0.last }) else { Issue.record("no .restored"); return }
        again.notifyChanged(["Y"])
        try waitUntil { events.withLock { $0.count } == 4 }
        if case .changed(let names, _)? = events.withLock({ $0.last }) { #expect(names == ["Y"]) }
    }

    @Test func aHandlerThatCannotCatchUpMakesTheFeedResync() throws {
        let f = try Fixture()
        let events = Mutex<[ChangeFeed.Event]>([])
        let failOnce = Mutex(true)
        let feed = try PrivilegedClient.changeFeed(socketPath: f.socketPath) { e in
            events.withLock { $0.append(e) }
            if case .changed = e { return failOnce.withLock { f in defer { f = false }; return !f } }
            return true
        }
        defer { feed.cancel() }
        f.server.notifyChanged(["X"])
        // The failed handler is followed by a fresh subscription and .restored.
        try waitUntil { events.withLock { $0.count } == 2 }
        guard case .restored? = events.withLock({ $0.last }) else { Issue.record("no .restored"); return }
    }

    @Test func oneUidHoldsOnlySomeOfTheWatches() throws {
        var limits = ServerLimits()
        limits.maxWatchesPerUID = 3
        let f = try Fixture(limits: limits)
        var feeds: [ChangeFeed] = []
        defer { for feed in feeds { feed.cancel() } }
        for _ in 0..<3 { feeds.append(try PrivilegedClient.changeFeed(socketPath: f.socketPath) { _ in true }) }
        let e = #expect(throws: ProtocolError.self) { _ = try PrivilegedClient.changeFeed(socketPath: f.socketPath) { _ in true } }
        #expect(e?.serverCode == .busy)
        // Requests are still served.
        _ = try PrivilegedClient(socketPath: f.socketPath).list()
    }

    @Test func aSlowWatcherGetsAnIncompleteEventInsteadOfAnUnboundedQueue() throws {
        let w = try #require(ChangeQueue(limit: 3))
        w.enqueue(["A", "B"])
        w.enqueue(["B", "C"])
        let first = w.take()
        #expect(first?.names == ["A", "B", "C"] && first?.complete == true)
        #expect(w.take() == nil)
        w.enqueue(["A", "B", "C", "D"])
        w.enqueue(["E"])
        let second = w.take()
        #expect(second?.names == [] && second?.complete == false)
    }

    // MARK: The socket file

    @Test func socketModeAndGroup() throws {
        let f = try Fixture()
        var st = stat()
        #expect(lstat(f.socketPath, &st) == 0)
        #expect(st.st_mode & S_IFMT == S_IFSOCK)
        #expect(st.st_mode & 0o777 == 0o600)

        let g = try Fixture(policy: SocketPolicy(gids: [4242]))
        #expect(lstat(g.socketPath, &st) == 0)
        #expect(st.st_mode & 0o777 == 0o660)
        #expect(st.st_gid == 4242)

        // Other uids and a second group are admitted by the kernel through a
        // POSIX ACL (and only them): nothing for others.
        let a = try Fixture(policy: SocketPolicy(uids: [65534], gids: [4242, 4343]))
        #expect(lstat(a.socketPath, &st) == 0)
        #expect(st.st_mode & 0o007 == 0)
        let acl = try #require(posixACL(a.socketPath))
        #expect(acl.contains { $0 == (0x02, 6, 65534) })   // user:65534:rw-
        #expect(acl.contains { $0 == (0x08, 6, 4343) })    // group:4343:rw-
        #expect(acl.contains { $0.tag == 0x20 && $0.perm == 0 })   // other::---
    }

    /// The entries (tag, perm, id) of a file's access ACL.
    private func posixACL(_ path: String) -> [(tag: UInt16, perm: UInt16, id: UInt32)]? {
        var buf = [UInt8](repeating: 0, count: 4096)
        let n = secretfs_get_access_acl(path, &buf, UInt(buf.count))
        guard n >= 4 else { return nil }
        var out: [(tag: UInt16, perm: UInt16, id: UInt32)] = []
        var i = 4
        while i + 8 <= n {
            let tag = UInt16(buf[i]) | UInt16(buf[i + 1]) << 8
            let perm = UInt16(buf[i + 2]) | UInt16(buf[i + 3]) << 8
            let id = UInt32(buf[i + 4]) | UInt32(buf[i + 5]) << 8 | UInt32(buf[i + 6]) << 16 | UInt32(buf[i + 7]) << 24
            out.append((tag, perm, id))
            i += 8
        }
        return out
    }

    @Test func aStaleSocketIsReplacedALiveOneIsNot() throws {
        let f = try Fixture(start: false)
        // A socket file nobody listens on: what a crashed mount leaves.
        let stale = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in f.socketPath.utf8.enumerated() { raw[i] = b } }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(stale, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        #expect(rc == 0)
        close(stale)
        try f.server.start()
        _ = try PrivilegedClient(socketPath: f.socketPath).list()

        // A second server on the same path finds the first one answering.
        let other = PrivilegedSocketServer(vault: f.vault, socketPath: f.socketPath)
        let e = #expect(throws: ProtocolError.self) { try other.start() }
        #expect(e?.kind == .addressInUse)
        #expect(e?.message == "another process already serves \(f.socketPath)")
        _ = try PrivilegedClient(socketPath: f.socketPath).list()   // still the first one's

        // Anything that is not a socket is left alone.
        let plain = f.dir + "/plain.sock"
        #expect(FileManager.default.createFile(atPath: plain, contents: Data("x".utf8)))
        let third = PrivilegedSocketServer(vault: f.vault, socketPath: plain)
        let e3 = #expect(throws: ProtocolError.self) { try third.start() }
        #expect(e3?.kind == .notASocket)
        #expect(FileManager.default.fileExists(atPath: plain))
        // Once the cause is gone, the same server starts.
        #expect(unlink(plain) == 0)
        try third.start()
        _ = try PrivilegedClient(socketPath: plain).list()
        third.stop()
        #expect(access(plain, F_OK) != 0)
    }

    @Test func clientErrorsNameTheSocket() throws {
        let f = try Fixture(start: false)
        let e = #expect(throws: ProtocolError.self) { _ = try PrivilegedClient(socketPath: f.socketPath) }
        #expect(e?.kind == .notListening)
        #expect(f.socketPath == MountSocket.path(runtimeDirectory: f.dir, project: "demo"))
        #expect(e?.message == "project demo is not mounted (no socket at \(f.socketPath))", "the project is named")
        #expect(e?.hint?.contains("secretfs mount demo DIR") == true)
        let other = #expect(throws: ProtocolError.self) { _ = try PrivilegedClient(socketPath: f.dir + "/socket") }
        #expect(other?.message == "the project is not mounted (no socket at \(f.dir)/socket)", "a path of no project's shape")
        #expect(e?.hint != nil)

        let stale = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in f.socketPath.utf8.enumerated() { raw[i] = b } }
        _ = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(stale, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        close(stale)
        let e2 = #expect(throws: ProtocolError.self) { _ = try PrivilegedClient(socketPath: f.socketPath) }
        #expect(e2?.kind == .connectionRefused)
        #expect(e2?.message == "nothing answers on \(f.socketPath) (stale socket)")

        let long = "/tmp/" + String(repeating: "x", count: 120)
        let e3 = #expect(throws: ProtocolError.self) { _ = try PrivilegedClient(socketPath: long) }
        #expect(e3?.kind == .pathTooLong)
    }

    // MARK: Who may connect

    @Test func anotherUidIsRefusedGetsAnErrorAndIsAudited() throws {
        // The socket file lets uid 65534 in (group 65534), the allow-list does not.
        let f = try Fixture(policy: SocketPolicy(socketGroup: 65534))
        try f.put("TOKEN", "refused-peer-must-not-see-this")
        let out = try runAs(uid: 65534, gid: 65534, socket: f.socketPath, names: ["TOKEN"])
        #expect(!out.hasPrefix("connect-error"), "\(out)")
        let frames = try #require(splitFrames(hexBytes(out)), "\(out)")
        #expect(frames.count == 1)
        #expect(frames.first?.0 == 0xFF)
        #expect(errorCode(frames.first?.1 ?? []) == WireErrorCode.notAllowed.rawValue)
        #expect(!contains(hexBytes(out), Array("refused-peer-must-not-see-this".utf8)))
        #expect(String(decoding: frames.first?.1.dropFirst(4) ?? [], as: UTF8.self) == "uid 65534 is not allowed on this socket")

        try waitUntil { (try? f.audit("refused").count) == 1 }
        let row = try #require(try f.audit("refused").first)
        #expect(row.uid == 65534)
        #expect(row.pid > 0)
        #expect(row.detail?.contains("uid 65534 gid 65534") == true)
        #expect(try f.audit("get").isEmpty)
    }

    @Test func aMemberOfAnAllowedGroupIsAdmitted() throws {
        let f = try Fixture(policy: SocketPolicy(gids: [4242]))
        try f.put("TOKEN", "group-member-value")
        // Primary group.
        let out = try runAs(uid: 65534, gid: 4242, socket: f.socketPath, names: ["TOKEN", "NOPE"])
        let frames = try #require(splitFrames(hexBytes(out)), "\(out)")
        #expect(frames.first?.0 == 0x82)
        #expect(contains(hexBytes(out), Array("group-member-value".utf8)))
        // Supplementary group only.
        let out2 = try runAs(uid: 65534, gid: 65534, groups: [4242], socket: f.socketPath, names: ["TOKEN"])
        #expect(splitFrames(hexBytes(out2))?.first?.0 == 0x82, "\(out2)")
        // Neither: the file mode already keeps it out (group 4242, mode 0660).
        let out3 = try runAs(uid: 65534, gid: 65534, socket: f.socketPath, names: ["TOKEN"])
        #expect(out3 == "connect-error 13")

        let gets = try f.audit("get")
        #expect(gets.count == 2)
        #expect(gets.allSatisfy { $0.uid == 65534 })
        #expect(gets.first?.names == "TOKEN,NOPE")
    }

    @Test func policyAlwaysAllowsTheOwnerAndOthersAddToIt() {
        let me = getuid()
        let owner = PeerCredentials(uid: me, gid: 1, pid: 1)
        let stranger = PeerCredentials(uid: 65534, gid: 65534, pid: 1)
        #expect(SocketPolicy().allows(owner))
        #expect(!SocketPolicy().allows(stranger))
        #expect(SocketPolicy(gids: [4242]).allows(owner))
        #expect(SocketPolicy(gids: [4242]).allows(PeerCredentials(uid: 65534, gid: 4242, pid: 1)))
        #expect(SocketPolicy(gids: [4242]).allows(PeerCredentials(uid: 65534, gid: 65534, pid: 1, groups: [7, 4242])))
        #expect(!SocketPolicy(gids: [4242]).allows(stranger))
        #expect(SocketPolicy(uids: [65534]).allows(stranger))
        #expect(SocketPolicy(uids: [65534]).allows(owner))   // other uids add to the owner, never replace it
        #expect(SocketPolicy(gids: [4242]).fileGroup == 4242)
        #expect(SocketPolicy().fileGroup == nil)
    }

    // MARK: Malformed input

    @Test func malformedRequestsGetErrorFrames() throws {
        let f = try Fixture()
        try f.put("A", "value-a")
        func exchange(_ data: [UInt8]) -> [(UInt8, [UInt8])] {
            let fd = rawConnect(f.socketPath)
            defer { close(fd) }
            rawSend(fd, data)
            shutdown(fd, Int32(SHUT_WR))
            return splitFrames(rawReadAll(fd)) ?? []
        }
        func codes(_ frames: [(UInt8, [UInt8])]) -> [UInt16?] { frames.map { $0.0 == 0xFF ? errorCode($0.1) : nil } }

        #expect(codes(exchange(be32(0))) == [WireErrorCode.frameTooLarge.rawValue])
        #expect(codes(exchange(be32(1) + [1])) == [WireErrorCode.frameTooLarge.rawValue])
        #expect(codes(exchange(be32(UInt32(Wire.maxRequestFrame + 1)))) == [WireErrorCode.frameTooLarge.rawValue])
        #expect(codes(exchange(be32(0xFFFF_FFFF) + [1, 2, 3])) == [WireErrorCode.frameTooLarge.rawValue])
        #expect(codes(exchange(frame(type: 1, version: 2))) == [WireErrorCode.unsupportedVersion.rawValue])
        // Recoverable errors keep the connection: the LIST after each one is answered.
        let list = frame(type: 1)
        #expect(codes(exchange(frame(type: 0x7E) + list)) == [WireErrorCode.unknownType.rawValue, nil])
        #expect(codes(exchange(frame(type: 0x82) + list)) == [WireErrorCode.unknownType.rawValue, nil])
        #expect(codes(exchange(frame(type: 1, body: [0]) + list)) == [WireErrorCode.malformed.rawValue, nil])
        #expect(codes(exchange(frame(type: 2, body: [0]) + list)) == [WireErrorCode.malformed.rawValue, nil])
        #expect(codes(exchange(frame(type: 2, body: getBody(["A"]) + [0]) + list)) == [WireErrorCode.malformed.rawValue, nil])
        #expect(codes(exchange(frame(type: 2, body: be16(2) + be16(1) + [0x41]) + list)) == [WireErrorCode.malformed.rawValue, nil])
        #expect(codes(exchange(frame(type: 2, body: getBody(["A", "not-valid"])) + list)) == [WireErrorCode.invalidName.rawValue, nil])
        #expect(codes(exchange(frame(type: 2, body: getBody(["A", ".hidden"])) + list)) == [WireErrorCode.invalidName.rawValue, nil])
        #expect(codes(exchange(frame(type: 2, body: be16(0x1001)) + list)) == [WireErrorCode.tooManyNames.rawValue, nil])
        #expect(codes(exchange(frame(type: 3, body: [1]))) == [WireErrorCode.malformed.rawValue])
        // Truncated: the server closes without a word.
        #expect(exchange(be32(10) + [1, 1, 0]).isEmpty)
        #expect(exchange([0, 0]).isEmpty)
        // A watcher that talks is cut off.
        let w = exchange(frame(type: 3) + list)
        #expect(w.map(\.0) == [0x83, 0xFF])
        #expect(errorCode(w.last?.1 ?? []) == WireErrorCode.unexpected.rawValue)
        // Error messages never carry a value, and nothing here read one.
        #expect(try f.audit("get").isEmpty)
    }

    @Test func idleConnectionsTimeOut() throws {
        var limits = ServerLimits()
        limits.idleTimeout = 0.3
        let f = try Fixture(limits: limits)
        let fd = rawConnect(f.socketPath)
        defer { close(fd) }
        rawSend(fd, be32(6) + [1])   // half a frame, then silence
        let start = Date()
        let frames = splitFrames(rawReadAll(fd, timeout: 3)) ?? []
        #expect(Date().timeIntervalSince(start) < 2)
        #expect(frames.count == 1 && errorCode(frames[0].1) == WireErrorCode.timeout.rawValue)
        let c = try PrivilegedClient(socketPath: f.socketPath, timeout: 2)
        _ = try c.list()
    }

    @Test func tooManyConnectionsAreTurnedAway() throws {
        var limits = ServerLimits()
        limits.maxConnections = 4   // three per uid
        limits.idleTimeout = 20
        let f = try Fixture(policy: SocketPolicy(uids: [65534]), limits: limits)
        try f.put("TOKEN", "v")
        let held = try (0..<3).map { _ in try PrivilegedClient(socketPath: f.socketPath) }
        for c in held { _ = try c.list() }
        // One uid holds at most its share: the fourth connection is refused...
        let extra = try PrivilegedClient(socketPath: f.socketPath)
        let e = #expect(throws: ProtocolError.self) { _ = try extra.list() }
        #expect(e?.serverCode == .busy)
        #expect(e.map { "\($0)" }?.contains("from uid \(geteuid())") == true, "\(String(describing: e))")
        // ...and another allowed uid still gets the slot left.
        let other = try runAs(uid: 65534, gid: 65534, socket: f.socketPath, names: ["TOKEN"])
        let frames = try #require(splitFrames(hexBytes(other)), "\(other)")
        #expect(frames.first?.0 != 0xFF, "the other uid was refused: \(other)")
        // With every slot taken the limit is the total's.
        let fourth = try ForeignHolder(uid: 65534, socket: f.socketPath)
        defer { fourth.stop() }
        try waitUntil { f.server.connectionCount == 4 }
        let last = try PrivilegedClient(socketPath: f.socketPath)
        let full = #expect(throws: ProtocolError.self) { _ = try last.list() }
        #expect(full.map { "\($0)" }?.contains("too many connections (limit 4)") == true, "\(String(describing: full))")
        held[0].close()
        try waitUntil { f.server.connectionCount < 4 }
        _ = try PrivilegedClient(socketPath: f.socketPath).list()
    }

    @Test func allowedUIDsTogetherCannotTakeTheOwnersLastSlots() throws {
        var limits = ServerLimits()
        limits.maxConnections = 4   // three per uid, and three for the allowed uids together
        limits.idleTimeout = 20
        let f = try Fixture(policy: SocketPolicy(uids: [65534, 65533]), limits: limits)
        try f.put("TOKEN", "v")
        let holders = try [65534, 65534, 65533].map { try ForeignHolder(uid: $0, socket: f.socketPath) }
        defer { for h in holders { h.stop() } }
        try waitUntil { f.server.connectionCount == 3 }
        // A second uid's connection, within its own share, is refused: the
        // allowed uids hold all they may together.
        let refused = try runAs(uid: 65533, gid: 65533, socket: f.socketPath, names: ["TOKEN"])
        let frames = try #require(splitFrames(hexBytes(refused)), "\(refused)")
        #expect(frames.first?.0 == 0xFF && errorCode(frames[0].1) == WireErrorCode.busy.rawValue, "\(refused)")
        #expect(String(decoding: frames[0].1, as: UTF8.self).contains("kept for the socket's owner"), "\(refused)")
        // The owner still gets in.
        #expect(try PrivilegedClient(socketPath: f.socketPath).values(["TOKEN"]).values["TOKEN"] != nil)
    }

    @Test func concurrentClients() throws {
        let f = try Fixture()
        for i in 0..<8 { try f.put("S\(i)", "value-\(i)") }
        let failures = Mutex(0)
        DispatchQueue.concurrentPerform(iterations: 8) { i in
            do {
                let c = try PrivilegedClient(socketPath: f.socketPath)
                for _ in 0..<10 {
                    let got = try c.values(["S\(i)"])
                    if bytes(got.values["S\(i)"]) != Array("value-\(i)".utf8) { failures.withLock { $0 += 1 } }
                }
            } catch {
                failures.withLock { $0 += 1 }
            }
        }
        #expect(failures.withLock { $0 } == 0)
        #expect(try f.audit("get").count == 80)
    }

    // MARK: Fuzz

    /// Thousands of random, truncated, oversized and garbage frames, some
    /// connections dropped mid-frame or mid-reply; the server answers with
    /// ERROR frames or closes, never sends a value it was not asked for by a
    /// valid GET, and serves a valid client afterwards.
    @Test func fuzzNeverCrashesNorLeaks() throws {
        var limits = ServerLimits()
        limits.idleTimeout = 0.5
        let f = try Fixture(limits: limits)
        let secret = Array("fuzz-secret-\u{1}value".utf8)
        try f.put("FUZZ_SECRET_NAME", secret)
        var rng = SplitMix64(seed: 0x5EC2_E7F5)
        var framesSent = 0
        var connections = 0
        while framesSent < 3000 {
            connections += 1
            let fd = rawConnect(f.socketPath)
            guard fd >= 0 else { Issue.record("connect failed"); return }
            var data: [UInt8] = []
            for _ in 0..<Int.random(in: 1...12, using: &rng) {
                framesSent += 1
                switch rng.next() % 9 {
                case 0:   // garbage
                    data += (0..<Int.random(in: 1...64, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
                case 1:   // well framed, random version, type and body
                    let body = (0..<Int.random(in: 0...64, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
                    data += frame(type: UInt8.random(in: 0...255, using: &rng),
                                  version: rng.next() % 4 == 0 ? UInt8.random(in: 0...255, using: &rng) : 1, body: body)
                case 2:   // oversized length
                    data += be32(UInt32.random(in: UInt32(Wire.maxRequestFrame + 1)...UInt32.max, using: &rng)) + [1, 1]
                case 3:   // zero or one
                    data += be32(UInt32(rng.next() % 2))
                case 4:   // truncated: a length promising more than follows
                    let n = Int.random(in: 3...200, using: &rng)
                    data += be32(UInt32(n)) + [1, 2] + [UInt8](repeating: 0x41, count: Int.random(in: 0..<(n - 2), using: &rng))
                case 5:   // GET with names of random bytes (mostly invalid)
                    var body = be16(UInt16(rng.next() % 6))
                    for _ in 0..<Int(rng.next() % 6) {
                        let name = (0..<Int.random(in: 0...8, using: &rng)).map { _ in UInt8.random(in: 0x20...0x7e, using: &rng) }
                        body += be16(UInt16(name.count)) + name
                    }
                    data += frame(type: 2, body: body)
                case 6:   // GET with a length field that lies about the name
                    data += frame(type: 2, body: be16(1) + be16(UInt16.random(in: 0...UInt16.max, using: &rng)) + [0x41])
                case 7:
                    data += frame(type: 1)
                default:  // WATCH, then whatever follows
                    data += frame(type: 3)
                }
            }
            // Send in random pieces.
            var off = 0
            while off < data.count {
                let n = min(data.count - off, Int.random(in: 1...256, using: &rng))
                if !rawSend(fd, Array(data[off..<(off + n)])) { break }
                off += n
            }
            if rng.next() % 4 == 0 {
                close(fd)   // abrupt: replies unread
                continue
            }
            shutdown(fd, Int32(SHUT_WR))
            let reply = rawReadAll(fd, timeout: 3)
            close(fd)
            #expect(!contains(reply, secret), "a value in the reply to connection \(connections)")
            if let frames = splitFrames(reply) {
                #expect(frames.allSatisfy { [0x81, 0x82, 0x83, 0xFF].contains($0.0) })
            } else {
                Issue.record("reply to connection \(connections) does not split into frames")
            }
        }
        #expect(connections > 300)
        // Still serving, and the valid client still gets its value.
        try waitUntil(timeout: 5) { f.server.connectionCount == 0 }
        let c = try PrivilegedClient(socketPath: f.socketPath)
        #expect(bytes(try c.values(["FUZZ_SECRET_NAME"]).values["FUZZ_SECRET_NAME"]) == secret)
    }
}

func waitUntil(timeout: Double = 5, _ condition: () throws -> Bool) throws {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if try condition() { return }
        usleep(2_000)
    }
    Issue.record("condition not met within \(timeout) s")
    throw CancellationError()
}

/// Values parsed from a frame, and values decrypted together, are slices of
/// one locked buffer (SecureBytes(slicing:)): they must read their own bytes,
/// wipe only their own range, and keep the buffer alive after every other
/// reference to it is gone.
@Test func secureSlicesShareAndOutliveTheirBuffer() {
    var parent: SecureBytes? = Array("abcdefgh".utf8).withUnsafeBytes { SecureBytes(copying: $0) }
    let first = SecureBytes(slicing: parent!, offset: 1, count: 2)
    let second = SecureBytes(slicing: first, offset: 1, count: 1)   // a slice of a slice: same buffer
    let last = SecureBytes(slicing: parent!, offset: 5, count: 3)
    #expect(first.withUnsafeBytes { Array($0) } == Array("bc".utf8))
    #expect(second.withUnsafeBytes { Array($0) } == Array("c".utf8))
    first.wipe()
    #expect(parent!.withUnsafeBytes { Array($0) } == Array("a".utf8) + [0, 0] + Array("defgh".utf8))
    parent = nil
    #expect(last.withUnsafeBytes { Array($0) } == Array("fgh".utf8), "the slice keeps the buffer alive")
    let more = Array("x".utf8)
    #expect(!more.withUnsafeBytes { last.append($0) }, "a slice cannot grow into its neighbours")
    // An empty slice at the very end of its buffer points at the guard page
    // after it: wiping it (and dropping it) must touch nothing.
    let end = SecureBytes(slicing: last, offset: 3, count: 0)
    end.wipe()
    #expect(end.isEmpty && last.withUnsafeBytes { Array($0) } == Array("fgh".utf8))
}
