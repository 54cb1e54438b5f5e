import ArgumentParser
import Glibc
import SecretfsNames
import SecretfsPOSIX
import SecretfsProtocol
import SecretfsStore
import SecureMemory

// Versions, rollback without read, and the trash. None of these commands
// prints a value or a value's length: history and trash are built from
// versions, times, uids and actions only, and restore/undelete re-seal the
// value inside this process without ever handing it out.

struct HistoryCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "history",
        abstract: "List the kept versions of a secret: version, time, uid and action (never a value or a length).",
        discussion: """
            Actions: set (written), append (written with O_APPEND), rename (arrived by a rename), \
            restore (made by 'secretfs restore' or 'secretfs undelete'), delete (removed, or renamed \
            away). The current value is marked. Works for deleted names too (see 'secretfs trash'). \
            Needs no key.
            """)

    @OptionGroup var global: GlobalOptions
    @Argument(help: "The project.") var project: String
    @Argument(help: "The secret's name.") var name: String
    @Flag(help: "One JSON object per version, one per line.") var json = false

    func validate() throws {
        try validateProjectName(project)
        try validateSecretName(name)
    }

    func run() throws {
        let store = try global.openStoreMetadata()
        let versions = try store.history(project: project, name: name)
        var text = json ? "" : pad("VERSION", 9) + pad("TIME", 22) + pad("UID", 8) + "ACTION\n"
        for v in versions {
            // A marker (no value at that version) is a delete, whether the
            // name was removed or renamed away; `rename` is for a value that
            // arrived by a rename (the man page's list of actions).
            let action = v.isDelete ? "delete" : v.action.rawValue
            let renamedAway = v.isDelete && v.action == .rename
            if json {
                text += "{\"version\":\(v.version),\"time\":\(jsonString(iso8601(v.at))),\"uid\":\(v.uid),"
                    + "\"action\":\(jsonString(action)),\"current\":\(v.isCurrent)"
                    + (renamedAway ? ",\"renamed_away\":true" : "") + "}\n"
            } else {
                text += pad(String(v.version), 9) + pad(iso8601(v.at), 22) + pad(String(v.uid), 8) + action
                    + (renamedAway ? "  (renamed away)" : "") + (v.isCurrent ? "  (current)" : "") + "\n"
            }
        }
        writeStdout(text)
    }
}

struct RestoreCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore",
        abstract: "Make an earlier version of a secret its current value again, as a new version.",
        discussion: """
            Rollback without read: the version is opened and sealed again inside this process; \
            the value is never printed or sent anywhere. Works for a deleted name too (it leaves \
            the trash). Audited as 'restore'. A mounted project shows the change within a second.
            """)

    @OptionGroup var global: GlobalOptions
    @Argument(help: "The project.") var project: String
    @Argument(help: "The secret's name.") var name: String
    @Option(help: ArgumentHelp("The version to bring back (see 'secretfs history').", valueName: "n")) var version: Int64

    func validate() throws {
        try validateProjectName(project)
        try validateSecretName(name)
        guard version > 0 else { throw ValidationError("--version needs a version number from 'secretfs history', got \(version)") }
    }

    func run() throws {
        let store = try global.openStore()
        let vault = try store.openProject(project)
        let info = try vault.restore(name, version: version, actor: .current)
        writeStdout("restored \(name) to version \(version) (now version \(info.version))\n")
    }
}

struct UndeleteCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "undelete",
        abstract: "Bring a deleted secret back with the last value it had.",
        discussion: """
            The value is sealed again as a new version inside this process, never printed. \
            Audited as 'undelete'. See deleted names with 'secretfs trash PROJECT'.
            """)

    @OptionGroup var global: GlobalOptions
    @Argument(help: "The project.") var project: String
    @Argument(help: "The deleted secret's name.") var name: String

    func validate() throws {
        try validateProjectName(project)
        try validateSecretName(name)
    }

    func run() throws {
        let store = try global.openStore()
        let vault = try store.openProject(project)
        let info = try vault.undelete(name, actor: .current)
        writeStdout("undeleted \(name) (now version \(info.version))\n")
    }
}

struct TrashCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "trash",
        abstract: "List a project's deleted secrets: when, by whom, versions kept, and when they will be purged.",
        discussion: "Bring one back with 'secretfs undelete'; destroy it now with 'secretfs purge'. Needs no key.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "The project.") var project: String
    @Flag(help: "One JSON object per deleted name, one per line.") var json = false

    func validate() throws { try validateProjectName(project) }

    func run() throws {
        let store = try global.openStoreMetadata()
        let entries = try store.trash(project: project)
        if json {
            writeStdout(entries.map { e in
                "{\"name\":\(jsonString(e.name)),\"deleted\":\(jsonString(iso8601(e.deletedAt))),\"uid\":\(e.deletedBy),"
                    + "\"versions\":\(e.versionsKept),\"purge\":\(jsonString(iso8601(e.purgeAt)))}\n"
            }.joined())
            return
        }
        if entries.isEmpty {
            writeStdout("the trash of project \(project) is empty\n")
            return
        }
        var text = pad("NAME", 24) + pad("DELETED", 22) + pad("UID", 8) + pad("VERSIONS", 10) + "PURGED AFTER\n"
        for e in entries {
            text += pad(Wire.printable(e.name), 24) + pad(iso8601(e.deletedAt), 22) + pad(String(e.deletedBy), 8)
                + pad(String(e.versionsKept), 10) + iso8601(e.purgeAt) + "\n"
        }
        writeStdout(text)
    }
}

struct PurgeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "purge",
        abstract: "Destroy every version of a deleted secret now (or of every deleted secret with --all-deleted).",
        discussion: """
            Only names in the trash can be purged; a live secret's history goes only as its \
            project's --keep-versions limit allows. Destroyed versions are overwritten in the \
            database (secure_delete). Expired trash is purged without this command. Needs no key.
            """)

    @OptionGroup var global: GlobalOptions
    @Argument(help: "The project.") var project: String
    @Argument(help: "The deleted secret's name (or --all-deleted).") var name: String?
    @Flag(help: "Purge the whole trash of the project.") var allDeleted = false
    @Flag(help: "Really destroy: purging cannot be undone.") var force = false

    func validate() throws {
        try validateProjectName(project)
        switch (name, allDeleted) {
        case (nil, false): throw ValidationError("name a deleted secret, or pass --all-deleted")
        case (_?, true): throw ValidationError("give a name or --all-deleted, not both")
        case (let n?, false): try validateSecretName(n)
        case (nil, true): break
        }
        guard force else {
            throw ValidationError("purging destroys every version for good: pass --force to do it")
        }
    }

    func run() throws {
        let store = try global.openStoreMetadata()
        if let name {
            try store.purge(project: project, name: name)
            writeStdout("purged \(name)\n")
        } else {
            let names = try store.purgeAllDeleted(project: project)
            writeStdout(names.isEmpty ? "the trash of project \(project) was already empty\n"
                                      : "purged \(counted(names.count, "deleted name"))\n")
        }
    }
}

struct ImportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import",
        abstract: "Import names and values from a .env or JSON file into a project, in one transaction.",
        discussion: """
            dotenv as people write it: KEY=value, an optional 'export ', # comments, single quotes \
            (literal), double quotes with \\n, \\r, \\t, \\" and \\\\ escapes and real newlines, = inside \
            values, CRLF line endings. JSON: one object of name to string. All or nothing: an error \
            names its line (and the name), never a value, and nothing is written. A value equal to \
            the current one is not written again; every other becomes a new version (action \
            'import'), the earlier value kept. Values are read into locked memory and never printed.
            """)

    @OptionGroup var global: GlobalOptions
    @Argument(help: "The project.") var project: String
    @Argument(help: ArgumentHelp("The file to import, or - for standard input.", valueName: "file")) var file: String
    @Option(help: ArgumentHelp("env or json (default: json for a .json file, else env).", valueName: "format"))
    var format: String?
    @Flag(help: "List each name as new, changed or unchanged; write nothing.") var dryRun = false

    func validate() throws {
        try validateProjectName(project)
        if let format, ImportDocument.Format(rawValue: format) == nil {
            throw ValidationError("--format must be env or json, not '\(Wire.printable(format))'")
        }
    }

    func run() throws {
        let fmt = format.flatMap(ImportDocument.Format.init(rawValue:)) ?? (file.hasSuffix(".json") ? .json : .env)
        let input = try readInput()
        defer { input.wipe() }
        let entries = try parse(input, fmt)
        defer { for e in entries { e.value.wipe() } }
        let store = try global.openStore()
        let vault = try store.openProject(project)
        let showProgress = isatty(2) == 1 && entries.count >= 1000
        let results = try vault.importValues(entries, dryRun: dryRun, actor: .current, progress: showProgress ? { done in
            let width = 30, filled = done * width / max(1, entries.count)
            writeStderr("\r[" + String(repeating: "#", count: filled) + String(repeating: " ", count: width - filled)
                        + "] \(done)/\(entries.count)")
        } : nil)
        if showProgress { writeStderr("\r" + String(repeating: " ", count: 50) + "\r") }
        let count = { (s: ProjectVault.ImportStatus) in results.filter { $0.status == s }.count }
        let summary = "\(count(.new)) new, \(count(.changed)) changed, \(count(.unchanged)) unchanged"
        if dryRun {
            var text = ""
            for r in results { text += pad(r.status.rawValue, 10) + r.name + "\n" }
            writeStdout(text + "dry run: \(summary); nothing was written\n")
        } else {
            writeStdout("imported into \(project): \(summary)\n")
        }
    }

    private func parse(_ input: SecureBytes, _ fmt: ImportDocument.Format) throws -> [ImportEntry] {
        let parsed = Result { () throws(ImportFailure) -> [ImportEntry] in try ImportDocument.parse(input, format: fmt) }
        switch parsed {
        case .success(let entries): return entries
        case .failure(let failure):
            // One line per problem, each with the file and the line.
            let source = file == "-" ? "standard input" : file
            let lines = failure.problems.map { "\(source): \($0.description)" }
            let more = failure.problems.count == ImportDocument.maxProblems ? " (the first \(ImportDocument.maxProblems) shown)" : ""
            throw Failure(lines.joined(separator: "\nsecretfs: error: "),
                          hint: "nothing was imported; fix \(failure.problems.count == 1 ? "that line" : "those lines")\(more) and run the import again",
                          exit: .failure)
        }
    }

    private func openInput(_ path: String) throws -> Int32 {
        let (dir, name) = TrustedDirectory.split(path)
        let trusted: TrustedDirectory
        do throws(TrustError) { trusted = try TrustedDirectory.openForOneFile(dir) } catch {
            if case .system(let e) = error.problem {
                throw Failure("cannot open \(path): \(errnoText(e))", hint: pathErrorHint(e), exit: .failure)
            }
            throw Failure("cannot import \(path): its directory is not safe to read secrets from: \(error)",
                          hint: (error.fix.map { $0 + ", or " } ?? "") + "move the file to a directory only you and root can write "
                              + "(or give it on stdin: secretfs import PROJECT - < FILE)", exit: .failure)
        }
        let fd: Int32
        do throws(SystemError) { fd = try trusted.open(name, O_RDONLY | O_NONBLOCK) } catch {
            let hint = error.errno == ELOOP ? "it is a symbolic link: give the file it points to" : pathErrorHint(error.errno)
            throw Failure("cannot open \(path): \(errnoText(error.errno))", hint: hint, exit: .failure)
        }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG else {
            close(fd)
            throw Failure("cannot import \(path): not a regular file", hint: "give a .env or JSON file, or - for stdin", exit: .failure)
        }
        return fd
    }

    /// The whole file, read into locked memory (at most 256 MiB). Opened
    /// through its trusted directory, not through a symlink: root importing
    /// a path another user could arrange (in /tmp, in a directory of theirs)
    /// must not read a file of root's into the project.
    private func readInput() throws -> SecureBytes {
        let fd = file == "-" ? 0 : try openInput(file)
        defer { if fd != 0 { close(fd) } }
        var buf = SecureBytes(capacity: 64 << 10)
        while true {
            if buf.count == buf.capacity {
                guard buf.capacity < 256 << 20 else { throw Failure("\(file) is larger than 256 MiB", exit: .failure) }
                let bigger = buf.copy(capacity: buf.capacity * 2)
                buf.wipe()
                buf = bigger
            }
            let n = buf.withUnsafeMutableCapacity { b in
                let have = buf.count
                return retryRead(fd, b.baseAddress! + have, b.count - have)
            }
            if n < 0 { let e = errno; throw Failure("cannot read \(file): \(errnoText(e))", hint: pathErrorHint(e), exit: .failure) }
            if n == 0 { return buf }
            buf.setCount(buf.count + n)
        }
    }
}

private func retryRead(_ fd: Int32, _ p: UnsafeMutableRawPointer, _ n: Int) -> Int {
    while true {
        let r = read(fd, p, n)
        if r < 0 && errno == EINTR { continue }
        return r
    }
}

struct BackupCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backup",
        abstract: "Take, verify and restore consistent snapshots of the whole store (ciphertext only).",
        subcommands: [Create.self, Verify.self, Restore.self])

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "create",
            abstract: "Write a consistent snapshot of the store to a new file, while mounts go on writing.",
            discussion: """
                SQLite's VACUUM INTO, in one read transaction: values stay sealed (the backup holds \
                ciphertexts, wrapped keys, names, times and the audit trail, never a value or a key). \
                The file is created mode 0600 (refused if it exists), holds a manifest (store id, \
                time, projects and counts, the key check) and is fsync'd. Needs no key; the master \
                key file is not in the backup: keep a copy of it apart.
                """)
        @OptionGroup var global: GlobalOptions
        @Argument(help: "The backup file to create.") var file: String

        func run() throws {
            let store = try global.openStoreMetadata()
            let m = try store.createBackup(to: absolute(file))
            let secrets = m.projects.reduce(0) { $0 + $1.secrets }, versions = m.projects.reduce(0) { $0 + $1.versions }
            writeStdout("backed up \(counted(m.projects.count, "project")) (\(counted(secrets, "secret")), "
                        + "\(counted(versions, "earlier version"))) to \(absolute(file))\n")
        }
    }

    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "verify",
            abstract: "Open every sealed blob of a backup with the key and report any that fails, by project, name and version.",
            discussion: """
                The key is the store's key file (or --key-file FILE), or the passphrase \
                (--passphrase-file) for a passphrase store. Prints counts and names, never a value. \
                Exits 10 when any blob fails to open.
                """)
        @OptionGroup var global: GlobalOptions
        @Argument(help: "The backup file.") var file: String

        func run() throws {
            let key: BackupKey
            if case .passphraseFile(let p) = global.keySource { key = .passphraseFile(p) }
            else { key = .keyFile(global.keyFileOption ?? global.location.keyFilePath) }
            let report = try Store.verifyBackup(at: absolute(file), key: key)
            var text = ""
            if let m = report.manifest {
                text += "backup of store \(m.storeID) taken \(iso8601(m.createdAt)) (schema version \(m.schemaVersion))\n"
            }
            text += "\(counted(report.projects, "project")), \(counted(report.opened, "sealed blob")) open"
                + (report.failures.isEmpty ? "; all good\n" : "\n")
            for f in report.failures { text += "FAIL  \(Wire.printable(f.description)) does not open\n" }
            writeStdout(text)
            if !report.failures.isEmpty {
                throw Failure("\(counted(report.failures.count, "sealed blob")) of the backup do not open",
                              hint: "the backup is damaged (or was altered); take a new one", exit: .storeProblem)
            }
        }
    }

    struct Restore: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "restore",
            abstract: "Create a new store (--store DIR) from a backup; an existing store is refused.",
            discussion: """
                The directory follows init's rules. A key-file store needs its master key file \
                (--key-file FILE, copied to DIR/master.key, mode 0400); a passphrase store needs \
                --passphrase-file. The new store is opened with that key before the command succeeds.
                """)
        @OptionGroup var global: GlobalOptions
        @Argument(help: "The backup file.") var file: String

        func run() throws {
            var passphrase: String?
            if case .passphraseFile(let p) = global.keySource { passphrase = p }
            let store = try Store.restoreBackup(from: absolute(file), to: global.location, keyFile: global.keyFileOption,
                                                passphraseFile: passphrase)
            let projects = try store.listProjects()
            writeStdout("restored \(counted(projects.count, "project")) into \(global.storeDirectory)\n")
        }
    }
}

struct LsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ls",
        abstract: "List a project's secret names with their last update, without a mount (never values or lengths).",
        discussion: "Needs no key. Names are listed in byte order, as in the mounted directory.")

    @OptionGroup var global: GlobalOptions
    @Argument(help: "The project.") var project: String
    @Flag(help: "One JSON object per name, one per line (name, updated, uid, version).") var json = false

    func validate() throws { try validateProjectName(project) }

    func run() throws {
        let store = try global.openStoreMetadata()
        let secrets = try store.secrets(project: project)
        var text = ""
        for s in secrets {
            if json {
                text += "{\"name\":\(jsonString(s.name)),\"updated\":\(jsonString(iso8601(s.updatedAt))),\"uid\":\(s.updatedBy),"
                    + "\"version\":\(s.version)}\n"
            } else {
                text += pad(Wire.printable(s.name), 32) + iso8601(s.updatedAt) + "\n"
            }
        }
        writeStdout(text)
    }
}

struct RekeyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rekey",
        abstract: "Re-wrap every project's data key under a new master key (a new key file, or a passphrase).",
        discussion: """
            The current key (the key file, or --passphrase-file) opens the store; the new one is \
            --new-key-file FILE (32 raw bytes, for instance from 'head -c 32 /dev/urandom', \
            mode 0400 or 0600; it is copied to STORE/master.key) or --new-passphrase-file FILE \
            (STORE/master.key is then removed). One transaction plus a crash-safe swap of the \
            key file: after a crash at any point exactly one of the two keys opens the store, and \
            the next command says which. Data keys do not change: mounted projects keep working. \
            The old key is refused afterwards, and STORE/master.key is overwritten: backups made \
            before open only with the old key, so copy it to where those backups are kept first. \
            Audited as 'rekey' in every project.
            """)

    @OptionGroup var global: GlobalOptions
    @Option(help: ArgumentHelp("A file holding the new 32-byte master key.", valueName: "file")) var newKeyFile: String?
    @Option(help: ArgumentHelp("A file holding the new passphrase.", valueName: "file")) var newPassphraseFile: String?

    func validate() throws {
        guard (newKeyFile == nil) != (newPassphraseFile == nil) else {
            throw ValidationError("give exactly one of --new-key-file FILE and --new-passphrase-file FILE")
        }
    }

    func run() throws {
        let store = try global.openStore()
        let projects = try store.listProjects().count
        let hadPassphrase = try store.usesPassphrase()
        let old = hadPassphrase ? "the old passphrase" : "the old key"
        if let f = newKeyFile {
            try store.rekey(to: .keyFile(absolute(f)))
            writeStdout("re-wrapped \(counted(projects, "project key")) under the new key, now \(global.location.keyFilePath); "
                        + "\(old) no longer opens this store\n")
        } else if let f = newPassphraseFile {
            try store.rekey(to: .passphraseFile(absolute(f)))
            let removed = hadPassphrase ? "" : "\(global.location.keyFilePath) was removed and "
            writeStdout("re-wrapped \(counted(projects, "project key")) under the new passphrase; "
                        + "\(removed)\(old) no longer opens this store\n")
        }
        // What the old key is still needed for, said now rather than found
        // out when a restore is refused.
        if global.location.isShared {
            writeStdout("note: the other hosts of this store still have the old key: copy the new one to each "
                        + "(mode 0400) before their next mount or command that needs the key\n")
        } else {
            writeStdout("note: backups made before now open only with the old key or passphrase; keep it with them, "
                        + "or make a new backup (secretfs backup create FILE)\n")
        }
    }
}
