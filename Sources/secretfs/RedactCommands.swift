import ArgumentParser
import Glibc
import SecretfsProtocol
import SecretfsRedact
import SecretfsResolver
import SecureMemory
import Synchronization

struct RedactCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "redact",
        abstract: "Copy stdin to stdout with every value of a project (and its common encodings) masked.",
        discussion: """
            Masks each value, each line of a multi-line value, and its base64/base64url (at every byte \
            alignment), percent, JSON, backslash-quote and XML/HTML encodings, with a mask that does not \
            depend on the value's length. Output is flushed line by line, so `tail -f log | secretfs \
            redact --project P` is live; values that change while it runs are picked up at once. Values \
            shorter than --min-length are not masked, and each is reported on stderr. Masking is a safety \
            net, not a security boundary: a value that a flow deliberately transforms (reverses, hashes, \
            splits) is not recognised.
            """)

    @OptionGroup var global: GlobalOptions
    @Option(help: "The project whose values to mask.", completion: .projectNames) var project: String
    @Option(help: ArgumentHelp("Get the values through a resolver daemon listening on this socket.", valueName: "socket"))
    var resolver: String?
    @Option(help: "Values shorter than this many bytes are not masked (reported on stderr).") var minLength = 4
    @Option(help: "The mask that replaces each match.") var mask = "[REDACTED]"

    func validate() throws {
        guard minLength >= 1 else { throw ValidationError("--min-length must be at least 1") }
        guard !mask.isEmpty else { throw ValidationError("--mask must not be empty") }
    }

    func run() throws {
        let options = RedactionOptions(minimumLength: minLength, mask: mask)
        let feed = try RedactorFeed(global: global, project: project, resolver: resolver, options: options)
        let stream = RedactingStream(redactor: feed.current()) { bytes in try writeRaw(fd: 1, bytes) }
        try pump(from: 0, through: stream, feed: feed)
    }
}

/// Builds a redactor from all of a project's values and rebuilds it when the
/// project changes, for `redact` and `run`. Readers poll `latest(seen:)`
/// between chunks; each sees every new generation.
///
/// A safety net must not fail open without a word. The change feed
/// reconnects by itself; whenever it is down, or a rebuild fails, the last
/// redactor stays in use (every value known so far is still masked), stderr
/// says so once, and the values are fetched again as soon as the feed is back.
final class RedactorFeed: @unchecked Sendable {
    // @unchecked: mutable state is in Mutexes; the rest is immutable.
    private let options: RedactionOptions
    let project: String
    let source: ValueSource
    private let state: Mutex<(redactor: Redactor, generation: Int)>
    /// Whether stderr was told the feed is down (it is told once per outage),
    /// and the names already reported as too short to mask.
    private let notices = Mutex((down: false, warnedShort: Set<String>()))
    private var feed: ChangeFeed?

    init(global: GlobalOptions, project: String, resolver: String?, options: RedactionOptions) throws {
        self.options = options
        self.project = project
        let source = try openValueSource(global: global, project: project, resolver: resolver)
        self.source = source
        state = Mutex((try Self.build(source, options), 0))
        reportShort(current())
        feed = try startChangeFeed(global: global, project: project, resolver: resolver) { [weak self] event in
            self?.handle(event) ?? false
        }
    }

    deinit { feed?.cancel() }

    private func handle(_ event: ChangeFeed.Event) -> Bool {
        switch event {
        case .changed:
            return rebuild()
        case .lost(let error):
            announceDown("lost the change feed of project \(project) (\(error.message))")
            return true
        case .restored:
            return rebuild()
        }
    }

    /// Fetches every value again and swaps the redactor in; false (the feed
    /// then reconnects and calls again) when that fails.
    private func rebuild() -> Bool {
        do {
            let fresh = try Self.build(source, options)
            state.withLock { $0 = (fresh, $0.generation + 1) }
            reportShort(fresh)
            let wasDown = notices.withLock { n -> Bool in
                defer { n.down = false }
                return n.down
            }
            if wasDown {
                writeStderr("secretfs: the change feed of project \(project) is back; values fetched again\n")
            }
            return true
        } catch {
            announceDown("cannot fetch the values of project \(project) again (\(describe(error)))")
            return false
        }
    }

    private func announceDown(_ what: String) {
        let first = notices.withLock { n -> Bool in
            defer { n.down = true }
            return !n.down
        }
        guard first else { return }
        let known = current().registeredNames.count
        writeStderr("secretfs: warning: \(what); still masking the \(known) values known; reconnecting\n")
    }

    private func reportShort(_ redactor: Redactor) {
        let new = notices.withLock { n -> [SkippedSecret] in
            let fresh = redactor.skipped.filter { !n.warnedShort.contains($0.name) }
            for s in fresh { n.warnedShort.insert(s.name) }
            return fresh
        }
        for s in new { writeStderr("secretfs: warning: not masking \(s.name): \(s.reason)\n") }
    }

    private static func build(_ source: ValueSource, _ options: RedactionOptions) throws -> Redactor {
        let names = try source.names()
        let values = names.isEmpty ? [:] : try source.values(names)
        defer { for v in values.values { v.wipe() } }
        return Redactor(secrets: values.map { (name: $0.key, value: $0.value) }, options: options)
    }

    func current() -> Redactor { state.withLock { $0.redactor } }

    /// The redactor if it changed since generation `seen` (which is updated).
    func latest(seen: inout Int) -> Redactor? {
        let (r, g) = state.withLock { ($0.redactor, $0.generation) }
        guard g != seen else { return nil }
        seen = g
        return r
    }
}

/// An error's message for stderr (never a value: no error carries one).
func describe(_ error: Error) -> String {
    if let f = error as? Failure { return f.message }
    if let p = error as? ProtocolError { return p.message }
    return "\(error)"
}

/// Reads `fd` to its end through a redacting stream. The input may hold
/// values, so it is read into locked memory.
func pump(from fd: Int32, through stream: RedactingStream, feed: RedactorFeed) throws {
    let buf = SecureBytes(capacity: 65536, count: 65536)
    var seen = 0
    while true {
        let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else { break }
        if let fresh = feed.latest(seen: &seen) { try stream.replaceRedactor(fresh) }
        try buf.withUnsafeBytes { try stream.write(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
    }
    try stream.finish()
}

func writeRaw(fd: Int32, _ bytes: UnsafeRawBufferPointer) throws {
    var off = 0
    while off < bytes.count {
        let n = write(fd, bytes.baseAddress! + off, bytes.count - off)
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else { throw Failure("cannot write: \(String(cString: strerror(errno)))") }
        off += n
    }
}
