@_exported import SecretfsTestSupport
import Foundation
import Glibc
import SecretfsProtocol
import SecretfsStore
import SecureMemory

/// A temp store with one project, and a privileged socket server on it.
final class Fixture: @unchecked Sendable {
    let dir: String
    let store: Store
    let vault: ProjectVault
    let socketPath: String
    let server: PrivilegedSocketServer

    init(policy: SocketPolicy = SocketPolicy(), limits: ServerLimits = ServerLimits(), start: Bool = true) throws {
        var template = Array("/tmp/sfs-proto-XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else { throw POSIXError(.EIO) }
        dir = String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
        chmod(dir, 0o755)   // setpriv'd clients (uid 65534) must reach the socket
        store = try Store.create(at: StoreLocation(directory: dir + "/store"), keySource: .keyFile)
        try store.createProject("demo")
        vault = try store.openProject("demo")
        socketPath = dir + "/demo.sock"
        var limits = limits
        if limits.idleTimeout == ServerLimits().idleTimeout { limits.idleTimeout = 2 }
        server = PrivilegedSocketServer(vault: vault, socketPath: socketPath, policy: policy, limits: limits)
        if start { try server.start() }
    }

    deinit {
        server.stop()
        try? FileManager.default.removeItem(atPath: dir)
    }

    @discardableResult
    func put(_ name: String, _ value: [UInt8]) throws -> SecretInfo {
        let b = value.withUnsafeBytes { SecureBytes(copying: $0) }
        defer { b.wipe() }
        return try vault.put(name, value: b, actor: .current)
    }

    func put(_ name: String, _ value: String) throws { try put(name, Array(value.utf8)) }

    func audit(_ action: String) throws -> [AuditEvent] {
        try store.auditEvents(project: "demo").filter { $0.action == action }
    }
}

func bytes(_ b: SecureBytes?) -> [UInt8]? {
    b.map { $0.withUnsafeBytes { Array($0) } }
}

func contains(_ hay: [UInt8], _ needle: [UInt8]) -> Bool {
    guard !needle.isEmpty, hay.count >= needle.count else { return false }
    for i in 0...(hay.count - needle.count) where hay[i] == needle[0] {
        if Array(hay[i..<(i + needle.count)]) == needle { return true }
    }
    return false
}

// MARK: Raw sockets (the test plays a misbehaving client)

func rawConnect(_ path: String) -> Int32 {
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    let p = Array(path.utf8)
    withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in p.enumerated() { raw[i] = b } }
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    let rc = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    if rc != 0 { close(fd); return -1 }
    return fd
}

@discardableResult
func rawSend(_ fd: Int32, _ data: [UInt8]) -> Bool {
    var off = 0
    while off < data.count {
        let n = data.withUnsafeBytes { send(fd, $0.baseAddress! + off, data.count - off, Int32(MSG_NOSIGNAL)) }
        if n <= 0 { return false }
        off += n
    }
    return true
}

/// Everything the server sends until it closes (or `timeout` passes).
func rawReadAll(_ fd: Int32, timeout: Double = 3) -> [UInt8] {
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 65536)
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let left = Int32(max(1, deadline.timeIntervalSinceNow * 1000))
        guard poll(&p, 1, left) > 0 else { break }
        let n = read(fd, &buf, buf.count)
        if n <= 0 { break }
        out += buf[0..<n]
    }
    return out
}

/// Reads exactly one frame (length prefix included), or what arrived before `timeout`.
func rawReadFrame(_ fd: Int32, timeout: Double = 3) -> [UInt8] {
    var out: [UInt8] = []
    var byte: UInt8 = 0
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if out.count >= 4 {
            let len = Int(out[0]) << 24 | Int(out[1]) << 16 | Int(out[2]) << 8 | Int(out[3])
            if out.count == 4 + len { break }
        }
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, 100) >= 0 else { break }
        if p.revents == 0 { continue }
        if read(fd, &byte, 1) != 1 { break }
        out.append(byte)
    }
    return out
}

/// A frame: u32 length, version, type, body.
func frame(type: UInt8, version: UInt8 = 1, body: [UInt8] = []) -> [UInt8] {
    be32(UInt32(2 + body.count)) + [version, type] + body
}

func be16(_ v: UInt16) -> [UInt8] { [UInt8(v >> 8), UInt8(v & 0xff)] }
func be32(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8((v >> 16) & 0xff), UInt8((v >> 8) & 0xff), UInt8(v & 0xff)] }

func getBody(_ names: [String]) -> [UInt8] {
    var b = be16(UInt16(names.count))
    for n in names { b += be16(UInt16(n.utf8.count)) + Array(n.utf8) }
    return b
}

/// Parses a sequence of frames: (type, body) pairs; nil if the bytes do not split into frames.
func splitFrames(_ data: [UInt8]) -> [(UInt8, [UInt8])]? {
    var out: [(UInt8, [UInt8])] = []
    var i = 0
    while i < data.count {
        guard data.count - i >= 6 else { return nil }
        let len = Int(data[i]) << 24 | Int(data[i + 1]) << 16 | Int(data[i + 2]) << 8 | Int(data[i + 3])
        guard len >= 2, data.count - i - 4 >= len else { return nil }
        out.append((data[i + 5], Array(data[(i + 6)..<(i + 4 + len)])))
        i += 4 + len
    }
    return out
}

func errorCode(_ body: [UInt8]) -> UInt16? {
    guard body.count >= 2 else { return nil }
    return UInt16(body[0]) << 8 | UInt16(body[1])
}

// MARK: A client of another uid

/// Sends GET for `names` as `uid` (primary group `gid`, supplementary
/// `groups`) and returns "connect-error ERRNO" or the hex of the first reply frame.
func runAs(uid: UInt32, gid: UInt32, groups: [UInt32] = [], socket: String, names: [String]) throws -> String {
    // A GET: version 1, type 2, name count, then each name length-prefixed.
    var body: [UInt8] = [1, 2, UInt8(names.count >> 8), UInt8(names.count & 0xff)]
    for n in names {
        let b = Array(n.utf8)
        body += [UInt8(b.count >> 8), UInt8(b.count & 0xff)] + b
    }
    return try ForeignClient.exchange(asUID: uid, gid: gid, groups: groups, socket: socket, body: body)
}

/// A connection held open by another uid (a Python client under setpriv
/// that connects and waits), for limits that count connections per uid.
final class ForeignHolder {
    private let pid: pid_t
    private let files: [String]

    init(uid: UInt32, socket: String) throws {
        let base = NSTemporaryDirectory() + "secretfs-holder-\(UUID().uuidString)"
        files = [base + ".out", base + ".err"]
        let script = "import socket, sys, time\ns = socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\n"
            + "print('connected', flush=True)\ntime.sleep(60)\n"
        pid = try Processes.spawn("/usr/bin/setpriv", ["--reuid=\(uid)", "--regid=\(uid)", "--clear-groups",
                                                       "/usr/bin/python3", "-c", script, socket],
                                  environment: ProcessInfo.processInfo.environment,
                                  stdin: "/dev/null", stdout: files[0], stderr: files[1])
        try waitUntil { (try? String(contentsOfFile: self.files[0], encoding: .utf8))?.contains("connected") == true }
    }

    func stop() {
        kill(pid, SIGKILL)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        for f in files { unlink(f) }
    }
}
