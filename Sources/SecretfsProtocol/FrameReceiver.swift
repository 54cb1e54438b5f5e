import Glibc
import SecretfsPOSIX
import SecureMemory

/// One server connection's frame reader: the frames `SocketIO.readFrame`
/// reads, with the same results, limits and deadlines, into one locked
/// buffer that the connection keeps from frame to frame.
///
/// Why: `readFrame` gives every frame a `sodium_malloc` buffer of its own,
/// about ten system calls each (mmap, mprotect of the guard pages, mlock,
/// madvise, then munlock, mprotect and munmap to free it), and every one of
/// them changes the process's address space: it takes the mm's lock for
/// writing and, when another thread of the process runs on another core,
/// interrupts that core to flush its TLB. Connections served on two cores
/// then wait on each other. Here a connection allocates once (a page for
/// small frames), grows only for a larger frame, and reads whatever has
/// arrived with one `read` that waits itself (the socket's receive timeout
/// stands in for the `poll` before it): a frame that arrives whole costs one
/// system call.
///
/// Secrecy: the bytes may be secret (a REDACT stream's DATA carries log text
/// that holds values), so they stay in locked memory, and every frame's
/// bytes are wiped as soon as the next frame is asked for, or by `release()`
/// (which a server calls before it waits for a client again), or when the
/// receiver goes. Bytes read ahead (the start of the next frame, from a
/// client that sends without waiting) stay in the buffer, beyond the frame.
///
/// Bounds: memory follows the bytes that arrive, as with `readFrame` (a
/// peer that announces 16 MiB and sends nothing holds what it sent, rounded
/// up); a buffer grown past `retainedCapacity` for one large frame is given
/// back after it, so an idle connection keeps at most that much locked.
/// With an `account`, the buffer's capacity is held in the server's
/// `MemoryBudget`: a frame that would pass it ends with `.failed(ENOBUFS)`
/// (a locked allocation that fails ends with `.failed(ENOMEM)`).
///
/// A frame returned by `next` is valid until the next call to `next` or
/// `release()`: its storage is this buffer. Callers must not keep it (or a
/// `FrameReader.value()` slice of it) longer. One thread at a time.
public final class FrameReceiver {
    public let fd: Int32
    public let retainedCapacity: Int
    /// Where the buffer's capacity is counted, if anywhere.
    public let account: MemoryBudget.Account?
    /// Locked; nil until the first frame, and after a large one was released.
    private var buffer: SecureBytes?
    /// Bytes read and not yet handed out, at the start of `buffer` (after
    /// the frame being handed out, if any, when `delivered` > 0).
    private var filled = 0
    /// The length of the frame handed out (it occupies `buffer[0..<delivered]`), or 0.
    private var delivered = 0

    /// The smallest buffer (sodium_malloc rounds up to whole pages anyway).
    static let minimumCapacity = 4096 - 16

    public init(fd: Int32, retainedCapacity: Int = 64 << 10, account: MemoryBudget.Account? = nil) {
        self.fd = fd
        self.retainedCapacity = retainedCapacity
        self.account = account
    }

    deinit {
        // sodium_free wipes; a frame still referenced elsewhere keeps the
        // buffer alive, so wipe what was read now.
        wipeAll()
        account?.give(buffer?.capacity ?? 0)
    }

    /// Whether bytes after the last frame handed out have already been read
    /// (a client that sent something more): a caller that stops reading
    /// frames (a WATCH connection) treats them as input.
    public var hasBufferedInput: Bool { filled > delivered }

    /// The next frame, or why there is none (as `SocketIO.readFrame`).
    public func next(maxLength: Int, deadline: Double?) -> SocketIO.ReadResult {
        release()
        // The length prefix.
        while filled < Wire.lengthSize {
            if let end = fill(atLeast: Wire.lengthSize, deadline: deadline) {
                return filled == 0 && end == .eof ? .closed : end.result
            }
        }
        var header: UInt32 = 0
        withUnsafeMutableBytes(of: &header) { h in
            buffer!.withUnsafeMutableCapacity { h.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[0..<Wire.lengthSize])) }
        }
        let length = UInt32(bigEndian: header)
        guard length >= UInt32(Wire.headerSize), Int(length) <= maxLength else { return .badLength(length) }
        // The frame starts at the buffer's start, where `Frame` wants it:
        // move what follows the prefix down over it.
        consume(Wire.lengthSize)
        let total = Int(length)
        while filled < total {
            if let end = fill(atLeast: total, deadline: deadline) {
                return end == .eof ? .truncated : end.result
            }
        }
        let storage = buffer!
        storage.setCount(total)   // from 0: nothing is wiped
        delivered = total
        let (version, type) = storage.withUnsafeBytes { ($0[0], $0[1]) }
        return .frame(Frame(version: version, type: type, storage: storage))
    }

    /// Wipes the frame handed out (if any), keeping bytes read after it, and
    /// gives back a buffer grown past `retainedCapacity` when nothing more
    /// than it is buffered. Call it before waiting for the client again.
    public func release() {
        guard let b = buffer else { return }
        if delivered > 0 {
            b.setCount(0)   // the frame's bytes are wiped by consume
            consume(delivered)
            delivered = 0
        }
        if b.capacity > retainedCapacity {
            if filled == 0 {
                account?.give(b.capacity)
                buffer = nil   // sodium_free wipes
            } else if filled <= retainedCapacity, let smaller = SecureBytes(allocating: retainedCapacity) {
                _ = account?.resize(from: b.capacity, to: smaller.capacity)   // shrinking: never refused
                move(to: smaller)
            }
        }
    }

    // MARK: Buffer

    private enum End: Equatable {
        case eof, timedOut, failed(Int32)
        var result: SocketIO.ReadResult {
            switch self {
            case .eof: return .truncated
            case .timedOut: return .timedOut
            case .failed(let e): return e == ECONNRESET ? .truncated : .failed(e)
            }
        }
    }

    /// One wait and one read of whatever has arrived (up to the buffer's
    /// room), after making room for `needed` bytes in all: the buffer grows
    /// by at most 4x per read and never past `needed`, so memory follows
    /// the bytes that actually arrive. nil when bytes were read.
    private func fill(atLeast needed: Int, deadline: Double?) -> End? {
        let capacity = buffer?.capacity ?? 0
        if filled == capacity {
            let grown = capacity == 0 ? max(Self.minimumCapacity, min(needed, retainedCapacity))
                                      : max(capacity, min(needed, capacity * 4))
            guard grown > capacity else { return .failed(ENOMEM) }
            guard account?.resize(from: capacity, to: grown) ?? true else { return .failed(ENOBUFS) }
            guard let bigger = SecureBytes(allocating: grown) else {
                _ = account?.resize(from: grown, to: capacity)
                return .failed(ENOMEM)
            }
            move(to: bigger)
        }
        let b = buffer!
        while true {
            // Wait in the read itself when the socket's receive timeout
            // cannot overrun the deadline (one system call: the usual wait
            // for the next request); otherwise poll first, as readFrame does.
            let blocking = mayBlockInRead(deadline: deadline)
            if !blocking && !SocketIO.waitReadable(fd, deadline: deadline) { return .timedOut }
            let n = b.withUnsafeMutableCapacity { raw in
                read(fd, raw.baseAddress! + filled, raw.count - filled)
            }
            if n > 0 { filled += n; return nil }
            if n == 0 { return .eof }
            // EAGAIN after a blocking read: its timeout ran out, shortly
            // before the deadline; the poll above takes the rest.
            if errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK { continue }
            return .failed(errno)
        }
    }

    // MARK: Waiting in read

    /// SO_RCVTIMEO set on the socket (seconds; 0: none, nil: never set).
    private var receiveTimeout: Double?
    /// False once setting SO_RCVTIMEO failed (a pipe): always poll.
    private var canSetReceiveTimeout = true

    /// Whether a blocking read is sure to return by `deadline`: SO_RCVTIMEO
    /// is at most the time left less the kernel's rounding of it up to a
    /// clock tick (a few ms). The receive timeout is set once, from the time
    /// left at the first wait for a frame (the server's idle timeout); every
    /// later wait for a frame has about as much left, so it reads directly.
    /// Waits inside a frame (less time left) poll.
    private func mayBlockInRead(deadline: Double?) -> Bool {
        guard canSetReceiveTimeout else { return false }
        let slack = 0.05   // seconds; more than a tick at any HZ
        let wanted: Double
        if let deadline {
            let left = deadline - monotonicSeconds()
            if let t = receiveTimeout, t > 0, t + slack / 2 <= left { return true }
            guard receiveTimeout == nil, left > 4 * slack else { return false }
            wanted = left - slack
        } else {
            if receiveTimeout == 0 { return true }
            guard receiveTimeout == nil else { return false }
            wanted = 0
        }
        var tv = timeval(tv_sec: Int(wanted), tv_usec: Int((wanted - Double(Int(wanted))) * 1e6))
        guard setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size)) == 0 else {
            canSetReceiveTimeout = false
            return false
        }
        receiveTimeout = wanted
        return deadline == nil || wanted + slack / 2 <= deadline! - monotonicSeconds()
    }

    /// Drops the first `n` bytes read, moving the rest to the start and
    /// wiping where they were.
    private func consume(_ n: Int) {
        guard let b = buffer, n > 0 else { return }
        let rest = filled - n
        b.withUnsafeMutableCapacity { raw in
            if rest > 0 { raw.baseAddress!.copyMemory(from: raw.baseAddress! + n, byteCount: rest) }
        }
        // What stays is at [0, rest); everything up to `filled` is stale.
        b.wipe(range: rest..<filled)
        filled = rest
    }

    /// Copies what is buffered into `other` and wipes the old buffer (a
    /// stale frame may still keep it alive).
    private func move(to other: SecureBytes) {
        if let old = buffer {
            old.withUnsafeMutableCapacity { src in
                other.withUnsafeMutableCapacity { dst in
                    if filled > 0 { dst.baseAddress!.copyMemory(from: src.baseAddress!, byteCount: filled) }
                }
            }
            old.wipe()
        }
        buffer = other
    }

    private func wipeAll() {
        buffer?.wipe()
        filled = 0
        delivered = 0
    }
}
