import CYaml

/// Reads a flow definition with libyaml's event API and plans an in-place
/// rewrite: each scalar tagged `!expr` that holds a reference is replaced,
/// from its first property (anchor or tag) to its last content character, by
/// `[&anchor ]!expr "…"`, a YAML double-quoted scalar. Every other byte of the
/// file (comments, quoting, order, literals, untouched expressions) is copied.
struct FlowReader {
    enum Component {
        case key(String)
        case index(Int)
    }
    enum Frame {
        case mapping(expectKey: Bool, key: String)
        case sequence(next: Int)
    }

    let src: [UInt8]
    var frames: [(frame: Frame, component: Component?)] = []
    var blockNames: [Int: String] = [:]
    var pendingSites: [(site: ExpressionSite, path: [Component])] = []
    var problems: [InjectionProblem] = []
    var charCursor = (char: 0, byte: 0)

    static func read(into doc: inout DocumentPlan) {
        var r = FlowReader(src: doc.source)
        r.run(into: &doc)
    }

    init(src: [UInt8]) {
        self.src = src
    }

    /// Byte offset of libyaml's character index (which counts a BOM as one
    /// character, and CRLF as two).
    mutating func byteOffset(ofChar index: Int) -> Int {
        if index < charCursor.char { charCursor = (0, 0) }
        while charCursor.char < index && charCursor.byte < src.count {
            charCursor.byte += decodeUTF8(src, charCursor.byte).1
            charCursor.char += 1
        }
        return charCursor.byte
    }

    static func string(_ p: UnsafeMutablePointer<yaml_char_t>?) -> String? {
        guard let p else { return nil }
        return String(cString: UnsafeRawPointer(p).assumingMemoryBound(to: CChar.self))
    }

    /// The component this node sits at in its parent, and whether it is a key.
    func placement() -> (Component?, isKey: Bool) {
        guard let top = frames.last else { return (nil, false) }
        switch top.frame {
        case .mapping(let expectKey, let key): return expectKey ? (nil, true) : (.key(key), false)
        case .sequence(let next): return (.index(next), false)
        }
    }

    var currentPath: [Component] { frames.compactMap(\.component) }

    mutating func finishNode(keyText: String?) {
        guard let top = frames.popLast() else { return }
        switch top.frame {
        case .mapping(let expectKey, let key):
            frames.append((expectKey ? .mapping(expectKey: false, key: keyText ?? "?")
                                     : .mapping(expectKey: true, key: key), top.component))
        case .sequence(let next):
            frames.append((.sequence(next: next + 1), top.component))
        }
    }

    func render(_ path: [Component]) -> String {
        var out = ""
        for (n, c) in path.enumerated() {
            switch c {
            case .index(let i):
                out += "[\(i)]"
                if n == 1, case .key("blocks") = path[0], let name = blockNames[i] {
                    out += " \(displayQuoted(name, limit: 80))"
                    if n + 1 < path.count { out += " " }
                    continue
                }
            case .key(let k):
                let simple = !k.isEmpty && k.unicodeScalars.allSatisfy {
                    ($0.value < 0x80 && ($0.properties.isAlphabetic || ("0"..."9").contains($0)))
                        || $0 == "_" || $0 == "$" || $0 == "-"
                }
                let text = simple ? k : "[\(displayQuoted(k, limit: 80))]"
                if !out.isEmpty, !out.hasSuffix(" "), simple { out += "." }
                out += text
            }
        }
        return out
    }

    mutating func run(into doc: inout DocumentPlan) {
        var parser = yaml_parser_t()
        guard yaml_parser_initialize(&parser) != 0 else {
            doc.documentProblem(line: 1, column: 1, "flow: cannot initialise the YAML parser")
            return
        }
        defer { yaml_parser_delete(&parser) }
        var copied = 0
        var pieces: [Piece] = []

        let dummy: [UInt8] = [0]
        let input = src.isEmpty ? dummy : src
        input.withUnsafeBufferPointer { buf in
            yaml_parser_set_input_string(&parser, buf.baseAddress, src.count)
            yaml_parser_set_encoding(&parser, YAML_UTF8_ENCODING)
            var event = yaml_event_t()
            while true {
                guard yaml_parser_parse(&parser, &event) != 0 else {
                    let mark = parser.problem_mark
                    var message = parser.problem.map { String(cString: $0) } ?? "YAML error"
                    if let ctx = parser.context.map({ String(cString: $0) }) { message += " " + ctx }
                    problems.append(InjectionProblem(kind: .document, context: "", line: Int(mark.line) + 1,
                                                     column: Int(mark.column) + 1, message: "flow: YAML: \(message)"))
                    break
                }
                defer { yaml_event_delete(&event) }
                let type = event.type
                if type == YAML_STREAM_END_EVENT { break }
                switch type {
                case YAML_SCALAR_EVENT:
                    let (component, isKey) = placement()
                    let data = event.data.scalar
                    let value = Array(UnsafeBufferPointer(start: data.value, count: Int(data.length)))
                    let tag = FlowReader.string(data.tag)
                    let path = currentPath + (component.map { [$0] } ?? [])
                    if path.count == 3, case .key("blocks") = path[0], case .index(let b) = path[1],
                       case .key("name") = path[2] {
                        blockNames[b] = String(decoding: value, as: UTF8.self)
                    }
                    if tag == "!expr" {
                        let start = byteOffset(ofChar: Int(event.start_mark.index))
                        var end = byteOffset(ofChar: Int(event.end_mark.index))
                        if isKey {
                            problems.append(InjectionProblem(
                                kind: .document, context: render(currentPath),
                                line: Int(event.start_mark.line) + 1, column: Int(event.start_mark.column) + 1,
                                message: "flow: !expr on a mapping key is not supported"))
                        } else {
                            let style = data.style
                            let isBlock = style == YAML_LITERAL_SCALAR_STYLE || style == YAML_FOLDED_SCALAR_STYLE
                            var w = RawWalker(src: src, pos: start, line: Int(event.start_mark.line) + 1,
                                              column: Int(event.start_mark.column) + 1, yamlBreaks: true)
                            // Skip the node's properties (anchor, tag) and the space after them.
                            while w.pos < end {
                                let b = w.currentByte
                                if b == 0x20 || b == 0x09 || w.isBreak {
                                    w.advance()
                                } else if b == 0x26 || b == 0x21 {
                                    while w.pos < end && !(w.currentByte == 0x20 || w.currentByte == 0x09 || w.isBreak) { w.advance() }
                                } else {
                                    break
                                }
                            }
                            var headerComment: [UInt8] = []
                            let rawStyle: RawSpan.Style
                            if style == YAML_SINGLE_QUOTED_SCALAR_STYLE {
                                rawStyle = .singleQuoted; w.advance()
                            } else if style == YAML_DOUBLE_QUOTED_SCALAR_STYLE {
                                rawStyle = .doubleQuoted; w.advance()
                            } else if isBlock {
                                rawStyle = .block
                                var hash: Int?
                                var prevSpace = false
                                while w.pos < end && !w.isBreak {
                                    if w.currentByte == 0x23 && prevSpace && hash == nil { hash = w.pos }
                                    prevSpace = w.currentByte == 0x20 || w.currentByte == 0x09
                                    w.advance()
                                }
                                if let hash { headerComment = Array(src[hash..<w.pos]) }
                                w.advance()
                                // Only the content lines are replaced: trailing breaks and
                                // the next line's indentation stay where they are.
                                while end > w.pos, [0x20, 0x09, 0x0A, 0x0D].contains(src[end - 1]) { end -= 1 }
                            } else {
                                rawStyle = .plain
                            }
                            let span = RawSpan(contentStart: w.pos, end: end, line: w.line, column: w.column, style: rawStyle)
                            let analysis = ExpressionAnalysis(value, budget: doc.analysisBudget)
                            pendingSites.append((ExpressionSite(analysis: analysis, context: "", span: span), path))
                            if !analysis.references.isEmpty && analysis.problems.isEmpty && start >= copied {
                                pieces.append(.raw(copied..<start))
                                var prefix: [UInt8] = []
                                if let anchor = FlowReader.string(data.anchor) {
                                    prefix += [0x26] + Array(anchor.utf8) + [0x20]
                                }
                                prefix += Array("!expr \"".utf8)
                                pieces.append(.text(prefix))
                                pieces.append(.expression(pendingSites.count - 1, .yamlDoubleQuoted))
                                pieces.append(.text([0x22] + (headerComment.isEmpty ? [] : [0x20] + headerComment)))
                                copied = end
                            }
                        }
                    }
                    finishNode(keyText: isKey ? String(decoding: value, as: UTF8.self) : nil)
                case YAML_SEQUENCE_START_EVENT, YAML_MAPPING_START_EVENT:
                    let (component, _) = placement()
                    let tag = type == YAML_SEQUENCE_START_EVENT
                        ? FlowReader.string(event.data.sequence_start.tag)
                        : FlowReader.string(event.data.mapping_start.tag)
                    if tag == "!expr" {
                        problems.append(InjectionProblem(
                            kind: .document, context: render(currentPath + (component.map { [$0] } ?? [])),
                            line: Int(event.start_mark.line) + 1, column: Int(event.start_mark.column) + 1,
                            message: "flow: !expr must tag a scalar (the expression source), not a \(type == YAML_SEQUENCE_START_EVENT ? "sequence" : "mapping")"))
                    }
                    frames.append((type == YAML_SEQUENCE_START_EVENT ? .sequence(next: 0) : .mapping(expectKey: true, key: ""),
                                   component))
                case YAML_SEQUENCE_END_EVENT, YAML_MAPPING_END_EVENT:
                    frames.removeLast()
                    finishNode(keyText: nil)
                case YAML_ALIAS_EVENT:
                    finishNode(keyText: "*" + (FlowReader.string(event.data.alias.anchor) ?? ""))
                default:
                    break
                }
            }
        }
        pieces.append(.raw(copied..<src.count))
        let base = doc.sites.count
        for (site, path) in pendingSites {
            var s = site
            s.context = render(path)
            doc.sites.append(s)
        }
        doc.pieces = pieces.map {
            if case .expression(let n, let outer) = $0 { return .expression(base + n, outer) }
            return $0
        }
        doc.documentProblems += problems
    }
}
