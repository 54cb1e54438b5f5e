import CShims
import Glibc

/// O_PATH: a descriptor for lookups and fstat only (no read permission needed).
private let O_PATH = secretfs_o_path_flag()

/// Why a directory or a file is not trusted, with the path where the check
/// failed (the directory itself, an ancestor, a symlink on the way, or a file).
public struct TrustError: Error, Equatable, Sendable, CustomStringConvertible {
    public enum Problem: Equatable, Sendable {
        /// A directory or file owned by someone who is neither the caller nor root.
        case ownedByOther(uid: UInt32)
        /// A symlink on the way owned by someone who is neither the caller nor root.
        case symlinkOwnedByOther(uid: UInt32)
        /// A directory that group or others may write (mode bits 0022).
        case writableByOthers(mode: UInt32)
        /// A key or passphrase file with a group or other permission bit (0077).
        case accessibleByOthers(mode: UInt32)
        /// A symlink where secretfs expects the file itself (O_NOFOLLOW).
        case symbolicLink
        case notADirectory
        case notARegularFile(kind: String)
        /// A file secretfs writes that has other hard links.
        case multipleLinks(Int)
        case tooManySymlinks
        /// The path could not be examined (ENOENT, EACCES, ...).
        case system(errno: Int32)
    }

    public var path: String
    public var problem: Problem

    public init(path: String, problem: Problem) {
        self.path = path
        self.problem = problem
    }

    public var description: String {
        switch problem {
        case .ownedByOther(let uid): return "\(path) is owned by uid \(uid), not by you or root"
        case .symlinkOwnedByOther(let uid): return "\(path) is a symbolic link owned by uid \(uid), not by you or root"
        case .writableByOthers(let mode): return "\(path) is writable by other users (mode \(octal(mode)))"
        case .accessibleByOthers(let mode): return "\(path) has mode \(octal(mode)); it must not be readable by group or others"
        case .symbolicLink: return "\(path) is a symbolic link; secretfs does not follow it"
        case .notADirectory: return "\(path) is not a directory"
        case .notARegularFile(let kind): return "\(path) is a \(kind), not a regular file"
        case .multipleLinks(let n): return "\(path) has \(n) hard links; secretfs writes only to a file with one"
        case .tooManySymlinks: return "too many symbolic links in \(path)"
        case .system(let e): return "cannot examine \(path): \(errnoText(e))"
        }
    }

    /// The command that fixes it, when there is one.
    public var fix: String? {
        switch problem {
        case .ownedByOther: return "chown $(id -un) \(path)"
        case .symlinkOwnedByOther: return "replace the link \(path) by one of your own, or give the path without it"
        case .writableByOthers: return "chmod go-w \(path)"
        case .accessibleByOthers: return "chmod 0600 \(path)"
        case .symbolicLink: return "give the path of the file itself, not of a link to it"
        case .multipleLinks: return "remove \(path) (secretfs creates it again)"
        case .notADirectory, .notARegularFile, .tooManySymlinks, .system: return nil
        }
    }

    public var errno: Int32? {
        if case .system(let e) = problem { return e }
        return nil
    }
}

func octal(_ mode: UInt32) -> String {
    let s = String(mode, radix: 8)
    return String(repeating: "0", count: max(0, 4 - s.count)) + s
}

/// Whether `uid` may own what the caller trusts: the caller itself or root.
func isTrustedOwner(_ uid: uid_t) -> Bool {
    uid == geteuid() || uid == 0
}

/// A directory that may hold files secretfs trusts (the store, the runtime
/// directory), checked and held open; its files are opened relative to its
/// descriptor, never through a path.
///
/// The rule, as ssh's StrictModes: the directory and every directory above it
///  - is owned by the caller (effective uid) or root, and
///  - is writable by neither its group nor others. One exception, for
///    ancestors only: a root-owned directory with the sticky bit (`/tmp`,
///    `/dev/shm`) may be world-writable, because the sticky bit keeps others
///    from renaming or deleting entries they do not own, so nobody can swap a
///    directory on the way. The directory itself gets no such exception:
///    others could still create the very names secretfs is about to use.
///  - A symlink on the way is followed only if it is owned by the caller or
///    root (its parent already passed, so nobody else can replace it); its
///    target is checked the same way, component by component.
/// Each component is looked up relative to its parent's descriptor with
/// `O_PATH | O_NOFOLLOW` and checked with `fstat` on that descriptor, so what
/// is checked is what is used.
public final class TrustedDirectory: @unchecked Sendable {
    // @unchecked: immutable after init; the descriptor is closed in deinit.

    /// The path as given (made absolute).
    public let path: String
    /// The same directory with every symlink resolved (what SQLite is given:
    /// SQLITE_OPEN_NOFOLLOW refuses a symlink anywhere in a path).
    public let canonicalPath: String
    /// `O_RDONLY | O_DIRECTORY`, close-on-exec.
    public let descriptor: Int32
    public let owner: UInt32
    /// Permission bits (07777).
    public let mode: UInt32

    public static let maximumSymlinks = 40

    private init(path: String, canonicalPath: String, descriptor: Int32, owner: UInt32, mode: UInt32) {
        self.path = path
        self.canonicalPath = canonicalPath
        self.descriptor = descriptor
        self.owner = owner
        self.mode = mode
    }

    deinit { close(descriptor) }

    /// Checks `path` and its ancestors under the rule above and opens it.
    /// - `creatingWith`: create missing components with this mode (as
    ///   `mkdir -p`; the umask applies), checking each as it goes.
    /// - `checkingOwnMode`: false leaves the directory's own mode bits to the
    ///   caller (`init` refuses or narrows them itself); its owner and its
    ///   ancestors are still checked.
    public static func open(_ path: String, creatingWith createMode: mode_t? = nil,
                            checkingOwnMode: Bool = true) throws(TrustError) -> TrustedDirectory {
        let absolutePath = makeAbsolute(path)

        /// One resolved directory on the way down, held by an O_PATH descriptor.
        struct Level {
            var name: String
            var fd: Int32
            var status: stat
        }
        var levels: [Level] = []
        defer { for level in levels { close(level.fd) } }
        func pathOf(_ extra: String? = nil) -> String {
            let names = levels.dropFirst().map(\.name) + (extra.map { [$0] } ?? [])
            return "/" + names.joined(separator: "/")
        }
        func fail(_ problem: TrustError.Problem, _ extra: String? = nil) -> TrustError {
            TrustError(path: pathOf(extra), problem: problem)
        }

        let rootFD = retryOnInterrupt { Glibc.open("/", O_PATH | O_DIRECTORY | O_CLOEXEC) }
        guard rootFD >= 0 else { throw TrustError(path: "/", problem: .system(errno: errno)) }
        var rootStatus = stat()
        guard fstat(rootFD, &rootStatus) == 0 else {
            let e = errno
            close(rootFD)
            throw TrustError(path: "/", problem: .system(errno: e))
        }
        levels.append(Level(name: "", fd: rootFD, status: rootStatus))
        guard isTrustedOwner(rootStatus.st_uid) else { throw fail(.ownedByOther(uid: rootStatus.st_uid)) }

        // A stack: the next component is last.
        var pending = absolutePath.split(separator: "/", omittingEmptySubsequences: true).reversed().map(String.init)
        var symlinks = 0
        while let name = pending.popLast() {
            if name == "." { continue }
            if name == ".." {
                if levels.count > 1 { close(levels.removeLast().fd) }
                continue
            }
            // The parent is now an ancestor: nobody else may write it (bar a
            // sticky root-owned one), or it could swap `name` after the check.
            let parent = levels[levels.count - 1]
            let parentMode = parent.status.st_mode
            if parentMode & 0o022 != 0 && !(parent.status.st_uid == 0 && parentMode & S_ISVTX != 0) {
                throw fail(.writableByOthers(mode: parentMode & 0o7777))
            }
            var fd = retryOnInterrupt { openat(parent.fd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC) }
            if fd < 0 && errno == ENOENT, let createMode {
                if mkdirat(parent.fd, name, createMode) != 0 && errno != EEXIST {
                    throw fail(.system(errno: errno), name)
                }
                fd = retryOnInterrupt { openat(parent.fd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC) }
            }
            guard fd >= 0 else { throw fail(.system(errno: errno), name) }
            var st = stat()
            guard fstat(fd, &st) == 0 else {
                let e = errno
                close(fd)
                throw fail(.system(errno: e), name)
            }
            switch st.st_mode & S_IFMT {
            case S_IFDIR:
                guard isTrustedOwner(st.st_uid) else {
                    close(fd)
                    throw fail(.ownedByOther(uid: st.st_uid), name)
                }
                levels.append(Level(name: name, fd: fd, status: st))
            case S_IFLNK:
                defer { close(fd) }
                guard isTrustedOwner(st.st_uid) else { throw fail(.symlinkOwnedByOther(uid: st.st_uid), name) }
                symlinks += 1
                guard symlinks <= maximumSymlinks else { throw fail(.tooManySymlinks, name) }
                var buf = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
                let n = readlinkat(fd, "", &buf, buf.count - 1)
                guard n > 0 else { throw fail(.system(errno: n < 0 ? errno : ENOENT), name) }
                let target = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
                if target.hasPrefix("/") {
                    while levels.count > 1 { close(levels.removeLast().fd) }
                }
                pending += target.split(separator: "/", omittingEmptySubsequences: true).reversed().map(String.init)
            default:
                close(fd)
                throw fail(.notADirectory, name)
            }
        }

        let final = levels[levels.count - 1]
        if checkingOwnMode && final.status.st_mode & 0o022 != 0 {
            throw fail(.writableByOthers(mode: final.status.st_mode & 0o7777))
        }
        let dirFD = retryOnInterrupt { openat(final.fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
        guard dirFD >= 0 else { throw fail(.system(errno: errno)) }
        return TrustedDirectory(path: absolutePath, canonicalPath: pathOf(), descriptor: dirFD,
                                owner: final.status.st_uid, mode: final.status.st_mode & 0o7777)
    }

    // MARK: Entries (one path component each)

    /// The path of an entry, for messages.
    public func path(of name: String) -> String {
        path == "/" ? "/" + name : path + "/" + name
    }

    /// A directory to read or write one file of the caller's in (a backup,
    /// a file to import): trusted as a store directory is, except that it
    /// may be writable by others when it is sticky (/tmp), since there
    /// nobody may rename over or remove a file that is not theirs, and the
    /// file is opened through this descriptor with O_NOFOLLOW.
    public static func openForOneFile(_ path: String) throws(TrustError) -> TrustedDirectory {
        let trusted = try TrustedDirectory.open(path, checkingOwnMode: false)
        if trusted.mode & 0o022 != 0 && trusted.mode & UInt32(S_ISVTX) == 0 {
            throw TrustError(path: trusted.path, problem: .writableByOthers(mode: trusted.mode))
        }
        return trusted
    }

    /// The directory part and the name of a path to one file ("." for a bare name).
    public static func split(_ path: String) -> (directory: String, name: String) {
        guard let slash = path.lastIndex(of: "/") else { return (".", path) }
        let directory = String(path[..<slash])
        return (directory.isEmpty ? "/" : directory, String(path[path.index(after: slash)...]))
    }

    /// The canonical path of an entry (no symlink on the way).
    public func canonicalPath(of name: String) -> String {
        canonicalPath == "/" ? "/" + name : canonicalPath + "/" + name
    }

    /// Opens an entry with O_NOFOLLOW | O_CLOEXEC added to `flags`.
    public func open(_ name: String, _ flags: Int32, mode: mode_t = 0) throws(SystemError) -> Int32 {
        try openNoFollow(at: descriptor, name, flags, mode: mode)
    }

    /// Creates a new file: O_CREAT | O_EXCL (never an existing file, never
    /// through a symlink), then sets `mode` exactly on the descriptor (the
    /// umask could only have narrowed it). EEXIST when the name is taken.
    public func create(_ name: String, _ flags: Int32, mode: mode_t) throws(SystemError) -> Int32 {
        let fd = try open(name, flags | O_CREAT | O_EXCL, mode: mode)
        guard fchmod(fd, mode) == 0 else {
            let e = SystemError.current
            close(fd)
            unlinkat(descriptor, name, 0)
            throw e
        }
        return fd
    }

    /// Opens an existing file that this process writes to (a pid file, a log):
    /// not through a symlink, not a FIFO or device (opened O_NONBLOCK, then
    /// checked), a regular file with one link, owned by the caller (so root
    /// never writes into another user's file).
    public func openOwnFile(_ name: String, _ flags: Int32) throws(TrustError) -> Int32 {
        let fd: Int32
        do throws(SystemError) {
            fd = try open(name, flags | O_NONBLOCK)
        } catch {
            throw TrustError(path: path(of: name), problem: linkOrSystem(error.errno, at: descriptor, name))
        }
        var st = stat()
        let problem: TrustError.Problem?
        if fstat(fd, &st) != 0 {
            problem = .system(errno: errno)
        } else if st.st_mode & S_IFMT != S_IFREG {
            problem = .notARegularFile(kind: fileKind(st.st_mode))
        } else if st.st_uid != geteuid() {
            problem = .ownedByOther(uid: st.st_uid)
        } else if st.st_nlink != 1 {
            problem = .multipleLinks(Int(st.st_nlink))
        } else {
            problem = nil
        }
        if let problem {
            close(fd)
            throw TrustError(path: path(of: name), problem: problem)
        }
        if flags & O_NONBLOCK == 0 { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) }
        return fd
    }

    /// The entry's status, without following a symlink; nil when absent.
    public func status(of name: String) throws(SystemError) -> stat? {
        try entryStatus(at: descriptor, name)
    }

    public func remove(_ name: String) {
        _ = unlinkat(descriptor, name, 0)
    }

    /// Sets the directory's own mode on its descriptor, never through its path.
    public func setMode(_ mode: mode_t) throws(SystemError) {
        guard fchmod(descriptor, mode) == 0 else { throw .current }
    }

    /// Whether the directory holds nothing besides `.` and `..`.
    public func isEmpty() throws(SystemError) -> Bool {
        try names(stoppingAfter: 1).isEmpty
    }

    /// The names in the directory (not `.` and `..`), at most `limit`.
    public func names(stoppingAfter limit: Int = .max) throws(SystemError) -> [String] {
        // A descriptor of its own: readdir moves the file offset.
        let fd = retryOnInterrupt { openat(descriptor, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
        guard fd >= 0, let dir = fdopendir(fd) else {
            let e = SystemError.current
            if fd >= 0 { close(fd) }
            throw e
        }
        defer { closedir(dir) }
        var out: [String] = []
        while out.count < limit, let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(cString: $0.baseAddress!.assumingMemoryBound(to: CChar.self)) }
            if name != "." && name != ".." { out.append(name) }
        }
        return out
    }
}

/// Opens a file that holds key material (a key file, a passphrase file) for
/// reading: not through a symlink in its last component (O_NOFOLLOW), not a
/// FIFO or device (opened O_NONBLOCK, then checked), only a regular file owned
/// by the caller or root, with no group or other permission bit.
/// `directory` may be AT_FDCWD with an absolute `name`; `path` names it in errors.
public func openSecretFile(at directory: Int32, _ name: String, path: String) throws(TrustError) -> Int32 {
    let fd: Int32
    do throws(SystemError) {
        fd = try openNoFollow(at: directory, name, O_RDONLY | O_NONBLOCK)
    } catch {
        throw TrustError(path: path, problem: linkOrSystem(error.errno, at: directory, name))
    }
    var st = stat()
    let problem: TrustError.Problem?
    if fstat(fd, &st) != 0 {
        problem = .system(errno: errno)
    } else if st.st_mode & S_IFMT != S_IFREG {
        problem = .notARegularFile(kind: fileKind(st.st_mode))
    } else if !isTrustedOwner(st.st_uid) {
        problem = .ownedByOther(uid: st.st_uid)
    } else if st.st_mode & 0o077 != 0 {
        problem = .accessibleByOthers(mode: st.st_mode & 0o7777)
    } else {
        problem = nil
    }
    if let problem {
        close(fd)
        throw TrustError(path: path, problem: problem)
    }
    _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
    return fd
}

/// ELOOP from an O_NOFOLLOW open means the last component is a symlink
/// (or the path has too many links): say which.
private func linkOrSystem(_ code: Int32, at directory: Int32, _ name: String) -> TrustError.Problem {
    if code == ELOOP, let st = try? entryStatus(at: directory, name), st.st_mode & S_IFMT == S_IFLNK {
        return .symbolicLink
    }
    return .system(errno: code)
}

/// `path` made absolute against the current directory.
func makeAbsolute(_ path: String) -> String {
    if path.hasPrefix("/") { return path }
    var buf = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
    guard getcwd(&buf, buf.count) != nil else { return "/" + path }
    let cwd = buf.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    return (cwd == "/" ? "" : cwd) + "/" + path
}
