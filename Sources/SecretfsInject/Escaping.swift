/// The container an expression is written into: nothing (`expr` format), a
/// YAML double-quoted scalar (`flow`), or a JSON string (`config`, `bindings`).
enum OuterEscaping {
    case none
    case yamlDoubleQuoted
    case json
}

private let hexDigits: [UInt8] = Array("0123456789ABCDEF".utf8)

extension ByteSink {
    mutating func putHex(_ v: UInt32, digits: Int) {
        var shift = (digits - 1) * 4
        while shift >= 0 {
            put(hexDigits[Int((v >> UInt32(shift)) & 0xF)])
            shift -= 4
        }
    }

    /// One scalar of output, escaped for the outer container.
    mutating func put(scalar s: UInt32, outer: OuterEscaping) {
        switch outer {
        case .none:
            putUTF8(s)
        case .yamlDoubleQuoted:
            putYAMLDoubleQuoted(s)
        case .json:
            putJSONEscaped(s)
        }
    }

    /// YAML 1.2 double-quoted scalar content: escape `"` and `\`, every
    /// character outside YAML's printable set, and line breaks (so the scalar
    /// stays on one line and no folding applies).
    mutating func putYAMLDoubleQuoted(_ s: UInt32) {
        switch s {
        case 0x22: put(ascii: "\\\"")
        case 0x5C: put(ascii: "\\\\")
        case 0x00: put(ascii: "\\0")
        case 0x07: put(ascii: "\\a")
        case 0x08: put(ascii: "\\b")
        case 0x09: put(ascii: "\\t")
        case 0x0A: put(ascii: "\\n")
        case 0x0B: put(ascii: "\\v")
        case 0x0C: put(ascii: "\\f")
        case 0x0D: put(ascii: "\\r")
        case 0x1B: put(ascii: "\\e")
        case 0x85: put(ascii: "\\N")
        case 0x2028: put(ascii: "\\L")
        case 0x2029: put(ascii: "\\P")
        case 0..<0x20, 0x7F...0x9F:
            put(ascii: "\\x"); putHex(s, digits: 2)
        case 0xFEFF, 0xFFFE, 0xFFFF, 0xD800...0xDFFF:
            put(ascii: "\\u"); putHex(s, digits: 4)
        default:
            putUTF8(s)
        }
    }

    /// JSON string content (RFC 8259), also escaping DEL, U+2028 and U+2029 (so
    /// the text is safe to embed in JavaScript source too) and U+FEFF, U+FFFE,
    /// U+FFFF (which some readers drop or reject).
    mutating func putJSONEscaped(_ s: UInt32) {
        switch s {
        case 0x22: put(ascii: "\\\"")
        case 0x5C: put(ascii: "\\\\")
        case 0x08: put(ascii: "\\b")
        case 0x09: put(ascii: "\\t")
        case 0x0A: put(ascii: "\\n")
        case 0x0C: put(ascii: "\\f")
        case 0x0D: put(ascii: "\\r")
        case 0..<0x20, 0x7F, 0x2028, 0x2029, 0xFEFF, 0xFFFE, 0xFFFF:
            put(ascii: "\\u"); putHex(s, digits: 4)
        default:
            putUTF8(s)
        }
    }

    /// A JavaScript double-quoted string literal body for one value scalar,
    /// written through `outer`. Escaped: `"`, `\`, every C0/C1 control and DEL,
    /// U+2028/U+2029 (line terminators in older engines and in YAML), and
    /// U+FEFF/U+FFFE/U+FFFF. NUL is `\x00`, never `\0` (which a following digit
    /// would turn into a legacy octal escape). Everything else, including
    /// backticks, `${` and non-BMP characters, stays as is: none of it is special
    /// inside a double-quoted JavaScript string.
    mutating func putJSStringChar(_ s: UInt32, outer: OuterEscaping) {
        switch s {
        case 0x22: put(ascii: "\\\"", outer: outer)
        case 0x5C: put(ascii: "\\\\", outer: outer)
        case 0x0A: put(ascii: "\\n", outer: outer)
        case 0x0D: put(ascii: "\\r", outer: outer)
        case 0x09: put(ascii: "\\t", outer: outer)
        case 0x08: put(ascii: "\\b", outer: outer)
        case 0x0C: put(ascii: "\\f", outer: outer)
        case 0x0B: put(ascii: "\\v", outer: outer)
        case 0..<0x20, 0x7F...0x9F:
            put(ascii: "\\x", outer: outer)
            putHexThrough(s, digits: 2, outer: outer)
        case 0x2028, 0x2029, 0xFEFF, 0xFFFE, 0xFFFF:
            put(ascii: "\\u", outer: outer)
            putHexThrough(s, digits: 4, outer: outer)
        default:
            put(scalar: s, outer: outer)
        }
    }

    mutating func put(ascii: StaticString, outer: OuterEscaping) {
        ascii.withUTF8Buffer { for b in $0 { put(scalar: UInt32(b), outer: outer) } }
    }

    mutating func putHexThrough(_ v: UInt32, digits: Int, outer: OuterEscaping) {
        var shift = (digits - 1) * 4
        while shift >= 0 {
            put(scalar: UInt32(hexDigits[Int((v >> UInt32(shift)) & 0xF)]), outer: outer)
            shift -= 4
        }
    }

    /// `"…"`: a JavaScript string literal of `value` (valid UTF-8, checked by
    /// the caller), written through `outer`.
    mutating func putJSStringLiteral(_ value: UnsafeRawBufferPointer, outer: OuterEscaping) {
        put(scalar: 0x22, outer: outer)
        forEachRun(value) { run, plain in
            if plain { put(run: run) } else { forEachScalar(run) { putJSStringChar($0, outer: outer) } }
        }
        put(scalar: 0x22, outer: outer)
    }

    /// Source text (not secret) copied through `outer`.
    mutating func putSource(_ raw: UnsafeRawBufferPointer, outer: OuterEscaping) {
        if case .none = outer {
            put(run: raw)
            return
        }
        forEachRun(raw) { run, plain in
            if plain { put(run: run) } else { forEachScalar(run) { put(scalar: $0, outer: outer) } }
        }
    }
}

/// Splits UTF-8 `bytes` into alternating runs: `plain` runs of printable
/// ASCII other than `"` and `\` (bytes that every escaping here, JavaScript
/// string, YAML double-quoted and JSON, writes unchanged), and the runs
/// between them, to be escaped scalar by scalar. A run boundary is always at
/// an ASCII byte, so it never splits a UTF-8 sequence (nor changes how an
/// invalid one decodes: an ASCII byte is never part of one).
@inline(__always)
func forEachRun(_ bytes: UnsafeRawBufferPointer, _ body: (UnsafeRawBufferPointer, _ plain: Bool) -> Void) {
    @inline(__always) func isPlain(_ b: UInt8) -> Bool { b >= 0x20 && b < 0x7F && b != 0x22 && b != 0x5C }
    var i = 0
    let n = bytes.count
    while i < n {
        let plain = isPlain(bytes[i])
        var j = i + 1
        while j < n && isPlain(bytes[j]) == plain { j += 1 }
        body(UnsafeRawBufferPointer(rebasing: bytes[i..<j]), plain)
        i = j
    }
}

/// Calls `body` with each scalar of UTF-8 `bytes`; an invalid sequence is
/// passed as U+FFFD (callers validate values first, so this only concerns
/// source text).
@inline(__always)
func forEachScalar(_ bytes: UnsafeRawBufferPointer, _ body: (UInt32) -> Void) {
    var it = bytes.makeIterator()
    var decoder = UTF8()
    while true {
        switch decoder.decode(&it) {
        case .scalarValue(let s): body(s.value)
        case .emptyInput: return
        case .error: body(0xFFFD)
        }
    }
}

/// Non-secret helper: a JSON string literal (with quotes) of `s`.
func jsonQuoted(_ s: String) -> [UInt8] {
    var out = ArrayByteSink()
    out.put(0x22)
    for u in s.unicodeScalars { out.putJSONEscaped(u.value) }
    out.put(0x22)
    return out.bytes
}

/// A growable sink for non-secret text only (names, keys, YAML properties).
struct ArrayByteSink: ByteSink {
    var bytes: [UInt8] = []
    mutating func put(_ byte: UInt8) { bytes.append(byte) }
    mutating func put(run: UnsafeRawBufferPointer) { bytes.append(contentsOf: run) }
}
