import ArgumentParser
import CShims
import Glibc
import SecretfsNames
import SecretfsProtocol
import SecretfsRedact
import SecretfsResolver
import SecureMemory
import Synchronization

struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run a command with secrets in its environment and its output redacted.",
        discussion: """
            Each --env VAR=NAME puts the value of secret NAME into the command's environment as VAR \
            (--env NAME is short for NAME=NAME). The command's stdout and stderr pass through the same \
            redaction as `secretfs redact`, masking every value of the project, and its exit status is \
            passed through (128+N when it is killed by signal N).
            """)

    @OptionGroup var global: GlobalOptions
    @Option(help: "The project.", completion: .projectNames) var project: String
    @Option(help: ArgumentHelp("Get the values through a resolver daemon listening on this socket.", valueName: "socket"))
    var resolver: String?
    @Option(name: .customLong("env"), help: ArgumentHelp("VAR=NAME: set VAR to the value of secret NAME (repeatable).", valueName: "VAR=NAME"))
    var env: [String] = []
    @OptionGroup var masking: MaskingOptions
    @Argument(parsing: .captureForPassthrough, help: "The command and its arguments (after --).") var command: [String] = []

    var bindings: [(variable: String, name: String)] {
        env.map { item in
            let (k, v) = splitOption(item)
            return (k, v ?? k)
        }
    }

    var commandLine: [String] { command.first == "--" ? Array(command.dropFirst()) : command }

    func validate() throws {
        guard !commandLine.isEmpty else { throw ValidationError("give the command to run after --") }
        try validateProjectName(project)
        var seen: Set<String> = []
        for b in bindings {
            // A name a shell can use ($VAR): anything else is a typo, and
            // a variable given twice would be in the environment twice,
            // each program picking one of them.
            guard Names.isValid(b.variable) else {
                throw ValidationError("--env '\(Wire.printable(b.variable))=...': the variable name must match [A-Za-z_][A-Za-z0-9_]*")
            }
            guard seen.insert(b.variable).inserted else {
                throw ValidationError("--env sets \(b.variable) twice; give each variable once")
            }
            try validateSecretName(b.name)
        }
    }

    func run() throws {
        let wanted = Array(Set(bindings.map(\.name))).sorted()
        // The values come from the fetch the redactor is built from, and
        // stay masked in the command's output whatever the project does.
        let feed = try RedactorFeed(global: global, project: project, resolver: resolver, masking: masking, handing: wanted)
        let values = feed.handed
        let missing = wanted.filter { values[$0] == nil }
        guard missing.isEmpty else {
            for v in values.values { v.wipe() }
            throw Failure("project '\(project)' has no secret named \(missing.map { "'\($0)'" }.joined(separator: ", "))",
                          hint: "list names with ls on the mount", exit: .resolveProblem)
        }
        // An environment entry ends at its first NUL: the command would see a
        // silently shortened value. Refused by name, before anything starts.
        let withNUL = wanted.filter { values[$0]!.withUnsafeBytes { $0.contains(0) } }
        guard withNUL.isEmpty else {
            for v in values.values { v.wipe() }
            let named = withNUL.map { "'\($0)'" }.joined(separator: ", ")
            throw Failure((withNUL.count == 1 ? "secret \(named) of project '\(project)' contains" : "secrets \(named) of project '\(project)' contain")
                          + " a NUL byte, which an environment variable cannot hold",
                          hint: "store binary values encoded (base64, for example) and decode them in the command",
                          exit: .resolveProblem)
        }
        // Environment entries with values are built in locked memory and
        // handed to posix_spawn as pointers into it.
        var secretEntries: [SecureBytes] = []
        for b in bindings {
            let v = values[b.name]!
            let e = SecureBytes(capacity: b.variable.utf8.count + 1 + v.count + 1)
            Array(b.variable.utf8 + [UInt8(ascii: "=")]).withUnsafeBytes { _ = e.append($0) }
            v.withUnsafeBytes { _ = e.append($0) }
            [UInt8(0)].withUnsafeBytes { _ = e.append($0) }
            secretEntries.append(e)
        }
        for v in values.values { v.wipe() }
        let overridden = Set(bindings.map(\.variable))
        // SECRETFS_* (store, runtime directory, passphrase file) is ours, not
        // the command's: it would point the command straight at the store.
        let plainEnv = environmentList().filter { entry in
            let variable = String(entry.prefix { $0 != "=" })
            return !overridden.contains(variable) && !variable.hasPrefix("SECRETFS_")
        }

        var outPipe: [Int32] = [0, 0], errPipe: [Int32] = [0, 0]
        guard secretfs_pipe_cloexec(&outPipe) == 0, secretfs_pipe_cloexec(&errPipe) == 0 else {
            throw Failure("pipe: \(String(cString: strerror(errno)))")
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, outPipe[1], 1)
        posix_spawn_file_actions_adddup2(&actions, errPipe[1], 2)
        // Nothing else this process holds reaches the command: a descriptor
        // the caller left open (exec 7>file) would be a way around the
        // redaction of its stdout and stderr.
        let closing = secretfs_spawn_add_closefrom(&actions, 3)
        guard closing == 0 else { throw Failure("cannot prepare the command: \(String(cString: strerror(closing)))") }
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigmask(&attr, &none)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK))

        var pid: pid_t = 0
        let plainC: [UnsafeMutablePointer<CChar>?] = plainEnv.map { strdup($0) }
        defer { for p in plainC { free(p) } }
        var envp: [UnsafeMutablePointer<CChar>?] = plainC
        for e in secretEntries {
            envp.append(e.withUnsafeMutableBytes { $0.baseAddress!.assumingMemoryBound(to: CChar.self) })
        }
        envp.append(nil)
        let rc = withCStrings(commandLine) { argv in
            envp.withUnsafeBufferPointer { posix_spawnp(&pid, commandLine[0], &actions, &attr, argv, $0.baseAddress!) }
        }
        close(outPipe[1]); close(errPipe[1])
        for e in secretEntries { e.wipe() }
        guard rc == 0 else {
            close(outPipe[0]); close(errPipe[0])
            throw Failure("cannot run \(commandLine[0]): \(String(cString: strerror(rc)))",
                          hint: rc == ENOENT ? "check the command name and PATH" : "check that it is an executable file",
                          exit: rc == ENOENT ? .commandNotFound : .commandNotExecutable)
        }

        // Signals: Ctrl-C reaches the child through the terminal's process
        // group, so this process ignores SIGINT and stays to pass the rest of
        // the output and the exit status through; SIGTERM and SIGHUP (from a
        // supervisor, aimed at this process only) are forwarded to the child.
        forwardSignals(to: pid)
        // The child's two streams are copied through redaction.
        let pumps = [(outPipe[0], Int32(1)), (errPipe[0], Int32(2))].map { (from, to) in
            let t = PumpThread(from: from, to: to, feed: feed)
            t.start()
            return t
        }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        for p in pumps { p.join() }
        let code: Int32 = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        Glibc.exit(code)
    }
}

/// The child that SIGTERM/SIGHUP are passed on to (read by the handler).
nonisolated(unsafe) private var forwardedChild: pid_t = 0

private func forwardSignals(to pid: pid_t) {
    forwardedChild = pid
    signal(SIGINT, SIG_IGN)
    for sig in [SIGTERM, SIGHUP] {
        // kill(2) is async-signal-safe; the handler touches nothing else.
        signal(sig) { received in if forwardedChild > 0 { kill(forwardedChild, received) } }
    }
}

/// Copies one of the child's streams to ours through a redacting stream.
final class PumpThread: @unchecked Sendable {
    let from: Int32
    let to: Int32
    let feed: RedactorFeed
    private var thread = pthread_t()

    init(from: Int32, to: Int32, feed: RedactorFeed) {
        self.from = from; self.to = to; self.feed = feed
    }

    func start() {
        let box = Unmanaged.passRetained(self).toOpaque()
        pthread_create(&thread, nil, { arg in
            let me = Unmanaged<PumpThread>.fromOpaque(arg!).takeRetainedValue()
            me.copyThrough()
            return nil
        }, box)
    }

    func join() { pthread_join(thread, nil) }

    private func copyThrough() {
        let to = self.to
        let stream = RedactingStream(redactor: feed.current()) { bytes in try writeRaw(fd: to, bytes) }
        try? pump(from: from, through: stream, feed: feed)
        close(from)
    }
}
