import ArgumentParser
import Glibc
import SecretfsProtocol
import SecretfsResolver
import SecretfsStore

@main
struct Secretfs: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "secretfs",
        abstract: "Project secrets as a write-only filesystem, with injection and redaction.",
        discussion: """
            Each project of the encrypted store is mounted as a directory of write-only files: \
            `ls` shows the names, writing a file sets a value, reading gives nothing back. \
            The resolver reads values over the mount's privileged socket, injects them into flow \
            definitions and keeps them out of logs.
            """,
        version: "0.1.0",
        subcommands: [
            InitCommand.self, ProjectCommand.self, MountCommand.self, UmountCommand.self,
            StatusCommand.self, AuditCommand.self, HistoryCommand.self, RestoreCommand.self, UndeleteCommand.self,
            TrashCommand.self, PurgeCommand.self, ImportCommand.self, BackupCommand.self, StoreCommand.self, LsCommand.self, RekeyCommand.self, DoctorCommand.self,
            ResolveCommand.self, ResolverCommand.self, RedactCommand.self, RunCommand.self,
        ]
    )

    /// Runs the command and maps every error to one voice and a fixed exit code.
    /// The subcommands the arguments begin with ("project set"), from the
    /// command tree itself, for the hint that points at their --help.
    static func commandPath(_ arguments: ArraySlice<String>) -> String {
        var command: ParsableCommand.Type = Secretfs.self
        var path: [String] = []
        for argument in arguments {
            guard let next = command.configuration.subcommands.first(where: { $0.configuration.commandName == argument }) else { break }
            path.append(argument)
            command = next
        }
        return path.joined(separator: " ")
    }

    static func main() {
        // Installed as /sbin/mount.secretfs, this binary is mount(8)'s helper.
        if CommandLine.arguments.first?.split(separator: "/").last == Substring(MountHelper.name) {
            MountHelper.main(Array(CommandLine.arguments.dropFirst()))
        }
        // ArgumentParser's `help` shows the top-level help for a command it
        // does not know, and exits 0: a typo would look answered.
        let arguments = CommandLine.arguments.dropFirst()
        if arguments.first == "help" {
            let asked = arguments.dropFirst().prefix { !$0.hasPrefix("-") }
            let known = commandPath(asked)
            if known.split(separator: " ").count < asked.count {
                writeStderr("secretfs: error: no command 'secretfs \(asked.joined(separator: " "))'\n"
                            + "hint: see 'secretfs \(known.isEmpty ? "" : known + " ")--help' for the commands there are\n")
                Glibc.exit(ExitCode.validationFailure.rawValue)
            }
        }
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch let code as ExitCode {
            // The command has said what it had to say (doctor's FAIL lines).
            Glibc.exit(code.rawValue)
        } catch let failure as Failure {
            failure.report()
            Glibc.exit(failure.exitCode.rawValue)
        } catch let error as ProtocolError {
            let failure = Failure(socket: error)
            failure.report()
            Glibc.exit(failure.exitCode.rawValue)
        } catch let error as StoreError {
            let failure = Failure(store: error)
            failure.report()
            Glibc.exit(failure.exitCode.rawValue)
        } catch {
            // --help and --version arrive as errors with exit code 0.
            let code = exitCode(for: error)
            if code == .success { exit(withError: error) }
            // Usage errors in the one voice, with the way to the usage text.
            let command = commandPath(CommandLine.arguments.dropFirst())
            writeStderr("secretfs: error: \(message(for: error))\n"
                        + "hint: see 'secretfs \(command.isEmpty ? "" : command + " ")--help'\n")
            Glibc.exit(code.rawValue)
        }
    }
}
