import Glibc

// The thin libc layer under the store and the command line: errno text in one
// place, EINTR retried in one helper, and opens that never follow a symlink in
// their last component nor leak a descriptor into a child process.

/// The text of an errno value, as strerror(3) gives it.
public func errnoText(_ code: Int32) -> String {
    String(cString: strerror(code))
}

/// What to try when opening or creating a file the user named failed with
/// `code`: the hint line of every such error, CLI and store alike.
public func pathErrorHint(_ code: Int32) -> String? {
    switch code {
    case ENOENT, ENOTDIR: return "check the path (a relative path is taken from the current directory)"
    case EACCES, EPERM: return "check the permissions of the file and of the directories above it"
    case EEXIST: return "give a path that does not exist yet: secretfs never overwrites a file"
    case EISDIR: return "give the path of a file, not of a directory"
    case ENOSPC, EDQUOT: return "free some space on that filesystem, or choose another"
    case EROFS: return "choose a path on a writable filesystem"
    default: return nil
    }
}

/// Calls `call` again for as long as it fails with EINTR, and returns what the
/// last call returned; on failure (-1) errno is left as that call set it.
/// Every retry of an interrupted call goes through here, not through loops at
/// the call sites.
@inlinable
public func retryOnInterrupt<T: FixedWidthInteger & SignedInteger>(_ call: () -> T) -> T {
    while true {
        let result = call()
        if result == -1 && errno == EINTR { continue }
        return result
    }
}

/// A failed system call.
public struct SystemError: Error, Equatable, Sendable, CustomStringConvertible {
    public var errno: Int32
    public init(errno: Int32) { self.errno = errno }
    /// The error of the call that just failed.
    public static var current: SystemError { SystemError(errno: Glibc.errno) }
    public var description: String { errnoText(errno) }
}

/// The flags every open in secretfs carries: a symlink as the last component
/// fails with ELOOP instead of being followed, and the descriptor is closed
/// across exec.
public let noFollowFlags: Int32 = O_NOFOLLOW | O_CLOEXEC

/// `openat(directory, name, flags | O_NOFOLLOW | O_CLOEXEC, mode)`, retried on
/// EINTR. `directory` may be AT_FDCWD with an absolute `name`.
public func openNoFollow(at directory: Int32, _ name: String, _ flags: Int32,
                         mode: mode_t = 0) throws(SystemError) -> Int32 {
    let fd = retryOnInterrupt { openat(directory, name, flags | noFollowFlags, mode) }
    guard fd >= 0 else { throw .current }
    return fd
}

/// `fstat(fd)`.
public func fileStatus(_ fd: Int32) throws(SystemError) -> stat {
    var st = stat()
    guard fstat(fd, &st) == 0 else { throw .current }
    return st
}

/// `fstatat(directory, name, AT_SYMLINK_NOFOLLOW)`: the entry itself, a
/// symlink included; nil when there is no such entry.
public func entryStatus(at directory: Int32, _ name: String) throws(SystemError) -> stat? {
    var st = stat()
    if fstatat(directory, name, &st, AT_SYMLINK_NOFOLLOW) == 0 { return st }
    if errno == ENOENT { return nil }
    throw .current
}

/// Writes all of `bytes`, retrying short and interrupted writes.
public func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) throws(SystemError) {
    var done = 0
    while done < bytes.count {
        let n = retryOnInterrupt { write(fd, bytes.baseAddress! + done, bytes.count - done) }
        guard n > 0 else { throw n < 0 ? .current : SystemError(errno: EIO) }
        done += n
    }
}

/// The file type of a mode, in words, for messages.
public func fileKind(_ mode: mode_t) -> String {
    switch mode & S_IFMT {
    case S_IFREG: return "regular file"
    case S_IFDIR: return "directory"
    case S_IFLNK: return "symbolic link"
    case S_IFIFO: return "FIFO"
    case S_IFSOCK: return "socket"
    case S_IFCHR: return "character device"
    case S_IFBLK: return "block device"
    default: return "special file"
    }
}

/// Seconds on the monotonic clock (CLOCK_MONOTONIC): for deadlines, timeouts
/// and intervals, which must not jump when the wall clock is set. Only
/// differences between two readings mean anything.
public func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}
