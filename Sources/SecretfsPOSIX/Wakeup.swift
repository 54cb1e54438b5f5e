import CShims
import Glibc

/// A sleep another thread can cut short: a thread that waits for a while
/// between pieces of work (the store watcher's polls) waits here, and `wake`
/// (a stop) ends the wait at once instead of when the sleep would have ended.
/// An eventfd: once woken it stays readable, so every later wait returns at
/// once too; a waker runs once, at the end.
public final class Wakeup: @unchecked Sendable {
    // @unchecked: the descriptor is fixed at init and closed at deinit; the
    // kernel serialises the reads and writes on it.
    private let descriptor: Int32

    /// Nil when the kernel gives no eventfd (out of descriptors).
    public init?() {
        let fd = secretfs_eventfd(0)
        guard fd >= 0 else { return nil }
        descriptor = fd
    }

    deinit { close(descriptor) }

    /// Ends every wait, now and later.
    public func wake() {
        var one: UInt64 = 1
        _ = write(descriptor, &one, 8)
    }

    /// Waits up to `seconds`; true when woken. With `alsoReadable`, returns
    /// (false) as soon as that descriptor is readable too, with its poll
    /// result in `revents` (a socket whose messages the caller then reads;
    /// 0 after a timeout or a signal).
    @discardableResult
    public func sleep(_ seconds: Double, alsoReadable other: Int32? = nil, revents: UnsafeMutablePointer<Int16>? = nil) -> Bool {
        var fds = [pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)]
        if let other { fds.append(pollfd(fd: other, events: Int16(POLLIN), revents: 0)) }
        let ms = Int32((min(max(0, seconds), 3_600) * 1000).rounded(.up))
        let rc = poll(&fds, nfds_t(fds.count), ms)
        if other != nil { revents?.pointee = rc > 0 ? fds[1].revents : 0 }
        return rc > 0 && fds[0].revents != 0
    }
}
