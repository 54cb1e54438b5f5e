import ArgumentParser
import Glibc
import SecretfsNames
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
            Refuses to overwrite an existing store.
            """)

    @OptionGroup var global: GlobalOptions

    func run() throws {
        let location = global.location
        _ = try Store.create(at: location, keySource: global.keySource)
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
        abstract: "Create, list and delete projects.",
        subcommands: [Create.self, List.self, Delete.self])

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a project with its own data key.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Project name ([A-Za-z_][A-Za-z0-9_]*).") var name: String

        func validate() throws {
            guard Names.isValid(name) else {
                throw ValidationError("'\(name)' is not a valid project name: use letters, digits and _, not starting with a digit")
            }
        }

        func run() throws {
            let store = try global.openStore()
            try store.createProject(name)
            writeStdout("created project \(name)\n")
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List projects with their number of secrets and last change (never values).")
        @OptionGroup var global: GlobalOptions

        func run() throws {
            let store = try global.openStoreMetadata()
            let projects = try store.listProjects()
            if projects.isEmpty {
                writeStdout("no projects (create one with 'secretfs project create NAME')\n")
                return
            }
            var text = pad("PROJECT", 24) + pad("SECRETS", 9) + "LAST CHANGE\n"
            for p in projects {
                text += pad(p.name, 24) + pad(String(p.secretCount), 9) + (p.lastUpdate.map(iso8601) ?? "-") + "\n"
            }
            writeStdout(text)
        }
    }

    struct Delete: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete a project and its data key (with --force also when it has secrets).")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Project name.", completion: .projectNames) var name: String
        @Flag(help: "Delete even if the project still has secrets.") var force = false

        func run() throws {
            let store = try global.openStoreMetadata()
            if let owner = RuntimeState(directory: global.runtimeDirectory).activeMount(project: name) {
                throw Failure("project '\(name)' is mounted at \(owner.mountpoint)",
                              hint: "unmount it first: secretfs umount \(owner.mountpoint)", exit: .projectProblem)
            }
            try store.deleteProject(name, force: force)
            writeStdout("deleted project \(name)\n")
        }
    }
}

func pad(_ s: String, _ width: Int) -> String {
    s.count >= width ? s + " " : s + String(repeating: " ", count: width - s.count)
}
