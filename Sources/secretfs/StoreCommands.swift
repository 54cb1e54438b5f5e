import ArgumentParser
import Glibc
import SecretfsNames
import SecretfsProtocol
import SecretfsStore

struct InitCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "init",
        abstract: "Create a new store: the database and a master key file (0400), or a passphrase-derived key.",
        discussion: """
            Without --passphrase-file, a random 32-byte master key is written to STORE/master.key \
            (mode 0400); keep a backup of it, the store cannot be opened without it. With \
            --passphrase-file, the key is derived with Argon2id and no key file is written; every \
            later command that needs the key must be given the same passphrase file. \
            Refuses to overwrite an existing store. \
            With --store postgresql://USER@HOST:PORT/DB (or a libpq conninfo), the schema is created \
            in an empty database and the key file is this host's own (--key-file, default \
            /etc/secretfs/master.key; an existing one is used). On a database that already holds a \
            store, init succeeds only if this host's key opens it: that is how a second host checks \
            its copy of the key. The database password goes in ~/.pgpass or PGPASSFILE, never in the URL.
            """)

    @OptionGroup var global: GlobalOptions

    func run() throws {
        let location = global.location
        let store = try Store.create(at: location, keySource: global.keySource)
        if !store.notices.isEmpty {
            // A second host's init: the database had the store, and this host's key opens it.
            for n in store.notices { writeStdout("\(n)\n") }
            return
        }
        var text = "created store \(location.directory)\n"
        if case .keyFile = global.keySource {
            text += "master key: \(location.keyFilePath) (back it up: without it the store cannot be opened)\n"
        } else {
            text += "master key: derived from the passphrase with Argon2id\n"
        }
        writeStdout(text)
    }
}

struct ProjectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "project",
        abstract: "Create, list, change and delete projects.",
        subcommands: [Create.self, SetLimits.self, List.self, Delete.self, RotateKey.self])

    struct RotateKey: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "rotate-key",
            abstract: "Give a project a new data key and re-seal every kept value under it (works while mounted).",
            discussion: """
                In batches, with progress on a terminal. A mounted project follows the new key \
                through a link sealed under its old one (it never needs the master key), and writes \
                made meanwhile are sealed under the new key. At the end no value is sealed under the \
                old key any more and the link is gone. Needs the master key. Audited as 'rotate-key'.
                """)
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Project name.") var name: String

        func run() throws {
            let store = try global.openStore()
            let tty = isatty(2) == 1
            let n = try store.rotateKey(project: name, progress: tty ? { p in
                writeStderr("\rre-sealing: \(p.done)/\(p.total)")
            } : nil)
            if tty { writeStderr("\r" + String(repeating: " ", count: 40) + "\r") }
            writeStdout("rotated the data key of \(name): \(counted(n, "value")) re-sealed; nothing is sealed under the old key\n")
        }
    }

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "create",
            abstract: "Create a project with its own data key.",
            discussion: """
                Every overwrite, append, rename and delete keeps the earlier value as a version \
                (see 'secretfs history'); each name keeps its newest --keep-versions values, the \
                current one included, and a deleted name stays in the trash for --keep-deleted days.
                """)
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Project name ([A-Za-z_][A-Za-z0-9_]*).") var name: String
        @Option(help: ArgumentHelp("Values kept per name, the current one included (0 to \(Retention.maxKeepVersions); 0: no history, a delete is final).", valueName: "n"))
        var keepVersions: Int = Retention.defaultKeepVersions
        @Option(help: ArgumentHelp("Days a deleted name stays in the trash (0 to \(Retention.maxKeepDeletedDays)).", valueName: "days"))
        var keepDeleted: Int = Retention.defaultKeepDeletedDays

        func validate() throws {
            try validateProjectName(name)
            try validateRetention(keepVersions: keepVersions, keepDeleted: keepDeleted)
        }

        func run() throws {
            let store = try global.openStore()
            try store.createProject(name, keepVersions: keepVersions, keepDeletedDays: keepDeleted)
            writeStdout("created project \(name) (keeps \(counted(keepVersions, "version")) per name, deleted names \(counted(keepDeleted, "day")))\n")
        }
    }

    struct SetLimits: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "set",
            abstract: "Change how many versions a project keeps and how long deleted names stay in the trash.",
            discussion: """
                A lower --keep-versions destroys the versions beyond it at once. A new --keep-deleted \
                applies to names deleted from now on. Needs no key; works while the project is mounted.
                """)
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Project name.") var name: String
        @Option(help: ArgumentHelp("Values kept per name, the current one included (0 to \(Retention.maxKeepVersions)).", valueName: "n"))
        var keepVersions: Int?
        @Option(help: ArgumentHelp("Days a deleted name stays in the trash (0 to \(Retention.maxKeepDeletedDays)).", valueName: "days"))
        var keepDeleted: Int?

        func validate() throws {
            try validateRetention(keepVersions: keepVersions, keepDeleted: keepDeleted)
        }

        func run() throws {
            // Checked here, not in validate: an error from validate would hide
            // ArgumentParser's "Unknown option '--keep-version'. Did you mean ...".
            guard keepVersions != nil || keepDeleted != nil else {
                throw ValidationError("give --keep-versions N, --keep-deleted DAYS, or both")
            }
            let store = try global.openStoreMetadata()
            try store.setRetention(project: name, keepVersions: keepVersions, keepDeletedDays: keepDeleted)
            let p = try store.project(named: name)
            writeStdout("project \(name) keeps \(counted(p.keepVersions, "version")) per name, deleted names \(counted(p.keepDeletedDays, "day"))\n")
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "list", abstract: "List projects with their number of secrets and last change (never values).")
        @OptionGroup var global: GlobalOptions
        @Flag(help: "One JSON object per project, one per line (for other tools and shell completion).")
        var json = false

        func run() throws {
            let store = try global.openStoreMetadata()
            let projects = try store.listProjects()
            if json {
                writeStdout(projects.map { p in
                    "{\"project\":\(jsonString(p.name)),\"secrets\":\(p.secretCount),"
                        + "\"lastChange\":\(p.lastUpdate.map { jsonString(iso8601($0)) } ?? "null"),"
                        + "\"keepVersions\":\(p.keepVersions),\"keepDeletedDays\":\(p.keepDeletedDays)}\n"
                }.joined())
                return
            }
            if projects.isEmpty {
                writeStdout("no projects (create one with 'secretfs project create NAME')\n")
                return
            }
            var text = pad("PROJECT", 24) + pad("SECRETS", 9) + "LAST CHANGE\n"
            for p in projects {
                // Names come from the database (a writer could plant escapes).
                text += pad(Wire.printable(p.name), 24) + pad(String(p.secretCount), 9) + (p.lastUpdate.map(iso8601) ?? "-") + "\n"
            }
            writeStdout(text)
        }
    }

    struct Delete: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "delete", abstract: "Delete a project and its data key (with --force also when it has secrets).")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Project name.", completion: .projectNames) var name: String
        @Flag(help: "Delete even if the project still has secrets.") var force = false

        func run() throws {
            let store = try global.openStoreMetadata()
            if let owner = RuntimeState(directory: global.runtimeDirectory).activeMount(project: name), owner.isFrom(global.storeIdentity) {
                throw Failure("project '\(name)' is mounted at \(owner.mountpoint)",
                              hint: "unmount it first: secretfs umount \(owner.mountpoint)", exit: .projectProblem)
            }
            // Mounted through another runtime directory: the store knows.
            if store.isMounted(name) {
                throw Failure("project '\(name)' is mounted from this store (through another runtime directory)",
                              hint: "unmount it first (secretfs status --runtime-dir DIR shows where)", exit: .projectProblem)
            }
            try store.deleteProject(name, force: force)
            writeStdout("deleted project \(name)\n")
        }
    }
}

func validateRetention(keepVersions: Int?, keepDeleted: Int?) throws {
    if let k = keepVersions, !(0...Retention.maxKeepVersions).contains(k) {
        throw ValidationError("--keep-versions needs a number from 0 to \(Retention.maxKeepVersions), got \(k)")
    }
    if let d = keepDeleted, !(0...Retention.maxKeepDeletedDays).contains(d) {
        throw ValidationError("--keep-deleted needs a number of days from 0 to \(Retention.maxKeepDeletedDays), got \(d)")
    }
}

func pad(_ s: String, _ width: Int) -> String {
    s.count >= width ? s + " " : s + String(repeating: " ", count: width - s.count)
}

struct StoreCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "store",
        abstract: "Work on a whole store: copy it between a directory and a PostgreSQL database.",
        subcommands: [Copy.self])

    struct Copy: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "copy",
            abstract: "Copy every project, with its versions, trash and audit trail, to a new store.",
            discussion: """
                --from and --to are each a store directory or a PostgreSQL URL / libpq conninfo. \
                Directory to database is the migration to a shared store; database to directory \
                gives a local backup. The ciphertexts are copied as they are (no value is decrypted \
                or re-encrypted), and the target must not hold a store yet. A key-file store's key \
                goes to the target's key file: DIR/master.key, or for a database this host's key \
                file (--key-file, default /etc/secretfs/master.key), which may already hold the same \
                key. A passphrase store needs --passphrase-file and stays one. At the end the copy \
                is read back and every data key and value in it is opened with the key. Writers to \
                the source wait while it is copied.
                """)
        @OptionGroup var global: GlobalOptions
        @Option(help: ArgumentHelp("The store to copy.", valueName: "dir|url")) var from: String
        @Option(help: ArgumentHelp("The new store.", valueName: "dir|url")) var to: String

        func run() throws {
            let source = try Store.open(at: try global.location(named: from), keySource: global.keySource)
            for n in source.notices { writeStderr("secretfs: note: \(n)\n") }
            let target = try global.location(named: to)
            let report = try source.copy(to: target)
            let count = { (t: String) in report.rows.first { $0.table == t }?.count ?? 0 }
            writeStdout("copied \(counted(count("projects"), "project")) (\(counted(count("secrets"), "secret")), "
                        + "\(count("versions")) earlier versions and deletes, \(count("trash")) in the trash, \(counted(count("audit"), "audit event"))) "
                        + "from \(source.location.directory) to \(target.directory); "
                        + "verified: \(counted(report.opened, "sealed blob")) open with the key\n")
            if case .keyFile = global.keySource {
                writeStdout("master key: \(target.keyFilePath)\n")
            }
        }
    }
}
