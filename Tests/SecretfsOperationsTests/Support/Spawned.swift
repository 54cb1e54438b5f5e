import Foundation
import Glibc
import SecretfsTestSupport

/// A process started in the background, as systemd starts a service's main
/// process: its own output files, an empty signal mask, default dispositions.
final class Spawned {
    let pid: pid_t
    private let outPath: String
    private let errPath: String
    private var status: Int32?

    init(_ exe: String, _ args: [String], environment: [String: String], in directory: String) throws {
        outPath = directory + "/spawned-\(UUID().uuidString).out"
        errPath = directory + "/spawned-\(UUID().uuidString).err"
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_addopen(&actions, 2, errPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
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
        var pid: pid_t = 0
        let envp = environment.map { "\($0.key)=\($0.value)" }
        let rc = withCStrings([exe] + args) { a in withCStrings(envp) { e in posix_spawn(&pid, exe, &actions, &attr, a, e) } }
        guard rc == 0 else { throw POSIXError(POSIXErrorCode(rawValue: rc) ?? .EIO) }
        self.pid = pid
    }

    /// The exit status (128+N for signal N) once it has exited, else nil.
    func poll() -> Int32? {
        if let status { return status }
        var raw: Int32 = 0
        guard waitpid(pid, &raw, WNOHANG) == pid else { return nil }
        status = (raw & 0x7f) == 0 ? (raw >> 8) & 0xff : 128 + (raw & 0x7f)
        return status
    }

    /// Waits up to `timeout` seconds for it to exit.
    func wait(timeout: Double = 15) -> Int32? {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let s = poll() { return s }
            usleep(10_000)
        }
        return nil
    }

    func signal(_ number: Int32) { if poll() == nil { kill(pid, number) } }

    var stdout: String { (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? "" }
    var stderr: String { (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? "" }

    /// Kills it if it still runs (a failed test), and reaps it.
    func finish() {
        if poll() == nil {
            kill(pid, SIGKILL)
            _ = wait(timeout: 5)
        }
        unlink(outPath)
        unlink(errPath)
    }
}
