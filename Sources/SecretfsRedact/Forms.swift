import SecureMemory
/// Generation of the registered forms of a secret value.
///
/// Every form is built in locked scratch memory and handed to `emit`, which
/// adds it to the build's `FormSet` (that drops a form it holds already).
/// Nothing here creates a Swift `String` or `Array` holding value bytes.
///
/// The rule that keeps streaming simple: no registered form contains a raw
/// newline. A form that would (the value itself, or its XML or quote-escaped
/// form, when the value spans lines) is registered line by line instead, each
/// line trimmed of surrounding whitespace, empty or too-short lines dropped.
struct FormGenerator {
    let minimumLength: Int
    /// Receives each form (the buffer is only valid during the call).
    let emit: (UnsafeRawBufferPointer) -> Void

    private let scratch: LockedArray<UInt8>
    private let scratch2: LockedArray<UInt8>

    init(minimumLength: Int, meter: LockedMeter? = nil, emit: @escaping (UnsafeRawBufferPointer) -> Void) {
        self.minimumLength = minimumLength
        self.emit = emit
        scratch = LockedArray(capacity: 256, meter: meter)
        scratch2 = LockedArray(capacity: 256, meter: meter)
    }

    /// Registers all forms of `value`.
    func addForms(of value: UnsafeRawBufferPointer) {
        addEncodedForms(of: value)
        if value.contains(0x0A) {
            // Each line of a multi-line value, and every encoding of each line
            // (a PEM body line may be logged or encoded on its own).
            forEachTrimmedLine(value) { line in addEncodedForms(of: line) }
        }
    }

    // MARK: - Per base string

    private func addEncodedForms(of v: UnsafeRawBufferPointer) {
        guard v.count >= minimumLength else { return }
        register(v)
        addBase64Forms(of: v)
        addPercentForms(of: v)
        addJSONForms(of: v)
        addQuoteEscapedForms(of: v)
        addXMLForms(of: v)
    }

    /// Registers `form`, split into trimmed lines if it contains a newline.
    private func register(_ form: UnsafeRawBufferPointer) {
        if form.contains(0x0A) {
            forEachTrimmedLine(form) { line in
                if line.count >= minimumLength { emit(line) }
            }
        } else if form.count >= minimumLength {
            emit(form)
        }
    }

    private func registerScratch(_ buf: LockedArray<UInt8>) {
        register(buf.rawBuffer)
        buf.removeAll()
    }

    // MARK: - base64

    private static let std: StaticString = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    private static let url: StaticString = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

    /// For each alignment `o` in 0...2 of the value inside a longer payload,
    /// the characters of the encoding that depend only on value bytes
    /// ("middle"), plus, for a value that ends the payload, the same with the
    /// final partial character, unpadded and padded.
    private func addBase64Forms(of v: UnsafeRawBufferPointer) {
        let n = v.count
        let src = scratch2
        for o in 0..<3 {
            src.removeAll()
            for _ in 0..<o { src.append(0) }
            src.append(v)
            let totalBits = 8 * (o + n)
            let dropFront = (8 * o + 5) / 6          // chars touching the prefix bits
            let stableEnd = totalBits / 6             // chars made of value bits only
            let unpaddedEnd = (totalBits + 5) / 6     // plus the final partial char
            for alphabet in [FormGenerator.std, FormGenerator.url] {
                scratch.removeAll()
                base64(src.rawBuffer, alphabet: alphabet, into: scratch)  // padded
                let full = scratch.rawBuffer
                if stableEnd > dropFront {
                    register(UnsafeRawBufferPointer(rebasing: full[dropFront..<stableEnd]))
                }
                if unpaddedEnd > stableEnd {
                    register(UnsafeRawBufferPointer(rebasing: full[dropFront..<unpaddedEnd]))
                }
                if full.count > unpaddedEnd {
                    register(UnsafeRawBufferPointer(rebasing: full[dropFront..<full.count]))
                }
                scratch.removeAll()
            }
        }
        src.removeAll()
    }

    private func base64(_ input: UnsafeRawBufferPointer, alphabet: StaticString, into out: LockedArray<UInt8>) {
        let a = alphabet.utf8Start
        var i = 0
        let n = input.count
        while i + 3 <= n {
            let x = UInt32(input[i]) << 16 | UInt32(input[i + 1]) << 8 | UInt32(input[i + 2])
            out.append(a[Int(x >> 18 & 63)]); out.append(a[Int(x >> 12 & 63)])
            out.append(a[Int(x >> 6 & 63)]); out.append(a[Int(x & 63)])
            i += 3
        }
        let rest = n - i
        if rest == 1 {
            let x = UInt32(input[i]) << 16
            out.append(a[Int(x >> 18 & 63)]); out.append(a[Int(x >> 12 & 63)])
            out.append(UInt8(ascii: "=")); out.append(UInt8(ascii: "="))
        } else if rest == 2 {
            let x = UInt32(input[i]) << 16 | UInt32(input[i + 1]) << 8
            out.append(a[Int(x >> 18 & 63)]); out.append(a[Int(x >> 12 & 63)])
            out.append(a[Int(x >> 6 & 63)]); out.append(UInt8(ascii: "="))
        }
    }

    // MARK: - percent encoding

    private enum Keep { case unreserved, alphanumeric, uriComponent, queryValue, query, path, nothing }

    private static func isUnreserved(_ b: UInt8) -> Bool {
        switch b {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
             UInt8(ascii: "0")...UInt8(ascii: "9"),
             UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
            return true
        default: return false
        }
    }

    private static func kept(_ b: UInt8, _ keep: Keep) -> Bool {
        switch keep {
        case .nothing: return false
        case .unreserved: return isUnreserved(b)
        case .alphanumeric:  // Foundation's .alphanumerics (ASCII part)
            return isUnreserved(b) && !"-._~".utf8.contains(b)
        case .uriComponent:  // JavaScript encodeURIComponent
            return isUnreserved(b) || "!'()*".utf8.contains(b)
        case .queryValue:    // query characters less the separators & = + #
            return isUnreserved(b) || "!$'()*,;:@/?".utf8.contains(b)
        case .query:         // RFC 3986 query characters (Foundation's urlQueryAllowed)
            return isUnreserved(b) || "!$&'()*+,;=:@/?".utf8.contains(b)
        case .path:          // RFC 3986 path characters (Foundation's urlPathAllowed)
            return isUnreserved(b) || "!$&'()*+,;=:@/".utf8.contains(b)
        }
    }

    /// Which bytes stay literal: RFC 3986 unreserved only (strict),
    /// alphanumerics only, encodeURIComponent, a query value, a whole query,
    /// a path, or none (every byte escaped); upper and lower case hex; space
    /// as `%20` or `+`.
    private func addPercentForms(of v: UnsafeRawBufferPointer) {
        let upperHex: StaticString = "0123456789ABCDEF"
        let lowerHex: StaticString = "0123456789abcdef"
        for keep in [Keep.unreserved, .alphanumeric, .uriComponent, .queryValue, .query, .path, .nothing] {
            for hex in [upperHex, lowerHex] {
                for plus in [false, true] {
                    if plus && !v.contains(0x20) { continue }
                    let h = hex.utf8Start
                    for b in v {
                        if plus && b == 0x20 {
                            scratch.append(UInt8(ascii: "+"))
                        } else if FormGenerator.kept(b, keep) {
                            scratch.append(b)
                        } else {
                            scratch.append(UInt8(ascii: "%"))
                            scratch.append(h[Int(b >> 4)])
                            scratch.append(h[Int(b & 15)])
                        }
                    }
                    registerScratch(scratch)
                }
            }
        }
    }

    // MARK: - JSON string escaping

    private enum Control { case shortLower, shortUpper, allLower }

    /// JSON string contents: `\"`, `\\`, control characters as short escapes
    /// (`\n`, `\t`, ...) or `\u00XX`, `/` plain or as `\/`, non-ASCII raw or as
    /// `\uXXXX` (surrogate pairs, as Python's `ensure_ascii` does), and the
    /// default form escaped twice (JSON inside a JSON string).
    private func addJSONForms(of v: UnsafeRawBufferPointer) {
        let validUTF8 = isValidUTF8(v)
        for slash in [false, true] {
            for control in [Control.shortLower, .shortUpper, .allLower] {
                for asciiOnly in validUTF8 ? [false, true] : [false] {
                    jsonEscape(v, slash: slash, control: control, asciiOnly: asciiOnly, into: scratch)
                    registerScratch(scratch)
                }
            }
        }
        for (innerSlash, outerSlash) in [(false, false), (true, true), (true, false)] {
            jsonEscape(v, slash: innerSlash, control: .shortLower, asciiOnly: false, into: scratch2)
            jsonEscape(scratch2.rawBuffer, slash: outerSlash, control: .shortLower, asciiOnly: false, into: scratch)
            scratch2.removeAll()
            registerScratch(scratch)
        }
    }

    private func jsonEscape(_ v: UnsafeRawBufferPointer, slash: Bool, control: Control,
                            asciiOnly: Bool, into out: LockedArray<UInt8>) {
        let hex: StaticString = control == .shortUpper ? "0123456789ABCDEF" : "0123456789abcdef"
        func u(_ x: UInt32) {
            let h = hex.utf8Start
            out.append(UInt8(ascii: "\\")); out.append(UInt8(ascii: "u"))
            out.append(h[Int(x >> 12 & 15)]); out.append(h[Int(x >> 8 & 15)])
            out.append(h[Int(x >> 4 & 15)]); out.append(h[Int(x & 15)])
        }
        var i = 0
        let n = v.count
        while i < n {
            let b = v[i]
            switch b {
            case UInt8(ascii: "\""): out.append(ascii: "\\\"")
            case UInt8(ascii: "\\"): out.append(ascii: "\\\\")
            case UInt8(ascii: "/"): if slash { out.append(ascii: "\\/") } else { out.append(b) }
            case 0x08 where control != .allLower: out.append(ascii: "\\b")
            case 0x0C where control != .allLower: out.append(ascii: "\\f")
            case 0x0A where control != .allLower: out.append(ascii: "\\n")
            case 0x0D where control != .allLower: out.append(ascii: "\\r")
            case 0x09 where control != .allLower: out.append(ascii: "\\t")
            case 0..<0x20: u(UInt32(b))
            case 0x80...0xFF where asciiOnly:
                // Valid UTF-8 is guaranteed by the caller.
                let (scalar, len) = decodeUTF8(v, at: i)
                if scalar >= 0x10000 {
                    let s = scalar - 0x10000
                    u(0xD800 + (s >> 10)); u(0xDC00 + (s & 0x3FF))
                } else {
                    u(scalar)
                }
                i += len
                continue
            default: out.append(b)
            }
            i += 1
        }
    }

    private func isValidUTF8(_ v: UnsafeRawBufferPointer) -> Bool {
        SecretfsUTF8.isValid(v)
    }

    private func decodeUTF8(_ v: UnsafeRawBufferPointer, at i: Int) -> (UInt32, Int) {
        let b0 = UInt32(v[i])
        if b0 < 0xE0 { return ((b0 & 0x1F) << 6 | UInt32(v[i + 1]) & 0x3F, 2) }
        if b0 < 0xF0 {
            return ((b0 & 0x0F) << 12 | (UInt32(v[i + 1]) & 0x3F) << 6 | UInt32(v[i + 2]) & 0x3F, 3)
        }
        return ((b0 & 0x07) << 18 | (UInt32(v[i + 1]) & 0x3F) << 12
                | (UInt32(v[i + 2]) & 0x3F) << 6 | UInt32(v[i + 3]) & 0x3F, 4)
    }

    // MARK: - backslash-escaped quotes

    /// `"` as `\"`, `'` as `\'`, or both; with or without `\` doubled.
    private func addQuoteEscapedForms(of v: UnsafeRawBufferPointer) {
        guard v.contains(UInt8(ascii: "\"")) || v.contains(UInt8(ascii: "'")) || v.contains(UInt8(ascii: "\\"))
        else { return }
        for (dq, sq) in [(true, false), (false, true), (true, true)] {
            for doubleBackslash in [false, true] {
                for b in v {
                    if (b == UInt8(ascii: "\"") && dq) || (b == UInt8(ascii: "'") && sq)
                        || (b == UInt8(ascii: "\\") && doubleBackslash) {
                        scratch.append(UInt8(ascii: "\\"))
                    }
                    scratch.append(b)
                }
                registerScratch(scratch)
            }
        }
    }

    // MARK: - XML / HTML

    /// `&amp; &lt; &gt;` always; quotes left alone, or as `&quot;` with `'`
    /// as `&#39;` (Python html.escape), `&apos;` (XML), `&#x27;` (many HTML
    /// escapers); or `&#34;`/`&#39;` (Go's html/template).
    private func addXMLForms(of v: UnsafeRawBufferPointer) {
        guard v.contains(where: { $0 == UInt8(ascii: "&") || $0 == UInt8(ascii: "<") || $0 == UInt8(ascii: ">")
                                  || $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "'") })
        else { return }
        let quoteForms: [(StaticString?, StaticString?)] = [
            (nil, nil), ("&quot;", nil), ("&quot;", "&#39;"), ("&quot;", "&apos;"),
            ("&quot;", "&#x27;"), ("&#34;", "&#39;"),
        ]
        for (dq, sq) in quoteForms {
            for b in v {
                switch b {
                case UInt8(ascii: "&"): scratch.append(ascii: "&amp;")
                case UInt8(ascii: "<"): scratch.append(ascii: "&lt;")
                case UInt8(ascii: ">"): scratch.append(ascii: "&gt;")
                case UInt8(ascii: "\""): if let dq { scratch.append(ascii: dq) } else { scratch.append(b) }
                case UInt8(ascii: "'"): if let sq { scratch.append(ascii: sq) } else { scratch.append(b) }
                default: scratch.append(b)
                }
            }
            registerScratch(scratch)
        }
    }
}

/// Calls `body` with each line of `text`, trimmed of ASCII whitespace, skipping
/// empty lines.
func forEachTrimmedLine(_ text: UnsafeRawBufferPointer, _ body: (UnsafeRawBufferPointer) -> Void) {
    let isSpace = isASCIIWhitespace
    var start = 0
    let n = text.count
    while start <= n {
        var end = start
        while end < n && text[end] != 0x0A { end += 1 }
        var a = start, z = end
        while a < z && isSpace(text[a]) { a += 1 }
        while z > a && isSpace(text[z - 1]) { z -= 1 }
        if z > a { body(UnsafeRawBufferPointer(rebasing: text[a..<z])) }
        start = end + 1
    }
}

/// Space, tab, CR, LF, vertical tab, form feed.
func isASCIIWhitespace(_ b: UInt8) -> Bool {
    b == 0x20 || b == 0x09 || b == 0x0D || b == 0x0B || b == 0x0C || b == 0x0A
}
