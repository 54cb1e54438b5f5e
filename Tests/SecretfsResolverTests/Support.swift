@_exported import SecretfsTestSupport
import Foundation
import Glibc
import Logging
import SecretfsProtocol
import SecretfsResolver
import SecretfsStore
import SecureMemory
import Synchronization

/// Every log line, for proving that no value is ever logged.
final class LogCapture: @unchecked Sendable {
    let lines = Mutex<[String]>([])
    var all: String { lines.withLock { $0.joined(separator: "\n") } }
    func append(_ s: String) { lines.withLock { $0.append(s) } }
}

struct CapturingLogHandler: LogHandler {
    let capture: LogCapture
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
    func log(event: LogEvent) {
        var all = metadata
        if let extra = event.metadata { all.merge(extra) { $1 } }
        capture.append("\(event.level) \(event.message) " + all.keys.sorted().map { "\($0)=\(all[$0]!)" }.joined(separator: " "))
    }
}

/// A temp store with project `demo`, its mount socket (a real
/// `PrivilegedSocketServer`) at RUNTIME/demo.sock, and a resolver daemon in
/// this process on DIR/resolver.sock, both logging into `log`.
final class DaemonFixture: @unchecked Sendable {
    let dir: String
    let runtime: String
    let store: Store
    let vault: ProjectVault
    let server: PrivilegedSocketServer
    let daemon: ResolverDaemon
    let daemonSocket: String
    let log = LogCapture()

    init(policy: SocketPolicy = SocketPolicy(), limits daemonLimits: ResolverDaemonLimits = ResolverDaemonLimits()) throws {
        var template = Array("/tmp/sfs-resolver-XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else { throw POSIXError(.EIO) }
        dir = String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
        chmod(dir, 0o755)   // setpriv'd clients (uid 65534) must reach the daemon's socket
        runtime = dir + "/run"
        mkdir(runtime, 0o755)
        store = try Store.create(at: StoreLocation(directory: dir + "/store"), keySource: .keyFile)
        try store.createProject("demo")
        vault = try store.openProject("demo")
        let capture = log
        var logger = Logger(label: "test") { _ in CapturingLogHandler(capture: capture) }
        logger.logLevel = .trace
        var limits = ServerLimits()
        limits.idleTimeout = 5
        server = PrivilegedSocketServer(vault: vault, socketPath: runtime + "/demo.sock", limits: limits, logger: logger)
        try server.start()
        daemonSocket = dir + "/resolver.sock"
        daemon = ResolverDaemon(socketPath: daemonSocket, runtimeDirectory: runtime, policy: policy, limits: daemonLimits, logger: logger)
        try daemon.start()
    }

    deinit {
        daemon.stop()
        server.stop()
        try? FileManager.default.removeItem(atPath: dir)
    }

    func put(_ name: String, _ value: [UInt8]) throws {
        let b = value.withUnsafeBytes { SecureBytes(copying: $0) }
        defer { b.wipe() }
        _ = try vault.put(name, value: b, actor: .current)
    }

    func put(_ name: String, _ value: String) throws { try put(name, Array(value.utf8)) }

    /// A value changed the way the mount changes it: store, then notify.
    func change(_ name: String, _ value: String) throws {
        try put(name, value)
        server.notifyChanged([name])
    }

    func gets() throws -> [AuditEvent] {
        try store.auditEvents(project: "demo").filter { $0.action == "get" }
    }

    /// Values through the mount's socket directly (what local resolution uses).
    final class MountSource: ValueSource {
        let client: PrivilegedClient
        init(_ path: String) throws { client = try PrivilegedClient(socketPath: path) }
        func values(_ names: [String]) throws -> [String: SecureBytes] { try client.values(names).values }
        func names() throws -> [String] { try client.list().secrets.map(\.name) }
    }

    func mountSource() throws -> MountSource { try MountSource(runtime + "/demo.sock") }
}

func text(_ b: SecureBytes) -> String { b.withUnsafeBytes { String(decoding: $0, as: UTF8.self) } }
func bytes(_ b: SecureBytes) -> [UInt8] { b.withUnsafeBytes { Array($0) } }

func contains(_ hay: [UInt8], _ needle: [UInt8]) -> Bool {
    guard !needle.isEmpty, hay.count >= needle.count else { return false }
    for i in 0...(hay.count - needle.count) where hay[i] == needle[0] {
        if Array(hay[i..<(i + needle.count)]) == needle { return true }
    }
    return false
}

func waitUntil(_ timeout: Double = 3, _ condition: () throws -> Bool) throws -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if try condition() { return true }
        usleep(5_000)
    }
    return try condition()
}

let fixtures: URL = {
    let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    return repo.appendingPathComponent("Tests/Fixtures")
}()

func fixture(_ name: String) throws -> [UInt8] {
    Array(try Data(contentsOf: fixtures.appendingPathComponent(name)))
}

/// Sends RESOLVE (project demo, format expr, output document) for
/// `document` as `uid`, and returns the hex of every byte received, or
/// "connect-error ERRNO".
func runAs(uid: UInt32, gid: UInt32, socket: String, document: String) throws -> String {
    // A RESOLVE of project "demo": version 1, type 0x11, the project, format
    // expr (3), output document (1), then the document length-prefixed.
    let doc = Array(document.utf8)
    let n = UInt32(doc.count)
    let body: [UInt8] = [1, 0x11, 0, 4] + Array("demo".utf8) + [3, 1]
        + [UInt8(n >> 24), UInt8((n >> 16) & 0xff), UInt8((n >> 8) & 0xff), UInt8(n & 0xff)] + doc
    return try ForeignClient.exchange(asUID: uid, gid: gid, socket: socket, body: body, untilEOF: true)
}
