import Glibc
import SecretfsNames
import SecretfsStore

/// `mount.secretfs`: the helper mount(8) runs for file system type
/// `secretfs`, as `/sbin/mount.secretfs PROJECT DIR [-sfnv] [-o OPTIONS]`.
/// It is this binary under another name (scripts/install links it), so
/// `mount -t secretfs demo /srv/secrets/demo -o group=ops` and an fstab line
/// `demo /srv/secrets/demo secretfs defaults,nofail,group=ops 0 0` both end in
/// `secretfs mount`, which returns once the mount answers. `umount DIR` needs
/// no helper: the kernel unmounts and the mount process exits.
///
/// The options are `secretfs mount -o` options, plus the command's flags
/// written as options (an fstab line has nowhere else to put them), plus the
/// generic options mount(8) and systemd pass along, which mean nothing here.
enum MountHelper {
    static let name = "mount.secretfs"

    /// Options mount(8), fstab and systemd add that mean nothing to secretfs.
    /// (`nosuid`, `nodev` and `noexec`, which `user` implies, do mean
    /// something to the kernel and go on to libfuse.)
    static let ignoredOptions: Set<String> = ["defaults", "nofail", "_netdev", "rw", "auto", "noauto", "user", "nouser", "users"]

    /// Options that become `secretfs mount` flags, by option name.
    static let flagOptions: [String: String] = [
        "store": "--store", "runtime_dir": "--runtime-dir", "passphrase_file": "--passphrase-file", "key_file": "--key-file",
        "resolver_uid": "--resolver-uid", "resolver_group": "--resolver-group",
        "socket_idle_timeout": "--socket-idle-timeout",
    ]

    /// A helper's exit status, as mount(8) documents them.
    enum Status: Int32 {
        case mounted = 0
        case usage = 1          // incorrect invocation
        case failed = 32        // mount failure
    }

    struct UsageError: Error {
        var message: String
    }

    /// What mount(8) asked for.
    struct Invocation: Equatable {
        var project: String
        var mountpoint: String
        var options: [String] = []
        var fake = false      // -f: do everything but mount
        var verbose = false   // -v: say what runs
    }

    /// Reads `PROJECT DIR [-sfnv] [-o OPTIONS] [-t TYPE]` (flags may come
    /// anywhere, and combined, as mount(8) and people write them).
    static func parse(_ arguments: [String]) throws(UsageError) -> Invocation {
        var positional: [String] = []
        var options: [String] = []
        var fake = false, verbose = false
        var i = 0
        while i < arguments.count {
            let a = arguments[i]
            i += 1
            guard a.hasPrefix("-"), a.count > 1 else { positional.append(a); continue }
            var letters = Substring(a.dropFirst())
            while let c = letters.popFirst() {
                switch c {
                case "f": fake = true
                case "v": verbose = true
                case "s", "n": break   // sloppy (unknown options are still refused), no mtab (there is none)
                case "o", "t":
                    let value: String
                    if !letters.isEmpty {
                        value = String(letters)
                        letters = ""
                    } else if i < arguments.count {
                        value = arguments[i]
                        i += 1
                    } else {
                        throw UsageError(message: "-\(c) needs a value")
                    }
                    if c == "o" {
                        options += try splitOptions(value)
                    } else if value != "secretfs" && value != "fuse.secretfs" {
                        throw UsageError(message: "-t \(value): this helper mounts type secretfs only")
                    }
                default:
                    throw UsageError(message: "unknown flag -\(c)")
                }
            }
        }
        guard positional.count == 2 else {
            throw UsageError(message: "expected a project and a mountpoint, got \(counted(positional.count, "argument"))")
        }
        return Invocation(project: positional[0], mountpoint: positional[1], options: options, fake: fake, verbose: verbose)
    }

    /// Splits a comma-separated option list. A value may be double-quoted,
    /// as libmount allows, to hold commas: `store="postgresql://h1,h2/db"`;
    /// the quotes are removed.
    static func splitOptions(_ list: String) throws(UsageError) -> [String] {
        var out: [String] = []
        var current = ""
        var quoted = false
        for c in list {
            switch c {
            case "\"": quoted.toggle()
            case "," where !quoted:
                if !current.isEmpty { out.append(current) }
                current = ""
            default: current.append(c)
            }
        }
        // The list is not repeated: a store= in it may hold a password.
        guard !quoted else { throw UsageError(message: "unbalanced double quote in the -o options") }
        if !current.isEmpty { out.append(current) }
        return out
    }

    /// The `secretfs mount` arguments for an invocation.
    static func mountArguments(_ call: Invocation) throws(UsageError) -> [String] {
        var flags: [String] = []
        var mountOptions: [String] = []
        for option in call.options {
            let (key, value) = splitOption(option)
            if ignoredOptions.contains(key) || key.hasPrefix("x-") { continue }
            if key == "debug" && value == nil {
                flags.append("--debug")
            } else if let flag = flagOptions[key] {
                guard let value, !value.isEmpty else { throw UsageError(message: "-o \(key) needs a value") }
                // A location in fstab is read with no current directory
                // to speak of; a store may also be a database URL.
                let isPath = ["store", "runtime_dir", "passphrase_file", "key_file"].contains(key)
                if isPath && !value.hasPrefix("/") && !(key == "store" && value.contains("://")) {
                    // A store value is never repeated (a conninfo may hold a password).
                    throw UsageError(message: "-o \(key) needs an absolute path\(key == "store" ? " or a postgresql:// URL" : ", got '\(value)'")")
                }
                flags += [flag, value]
            } else if option.contains(",") {
                // Only the flags above can take a quoted comma: `secretfs mount -o` splits at every one.
                throw UsageError(message: "-o \(key): a comma inside a quoted value is only allowed for \(flagOptions.keys.sorted().joined(separator: ", "))")
            } else {
                mountOptions.append(option)   // `secretfs mount -o` judges it, with its usual errors
            }
        }
        var args = ["mount"] + flags + [call.project, call.mountpoint]
        if !mountOptions.isEmpty { args += ["-o", mountOptions.joined(separator: ",")] }
        return args
    }

    /// The command line as -v shows it: shell-quoted, with the password of a
    /// store URL (`postgresql://user:password@host/db`) masked.
    static func display(_ args: [String]) -> String {
        let all = ["secretfs"] + args
        return all.indices.map { i in
            let arg = all[i]
            let shown = hidingConnectionStrings(arg, isStore: i > 0 && all[i - 1] == "--store")
            let plain = shown.utf8.allSatisfy { b in
                (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || "-_=/.,:@%+".utf8.contains(b)
            }
            return plain && !shown.isEmpty ? shown : "'" + shown.replacingAll("'", with: "'\\''") + "'"
        }.joined(separator: " ")
    }

    /// An argument, or each `key=value` of an option list, that names a
    /// database as libpq reads it: shown when libpq finds no password in it,
    /// else replaced (libpq is the judge: a password after a `?` in the
    /// authority, or `password = x` with spaces, is one too). Without libpq,
    /// the textual masking below.
    static func hidingConnectionStrings(_ arg: String, isStore: Bool = false) -> String {
        // What may hold a password: a URL, or a conninfo that names one.
        func mayHoldPassword(_ text: String) -> Bool {
            let lower = text.lowercased()
            return lower.hasPrefix("postgres") || lower.contains("://") || lower.contains("password")
        }
        func judged(_ text: String) -> String {
            guard mayHoldPassword(text) else { return text }
            guard let passwords = PostgresTarget.passwords(in: text) else {
                return "<a connection string that does not parse: not shown>"
            }
            // Masked as the text reads even when libpq finds no password: a
            // later empty `password=` hides an earlier one from libpq, not
            // from the screen.
            if passwords.isEmpty { return maskingURLPassword(text) }
            // Masked as the text reads, if libpq reads the masked text as
            // having only the mask for its passwords; else not shown at all.
            let masked = maskingURLPassword(text)
            let left = PostgresTarget.passwords(in: masked)
            return left.map { !$0.isEmpty && $0.allSatisfy { $0 == "***" } && passwords.allSatisfy { !masked.contains($0) } } == true
                ? masked : "<a connection string with a password: not shown>"
        }
        if isStore || arg.lowercased().hasPrefix("postgres") { return judged(arg) }
        return arg.split(separator: ",", omittingEmptySubsequences: false).map { item -> String in
            guard let eq = item.firstIndex(of: "=") else { return String(item) }
            return String(item[...eq]) + judged(String(item[item.index(after: eq)...]))
        }.joined(separator: ",")
    }

    /// `scheme://user:password@rest` as `scheme://user:***@rest`; anything else as it is.
    static func maskingURLPassword(_ s: String) -> String {
        // A conninfo or URL parameter `password=...` (`sslpassword=` too):
        // its value masked up to the next space or `&`.
        var s = s
        var from = s.startIndex
        while let r = s[from...].firstRange(of: "password=") {
            let rest = s[r.upperBound...]
            let end = rest.firstIndex { $0 == " " || $0 == "&" } ?? rest.endIndex
            let prefix = String(s[..<r.upperBound]) + "***"
            s = prefix + String(rest[end...])
            from = s.index(s.startIndex, offsetBy: prefix.count)
        }
        let u = Array(s.utf8)
        guard let colonSlash = (0..<max(0, u.count - 2)).first(where: { u[$0] == 58 && u[$0 + 1] == 47 && u[$0 + 2] == 47 }) else { return s }
        let authority = colonSlash + 3
        let end = u[authority...].firstIndex(where: { $0 == 47 || $0 == 63 || $0 == 35 }) ?? u.count   // / ? #
        guard let at = u[authority..<end].lastIndex(of: 64),                                           // @
              let colon = u[authority..<at].firstIndex(of: 58) else { return s }                         // :
        return String(decoding: u[..<(colon + 1)] + Array("***".utf8) + u[at...], as: UTF8.self)
    }

    /// Runs as `mount.secretfs`: translates the call, runs `secretfs mount`
    /// (this binary) and exits with mount(8)'s status for the result.
    static func main(_ arguments: [String]) -> Never {
        if arguments == ["-h"] || arguments == ["--help"] {
            writeStdout("usage: \(name) PROJECT MOUNTPOINT [-sfnv] [-o OPTIONS]\n"
                        + "The helper mount(8) runs for type secretfs: it runs 'secretfs mount' with the options translated.\n"
                        + "-o takes secretfs mount's -o options and its flags as options (store=, runtime_dir=, key_file=, ...);\n"
                        + "-f fakes, -v shows the command; see secretfs(1), MOUNT HELPER.\n")
            exit(Status.mounted.rawValue)
        }
        let call: Invocation
        let args: [String]
        do {
            call = try parse(arguments)
            args = try mountArguments(call)
        } catch {
            writeStderr("\(name): error: \(error.message)\n"
                        + "usage: \(name) PROJECT MOUNTPOINT [-sfnv] [-o OPTIONS]  (see secretfs(1), MOUNT HELPER)\n")
            exit(Status.usage.rawValue)
        }
        if call.verbose { writeStderr("\(name): \(display(args))\n") }
        if call.fake { exit(Status.mounted.rawValue) }

        // `secretfs mount` prints where the mount process logs; mount(8) is
        // silent on success, unless asked to be verbose.
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if !call.verbose { posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0) }
        let exe = selfExecutable()
        var pid: pid_t = 0
        let rc = withCStrings([exe] + args) { argv in posix_spawn(&pid, exe, &actions, nil, argv, environ) }
        guard rc == 0 else {
            writeStderr("\(name): error: cannot run \(exe): \(String(cString: strerror(rc)))\n")
            exit(Status.failed.rawValue)
        }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let exited = (status & 0x7f) == 0
        let code = (status >> 8) & 0xff
        // secretfs's own statuses (secretfs(1), EXIT STATUS) mean nothing to
        // mount(8), which reads its status as a bit mask (64 is "some
        // mounts succeeded"): a usage error is 1, any other failure 32.
        if exited && code == 0 { exit(Status.mounted.rawValue) }
        exit(exited && code == Exit.usage.rawValue ? Status.usage.rawValue : Status.failed.rawValue)
    }
}

extension String {
    fileprivate func replacingAll(_ target: String, with replacement: String) -> String {
        split(separator: Character(target), omittingEmptySubsequences: false).joined(separator: replacement)
    }
}
