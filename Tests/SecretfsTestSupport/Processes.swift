import Foundation
import Glibc

/// What a child process printed and how it ended.
public struct ProcessOutput: Sendable {
    public var status: Int32
    public var stdout: String
    public var stderr: String
}

/// Runs programs from tests with posix_spawn + waitpid, not Foundation's
/// Process: the test runner blocks most signals (SIGCHLD included), which
/// Process relies on to notice that a child exited, and a child that starts a
/// daemon must not hold the runner's pipes. The child gets an empty signal
/// mask and default dispositions; its output goes to files.
public enum Processes {
    public static func run(_ exe: String, _ args: [String], environment: [String: String]? = nil,
                           stdin: String? = nil) throws -> ProcessOutput {
        let env = environment ?? ProcessInfo.processInfo.environment
        let tmp = NSTemporaryDirectory() + "secretfs-io-\(UUID().uuidString)"
        let inPath = tmp + ".in", outPath = tmp + ".out", errPath = tmp + ".err"
        try Data((stdin ?? "").utf8).write(to: URL(fileURLWithPath: inPath))
        defer { for p in [inPath, outPath, errPath] { unlink(p) } }

        let pid = try spawn(exe, args, environment: env, stdin: stdin == nil ? "/dev/null" : inPath, stdout: outPath, stderr: errPath)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let code: Int32 = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        return ProcessOutput(status: code,
                             stdout: (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? "",
                             stderr: (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? "")
    }

    /// Starts `exe` without waiting for it: stdin read from the file `stdin`,
    /// stdout and stderr written to new files, an empty signal mask and
    /// default dispositions. Returns its pid; the caller reaps it.
    public static func spawn(_ exe: String, _ args: [String], environment: [String: String],
                             stdin: String, stdout: String, stderr: String) throws -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, stdin, O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, stdout, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_addopen(&actions, 2, stderr, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigmask(&attr, &none)
        var all = sigset_t()
        sigfillset(&all)
        posix_spawnattr_setsigdefault(&attr, &all)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        let argv = [exe] + args
        let envp = environment.map { "\($0.key)=\($0.value)" }
        var pid: pid_t = 0
        let rc = withCStrings(argv) { a in withCStrings(envp) { e in posix_spawn(&pid, exe, &actions, &attr, a, e) } }
        guard rc == 0 else { throw POSIXError(POSIXErrorCode(rawValue: rc) ?? .EIO) }
        return pid
    }

    /// Runs a command as another user (setpriv): `groups` empty clears the
    /// supplementary groups.
    public static func runAs(uid: UInt32, gid: UInt32, groups: [UInt32] = [], _ exe: String, _ args: [String],
                             environment: [String: String]? = nil, stdin: String? = nil) throws -> ProcessOutput {
        var priv = ["--reuid=\(uid)", "--regid=\(gid)"]
        priv.append(groups.isEmpty ? "--clear-groups" : "--groups=" + groups.map(String.init).joined(separator: ","))
        return try run("/usr/bin/setpriv", priv + [exe] + args, environment: environment, stdin: stdin)
    }
}

public func withCStrings<R>(_ strings: [String], _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) -> R) -> R {
    var cs: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) }
    cs.append(nil)
    defer { for p in cs { free(p) } }
    return cs.withUnsafeBufferPointer { body($0.baseAddress!) }
}

/// Lower-case hex text (as the Python test clients print frames) to bytes.
public func hexBytes(_ s: String) -> [UInt8] {
    var out: [UInt8] = []
    var it = s.utf8.makeIterator()
    while let a = it.next(), let b = it.next() {
        func v(_ c: UInt8) -> UInt8 { c >= 97 ? c - 87 : c - 48 }
        out.append(v(a) << 4 | v(b))
    }
    return out
}

/// SplitMix64: a small seeded generator, so a failing random input can be replayed.
public struct SplitMix64: RandomNumberGenerator {
    public var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// A minimal client in Python, run as another user, for tests of who a socket
/// admits: it connects, sends one length-prefixed frame, and prints what came
/// back as hex (the first complete frame, or everything until EOF), or
/// `connect-error ERRNO`. Python, not this process, so the peer really has
/// another uid.
public enum ForeignClient {
    static let script = #"""
    import socket, struct, sys
    path, body, until_eof = sys.argv[1], bytes.fromhex(sys.argv[2]), sys.argv[3] == "eof"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(path)
    except OSError as e:
        print("connect-error", e.errno); sys.exit(0)
    try:
        s.sendall(struct.pack(">I", len(body)) + body)
    except OSError:
        pass
    data = b""
    try:
        while True:
            d = s.recv(65536)
            if not d:
                break
            data += d
            if not until_eof and len(data) >= 4 and len(data) >= 4 + struct.unpack(">I", data[:4])[0]:
                break
    except OSError:
        pass
    print(data.hex())
    """#

    public static func exchange(asUID uid: UInt32, gid: UInt32, groups: [UInt32] = [], socket: String,
                                body: [UInt8], untilEOF: Bool = false) throws -> String {
        let hex = body.map { String(format: "%02x", $0) }.joined()
        return try Processes.runAs(uid: uid, gid: gid, groups: groups, "/usr/bin/python3",
                                   ["-c", script, socket, hex, untilEOF ? "eof" : "frame"])
            .stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }
}
