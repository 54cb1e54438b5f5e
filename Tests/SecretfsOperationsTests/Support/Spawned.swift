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
        pid = try Processes.spawn(exe, args, environment: environment, stdin: "/dev/null", stdout: outPath, stderr: errPath)
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
