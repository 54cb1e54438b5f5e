import SecretfsNames
import SecureMemory

/// One name and value read from an import file. The value is in locked memory.
public struct ImportEntry: @unchecked Sendable {
    public var name: String
    public var line: Int
    public var value: SecureBytes
}

/// Why an import file cannot be read: the line (and the name when it is
/// known), never the value.
public struct ImportError: Error, Equatable, CustomStringConvertible, Sendable {
    public var line: Int
    public var name: String?
    public var problem: String
    public init(line: Int, name: String?, problem: String) {
        self.line = line; self.name = name; self.problem = problem
    }
    public var description: String {
        "line \(line)" + (name.map { " (\($0))" } ?? "") + ": " + problem
    }
}

/// Every problem found in an import file, in the order of its lines (at most
/// `ImportDocument.maxProblems`): a file with several bad lines is fixed in
/// one go. Nothing of it is imported.
public struct ImportFailure: Error, Equatable, Sendable {
    public var problems: [ImportError]
    public init(_ problems: [ImportError]) { self.problems = problems }
}

/// Parses `.env` and JSON import files straight from locked memory into
/// locked memory: no value is ever copied into an ordinary String or array.
///
/// dotenv as people write it: `KEY=value`, an optional `export `, `#` comment
/// lines and ` #` comments after a value, single quotes (literal), double
/// quotes (with `\n`, `\r`, `\t`, `\"`, `\\` escapes and real newlines),
/// `=` inside values, CRLF line endings, surrounding blanks trimmed from
/// unquoted values, a UTF-8 byte order mark. JSON: one object whose members
/// are all strings. A name given twice is an error (which one was meant?).
public enum ImportDocument {
    public enum Format: String, Sendable, CaseIterable { case env, json }

    /// Largest value accepted (the mount's largest `max_size`).
    public static let maxValueBytes = 16 << 20
    /// Problems listed at most; the reader stops at the next one.
    public static let maxProblems = 20

    public static func parse(_ input: SecureBytes, format: Format) throws(ImportFailure) -> [ImportEntry] {
        var entries: [ImportEntry] = []
        var problems: [ImportError] = []
        input.withUnsafeBytes { raw in
            var p = Parser(bytes: raw)
            if format == .env {
                entries = p.parseEnv(problems: &problems)
            } else {
                // JSON: after a broken object there is no next member to go on with.
                do throws(ImportError) { entries = try p.parseJSON() } catch { problems.append(error) }
            }
        }
        var seen: [String: Int] = [:]
        for e in entries {
            if let first = seen[e.name] {
                problems.append(ImportError(line: e.line, name: e.name, problem: "given twice (first on line \(first))"))
            } else {
                seen[e.name] = e.line
            }
        }
        guard problems.isEmpty else {
            throw ImportFailure(Array(problems.sorted { $0.line < $1.line }.prefix(maxProblems)))
        }
        return entries
    }

    private struct Parser {
        let b: UnsafeRawBufferPointer
        var i = 0
        var line = 1

        init(bytes: UnsafeRawBufferPointer) {
            b = bytes
            if b.count >= 3 && b[0] == 0xEF && b[1] == 0xBB && b[2] == 0xBF { i = 3 }
        }

        var atEnd: Bool { i >= b.count }
        func peek(_ k: Int = 0) -> UInt8? { i + k < b.count ? b[i + k] : nil }

        mutating func skipBlanks() { while let c = peek(), c == 0x20 || c == 0x09 { i += 1 } }

        /// At a line end (LF, CRLF) or the end: consumes it.
        mutating func endOfLine() -> Bool {
            if atEnd { return true }
            if peek() == 0x0A { i += 1; line += 1; return true }
            if peek() == 0x0D && peek(1) == 0x0A { i += 2; line += 1; return true }
            return false
        }

        mutating func skipToEndOfLine() { while !atEnd && !endOfLine() { i += 1 } }

        /// Room for a value starting at `i` (on its opening quote, if any):
        /// up to the closing quote, or the line end for an unquoted value, so
        /// ten thousand short values do not each lock the rest of the file.
        func newValue(quote: UInt8?, escapes: Bool) -> SecureBytes {
            var j = quote == nil ? i : i + 1
            while j < b.count {
                let c = b[j]
                if let quote {
                    if c == quote { break }
                    if escapes && c == 0x5C { j += 1 }
                } else if c == 0x0A {
                    break
                }
                j += 1
            }
            return SecureBytes(capacity: max(1, min(j, b.count) - i))
        }

        static func isNameByte(_ c: UInt8) -> Bool {
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x5F
        }

        // MARK: dotenv

        /// Every line, recording each bad one in `problems` and going on with
        /// the next (an unterminated quote ends the reading: it took the
        /// rest of the file).
        mutating func parseEnv(problems: inout [ImportError]) -> [ImportEntry] {
            var out: [ImportEntry] = []
            while problems.count < ImportDocument.maxProblems {
                do throws(ImportError) {
                    guard let entry = try nextEnvEntry() else { break }
                    out.append(entry)
                } catch {
                    problems.append(error)
                    if atEnd { break }
                    skipToEndOfLine()
                }
            }
            return out
        }

        /// The next entry; nil at the end of the file.
        mutating func nextEnvEntry() throws(ImportError) -> ImportEntry? {
            while true {
                skipBlanks()
                if atEnd { return nil }
                if endOfLine() { continue }
                if peek() == 0x23 { skipToEndOfLine(); continue }   // # comment
                break
            }
            let start = line
            if matches("export"), let c = peek(6), c == 0x20 || c == 0x09 {
                i += 6
                skipBlanks()
            }
            // What comes before '=' is not echoed in these errors unless
            // it is a whole valid name: a line without one may well be a
            // value pasted on its own.
            let nameStart = i
            while let c = peek(), Self.isNameByte(c) { i += 1 }
            let name = String(decoding: UnsafeRawBufferPointer(rebasing: b[nameStart..<i]), as: UTF8.self)
            let nameEnds = peek().map { $0 == 0x3D || $0 == 0x20 || $0 == 0x09 || $0 == 0x0A || $0 == 0x0D } ?? true
            guard !name.isEmpty else {
                throw ImportError(line: start, name: nil, problem: "expected NAME=value")
            }
            guard Names.isValid(name) && nameEnds else {
                throw ImportError(line: start, name: nil, problem: "not a valid name before '=' (names match [A-Za-z_][A-Za-z0-9_]*)")
            }
            skipBlanks()
            guard peek() == 0x3D else {
                throw ImportError(line: start, name: nil, problem: "expected NAME=value")
            }
            i += 1
            skipBlanks()
            let value = newValue(quote: peek() == 0x22 || peek() == 0x27 ? peek() : nil, escapes: peek() == 0x22)
            switch peek() {
            case 0x22?: try doubleQuoted(into: value, name: name, start: start)
            case 0x27?: try singleQuoted(into: value, name: name, start: start)
            default: unquoted(into: value)
            }
            try checkSize(value, name: name, start: start)
            return ImportEntry(name: name, line: start, value: value)
        }

        func matches(_ word: String) -> Bool {
            let w = Array(word.utf8)
            guard i + w.count <= b.count else { return false }
            for k in 0..<w.count where b[i + k] != w[k] { return false }
            return true
        }

        func checkSize(_ value: SecureBytes, name: String, start: Int) throws(ImportError) {
            if value.count > ImportDocument.maxValueBytes {
                throw ImportError(line: start, name: name, problem: "the value is over \(ImportDocument.maxValueBytes >> 20) MiB")
            }
        }

        mutating func append(_ value: SecureBytes, _ c: UInt8) {
            var c = c
            _ = withUnsafeBytes(of: &c) { value.append($0) }
        }

        /// Up to the end of the line or a `#` after a blank; blanks trimmed.
        mutating func unquoted(into value: SecureBytes) {
            var pendingBlanks = 0
            while let c = peek(), c != 0x0A, !(c == 0x0D && peek(1) == 0x0A) {
                if c == 0x20 || c == 0x09 {
                    pendingBlanks += 1
                    i += 1
                    continue
                }
                // `#` after a blank (or after the blanks that follow `=`) starts a comment.
                let afterBlank = pendingBlanks > 0 || (value.count == 0 && i > 0 && (b[i - 1] == 0x20 || b[i - 1] == 0x09))
                if c == 0x23 && afterBlank { break }
                for k in 0..<pendingBlanks { append(value, b[i - pendingBlanks + k]) }
                pendingBlanks = 0
                append(value, c)
                i += 1
            }
            skipToEndOfLine()
        }

        /// After a closing quote: blanks, an optional comment, the line end.
        mutating func afterQuote(name: String) throws(ImportError) {
            skipBlanks()
            if peek() == 0x23 { skipToEndOfLine(); return }
            guard endOfLine() else {
                throw ImportError(line: line, name: name, problem: "unexpected text after the closing quote")
            }
        }

        mutating func singleQuoted(into value: SecureBytes, name: String, start: Int) throws(ImportError) {
            i += 1
            while true {
                guard let c = peek() else { throw ImportError(line: start, name: name, problem: "unterminated single quote") }
                if c == 0x27 { i += 1; break }
                if c == 0x0D && peek(1) == 0x0A { append(value, 0x0A); i += 2; line += 1; continue }
                if c == 0x0A { line += 1 }
                append(value, c)
                i += 1
            }
            try afterQuote(name: name)
        }

        mutating func doubleQuoted(into value: SecureBytes, name: String, start: Int) throws(ImportError) {
            i += 1
            while true {
                guard let c = peek() else { throw ImportError(line: start, name: name, problem: "unterminated double quote") }
                if c == 0x22 { i += 1; break }
                if c == 0x5C, let e = peek(1) {
                    switch e {
                    case 0x6E: append(value, 0x0A)            // \n
                    case 0x72: append(value, 0x0D)            // \r
                    case 0x74: append(value, 0x09)            // \t
                    case 0x22, 0x5C: append(value, e)         // \" \\
                    default: append(value, c); append(value, e)
                    }
                    if e == 0x0A { line += 1 }
                    i += 2
                    continue
                }
                if c == 0x0D && peek(1) == 0x0A { append(value, 0x0A); i += 2; line += 1; continue }
                if c == 0x0A { line += 1 }
                append(value, c)
                i += 1
            }
            try afterQuote(name: name)
        }

        // MARK: JSON (an object of strings)

        mutating func skipJSONSpace() {
            while let c = peek() {
                if c == 0x0A { line += 1; i += 1 } else if c == 0x20 || c == 0x09 || c == 0x0D { i += 1 } else { break }
            }
        }

        mutating func expect(_ c: UInt8, _ what: String, name: String? = nil) throws(ImportError) {
            skipJSONSpace()
            guard peek() == c else { throw ImportError(line: line, name: name, problem: "expected \(what)") }
            i += 1
        }

        mutating func parseJSON() throws(ImportError) -> [ImportEntry] {
            try expect(0x7B, "a JSON object of names to strings")
            var out: [ImportEntry] = []
            skipJSONSpace()
            if peek() == 0x7D {
                i += 1
            } else {
                while true {
                    skipJSONSpace()
                    let start = line
                    guard peek() == 0x22 else { throw ImportError(line: line, name: nil, problem: "expected a name in double quotes") }
                    let key = newValue(quote: 0x22, escapes: true)
                    try jsonString(into: key, name: nil)
                    let name = key.withUnsafeBytes { String(decoding: $0, as: UTF8.self) }
                    key.wipe()
                    guard Names.isValid(name) else {
                        throw ImportError(line: start, name: nil, problem: "not a valid name (names match [A-Za-z_][A-Za-z0-9_]*)")
                    }
                    try expect(0x3A, "':' after the name", name: nil)   // a lone string may be a value: not echoed
                    skipJSONSpace()
                    guard peek() == 0x22 else { throw ImportError(line: line, name: name, problem: "the value is not a string") }
                    let value = newValue(quote: 0x22, escapes: true)
                    try jsonString(into: value, name: name)
                    try checkSize(value, name: name, start: start)
                    out.append(ImportEntry(name: name, line: start, value: value))
                    skipJSONSpace()
                    if peek() == 0x2C { i += 1; continue }
                    try expect(0x7D, "',' or '}'", name: name)
                    break
                }
            }
            skipJSONSpace()
            guard atEnd else { throw ImportError(line: line, name: nil, problem: "unexpected text after the object") }
            return out
        }

        mutating func hex4(name: String?) throws(ImportError) -> UInt32 {
            var v: UInt32 = 0
            for _ in 0..<4 {
                guard let c = peek() else { throw ImportError(line: line, name: name, problem: "unterminated string") }
                let d: UInt32
                switch c {
                case 0x30...0x39: d = UInt32(c - 0x30)
                case 0x41...0x46: d = UInt32(c - 0x41 + 10)
                case 0x61...0x66: d = UInt32(c - 0x61 + 10)
                default: throw ImportError(line: line, name: name, problem: "bad \\u escape")
                }
                v = v * 16 + d
                i += 1
            }
            return v
        }

        mutating func appendScalar(_ value: SecureBytes, _ u: UInt32) {
            if u < 0x80 { append(value, UInt8(u)) }
            else if u < 0x800 { append(value, UInt8(0xC0 | (u >> 6))); append(value, UInt8(0x80 | (u & 0x3F))) }
            else if u < 0x10000 {
                append(value, UInt8(0xE0 | (u >> 12))); append(value, UInt8(0x80 | ((u >> 6) & 0x3F))); append(value, UInt8(0x80 | (u & 0x3F)))
            } else {
                append(value, UInt8(0xF0 | (u >> 18))); append(value, UInt8(0x80 | ((u >> 12) & 0x3F)))
                append(value, UInt8(0x80 | ((u >> 6) & 0x3F))); append(value, UInt8(0x80 | (u & 0x3F)))
            }
        }

        mutating func jsonString(into value: SecureBytes, name: String?) throws(ImportError) {
            i += 1
            while true {
                guard let c = peek() else { throw ImportError(line: line, name: name, problem: "unterminated string") }
                if c == 0x22 { i += 1; return }
                if c < 0x20 { throw ImportError(line: line, name: name, problem: "a control character in a string (use \\n)") }
                if c != 0x5C { append(value, c); i += 1; continue }
                guard let e = peek(1) else { throw ImportError(line: line, name: name, problem: "unterminated string") }
                i += 2
                switch e {
                case 0x22, 0x5C, 0x2F: append(value, e)
                case 0x62: append(value, 0x08)
                case 0x66: append(value, 0x0C)
                case 0x6E: append(value, 0x0A)
                case 0x72: append(value, 0x0D)
                case 0x74: append(value, 0x09)
                case 0x75:
                    var u = try hex4(name: name)
                    if (0xD800..<0xDC00).contains(u) {
                        guard peek() == 0x5C, peek(1) == 0x75 else { throw ImportError(line: line, name: name, problem: "a lone surrogate in \\u escapes") }
                        i += 2
                        let low = try hex4(name: name)
                        guard (0xDC00..<0xE000).contains(low) else { throw ImportError(line: line, name: name, problem: "a lone surrogate in \\u escapes") }
                        u = 0x10000 + ((u - 0xD800) << 10) + (low - 0xDC00)
                    } else if (0xDC00..<0xE000).contains(u) {
                        throw ImportError(line: line, name: name, problem: "a lone surrogate in \\u escapes")
                    }
                    appendScalar(value, u)
                default: throw ImportError(line: line, name: name, problem: "unknown escape")
                }
            }
        }
    }
}
