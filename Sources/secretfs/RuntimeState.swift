import Glibc
import SecretfsPOSIX
import SecretfsProtocol

/// The runtime directory's per-project files, written by each mount process:
///   PROJECT.pid   pid, mountpoint and store, flock'ed for as long as the
///                 mount runs (a lock held means mounted; a file without a
///                 lock is stale)
///   PROJECT.sock  the privileged socket
///   PROJECT.log   the mount's log (never values)
/// Readers (`status`, `project delete`, `umount`) only read pid files, and
/// trust nothing in them but a pid and a path to show; writers go through
/// `RuntimeDirectory`.
struct RuntimeState {
    let directory: String

    func pidFile(_ project: String) -> String { "\(directory)/\(project).pid" }
    func socketPath(_ project: String) -> String { MountSocket.path(runtimeDirectory: directory, project: project) }
    func logFile(_ project: String) -> String { "\(directory)/\(project).log" }

    struct ActiveMount {
        var project: String
        var pid: Int32
        var mountpoint: String
        /// The store it was mounted from (GlobalOptions.storeIdentity).
        var store: String

        /// Whether this mount serves `store`'s project: two stores may have
        /// a project of the same name, mounted through one runtime directory
        /// one at a time.
        func isFrom(_ store: String) -> Bool { self.store == store }
    }

    /// The mount of `project`, if its process still holds the lock.
    func activeMount(project: String) -> ActiveMount? {
        // Not through a symlink, and never blocking on a FIFO put in its place.
        guard let fd = try? openNoFollow(at: AT_FDCWD, pidFile(project), O_RDONLY | O_NONBLOCK) else { return nil }
        defer { close(fd) }
        guard let st = try? fileStatus(fd), st.st_mode & S_IFMT == S_IFREG else { return nil }
        if flock(fd, LOCK_SH | LOCK_NB) == 0 { return nil }  // nobody holds it: stale
        var buf = [CChar](repeating: 0, count: 8192)
        let n = retryOnInterrupt { read(fd, &buf, buf.count - 1) }
        guard n > 0 else { return nil }
        let lines = cString(buf).split(separator: "\n", omittingEmptySubsequences: false)
        guard lines.count >= 3, let pid = Int32(lines[0]) else { return nil }
        return ActiveMount(project: project, pid: pid, mountpoint: String(lines[1]), store: String(lines[2]))
    }

    func activeMounts() -> [ActiveMount] {
        guard let dir = opendir(directory) else { return [] }
        defer { closedir(dir) }
        var out: [ActiveMount] = []
        while let ent = readdir(dir) {
            let name = withUnsafeBytes(of: ent.pointee.d_name) { String(cString: $0.baseAddress!.assumingMemoryBound(to: CChar.self)) }
            guard name.hasSuffix(".pid") else { continue }
            if let m = activeMount(project: String(name.dropLast(4))) { out.append(m) }
        }
        return out.sorted { $0.project < $1.project }
    }
}

/// The runtime directory of a mount, checked under the directory-trust rule
/// (TrustedDirectory: owned by the caller or root, writable by nobody else, and
/// so every directory above it) and held open. The mount runs as root more
/// often than not, so a directory someone else could write would let them
/// point PROJECT.pid or PROJECT.log at any file root can write. Every file is
/// opened relative to the directory's descriptor, with O_NOFOLLOW | O_CLOEXEC.
struct RuntimeDirectory {
    let directory: TrustedDirectory
    var state: RuntimeState { RuntimeState(directory: directory.path) }

    func pidFile(_ project: String) -> String { state.pidFile(project) }
    func socketPath(_ project: String) -> String { state.socketPath(project) }
    func logFile(_ project: String) -> String { state.logFile(project) }

    /// Creates the runtime directory if it is missing (0755: the sockets
    /// inside carry their own modes) and checks it.
    static func prepare(_ path: String) throws -> RuntimeDirectory {
        do {
            return RuntimeDirectory(directory: try TrustedDirectory.open(path, creatingWith: 0o755))
        } catch {
            let elsewhere = "pass --runtime-dir DIR or set SECRETFS_RUNTIME_DIR to a directory that only you and root can write"
            if case .system(let e) = error.problem {
                let at = error.path == path ? "" : "\(error.path): "
                throw Failure("cannot create runtime directory \(path): \(at)\(errnoText(e))",
                              hint: elsewhere, exit: .mountProblem)
            }
            throw Failure("runtime directory \(path) is not safe to use: \(error)",
                          hint: (error.fix.map { $0 + ", or " } ?? "") + elsewhere, exit: .mountProblem)
        }
    }

    /// Takes the project's mount lock for this process; the descriptor stays
    /// open (and the lock held) until the process exits.
    ///
    /// The pid file is always a new file (O_CREAT | O_EXCL, 0644). One left by
    /// a mount that died is recognised by its lock being free, removed, and
    /// created again. After the lock is taken, the name must still lead to the
    /// locked file: a mount that raced us may have removed it meanwhile.
    func acquire(project: String, mountpoint: String, store: String) throws -> Int32 {
        let name = "\(project).pid"
        let path = pidFile(project)
        func refuse(_ message: String, hint: String? = nil) -> Failure {
            Failure(message, hint: hint, exit: .mountProblem)
        }
        for _ in 0..<5 {
            var fd: Int32
            var fresh = true
            do {
                fd = try directory.create(name, O_RDWR, mode: 0o644)
            } catch where error.errno == EEXIST {
                fresh = false
                do {
                    fd = try directory.openOwnFile(name, O_RDWR)
                } catch {
                    if case .system(ENOENT) = error.problem { continue }   // removed meanwhile
                    throw refuse("cannot use the pid file: \(error)",
                                 hint: "remove \(path); secretfs creates it anew, as a file of its own")
                }
            } catch {
                throw refuse("cannot create \(path): \(error)",
                             hint: "pass --runtime-dir DIR or set SECRETFS_RUNTIME_DIR")
            }
            guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
                close(fd)
                let where_ = state.activeMount(project: project)?.mountpoint ?? "?"
                throw refuse("project '\(project)' is already mounted at \(where_)",
                             hint: "unmount it first (secretfs umount \(where_)) or use that mount")
            }
            guard isCurrent(fd, name) else {
                close(fd)   // removed or replaced while we locked it
                continue
            }
            if !fresh {
                // Stale (its mount died): start again from a new file.
                directory.remove(name)
                close(fd)
                continue
            }
            let text = "\(getpid())\n\(mountpoint)\n\(store)\n"
            _ = text.withCString { pwrite(fd, $0, strlen($0), 0) }
            return fd
        }
        throw refuse("cannot take the mount lock \(path): it keeps changing",
                     hint: "another secretfs is starting or stopping this project; try again")
    }

    /// Whether `name` in the directory is still the file open as `fd`.
    private func isCurrent(_ fd: Int32, _ name: String) -> Bool {
        guard let mine = try? fileStatus(fd), let now = try? directory.status(of: name) else { return false }
        return mine.st_dev == now.st_dev && mine.st_ino == now.st_ino
    }

    func release(project: String, fd: Int32) {
        let name = "\(project).pid"
        if isCurrent(fd, name) { directory.remove(name) }
        close(fd)
    }

    /// Opens the mount's log for appending: created new with mode 0600
    /// (O_EXCL), or else an existing one only if it is a regular file of the
    /// caller's with one link, never through a symlink; narrowed to 0600 if it
    /// was wider.
    func openLog(project: String) throws -> Int32 {
        let name = "\(project).log"
        let path = logFile(project)
        do {
            return try directory.create(name, O_WRONLY | O_APPEND, mode: 0o600)
        } catch where error.errno == EEXIST {
            // Appended to across mounts.
        } catch {
            throw Failure("cannot create log file \(path): \(error)", exit: .mountProblem)
        }
        let fd: Int32
        do {
            fd = try directory.openOwnFile(name, O_WRONLY | O_APPEND)
        } catch {
            throw Failure("cannot use the log file: \(error)",
                          hint: "move \(path) away; secretfs creates it anew, as a file of its own",
                          exit: .mountProblem)
        }
        if let st = try? fileStatus(fd), st.st_mode & 0o077 != 0 { _ = fchmod(fd, 0o600) }
        return fd
    }
}
