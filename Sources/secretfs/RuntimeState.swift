import Glibc

/// The runtime directory's per-project files, written by each mount process:
///   PROJECT.pid   pid and mountpoint, flock'ed for as long as the mount runs
///                 (a lock held means mounted; a file without a lock is stale)
///   PROJECT.sock  the privileged socket
///   PROJECT.log   the mount's log (never values)
struct RuntimeState {
    let directory: String

    func pidFile(_ project: String) -> String { "\(directory)/\(project).pid" }
    func socketPath(_ project: String) -> String { "\(directory)/\(project).sock" }
    func logFile(_ project: String) -> String { "\(directory)/\(project).log" }

    struct ActiveMount {
        var project: String
        var pid: Int32
        var mountpoint: String
    }

    /// Takes the project's mount lock for this process; the descriptor stays
    /// open (and the lock held) until the process exits.
    func acquire(project: String, mountpoint: String) throws -> Int32 {
        let path = pidFile(project)
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw Failure("cannot create \(path): \(String(cString: strerror(errno)))",
                          hint: "pass --runtime-dir DIR or set SECRETFS_RUNTIME_DIR", exit: .mountProblem)
        }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            close(fd)
            let where_ = activeMount(project: project)?.mountpoint ?? "?"
            throw Failure("project '\(project)' is already mounted at \(where_)",
                          hint: "unmount it first (secretfs umount \(where_)) or use that mount", exit: .mountProblem)
        }
        ftruncate(fd, 0)
        let text = "\(getpid())\n\(mountpoint)\n"
        _ = text.withCString { pwrite(fd, $0, strlen($0), 0) }
        return fd
    }

    func release(project: String, fd: Int32) {
        unlink(pidFile(project))
        close(fd)
    }

    /// The mount of `project`, if its process still holds the lock.
    func activeMount(project: String) -> ActiveMount? {
        let fd = open(pidFile(project), O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        if flock(fd, LOCK_SH | LOCK_NB) == 0 { return nil }  // nobody holds it: stale
        var buf = [CChar](repeating: 0, count: 8192)
        let n = read(fd, &buf, buf.count - 1)
        guard n > 0 else { return nil }
        let lines = cString(buf).split(separator: "\n", omittingEmptySubsequences: false)
        guard lines.count >= 2, let pid = Int32(lines[0]) else { return nil }
        return ActiveMount(project: project, pid: pid, mountpoint: String(lines[1]))
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
