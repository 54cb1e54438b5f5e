import ArgumentParser
import Glibc
import SecretfsPOSIX
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
    @OptionGroup var masking: MaskingOptions

    func validate() throws { try validateProjectName(project) }

    func run() throws {
        let feed = try RedactorFeed(global: global, project: project, resolver: resolver, masking: masking)
        let stream = RedactingStream(redactor: feed.current()) { bytes in try writeRaw(fd: 1, bytes) }
        try pump(from: 0, through: stream, feed: feed)
    }
}

/// How `redact` and `run` mask: the same flags, checked the same way.
struct MaskingOptions: ParsableArguments {
    @Option(help: "Values shorter than this many bytes are not masked (each is named on stderr).") var minLength = 4
    @Option(help: "The mask that replaces each match.") var mask = "[REDACTED]"
    @Flag(name: [.customShort("q"), .long], help: "Do not name the values too short to mask on stderr (they are still not masked).")
    var quiet = false

    func validate() throws {
        guard minLength >= 1 else { throw ValidationError("--min-length must be at least 1") }
        guard !mask.isEmpty else { throw ValidationError("--mask must not be empty") }
    }

    var redaction: RedactionOptions { RedactionOptions(minimumLength: minLength, mask: mask) }
}

/// Builds a redactor from all of a project's values and rebuilds it when the
/// project changes, for `redact` and `run`. Readers poll `latest(seen:)`
/// between chunks; each sees every new generation.
///
/// A safety net must not fail open, and never without a word:
/// - the change feed is subscribed before the first values are fetched, so
///   no change can fall between the two;
/// - a reader waits (`awaitCurrent`) while a change is being applied, so a
///   value is not let through in the moment between its change and the
///   rebuilt redactor;
/// - values handed out separately (`run`'s environment) are pinned: they
///   stay masked whatever the project does afterwards;
/// - whenever the feed is down or a rebuild fails, the last redactor stays in
///   use (every value known so far is still masked), stderr says so once,
///   and the values are fetched again as soon as the feed is back.
final class RedactorFeed: @unchecked Sendable {
    // @unchecked: mutable state is in Mutexes; the rest is immutable.
    private let options: RedactionOptions
    /// Whether stderr names the values too short to mask (not with --quiet).
    private let reportsShortValues: Bool
    let project: String
    let source: ValueSource
    private struct State {
        var redactor: Redactor
        var generation = 0
        /// Builds are numbered as they start; a slower, older build never
        /// replaces the result of a newer one.
        var nextTicket = 0
        var builtTicket = -1
        /// Changes seen but not yet applied (readers wait while this is > 0).
        var pending = 0
    }
    private let state: Mutex<State>
    /// Values masked in every build, whatever the project holds (locked
    /// memory), with the name of the secret each came from.
    private let pinned = Mutex<[(name: String, value: SecureBytes)]>([])
    /// Whether stderr was told the feed is down (it is told once per outage),
    /// and the names already reported as too short to mask.
    private let notices = Mutex((down: false, slow: false, warnedShort: Set<String>()))
    private var feed: ChangeFeed?

    /// How long a reader waits for a change to be applied before it goes on
    /// with the redactor it has (and says so).
    static let applyTimeout = 10.0

    /// Copies of the values `init` was asked to hand over (`run`'s
    /// environment), from the fetch the first redactor was built from, and
    /// pinned: masked whatever the project does afterwards. The caller wipes them.
    private(set) var handed: [String: SecureBytes] = [:]

    /// `handing`: names whose values the caller needs too (see `handed`),
    /// taken from the same fetch: one GET of the project, one audit row.
    init(global: GlobalOptions, project: String, resolver: String?, masking: MaskingOptions, handing wanted: [String] = []) throws {
        self.options = masking.redaction
        self.reportsShortValues = !masking.quiet
        self.project = project
        let source = try openValueSource(global: global, project: project, resolver: resolver)
        self.source = source
        state = Mutex(State(redactor: Redactor(secrets: [], options: options)))
        // Subscribe first, then build: a change made in between is an event.
        feed = try startChangeFeed(global: global, project: project, resolver: resolver) { [weak self] event in
            self?.handle(event) ?? false
        }
        let first = try rebuildOrThrow(handing: Set(wanted))
        // A change's rebuild that started before the values were pinned
        // may have replaced the first redactor without them: once more.
        if !handed.isEmpty && state.withLock({ $0.nextTicket > first + 1 }) { try rebuildOrThrow() }
    }

    deinit { feed?.cancel() }

    private func handle(_ event: ChangeFeed.Event) -> Bool {
        switch event {
        case .changed, .restored:
            state.withLock { $0.pending += 1 }
            defer { state.withLock { $0.pending -= 1 } }
            return rebuild()
        case .lost(let error):
            announceDown("lost the change feed of project \(project) (\(error.message))")
            return true
        }
    }

    /// Fetches every value again and swaps the redactor in; false (the feed
    /// then reconnects and calls again) when that fails.
    private func rebuild() -> Bool {
        do {
            try rebuildOrThrow()
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

    /// Returns the build's ticket.
    @discardableResult
    private func rebuildOrThrow(handing wanted: Set<String> = []) throws -> Int {
        let ticket = state.withLock { s -> Int in
            defer { s.nextTicket += 1 }
            return s.nextTicket
        }
        let fresh = try build(handing: wanted)
        state.withLock { s in
            guard ticket > s.builtTicket else { return }
            s.redactor = fresh
            s.generation += 1
            s.builtTicket = ticket
        }
        reportShort(fresh)
        return ticket
    }

    /// The values are handed over to the redactor, and no other reference is
    /// kept here: each is freed (wiped) as soon as its forms are collected,
    /// before the tables are built (see Redactor.init(consuming:)).
    private func build(handing wanted: Set<String>) throws -> Redactor {
        let names = try source.names()
        var current = names.isEmpty ? [:] : try source.values(names)
        if !wanted.isEmpty {
            for (name, value) in current where wanted.contains(name) { handed[name] = value.copy() }
            pinned.withLock { $0 += handed.map { (name: $0.key, value: $0.value.copy()) } }
        }
        var secrets: [(name: String, value: SecureBytes)] = current.map { (name: $0.key, value: $0.value) }
        pinned.withLock { p in
            // A pinned value the project still holds under its name is in
            // already (and would be reported twice if too short to mask).
            for (name, value) in p where current[name].map({ !$0.constantTimeEquals(value) }) ?? true {
                secrets.append((name: "\(name) (the value the command was given)", value: value))
            }
        }
        current = [:]   // `secrets` holds the only references now (see above)
        return Redactor(consuming: &secrets, options: options)
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
        guard reportsShortValues else { return }
        let new = notices.withLock { n -> [SkippedSecret] in
            // In name order: the same warnings in the same order at every run.
            let fresh = redactor.skipped.filter { !n.warnedShort.contains($0.name) }.sorted { $0.name.utf8.lexicographicallyPrecedes($1.name.utf8) }
            for s in fresh { n.warnedShort.insert(s.name) }
            return fresh
        }
        for s in new { writeStderr("secretfs: warning: not masking \(s.name): \(s.reason)\n") }
    }

    func current() -> Redactor { state.withLock { $0.redactor } }

    /// Waits while a change is being applied (at most `applyTimeout`; then
    /// stderr says the output may hold a value changed moments ago).
    func awaitCurrent() {
        let deadline = monotonicSeconds() + Self.applyTimeout
        // A change being applied, or one already in the feed's socket buffer
        // that its thread has not picked up yet (a loaded machine).
        while state.withLock({ $0.pending > 0 }) || feed?.hasUnhandledInput == true {
            if monotonicSeconds() > deadline {
                let first = notices.withLock { n -> Bool in
                    defer { n.slow = true }
                    return !n.slow
                }
                if first {
                    writeStderr("secretfs: warning: a change of project \(project) is taking long to apply; "
                                + "going on with the values known (a value changed just now may not be masked yet)\n")
                }
                return
            }
            usleep(1_000)
        }
    }

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
        feed.awaitCurrent()
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
