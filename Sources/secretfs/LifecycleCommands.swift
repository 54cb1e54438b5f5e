import ArgumentParser
import Glibc
import SecretfsNames
import SecretfsProtocol
import SecretfsStore

// Versions, rollback without read, and the trash. None of these commands
// prints a value or a value's length: history and trash are built from
// versions, times, uids and actions only, and restore/undelete re-seal the
// value inside this process without ever handing it out.

private func validateSecretName(_ name: String) throws {
    guard Names.isValid(name) else {
        throw ValidationError("'\(Wire.printable(name))' is not a valid secret name: names match [A-Za-z_][A-Za-z0-9_]* and are at most 255 bytes")
    }
}

private func validateProjectName(_ name: String) throws {
    guard Names.isValid(name) else { throw ValidationError("'\(Wire.printable(name))' is not a valid project name") }
}

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
            if json {
                text += "{\"version\":\(v.version),\"time\":\(jsonString(iso8601(v.at))),\"uid\":\(v.uid),"
                    + "\"action\":\(jsonString(v.action.rawValue)),\"current\":\(v.isCurrent)}\n"
            } else {
                text += pad(String(v.version), 9) + pad(iso8601(v.at), 22) + pad(String(v.uid), 8) + v.action.rawValue
                    + (v.isCurrent ? "  (current)" : "") + "\n"
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
                                      : "purged \(names.count) deleted name\(names.count == 1 ? "" : "s")\n")
        }
    }
}
