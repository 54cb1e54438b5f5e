import ArgumentParser
import Glibc
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
    @Option(help: "The project whose values to mask.") var project: String
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
/// project changes (the source's watch), for `redact` and `run`. Readers
/// poll `latest(seen:)` between chunks; each sees every new generation.
final class RedactorFeed: @unchecked Sendable {
    private let options: RedactionOptions
    let source: ValueSource
    private let state: Mutex<(redactor: Redactor, generation: Int)>

    init(global: GlobalOptions, project: String, resolver: String?, options: RedactionOptions) throws {
        self.options = options
        let source = try openValueSource(global: global, project: project, resolver: resolver)
        self.source = source
        state = Mutex((try Self.build(source, options), 0))
        try startWatching(global: global, project: project, resolver: resolver) { [weak self] in
            guard let self, let fresh = try? Self.build(self.source, self.options) else { return }
            self.state.withLock { $0 = (fresh, $0.generation + 1) }
        }
    }

    private static func build(_ source: ValueSource, _ options: RedactionOptions) throws -> Redactor {
        let names = try source.names()
        let values = names.isEmpty ? [:] : try source.values(names)
        let redactor = Redactor(secrets: values.map { (name: $0.key, value: $0.value) }, options: options)
        for v in values.values { v.wipe() }
        for s in redactor.skipped { writeStderr("secretfs: warning: not masking \(s.name): \(s.reason)\n") }
        return redactor
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
