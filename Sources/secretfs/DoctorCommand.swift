import ArgumentParser
import Glibc
import SecretfsFS
import SecretfsPOSIX
import SecretfsStore

/// `secretfs doctor`: what a mount needs, one line per check, with a hint for
/// each failure. It reads and opens; it changes nothing (no directory is
/// created, no key is loaded).
struct DoctorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "doctor",
        abstract: "Check what a mount needs: /dev/fuse, fusermount3, fuse.conf, locked memory, the store, the runtime directory and the key.",
        discussion: """
            Prints one line per check (ok, warn or FAIL, then what was found), and a hint under each \
            that is not ok. Exits 0 when nothing failed (warnings allowed), 1 otherwise. Changes nothing.
            """)

    @OptionGroup var global: GlobalOptions
    @Option(help: ArgumentHelp("Also check what mounting with -o group=GROUP needs.", valueName: "group"))
    var group: String?

    enum Level: String { case ok = "ok  ", warn = "warn", fail = "FAIL" }

    struct Check {
        var level: Level
        var what: String
        var hint: String?
    }

    func run() throws {
        var checks: [Check] = []
        checks.append(devFuse())
        checks.append(fusermount())
        if let group { checks.append(allowOther(group)) }
        checks.append(lockedMemory())
        checks += store()
        checks.append(runtimeDirectory())
        var text = ""
        for c in checks {
            text += "\(c.level.rawValue)  \(c.what)\n"
            if let hint = c.hint, c.level != .ok { text += "      hint: \(hint)\n" }
        }
        writeStdout(text)
        if checks.contains(where: { $0.level == .fail }) { throw ExitCode(1) }
    }

    private func devFuse() -> Check {
        var st = stat()
        guard stat("/dev/fuse", &st) == 0 else {
            return Check(level: .fail, what: "/dev/fuse: \(errnoText(errno))",
                         hint: "load the fuse module (modprobe fuse), or run where FUSE is available (containers need --device /dev/fuse)")
        }
        guard st.st_mode & S_IFMT == S_IFCHR else {
            return Check(level: .fail, what: "/dev/fuse is not a character device", hint: "recreate it: mknod /dev/fuse c 10 229")
        }
        let fd = open("/dev/fuse", O_RDWR | O_CLOEXEC)
        if fd < 0 {
            let e = errno
            // Non-root users mount through fusermount3, which is setuid.
            let level: Level = getuid() == 0 ? .fail : .warn
            return Check(level: level, what: "/dev/fuse: cannot open it: \(errnoText(e))",
                         hint: getuid() == 0 ? "check the device's mode and any security module" : "non-root mounts go through fusermount3 (below)")
        }
        close(fd)
        return Check(level: .ok, what: "/dev/fuse: a character device this user can open")
    }

    private func fusermount() -> Check {
        let path = (GlobalOptions.environment("PATH") ?? "/usr/bin:/bin").split(separator: ":")
            .map { String($0) + "/fusermount3" }.first { (p: String) -> Bool in access(p, X_OK) == 0 }
        guard let path else {
            return Check(level: getuid() == 0 ? .warn : .fail, what: "fusermount3: not found in PATH",
                         hint: "install fuse3 (apt-get install fuse3); root can mount without it, others cannot")
        }
        var st = stat()
        if getuid() != 0, stat(path, &st) == 0, st.st_mode & S_ISUID == 0 || st.st_uid != 0 {
            return Check(level: .fail, what: "fusermount3: \(path) is not setuid root",
                         hint: "reinstall fuse3; non-root mounts need it setuid root")
        }
        return Check(level: .ok, what: "fusermount3: \(path)")
    }

    private func allowOther(_ group: String) -> Check {
        guard lookupGroup(group) != nil else {
            return Check(level: .fail, what: "group \(group): no such group", hint: "create it (groupadd) or give a gid")
        }
        if getuid() == 0 { return Check(level: .ok, what: "-o group=\(group): root may set allow_other") }
        if fuseConfAllowsOther() { return Check(level: .ok, what: "-o group=\(group): /etc/fuse.conf has user_allow_other") }
        return Check(level: .fail, what: "-o group=\(group): /etc/fuse.conf lacks user_allow_other",
                     hint: "add a line user_allow_other to /etc/fuse.conf, or mount as root")
    }

    private func lockedMemory() -> Check {
        var limit = rlimit()
        // RLIMIT_MEMLOCK is 8 on Linux (the macro does not reach Swift).
        guard getrlimit(__rlimit_resource_t(8), &limit) == 0 else {
            return Check(level: .warn, what: "RLIMIT_MEMLOCK: cannot read it: \(errnoText(errno))")
        }
        if geteuid() == 0 { return Check(level: .ok, what: "locked memory: root (CAP_IPC_LOCK ignores RLIMIT_MEMLOCK)") }
        if limit.rlim_cur == rlim_t.max { return Check(level: .ok, what: "RLIMIT_MEMLOCK: unlimited") }
        let options = MountOptions()
        let needed = UInt64(options.maxWriteHandlesPerUID) * 8192 + UInt64(options.sizeLimit) * 2 + (1 << 20)
        let have = UInt64(limit.rlim_cur)
        guard have >= needed else {
            return Check(level: .warn, what: "RLIMIT_MEMLOCK: \(have / 1024) KiB, less than the \(needed / 1024) KiB a busy mount may lock",
                         hint: "raise it (ulimit -l, LimitMEMLOCK= in a systemd unit, or /etc/security/limits.conf); past it values may reach swap")
        }
        return Check(level: .ok, what: "RLIMIT_MEMLOCK: \(have / 1024) KiB")
    }

    private func store() -> [Check] {
        if global.location.isShared { return sharedStore() }
        let dir = global.storeDirectory
        let trusted: TrustedDirectory
        do {
            trusted = try TrustedDirectory.open(dir)
        } catch {
            if case .system(ENOENT) = error.problem {
                return [Check(level: .fail, what: "store \(dir): does not exist", hint: "create one with 'secretfs init', or pass --store")]
            }
            return [Check(level: .fail, what: "store \(dir): \(error)",
                          hint: (error.fix.map { $0 + ", or " } ?? "") + "use a store directory only you and root can write")]
        }
        var out = [Check(level: .ok, what: "store \(dir): owned by uid \(trusted.owner), mode \(String(trusted.mode & 0o7777, radix: 8)), trusted")]
        guard Store.exists(at: global.location) else {
            out.append(Check(level: .fail, what: "store \(dir): no secretfs.db", hint: "create one with 'secretfs init'"))
            return out
        }
        var passphrase: Bool?
        out += databaseCheck { store in
            passphrase = try? store.usesPassphrase()
            return [Check(level: .ok, what: "database \(global.location.databasePath): opens, schema as expected")]
        }
        out.append(keyCheck(keyFileAt: trusted.descriptor, "master.key", storeUsesPassphrase: passphrase))
        return out
    }

    /// Opens the store without its key: `opened` says what is right about
    /// it, a failure is one FAIL line with the store's hint.
    private func databaseCheck(_ opened: (Store) -> [Check]) -> [Check] {
        do {
            return opened(try Store.openMetadataOnly(at: global.location))
        } catch let e as StoreError {
            return [Check(level: .fail, what: "database: \(e.description)", hint: e.hint)]
        } catch {
            return [Check(level: .fail, what: "database: \(error)")]
        }
    }

    /// The key file (`name` in `directory`), or the passphrase file when one
    /// is given, after what the store says it needs (nil: it could not say).
    private func keyCheck(keyFileAt directory: Int32, _ name: String, storeUsesPassphrase: Bool?) -> Check {
        switch (global.keySource, storeUsesPassphrase) {
        case (.keyFile, true?):
            return Check(level: .fail, what: "key: the store's master key is derived from a passphrase, and no passphrase file was given",
                         hint: "pass --passphrase-file FILE (or set SECRETFS_PASSPHRASE_FILE)")
        case (.passphraseFile(let path), false?):
            return Check(level: .fail, what: "key: the store uses a key file (\(global.location.keyFilePath)), not a passphrase (\(path))",
                         hint: "drop --passphrase-file (and SECRETFS_PASSPHRASE_FILE)")
        case (.keyFile, _): return keyFile(at: directory, name, path: global.location.keyFilePath)
        case (.passphraseFile(let path), _): return keyFile(at: AT_FDCWD, path, path: path)
        }
    }

    /// A shared store: the database answers and holds a secretfs schema, and
    /// this host's key file (or passphrase file) is safe to use.
    private func sharedStore() -> [Check] {
        let location = global.location
        var passphrase: Bool?
        var out = databaseCheck { store in
            passphrase = try? store.usesPassphrase()
            var out = [Check(level: .ok, what: "database \(location.directory): reachable, schema as expected")]
            switch store.transport {
            case .tls?: out.append(Check(level: .ok, what: "database connection: TLS, the server's certificate and name verified"))
            case .tlsUnverified(let mode)?:
                out.append(Check(level: .warn, what: "database connection: TLS without checking the server's name (sslmode=\(mode))",
                                 hint: "use sslmode=verify-full with sslrootcert=FILE, or a machine in the middle can pose as the database"))
            case .unixSocket?: out.append(Check(level: .ok, what: "database connection: a local Unix socket"))
            case .unencryptedTCP?, nil:
                out.append(Check(level: .warn, what: "database connection: TCP without TLS (the network sees ciphertexts and can alter rows)",
                                 hint: "add sslmode=verify-full (and sslrootcert=FILE) to the store URL, or set PGSSLMODE=verify-full"))
            }
            return out
        }
        out.append(keyCheck(keyFileAt: AT_FDCWD, location.keyFilePath, storeUsesPassphrase: passphrase))
        return out
    }

    private func keyFile(at directory: Int32, _ name: String, path: String) -> Check {
        do {
            let fd = try openSecretFile(at: directory, name, path: path)
            close(fd)
            return Check(level: .ok, what: "key \(path): a regular file, yours or root's, no group or other access")
        } catch {
            return Check(level: .fail, what: "key \(path): \(error)",
                         hint: error.fix ?? "chmod 0400 it, owned by you or root")
        }
    }

    private func runtimeDirectory() -> Check {
        let dir = global.runtimeDirectory
        do {
            let t = try TrustedDirectory.open(dir)
            return Check(level: .ok, what: "runtime directory \(dir): owned by uid \(t.owner), mode \(String(t.mode & 0o7777, radix: 8)), trusted")
        } catch {
            if case .system(ENOENT) = error.problem {
                return Check(level: .ok, what: "runtime directory \(dir): does not exist yet (mount creates it, 0755)")
            }
            return Check(level: .fail, what: "runtime directory \(dir): \(error)",
                         hint: (error.fix.map { $0 + ", or " } ?? "") + "pass --runtime-dir DIR (a directory only you and root can write)")
        }
    }
}
