import ArgumentParser
import Glibc
import SecretfsInject
import SecretfsPOSIX
import SecretfsResolver
import SecureMemory

struct ResolveCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "resolve",
        abstract: "Inject a project's secrets into a flow definition, an installation config or one expression.",
        discussion: """
            Every static reference (secrets.NAME, secrets?.NAME, secrets["NAME"], secrets['NAME']) inside \
            an expression becomes a JavaScript string literal of the value; everything else is written \
            back unchanged. Only the referenced secrets are fetched. On any problem (a missing secret, \
            a reference that cannot be resolved statically, an expression that does not tokenize, a value \
            that is not UTF-8) every problem is reported with its location, nothing is written to stdout, \
            and the exit status is 14.

            Formats: flow (YAML; only !expr scalars are expressions), config (JSON object of field -> \
            expression source), expr (one expression). The default comes from the file extension \
            (.yaml/.yml flow, .json config).
            """)

    @OptionGroup var global: GlobalOptions

    @Option(help: "The project whose secrets to inject.", completion: .projectNames) var project: String
    @Option(help: ArgumentHelp("flow, config or expr (default: from the file extension).", valueName: "format"))
    var format: String?
    @Option(help: ArgumentHelp("Go through a resolver daemon listening on this socket instead of the mount's socket.", valueName: "socket"))
    var resolver: String?
    @Flag(help: "Print a JSON object of the referenced names and their values instead of the rewritten document.")
    var bindings = false
    @Argument(help: "The document to resolve, or - for stdin.") var file: String = "-"

    func validate() throws {
        try validateProjectName(project)
        if let format, InjectionFormat(rawValue: format) == nil {
            throw ValidationError("--format must be flow, config or expr, not '\(format)'")
        }
        if format == nil && file == "-" {
            throw ValidationError("--format is needed when the document comes from stdin")
        }
        if format == nil && InjectionFormat.forPath(file) == nil {
            throw ValidationError("cannot tell the format of '\(file)' from its extension; pass --format flow|config|expr")
        }
    }

    func run() throws {
        let fmt = format.flatMap(InjectionFormat.init(rawValue:)) ?? InjectionFormat.forPath(file)!
        let document = try readDocument(file)
        let output: SecureBytes
        do {
            output = try resolveDocument(document, format: fmt, output: bindings ? .bindings : .document,
                                         global: global, project: project, resolver: resolver)
        } catch let failure as ResolveFailure {
            for p in failure.problems { writeStderr("secretfs: error: \(file == "-" ? "stdin" : file): \(p)\n") }
            writeStderr("hint: \(counted(failure.problems.count, "problem")); nothing was written\n")
            Glibc.exit(Exit.resolveProblem.rawValue)
        }
        defer { output.wipe() }
        try writeAll(fd: 1, output)
        if injectedNothing(document, output), document.contains(subsequence: Array("secrets".utf8)) {
            // Valid, but most likely the wrong format: a flow's references
            // are in !expr scalars only, and an expression's string literals
            // are text.
            writeStderr("secretfs: warning: \(file == "-" ? "stdin" : file): nothing was injected, though the document mentions "
                        + "'secrets' (read as --format \(fmt.rawValue): \(Self.formatMeaning(fmt)))\n")
        }
    }

    /// The output says no reference was found: the document unchanged, or no bindings.
    private func injectedNothing(_ document: [UInt8], _ output: SecureBytes) -> Bool {
        output.withUnsafeBytes { out in
            bindings ? out.elementsEqual("{}\n".utf8) : out.elementsEqual(document)
        }
    }

    private static func formatMeaning(_ format: InjectionFormat) -> String {
        switch format {
        case .flow: return "YAML, where only scalars tagged !expr are expressions"
        case .config: return "a JSON object of field name to expression source"
        case .expr: return "the whole input is one JavaScript expression"
        }
    }
}

extension Array where Element == UInt8 {
    /// Whether `needle` occurs in these bytes (a plain search: documents
    /// are small, and this runs once).
    func contains(subsequence needle: [UInt8]) -> Bool {
        guard !needle.isEmpty, count >= needle.count else { return needle.isEmpty }
        return withUnsafeBytes { hay in
            needle.withUnsafeBytes { n in
                (0...(hay.count - n.count)).contains { memcmp(hay.baseAddress! + $0, n.baseAddress!, n.count) == 0 }
            }
        }
    }
}

/// Reads a whole document (never secret) from a path or stdin.
func readDocument(_ path: String) throws -> [UInt8] {
    let fd = path == "-" ? 0 : open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else {
        let e = errno
        throw Failure("cannot read \(path): \(errnoText(e))", hint: pathErrorHint(e), exit: .failure)
    }
    defer { if fd != 0 { close(fd) } }
    // Read into one array of the file's size (plus a byte, for the read
    // that finds the end), not 64 KiB chunks appended to a growing one: the
    // copies and regrowth were half a millisecond of a 366 KB flow. A pipe,
    // or a file that grows meanwhile, doubles the array as it fills.
    var st = stat()
    let expected = fstat(fd, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG ? Int(st.st_size) : 65535
    var out = [UInt8](repeating: 0, count: expected + 1)
    var count = 0
    while true {
        if count == out.count { out += [UInt8](repeating: 0, count: out.count) }
        let n = out.withUnsafeMutableBytes { read(fd, $0.baseAddress! + count, $0.count - count) }
        if n < 0 && errno == EINTR { continue }
        guard n >= 0 else { let e = errno; throw Failure("cannot read \(path): \(errnoText(e))", hint: pathErrorHint(e)) }
        if n == 0 { break }
        count += n
    }
    out.removeSubrange(count...)
    return out
}

/// Writes locked bytes straight to a descriptor (no intermediate copies).
func writeAll(fd: Int32, _ bytes: SecureBytes) throws {
    try bytes.withUnsafeBytes { raw in
        var off = 0
        while off < raw.count {
            let n = write(fd, raw.baseAddress! + off, raw.count - off)
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw Failure("cannot write the output: \(String(cString: strerror(errno)))") }
            off += n
        }
    }
}
