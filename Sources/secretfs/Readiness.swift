import Glibc
import SecretfsFS
import SecretfsPOSIX
import SecretfsProtocol
import Synchronization

/// The service manager's readiness protocol, sd_notify(3), written out here
/// rather than linking libsystemd: one datagram of `KEY=VALUE` lines sent to
/// the AF_UNIX socket named by `NOTIFY_SOCKET` (a path, or an abstract name
/// written with a leading `@`). Without `NOTIFY_SOCKET` every send does
/// nothing, so the commands behave the same outside a `Type=notify` unit.
///
/// Only the process the unit started may notify (the units say
/// `NotifyAccess=main`): `secretfs mount --foreground` and `secretfs resolver`
/// send from their own process, never from a child.
struct ServiceNotifier: Sendable {
    /// `sockaddr_un.sun_path` bytes; an abstract name starts with NUL.
    private let path: [UInt8]

    /// The notifier `NOTIFY_SOCKET` names, or nil when it names none (or
    /// nothing usable: neither an absolute path nor `@name`, or too long).
    static func fromEnvironment() -> ServiceNotifier? {
        guard let value = GlobalOptions.environment("NOTIFY_SOCKET") else { return nil }
        return ServiceNotifier(socket: value)
    }

    init?(socket: String) {
        var bytes = Array(socket.utf8)
        switch bytes.first {
        case UInt8(ascii: "/"): break
        case UInt8(ascii: "@"): bytes[0] = 0
        default: return nil
        }
        // A path needs room for its NUL; an abstract name is its exact length.
        let capacity = MemoryLayout.size(ofValue: sockaddr_un().sun_path)
        guard bytes.count >= 2, bytes.count < capacity, !bytes.dropFirst().contains(0) else { return nil }
        path = bytes
    }

    /// Sends `state` (e.g. "READY=1\nSTATUS=..."): true when the datagram went.
    /// Blocking and without SIGPIPE, as libsystemd's sd_notify.
    @discardableResult
    func send(_ state: String) -> Bool {
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in path.enumerated() { raw[i] = b }
        }
        let length = socklen_t(MemoryLayout<sockaddr_un>.offset(of: \.sun_path)! + path.count + (path[0] == 0 ? 0 : 1))
        let message = Array(state.utf8)
        let sent = message.withUnsafeBytes { body in
            withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                    retryOnInterrupt { sendto(fd, body.baseAddress, body.count, Int32(MSG_NOSIGNAL), sa, length) }
                }
            }
        }
        return sent == message.count
    }
}

/// Whether a FUSE filesystem is mounted at `target` and answering: the kernel
/// lists a FUSE mount there, and stat(2) of it, which waits until the
/// filesystem replies, gives a directory on another device than its parent's
/// (so the answer came from the mount, not from the directory beneath it).
/// `secretfs mount` returns, and the mount unit reports READY=1, only once
/// this holds.
func mountAnswers(at target: String) -> Bool {
    guard MountTable.fuseEntry(at: target) != nil else { return false }
    let parent = target.lastIndex(of: "/").map { $0 == target.startIndex ? "/" : String(target[..<$0]) } ?? "/"
    var mounted = stat(), below = stat()
    guard stat(target, &mounted) == 0, stat(parent, &below) == 0 else { return false }
    return mounted.st_mode & S_IFMT == S_IFDIR && mounted.st_dev != below.st_dev
}

/// Sends READY=1 from the mount process once its own mount answers. The
/// check runs on a thread of its own because the answer comes from the FUSE
/// loop, which the caller is about to enter on this one.
final class MountReadiness: Sendable {
    private let finished = Atomic<Bool>(false)

    /// Starts watching; nil when no service manager is listening.
    static func watch(_ target: String, notifier: ServiceNotifier?, status: String) throws -> MountReadiness? {
        guard let notifier else { return nil }
        let readiness = MountReadiness()
        let started = startDetachedThread { [readiness] in
            while !readiness.finished.load(ordering: .acquiring) {
                if mountAnswers(at: target) {
                    notifier.send("READY=1\nSTATUS=\(status)")
                    return
                }
                usleep(10_000)
            }
        }
        // Without the thread the unit would wait for READY=1 until its timeout.
        guard started else { throw Failure("cannot start the thread that reports readiness to the service manager", exit: .mountProblem) }
        return readiness
    }

    /// The FUSE loop has ended: READY=1 is no longer true, so never send it.
    func finish() {
        finished.store(true, ordering: .releasing)
    }
}
