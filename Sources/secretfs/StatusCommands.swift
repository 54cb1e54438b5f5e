import ArgumentParser
import Glibc
import SecretfsFS
import SecretfsPOSIX
import SecretfsProtocol
import SecretfsStore

struct UmountCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "umount",
        abstract: "Unmount a mounted project and wait for its mount process to exit.",
        discussion: "Plain `fusermount3 -u MOUNTPOINT` works too.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "The mountpoint.", completion: .directory) var mountpoint: String

    func run() throws {
        let target = resolvedMountpoint(mountpoint)
        guard let entry = MountTable.fuseEntry(at: target), entry.source.hasPrefix("secretfs:") else {
            throw Failure("\(target) is not a secretfs mount", hint: "see mounted projects with 'secretfs status'", exit: .mountProblem)
        }
        let owner = RuntimeState(directory: global.runtimeDirectory).activeMounts().first { $0.mountpoint == target }
        if !unmount(target) {
            throw Failure("cannot unmount \(target): it is busy",
                          hint: "close the files and shells using it (fuser -m \(target)), or fusermount3 -u -z \(target)",
                          exit: .mountProblem)
        }
        if let owner {
            let deadline = monotonicSeconds() + 10
            while isRunning(owner.pid) && monotonicSeconds() < deadline { usleep(10_000) }
        }
        writeStdout("unmounted \(target)\n")
    }

    /// The path the kernel lists the mount under: `secretfs mount` mounts on
    /// the directory with its symlinks resolved. The mount's root itself may
    /// refuse even a stat to this user (no allow_other), so its parent is
    /// resolved and the last name kept when the whole path does not resolve.
    private func resolvedMountpoint(_ given: String) -> String {
        let path = absolute(given)
        if let whole = realPath(path) { return whole }
        guard let slash = path.lastIndex(of: "/"), slash != path.startIndex else { return path }
        let parent = realPath(String(path[..<slash])) ?? String(path[..<slash])
        return (parent == "/" ? "" : parent) + String(path[slash...])
    }

    private func realPath(_ path: String) -> String? {
        guard let p = realpath(path, nil) else { return nil }
        defer { free(p) }
        return String(cString: p)
    }

    /// Alive and not a zombie: a daemonized mount's parent is init, which
    /// may take its time to reap it, and a zombie has finished everything.
    private func isRunning(_ pid: pid_t) -> Bool {
        guard kill(pid, 0) == 0 else { return false }
        let fd = open("/proc/\(pid)/stat", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return true }
        defer { close(fd) }
        var buf = [UInt8](repeating: 0, count: 512)
        let n = read(fd, &buf, buf.count)
        guard n > 0 else { return true }
        // "PID (COMM) STATE ...": the state follows the last ')'.
        let text = buf[..<n]
        guard let paren = text.lastIndex(of: UInt8(ascii: ")")), paren + 2 < n else { return true }
        return text[paren + 2] != UInt8(ascii: "Z")
    }

    private func unmount(_ target: String) -> Bool {
        var pid: pid_t = 0
        let args = ["fusermount3", "-u", target]
        let rc = withCStrings(args) { argv in posix_spawnp(&pid, "fusermount3", nil, nil, argv, environ) }
        if rc == 0 {
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
            if status == 0 { return true }
        }
        // No fusermount3 (or it failed): as root, the syscall does the same.
        return umount2(target, 0) == 0
    }
}

struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show which projects are mounted where, with their number of secrets and last change (never values).")

    @OptionGroup var global: GlobalOptions
    @Flag(help: "One JSON object per project, one per line (names, counts, times, mounts; never values).")
    var json = false

    func run() throws {
        // No store yet is a state, not an error: say so in one line.
        guard Store.exists(at: global.location) else {
            if json { return }
            writeStdout("no store at \(global.storeDirectory) (create one with 'secretfs init')\n")
            return
        }
        let store = try global.openStoreMetadata()
        let projects = try store.listProjects()
        // Only this store's: another store's project of the same name may be
        // the one mounted through this runtime directory.
        let identity = global.storeIdentity
        let mounts = RuntimeState(directory: global.runtimeDirectory).activeMounts().filter { $0.isFrom(identity) }
        if json {
            var out = ""
            for p in projects {
                let m = mounts.first { $0.project == p.name }
                out += "{\"project\":\(jsonString(p.name)),\"secrets\":\(p.secretCount),"
                    + "\"lastChange\":\(p.lastUpdate.map { jsonString(iso8601($0)) } ?? "null"),"
                    + "\"pid\":\(m.map { String($0.pid) } ?? "null"),\"mountpoint\":\(m.map { jsonString($0.mountpoint) } ?? "null")}\n"
            }
            writeStdout(out)
            return
        }
        var text = pad("PROJECT", 20) + pad("SECRETS", 9) + pad("LAST CHANGE", 22) + pad("PID", 8) + "MOUNTPOINT\n"
        for p in projects {
            let m = mounts.first { $0.project == p.name }
            // Names come from the database, mountpoints from pid files: escaped.
            text += pad(Wire.printable(p.name), 20) + pad(String(p.secretCount), 9) + pad(p.lastUpdate.map(iso8601) ?? "-", 22)
                + pad(m.map { String($0.pid) } ?? "-", 8) + (m.map { Wire.printable($0.mountpoint) } ?? "(not mounted)") + "\n"
        }
        if projects.isEmpty { text = "no projects in \(global.storeDirectory)\n" }
        writeStdout(text)
    }
}

struct AuditCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "audit",
        abstract: "Print a project's audit trail: writes, renames and deletes with the caller's uid, socket reads, refused connections.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "The project.", completion: .projectNames) var project: String
    @Option(help: ArgumentHelp("Only events at or after TIME: an ISO 8601 UTC time (2026-11-26 or 2026-11-26T10:00:00Z) or an age such as 30m, 12h, 7d.", valueName: "time"))
    var since: String?
    @Flag(help: "One JSON object per line instead of a table.") var json = false

    func validate() throws {
        try validateProjectName(project)
        if let since, parseSince(since) == nil {
            throw ValidationError("--since: cannot read '\(since)'; use 2026-11-26, 2026-11-26T10:00:00Z, or an age like 30m, 12h, 7d")
        }
    }

    func run() throws {
        let store = try global.openStoreMetadata()
        let events = try store.auditEvents(project: project, since: since.flatMap(parseSince))
        if events.isEmpty, try store.listProjects().first(where: { $0.name == project }) == nil {
            throw Failure(store: .projectNotFound(project))
        }
        var text = ""
        for e in events {
            if json {
                text += "{\"id\":\(e.id),\"time\":\(jsonString(iso8601(e.at))),\"project\":\(jsonString(e.project)),"
                    + "\"uid\":\(e.uid),\"pid\":\(e.pid),\"action\":\(jsonString(e.action)),"
                    + "\"names\":\(e.names.map(jsonString) ?? "null"),\"detail\":\(e.detail.map(jsonString) ?? "null")}\n"
            } else {
                // Names and details can come from a database writer: escape
                // control characters so no row can move the cursor or forge a line.
                text += "\(iso8601(e.at))  uid=\(e.uid) pid=\(e.pid)  \(Wire.printable(e.action))  \(Wire.printable(e.names ?? "-"))"
                    + (e.detail.map { "  (\(Wire.printable($0)))" } ?? "") + "\n"
            }
        }
        writeStdout(text)
    }
}

func parseSince(_ s: String) -> Timestamp? {
    let units: [Character: Int64] = ["s": 1, "m": 60, "h": 3600, "d": 86400]
    // Overflow-checked: an age or a year past what nanoseconds since 1970
    // hold is unreadable, not a trap.
    func nanoseconds(_ seconds: Int64) -> Int64? {
        let (ns, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        return overflow ? nil : ns
    }
    if let u = s.last, let mult = units[u], let n = Int64(s.dropLast()), n >= 0 {
        let (seconds, overflow) = n.multipliedReportingOverflow(by: mult)
        guard !overflow, let age = nanoseconds(seconds) else { return nil }
        return Timestamp(nanoseconds: Timestamp.now().nanoseconds - age)
    }
    // YYYY-MM-DD, optionally followed by THH:MM:SS and an optional Z (UTC).
    let u = Array(s.utf8)
    func number(_ from: Int, _ count: Int) -> Int32? {
        guard from + count <= u.count else { return nil }
        var v: Int32 = 0
        for b in u[from..<(from + count)] {
            guard b >= 48 && b <= 57 else { return nil }
            v = v * 10 + Int32(b - 48)
        }
        return v
    }
    guard u.count >= 10, u[4] == 45, u[7] == 45, let y = number(0, 4), let mo = number(5, 2), let d = number(8, 2),
          (1...12).contains(mo), (1...31).contains(d) else { return nil }
    var tmv = tm()
    tmv.tm_year = y - 1900
    tmv.tm_mon = mo - 1
    tmv.tm_mday = d
    if u.count > 10 {
        guard u.count >= 19, u[10] == 84, u[13] == 58, u[16] == 58, let h = number(11, 2), let mi = number(14, 2),
              let sec = number(17, 2), h < 24, mi < 60, sec < 61,
              u.count == 19 || (u.count == 20 && u[19] == 90) else { return nil }
        tmv.tm_hour = h; tmv.tm_min = mi; tmv.tm_sec = sec
    }
    return nanoseconds(Int64(timegm(&tmv))).map { Timestamp(nanoseconds: $0) }
}

func jsonString(_ s: String) -> String {
    var out = "\""
    for u in s.unicodeScalars {
        switch u {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        default:
            if u.value < 0x20 { out += String(format4: u.value) } else { out.unicodeScalars.append(u) }
        }
    }
    return out + "\""
}

extension String {
    init(format4 v: UInt32) {
        let hex = String(v, radix: 16)
        self = "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
    }
}
