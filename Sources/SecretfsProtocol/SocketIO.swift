import CShims
import Glibc
import SecretfsPOSIX
import SecureMemory

/// Thin blocking-I/O helpers shared by the server and the client. Every
/// function reports failure as a value (no Swift error allocation on the hot
/// path) and never raises SIGPIPE (sends use MSG_NOSIGNAL).
public enum SocketIO {
    /// Outcome of reading one frame.
    public enum ReadResult {
        case frame(Frame)
        /// The peer closed before the first byte of a frame.
        case closed
        /// The peer closed (or the connection broke) inside a frame.
        case truncated
        /// Nothing (or not the whole frame) arrived before the deadline.
        case timedOut
        /// Length prefix of 0, 1 (no room for version and type) or over the limit.
        case badLength(UInt32)
        case failed(Int32)
    }

    /// Waits until `fd` is readable or `deadline` (monotonic seconds; nil:
    /// forever) passes. Returns false on timeout.
    public static func waitReadable(_ fd: Int32, deadline: Double?) -> Bool {
        while true {
            var timeout: Int32 = -1
            if let deadline {
                let left = deadline - monotonicSeconds()
                if left <= 0 { return false }
                timeout = Int32(min(left * 1000 + 1, 1_000_000))
            }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let rc = poll(&p, 1, timeout)
            if rc > 0 { return true }      // readable, hung up or error: read() will tell
            if rc == 0 { if deadline != nil { continue } else { return false } }
            if errno != EINTR { return true }
        }
    }

    /// Reads exactly `count` bytes into `dest`. Returns the bytes read before
    /// EOF, or -1 with `err` on timeout (ETIMEDOUT) or error.
    public static func readExactly(_ fd: Int32, _ dest: UnsafeMutableRawPointer, count: Int,
                            deadline: Double?, err: inout Int32) -> Int {
        var got = 0
        while got < count {
            if !waitReadable(fd, deadline: deadline) { err = ETIMEDOUT; return -1 }
            let n = read(fd, dest + got, count - got)
            if n > 0 { got += n; continue }
            if n == 0 { return got }
            if errno == EINTR || errno == EAGAIN { continue }
            err = errno
            return -1
        }
        return got
    }

    /// Reads one frame: the length prefix, then the rest into locked memory.
    public static func readFrame(_ fd: Int32, maxLength: Int, deadline: Double?) -> ReadResult {
        var header: UInt32 = 0
        var err: Int32 = 0
        let n = withUnsafeMutableBytes(of: &header) { raw in
            readExactly(fd, raw.baseAddress!, count: 4, deadline: deadline, err: &err)
        }
        if n < 0 { return err == ETIMEDOUT ? .timedOut : (err == ECONNRESET ? .truncated : .failed(err)) }
        if n == 0 { return .closed }
        if n < 4 { return .truncated }
        let length = UInt32(bigEndian: header)
        guard length >= UInt32(Wire.headerSize), Int(length) <= maxLength else { return .badLength(length) }
        // Sized by the peer (within `maxLength`), so memory follows the bytes
        // that actually arrive: a peer that announces 16 MiB and sends
        // nothing holds 64 KiB, not 16 MiB. An allocation failure is an
        // error for this connection, never a trap for the whole server.
        let total = Int(length)
        guard var storage = SecureBytes(allocating: min(total, 64 << 10)) else { return .failed(ENOMEM) }
        while storage.count < total {
            if storage.count == storage.capacity {
                guard let grown = storage.copyIfPossible(capacity: min(total, storage.capacity * 4)) else { return .failed(ENOMEM) }
                storage = grown   // the old buffer is wiped by sodium_free
            }
            let have = storage.count
            let room = min(storage.capacity, total) - have
            storage.setCount(have + room)
            let m = storage.withUnsafeMutableBytes { raw in
                readExactly(fd, raw.baseAddress! + have, count: room, deadline: deadline, err: &err)
            }
            if m < 0 { return err == ETIMEDOUT ? .timedOut : (err == ECONNRESET ? .truncated : .failed(err)) }
            if m < room { return .truncated }
        }
        let (version, type) = storage.withUnsafeBytes { ($0[0], $0[1]) }
        return .frame(Frame(version: version, type: type, storage: storage))
    }

    /// Sends all of `bytes`; false if the peer went away or the send timed out.
    @discardableResult
    public static func sendAll(_ fd: Int32, _ bytes: SecureBytes) -> Bool {
        bytes.withUnsafeBytes { raw in
            var off = 0
            while off < raw.count {
                let n = send(fd, raw.baseAddress! + off, raw.count - off, Int32(MSG_NOSIGNAL))
                if n > 0 { off += n; continue }
                if n < 0 && errno == EINTR { continue }
                return false
            }
            return true
        }
    }

    public static func setSendTimeout(_ fd: Int32, seconds: Double) {
        var tv = timeval(tv_sec: Int(seconds), tv_usec: Int((seconds - Double(Int(seconds))) * 1e6))
        _ = setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    /// A `sockaddr_un` for `path`, or nil if the path does not fit.
    public static func address(_ path: String) -> sockaddr_un? {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: addr.sun_path)
        guard !bytes.isEmpty, bytes.count < capacity, !bytes.contains(0) else { return nil }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
        }
        return addr
    }

    public static var maxPathLength: Int { MemoryLayout.size(ofValue: sockaddr_un().sun_path) - 1 }

    public static func newStreamSocket() -> Int32 {
        socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    }

    /// connect(2) to `path`; returns the fd, or -1 with errno set. With a
    /// timeout, a server whose backlog is full makes it fail with ETIMEDOUT
    /// after that long instead of blocking for ever (Linux bounds a Unix
    /// socket's connect by the socket's send timeout).
    public static func connect(to path: String, timeout: Double? = nil) -> Int32 {
        guard var addr = address(path) else { errno = ENAMETOOLONG; return -1 }
        let fd = newStreamSocket()
        guard fd >= 0 else { return -1 }
        if let timeout { setSendTimeout(fd, seconds: timeout) }
        while true {
            let rc = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                }
            }
            if rc == 0 { return fd }
            if errno == EINTR { continue }
            let saved = errno
            close(fd)
            errno = (saved == EAGAIN && timeout != nil) ? ETIMEDOUT : saved
            return -1
        }
    }

    public static func errorText(_ code: Int32) -> String { String(cString: strerror(code)) }
}

/// The credentials the kernel recorded when the peer connected.
public struct PeerCredentials: Sendable, Equatable, CustomStringConvertible {
    public var uid: uid_t
    public var gid: gid_t
    public var pid: pid_t
    /// Supplementary groups (SO_PEERGROUPS); empty if the kernel cannot say.
    public var groups: [gid_t]

    public init(uid: uid_t, gid: gid_t, pid: pid_t, groups: [gid_t] = []) {
        self.uid = uid; self.gid = gid; self.pid = pid; self.groups = groups
    }

    public var description: String { "uid \(uid) gid \(gid) pid \(pid)" }

    public static func of(_ fd: Int32) -> PeerCredentials? {
        var pid: pid_t = 0, uid: uid_t = 0, gid: gid_t = 0
        guard secretfs_peer_credentials(fd, &pid, &uid, &gid) == 0 else { return nil }
        var groups = [gid_t](repeating: 0, count: 64)
        var n = secretfs_peer_groups(fd, &groups, Int32(groups.count))
        if n > groups.count {
            groups = [gid_t](repeating: 0, count: Int(n))
            n = secretfs_peer_groups(fd, &groups, Int32(groups.count))
        }
        groups = n > 0 ? Array(groups.prefix(Int(min(n, Int32(groups.count))))) : []
        return PeerCredentials(uid: uid, gid: gid, pid: pid, groups: groups)
    }
}

/// Starts a detached pthread running `body`. False if the thread could not be
/// created (the caller cleans up).
public func startDetachedThread(_ body: @escaping @Sendable () -> Void) -> Bool {
    final class Box { let body: @Sendable () -> Void; init(_ b: @escaping @Sendable () -> Void) { body = b } }
    let box = Unmanaged.passRetained(Box(body)).toOpaque()
    var attr = pthread_attr_t()
    pthread_attr_init(&attr)
    defer { pthread_attr_destroy(&attr) }
    pthread_attr_setdetachstate(&attr, Int32(PTHREAD_CREATE_DETACHED))
    pthread_attr_setstacksize(&attr, 1 << 20)
    var tid = pthread_t()
    let rc = pthread_create(&tid, &attr, { p in
        Unmanaged<Box>.fromOpaque(p!).takeRetainedValue().body()
        return nil
    }, box)
    if rc != 0 {
        Unmanaged<Box>.fromOpaque(box).release()
        return false
    }
    return true
}
