import Foundation
import Glibc

/// A unit file, read as systemd reads it (systemd.syntax(7)): sections,
/// `Key=Value` lines in order, `#` and `;` comments, backslash continuations.
struct UnitFile {
    let path: String
    private(set) var entries: [(section: String, key: String, value: String)] = []

    init(_ path: String) throws {
        self.path = path
        var section = ""
        var pending = ""
        for raw in try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n", omittingEmptySubsequences: false) {
            var line = pending + raw.trimmingCharacters(in: .whitespaces)
            pending = ""
            if line.hasPrefix("#") || line.hasPrefix(";") || line.isEmpty { continue }
            if line.hasSuffix("\\") { line.removeLast(); pending = line + " "; continue }
            if line.hasPrefix("[") && line.hasSuffix("]") { section = String(line.dropFirst().dropLast()); continue }
            guard let eq = line.firstIndex(of: "=") else { throw CommandFailedHere("\(path): not a Key=Value line: \(line)") }
            entries.append((section, String(line[..<eq]).trimmingCharacters(in: .whitespaces),
                            String(line[line.index(after: eq)...]).trimmingCharacters(in: .whitespaces)))
        }
    }

    func values(_ key: String, in section: String = "Service") -> [String] {
        entries.filter { $0.section == section && $0.key == key }.map(\.value)
    }

    func value(_ key: String, in section: String = "Service") -> String? { values(key, in: section).last }

    func keys(in section: String = "Service") -> [String] { entries.filter { $0.section == section }.map(\.key) }
}

/// Runs a service's commands the way systemd would start them, as far as
/// that is possible without a running systemd: specifiers (%i %I %E %t %%),
/// Environment= and EnvironmentFile=, `$VAR` and `${VAR}` in command lines,
/// RuntimeDirectory=, and the hardening settings that a process can apply to
/// itself before exec: NoNewPrivileges=, CapabilityBoundingSet= (setpriv),
/// LimitCORE=, MemoryDenyWriteExecute= (PR_SET_MDWE, the kernel's version of
/// systemd's seccomp rule) and UMask=. Anything else in a command line that
/// systemd would treat specially makes it throw, so a unit the emulation
/// does not understand fails the test instead of running differently.
///
/// Not applied (seccomp filters, cgroup device rules and namespaces need
/// systemd itself): RestrictAddressFamilies=, RestrictNamespaces=,
/// LockPersonality=, SystemCallArchitectures=, RestrictRealtime=,
/// RestrictSUIDSGID=, DevicePolicy=/DeviceAllow=, and the Protect*=,
/// Private*= settings, except for what a test applies itself
/// (`readOnlyPaths`).
struct ServiceEmulation {
    let unit: UnitFile
    let instance: String
    /// What %E (the configuration root, /etc) and %t (the runtime root, /run) stand for here.
    let configRoot: String
    let runtimeRoot: String
    /// Directories made read-only for the service, in a mount namespace of
    /// its own (what ProtectSystem=strict does to them).
    var readOnlyPaths: [String] = []

    init(_ unit: UnitFile, instance: String = "", configRoot: String, runtimeRoot: String) {
        self.unit = unit
        self.instance = instance
        self.configRoot = configRoot
        self.runtimeRoot = runtimeRoot
    }

    func specifiers(_ s: String) throws -> String {
        var out = ""
        var it = s.makeIterator()
        while let c = it.next() {
            guard c == "%" else { out.append(c); continue }
            switch it.next() {
            case "%": out += "%"
            case "i", "I": out += instance
            case "E": out += configRoot
            case "t": out += runtimeRoot
            case let other: throw CommandFailedHere("\(unit.path): specifier %\(other.map(String.init) ?? "") is not emulated")
            }
        }
        return out
    }

    /// The service's environment: the manager's PATH, then Environment=,
    /// then EnvironmentFile= (which overrides it, as systemd.exec(5) says).
    func environment(adding extra: [String: String] = [:]) throws -> [String: String] {
        var env = ["PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
        for line in unit.values("Environment") {
            for assignment in try specifiers(line).split(separator: " ") {
                guard let eq = assignment.firstIndex(of: "="), !assignment.contains("\"") else {
                    throw CommandFailedHere("Environment=\(line): not emulated")
                }
                env[String(assignment[..<eq])] = String(assignment[assignment.index(after: eq)...])
            }
        }
        for line in unit.values("EnvironmentFile") {
            var path = try specifiers(line)
            let optional = path.hasPrefix("-")
            if optional { path.removeFirst() }
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
                if optional { continue }
                throw CommandFailedHere("EnvironmentFile \(path) is missing")
            }
            for raw in text.split(separator: "\n") {
                let l = raw.trimmingCharacters(in: .whitespaces)
                if l.isEmpty || l.hasPrefix("#") || l.hasPrefix(";") { continue }
                guard let eq = l.firstIndex(of: "=") else { throw CommandFailedHere("\(path): not KEY=VALUE: \(l)") }
                var value = String(l[l.index(after: eq)...])
                if value.count >= 2, let q = value.first, q == "\"" || q == "'", value.last == q {
                    value = String(value.dropFirst().dropLast())
                }
                env[String(l[..<eq]).trimmingCharacters(in: .whitespaces)] = value
            }
        }
        for (k, v) in extra { env[k] = v }
        return env
    }

    /// Each `key=` command line (ExecStartPre= may have several), expanded.
    func commands(_ key: String, environment env: [String: String]) throws -> [[String]] {
        try unit.values(key).map { line in
            let expanded = try specifiers(line)
            guard let first = expanded.first, first == "/" else {
                throw CommandFailedHere("\(key)=\(line): only absolute commands without prefixes are emulated")
            }
            guard !expanded.contains("\""), !expanded.contains("'"), !expanded.contains("\\") else {
                throw CommandFailedHere("\(key)=\(line): quoting is not emulated")
            }
            var argv: [String] = []
            for word in expanded.split(separator: " ").map(String.init) {
                if word.hasPrefix("$") && !word.hasPrefix("${") {
                    // $VAR as a word of its own: split at whitespace, zero or more words.
                    argv += (env[String(word.dropFirst())] ?? "").split(separator: " ").map(String.init)
                    continue
                }
                var w = word
                while let open = w.range(of: "${") {
                    guard let close = w[open.upperBound...].firstIndex(of: "}") else { throw CommandFailedHere("unclosed ${ in \(line)") }
                    w.replaceSubrange(open.lowerBound...close, with: env[String(w[open.upperBound..<close])] ?? "")
                }
                guard !w.contains("$") else { throw CommandFailedHere("\(key)=\(line): \(word) is not emulated") }
                argv.append(w)   // ${VAR}: exactly one word, even when empty
            }
            return argv
        }
    }

    /// Creates RuntimeDirectory= under the runtime root, root-owned, with RuntimeDirectoryMode=.
    func prepareRuntimeDirectories() throws {
        let mode = mode_t(unit.value("RuntimeDirectoryMode").flatMap { Int($0, radix: 8) } ?? 0o755)
        for names in unit.values("RuntimeDirectory") {
            for name in names.split(separator: " ") {
                let path = runtimeRoot + "/" + name
                guard mkdir(path, mode) == 0 || errno == EEXIST, chmod(path, mode) == 0 else {
                    throw CommandFailedHere("cannot create \(path)")
                }
            }
        }
    }

    /// `argv` wrapped so that it runs with the unit's hardening applied. The
    /// wrappers exec, so the command keeps the pid it was started with (the
    /// main pid, for NotifyAccess=main).
    func hardened(_ argv: [String]) throws -> [String] {
        var out: [String] = []
        if !readOnlyPaths.isEmpty {
            let binds = readOnlyPaths.map { "mount --bind -o ro '\($0)' '\($0)' && " }.joined()
            out += ["/usr/bin/unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", binds + "exec \"$@\"", "sh"]
        }
        var priv: [String] = []
        if unit.value("NoNewPrivileges") == "yes" { priv.append("--no-new-privs") }
        if let caps = unit.value("CapabilityBoundingSet") {
            guard !caps.hasPrefix("~") else { throw CommandFailedHere("CapabilityBoundingSet=~ is not emulated") }
            let names = caps.split(separator: " ").map { "+" + $0.lowercased().replacingOccurrences(of: "cap_", with: "") }
            // As systemd: the bounding set, and so the inheritable set, hold only these.
            priv += ["--inh-caps=-all", "--bounding-set=-all," + names.joined(separator: ",")]
        }
        if !priv.isEmpty { out += ["/usr/bin/setpriv"] + priv }
        var settings: [String] = []
        if let core = unit.value("LimitCORE") { settings.append("core=\(core)") }
        if unit.value("MemoryDenyWriteExecute") == "yes" { settings.append("mdwe") }
        if let umask = unit.value("UMask") { settings.append("umask=\(umask)") }
        if !settings.isEmpty { out += ["/usr/bin/python3", "-c", Self.selfSettings, settings.joined(separator: ",")] }
        return out + argv
    }

    /// Applies `core=N`, `mdwe` and `umask=OOO` to itself, then execs the rest.
    /// Each must take effect, or it exits 99 without running the command.
    static let selfSettings = #"""
    import ctypes, os, resource, sys
    libc = ctypes.CDLL(None, use_errno=True)
    for s in sys.argv[1].split(","):
        if s.startswith("core="):
            n = int(s[5:])
            resource.setrlimit(resource.RLIMIT_CORE, (n, n))
        elif s == "mdwe":
            # PR_SET_MDWE (65), PR_MDWE_REFUSE_EXEC_GAIN (1): kept across execve.
            if libc.prctl(65, 1, 0, 0, 0) != 0:
                sys.stderr.write("PR_SET_MDWE failed: errno %d\n" % ctypes.get_errno()); sys.exit(99)
        elif s.startswith("umask="):
            os.umask(int(s[6:], 8))
        else:
            sys.stderr.write("unknown setting " + s + "\n"); sys.exit(99)
    os.execv(sys.argv[2], sys.argv[2:])
    """#
}
