// Shared by the SecretfsInject harnesses: a plain heap buffer for values and
// output (the harnesses do not need locked memory), the values every name
// resolves to, and the phase-2 checks all three formats share.

import SecretfsInject

final class FuzzBuffer: SecretBuffer {
    let storage: UnsafeMutableRawBufferPointer
    let count: Int

    init(capacity: Int, count: Int) {
        storage = .allocate(byteCount: max(capacity, 1), alignment: 1)
        storage.initializeMemory(as: UInt8.self, repeating: 0)
        self.count = count
    }

    convenience init(_ bytes: [UInt8]) {
        self.init(capacity: bytes.count, count: bytes.count)
        for (i, b) in bytes.enumerated() { storage[i] = b }
    }

    deinit { storage.deallocate() }

    func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeRawBufferPointer(rebasing: storage[0..<count]))
    }

    func withUnsafeMutableBytes<R>(_ body: (UnsafeMutableRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeMutableRawBufferPointer(rebasing: storage[0..<count]))
    }

    var bytes: [UInt8] { withUnsafeBytes { Array($0) } }
}

/// Appears in every value, so a message that shows a value is caught.
let valueMark = "V§MARK"

/// Values chosen to break escaping (quotes, backslashes, line terminators,
/// template syntax, comment syntax, controls, noncharacters, non-BMP).
let awkwardValues: [[UInt8]] = [
    "plain", #""dq" 'sq' \ \\n"#, "line1\nline2\r\nline3\r", "a\u{2028}b\u{2029}c", "`t` ${x} ${ `${y}` }",
    "\u{0}0\u{1}\u{8}\u{B}\u{C}\u{1B}\u{7F}\u{85}\u{9F}", "\u{FEFF}\u{FFFE}\u{FFFF}", "🔑 𝄞 é e\u{301}",
    "*/ // /* -->", "</script><!--", "", "use strict", "$& $1 $$", "!expr *a &a : # - ? [ ] { } ,",
].map { Array(($0 + valueMark).utf8) } + [[]]

/// The value of `name`: names starting with `M` are missing, with `X` not
/// valid UTF-8; the others get an awkward value picked by the name.
func value(for name: String) -> FuzzBuffer? {
    if name.hasPrefix("M") { return nil }
    if name.hasPrefix("X") { return FuzzBuffer([0x41, 0xFF, 0x42]) }
    let pick = name.utf8.reduce(0) { ($0 &* 31 &+ Int($1)) & 0xFFFF } % awkwardValues.count
    return FuzzBuffer(awkwardValues[pick])
}

func require(_ condition: Bool, _ message: @autoclosure () -> String) {
    if !condition { fatalError("invariant broken: \(message())") }
}

/// The rewrite of one expression with `value(for:)`, or nil if it fails.
func rewriteExpression(_ source: [UInt8]) -> [UInt8]? {
    let out: FuzzBuffer? = try? Injector.scan(source, format: .expr).rewrite(maximum: .max, value(for:))
    return out?.bytes
}

/// Phase 2 with every check that holds for any document: `outputSize`
/// agrees with what `rewrite` and `bindings` produce, on success and on
/// failure; a maximum one byte short is refused with one `.limit` problem;
/// no message shows a value. Returns the rewritten document.
func phaseTwo(_ source: [UInt8], _ scan: InjectionScan) -> [UInt8]? {
    let sourceHasMark = String(decoding: source, as: UTF8.self).contains(valueMark)
    func noValueIn(_ error: InjectionError) {
        require(sourceHasMark || !error.description.contains(valueMark), "a message shows a value: \(error)")
    }
    var result: [UInt8]?
    for output in InjectionOutput.allCases {
        var size: Int?
        var produced: FuzzBuffer?
        var sizeError: InjectionError?
        var produceError: InjectionError?
        do { size = try scan.outputSize(output, maximum: .max, value(for:)) } catch { sizeError = error }
        do {
            produced = try output == .document ? scan.rewrite(maximum: .max, value(for:)) : scan.bindings(maximum: .max, value(for:))
        } catch {
            produceError = error
        }
        require(size == produced?.count, "outputSize \(String(describing: size)) but \(output) has \(String(describing: produced?.count)) bytes")
        require(sizeError?.description == produceError?.description, "outputSize and \(output) disagree on errors")
        if let e = produceError {
            noValueIn(e)
            require(!e.problems.isEmpty, "an error without problems")
        }
        if let size, size > 0 {
            do {
                let _: FuzzBuffer = try output == .document ? scan.rewrite(maximum: size - 1, value(for:))
                                                           : scan.bindings(maximum: size - 1, value(for:))
                require(false, "a maximum one byte short was not refused")
            } catch {
                require(error.problems.count == 1 && error.problems[0].kind == .limit, "short maximum: \(error)")
            }
        }
        if output == .document { result = produced?.bytes }
    }
    return result
}

/// Tiny limits: every limit path runs, and what is listed stays within them.
func underTinyLimits(_ source: [UInt8], _ format: InjectionFormat) {
    let limits = InjectionLimits(maxDocumentBytes: 4096, maxNestingDepth: 6, maxSites: 3, maxReferences: 4,
                                 maxProblems: 3, maxOutputBytes: 256)
    let scan = Injector.scan(source, format: format, limits: limits)
    require(scan.problems.count <= limits.maxProblems + 1, "\(scan.problems.count) problems listed")
    require(scan.referenceCount <= limits.maxReferences, "\(scan.referenceCount) references kept")
    require(scan.missingSecretProblems(existing: []).count <= limits.maxProblems + 1, "missing secrets not capped")
    _ = phaseTwo(source, scan)
}
