import Foundation
import Glibc

/// The receiving end of sd_notify, as systemd holds it: a datagram socket
/// (a path, or an abstract name) with SO_PASSCRED, so that each message comes
/// with the pid of the process that sent it (systemd's NotifyAccess=main
/// accepts only the main process's).
final class NotifyListener {
    /// The value for NOTIFY_SOCKET: the path, or `@name` for an abstract name.
    let address: String
    private let fd: Int32
    private let path: String?

    struct Message: CustomStringConvertible {
        var pid: pid_t
        var text: String
        var fields: [String] { text.split(separator: "\n").map(String.init) }
        var description: String { "pid \(pid): \(text.debugDescription)" }
    }

    /// Listens at `path`, or at the abstract name `path` minus its `@`.
    init(_ address: String) throws {
        self.address = address
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw POSIXError(.EIO) }
        var bytes = Array(address.utf8)
        path = bytes.first == UInt8(ascii: "@") ? nil : address
        if path == nil { bytes[0] = 0 }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in bytes.enumerated() { raw[i] = b } }
        let length = socklen_t(MemoryLayout<sockaddr_un>.offset(of: \.sun_path)! + bytes.count + (path == nil ? 0 : 1))
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
        guard rc == 0 else { close(fd); throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        var on: Int32 = 1
        setsockopt(fd, SOL_SOCKET, 16 /* SO_PASSCRED */, &on, socklen_t(MemoryLayout<Int32>.size))
    }

    deinit {
        close(fd)
        if let path { unlink(path) }
    }

    /// The next message, waiting up to `timeout` seconds; nil if none came.
    func receive(timeout: Double) -> Message? {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, Int32(timeout * 1000)) == 1 else { return nil }
        var buffer = [UInt8](repeating: 0, count: 4096)
        // cmsghdr (size_t len, int level, int type) + struct ucred (pid, uid, gid), aligned.
        var control = [UInt8](repeating: 0, count: 64)
        let n = buffer.withUnsafeMutableBytes { body -> Int in
            control.withUnsafeMutableBytes { ctl -> Int in
                var iov = iovec(iov_base: body.baseAddress, iov_len: body.count)
                return withUnsafeMutablePointer(to: &iov) { iovp -> Int in
                    var msg = msghdr(msg_name: nil, msg_namelen: 0, msg_iov: iovp, msg_iovlen: 1,
                                     msg_control: ctl.baseAddress, msg_controllen: ctl.count, msg_flags: 0)
                    return recvmsg(fd, &msg, 0)
                }
            }
        }
        guard n >= 0 else { return nil }
        var pid: pid_t = 0
        control.withUnsafeBytes { ctl in
            let level = ctl.load(fromByteOffset: 8, as: Int32.self)
            let type = ctl.load(fromByteOffset: 12, as: Int32.self)
            if level == SOL_SOCKET && type == 2 /* SCM_CREDENTIALS */ { pid = ctl.load(fromByteOffset: 16, as: pid_t.self) }
        }
        return Message(pid: pid, text: String(decoding: buffer[0..<n], as: UTF8.self))
    }

    /// Messages until one has `field` (returned last), or `timeout` passes,
    /// or `stop()` says to give up (e.g. the sender exited).
    func messages(until field: String, timeout: Double, stop: () -> Bool = { false }) -> [Message] {
        var out: [Message] = []
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let m = receive(timeout: 0.05) {
                out.append(m)
                if m.fields.contains(field) { return out }
            } else if stop() {
                // One last look: it may have sent just before it exited.
                while let m = receive(timeout: 0.1) { out.append(m) }
                return out
            }
        }
        return out
    }
}
