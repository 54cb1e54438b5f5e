import CYAML

/// Reads a flow definition with libyaml's event API and plans an in-place
/// rewrite: each scalar tagged `!expr` that holds a reference is replaced,
/// from its first property (anchor or tag) to its last content character, by
/// `[&anchor ]!expr "…"`, a YAML double-quoted scalar. Every other byte of the
/// file (comments, quoting, order, literals, untouched expressions) is copied.
///
/// The walk is a loop over events with an explicit stack of open collections,
/// at most `maxNestingDepth` deep. A site's path is a node of `doc.paths`,
/// made only for sites that have something to rewrite or report, and shared
/// with every other site under the same collections.
///
/// Refused, because a value would land where nothing evaluates it (a mapping
/// key, a block name, anything the platform shows): `!expr` on or inside a
/// mapping key, and an alias of an anchored node that holds a rewritten
/// `!expr` (libyaml's aliases copy the node as it is written, value and all).
struct FlowReader {
    typealias Component = FlowPaths.Component

    enum Kind {
        case mapping(expectKey: Bool)
        case sequence(next: Int)
    }

    struct Frame {
        var kind: Kind
        /// A mapping's current key: the text of the last key read.
        var key = ""
        /// This collection's place in its parent (nil for the document's
        /// root and for a collection used as a key).
        var component: Component?
        /// Its node in `doc.paths`, once something below needed one.
        var node: Int?
        var anchor: String?
        var anchorMark = (line: 0, column: 0)
        /// Inside a mapping key (a collection used as a key).
        var inKey: Bool
        /// Some `!expr` below it is rewritten.
        var holdsRewrite = false
    }

    let src: [UInt8]
    var doc: DocumentPlan
    var frames: [Frame] = []
    /// Anchors whose node holds a rewritten `!expr`, and where they were set.
    var rewrittenAnchors: [String: (line: Int, column: Int)] = [:]
    var pieces: [Piece] = []
    /// Bytes of the input already planned into `pieces`.
    var copied = 0
    var charCursor = (char: 0, byte: 0)

    static let space: [UInt8] = [0x20]
    static let exprTag = Array("!expr".utf8)
    static let spaceQuote = Array(" \"".utf8)
    static let quote: [UInt8] = [0x22]

    static func read(into doc: inout DocumentPlan, secondThread: Bool? = nil) {
        var r = FlowReader(src: doc.source, doc: doc)
        r.run(secondThread: secondThread)
        doc = r.doc
    }

    init(src: [UInt8], doc: DocumentPlan) {
        self.src = src
        self.doc = doc
    }

    /// Byte offset of libyaml's character index (which counts a BOM as one
    /// character, and CRLF as two). Indexes are asked in increasing order.
    mutating func byteOffset(ofChar index: Int) -> Int {
        if index < charCursor.char { charCursor = (0, 0) }
        var (char, byte) = charCursor
        // Every byte of the file passes here once: ASCII is one character
        // of one byte without decoding.
        src.withUnsafeBufferPointer { b in
            let raw = UnsafeRawBufferPointer(b)
            while char < index && byte < b.count {
                // Eight ASCII bytes at a time while they fit.
                if index - char >= 8 && b.count - byte >= 8
                    && raw.loadUnaligned(fromByteOffset: byte, as: UInt64.self) & 0x8080_8080_8080_8080 == 0 {
                    byte += 8
                    char += 8
                    continue
                }
                byte += b[byte] < 0x80 ? 1 : decodeUTF8(src, byte).1
                char += 1
            }
        }
        charCursor = (char, byte)
        return byte
    }

    static func string(_ p: UnsafeMutablePointer<yaml_char_t>?) -> String? {
        guard let p else { return nil }
        return String(cString: UnsafeRawPointer(p).assumingMemoryBound(to: CChar.self))
    }

    /// Whether a tag is `!expr` (`string(p) == "!expr"`, without making the String).
    static func isExprTag(_ p: UnsafeMutablePointer<yaml_char_t>?) -> Bool {
        guard let p else { return false }
        return p[0] == 0x21 && p[1] == 0x65 && p[2] == 0x78 && p[3] == 0x70 && p[4] == 0x72 && p[5] == 0
    }

    /// The component this node sits at in its parent, and whether it is a key.
    /// (Static, over the frames alone: as a method called from the mutating
    /// event handlers, the release build copied the whole reader, 272 bytes,
    /// for every event.)
    static func placement(_ frames: [Frame]) -> (Component?, isKey: Bool) {
        guard let top = frames.last else { return (nil, false) }
        switch top.kind {
        case .mapping(let expectKey): return expectKey ? (nil, true) : (.key(top.key), false)
        case .sequence(let next): return (.index(next), false)
        }
    }

    mutating func finishNode(keyText: String?) {
        guard let top = frames.last else { return }
        switch top.kind {
        case .mapping(let expectKey):
            frames[frames.count - 1].kind = .mapping(expectKey: !expectKey)
            if expectKey { frames[frames.count - 1].key = keyText ?? "?" }
        case .sequence(let next):
            frames[frames.count - 1].kind = .sequence(next: next + 1)
        }
    }

    /// The node of the innermost open collection, making the nodes still
    /// missing along the stack (each frame gets one at most once).
    mutating func collectionNode() -> Int {
        var k = frames.count - 1
        while k >= 0 && frames[k].node == nil { k -= 1 }
        var node = k >= 0 ? frames[k].node! : FlowPaths.root
        for j in (k + 1)..<frames.count {
            if let c = frames[j].component { node = doc.paths.add(c, under: node) }
            frames[j].node = node
        }
        return node
    }

    /// The node of a child of the innermost collection at `component`.
    mutating func node(at component: Component?) -> Int {
        let parent = collectionNode()
        guard let component else { return parent }
        return doc.paths.add(component, under: parent)
    }

    /// The rendered path of a child at `component`, for a message.
    mutating func context(at component: Component?) -> String {
        let n = node(at: component)   // first: it may add nodes to `doc.paths`
        return doc.paths.render(n)
    }

    /// Whether the scalar about to be read is `blocks[b].name` (static, as
    /// `placement`).
    static func blockNameIndex(_ frames: [Frame], _ component: Component?) -> Int? {
        guard frames.count == 3, frames[0].component == nil, frames[1].component == .key("blocks"),
              case .index(let b)? = frames[2].component, component == .key("name") else { return nil }
        return b
    }

    /// `secondThread`: where libyaml parses (YAMLEvents; nil: by the size).
    mutating func run(secondThread: Bool? = nil) {
        let failure = src.withUnsafeBufferPointer { buf in
            YAMLEvents.read(buf, secondThread: secondThread) { event in
                if event.type == YAML_STREAM_END_EVENT { return false }
                handle(&event)
                return !doc.stopped
            }
        }
        if let failure {
            doc.documentProblem(line: failure.line, column: failure.column, "flow: YAML: \(failure.message)")
        }
        pieces.append(.raw(copied..<src.count))
        doc.pieces = pieces
    }

    mutating func handle(_ event: inout yaml_event_t) {
        let line = Int(event.start_mark.line) + 1
        let column = Int(event.start_mark.column) + 1
        switch event.type {
        case YAML_SCALAR_EVENT:
            scalar(&event)
        case YAML_SEQUENCE_START_EVENT, YAML_MAPPING_START_EVENT:
            let isSequence = event.type == YAML_SEQUENCE_START_EVENT
            let (component, isKey) = Self.placement(frames)
            guard frames.count < doc.limits.maxNestingDepth else {
                let place = context(at: component)
                doc.stopReading(line: line, column: column, "flow: nesting deeper than \(doc.limits.maxNestingDepth) levels",
                                context: place)
                return
            }
            let tag = isSequence ? FlowReader.string(event.data.sequence_start.tag) : FlowReader.string(event.data.mapping_start.tag)
            let anchor = isSequence ? FlowReader.string(event.data.sequence_start.anchor) : FlowReader.string(event.data.mapping_start.anchor)
            if tag == "!expr" {
                let place = context(at: component)
                doc.documentProblem(line: line, column: column,
                                    "flow: !expr must tag a scalar (the expression source), not a \(isSequence ? "sequence" : "mapping")",
                                    context: place)
            }
            frames.append(Frame(kind: isSequence ? .sequence(next: 0) : .mapping(expectKey: true), component: component,
                                anchor: anchor, anchorMark: (line, column), inKey: isKey || (frames.last?.inKey ?? false)))
        case YAML_SEQUENCE_END_EVENT, YAML_MAPPING_END_EVENT:
            guard let f = frames.popLast() else { return }
            if let anchor = f.anchor { rewrittenAnchors[anchor] = f.holdsRewrite ? f.anchorMark : nil }
            if f.holdsRewrite, !frames.isEmpty { frames[frames.count - 1].holdsRewrite = true }
            finishNode(keyText: nil)
        case YAML_ALIAS_EVENT:
            let name = FlowReader.string(event.data.alias.anchor) ?? ""
            if let mark = rewrittenAnchors[name] {
                let place = context(at: Self.placement(frames).0)
                doc.documentProblem(line: line, column: column,
                                    "flow: *\(name) is an alias of an !expr that references secrets (&\(name) at \(mark.line):\(mark.column)); write the expression again instead of aliasing it",
                                    context: place)
            }
            finishNode(keyText: "*" + name)
        default:
            break
        }
    }

    mutating func scalar(_ event: inout yaml_event_t) {
        let line = Int(event.start_mark.line) + 1
        let column = Int(event.start_mark.column) + 1
        let (component, isKey) = Self.placement(frames)
        let data = event.data.scalar
        let isExpr = FlowReader.isExprTag(data.tag)
        let anchor = FlowReader.string(data.anchor)
        let blockIndex = isKey ? nil : Self.blockNameIndex(frames, component)
        // Only keys, block names and expressions need the value itself, and
        // only an expression keeps its bytes (libyaml's copy lives until the
        // event is deleted).
        let bytes = UnsafeBufferPointer(start: data.value, count: Int(data.length))
        let value = isExpr ? Array(bytes) : []
        if let blockIndex { doc.paths.blockNames[blockIndex] = String(decoding: bytes, as: UTF8.self) }
        var rewritten = false
        if isExpr {
            if isKey || (frames.last?.inKey ?? false) {
                let n = collectionNode()
                let place = doc.paths.render(n)
                doc.documentProblem(line: line, column: column,
                                    isKey ? "flow: !expr on a mapping key is not supported"
                                          : "flow: !expr inside a mapping key is not supported",
                                    context: place)
            } else {
                rewritten = expression(&event, value: value, component: component)
            }
        }
        if let anchor { rewrittenAnchors[anchor] = rewritten ? (line, column) : nil }
        if rewritten, !frames.isEmpty { frames[frames.count - 1].holdsRewrite = true }
        finishNode(keyText: isKey ? String(decoding: bytes, as: UTF8.self) : nil)
    }

    /// An `!expr` scalar in value position. Returns whether it holds a
    /// reference (so it is rewritten, when the document has no problem).
    mutating func expression(_ event: inout yaml_event_t, value: [UInt8], component: Component?) -> Bool {
        let data = event.data.scalar
        let start = byteOffset(ofChar: Int(event.start_mark.index))
        var end = byteOffset(ofChar: Int(event.end_mark.index))
        let style = data.style
        let isBlock = style == YAML_LITERAL_SCALAR_STYLE || style == YAML_FOLDED_SCALAR_STYLE
        var w = RawWalker(src: src, pos: start, line: Int(event.start_mark.line) + 1,
                          column: Int(event.start_mark.column) + 1, yamlBreaks: true)
        // Skip the node's properties (anchor, tag), keeping where they are,
        // and the space and comments after them.
        var anchorText: Range<Int>?
        var tagText: Range<Int>?
        while w.pos < end {
            let b = w.currentByte
            if b == 0x20 || b == 0x09 || w.isBreak {
                w.advance()
            } else if b == 0x23 {
                while w.pos < end && !w.isBreak { w.advance() }
            } else if b == 0x26 || b == 0x21 {
                let from = w.pos
                while w.pos < end && !(w.currentByte == 0x20 || w.currentByte == 0x09 || w.isBreak) { w.advance() }
                if b == 0x26 { anchorText = from..<w.pos } else { tagText = from..<w.pos }
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
            // the next line's indentation stay where they are. Breaks are
            // libyaml's: LF, CR, and NEL, U+2028, U+2029 (found by the flow
            // fuzzer: a block scalar ended by U+2028 lost that line break).
            while end > w.pos {
                if [0x20, 0x09, 0x0A, 0x0D].contains(src[end - 1]) {
                    end -= 1
                } else if end - 2 >= w.pos, src[end - 2] == 0xC2, src[end - 1] == 0x85 {
                    end -= 2
                } else if end - 3 >= w.pos, src[end - 3] == 0xE2, src[end - 2] == 0x80, src[end - 1] == 0xA8 || src[end - 1] == 0xA9 {
                    end -= 3
                } else {
                    break
                }
            }
        } else {
            rawStyle = .plain
        }
        let span = RawSpan(contentStart: w.pos, end: end, line: w.line, column: w.column, style: rawStyle)

        let analysis: ExpressionAnalysis
        switch doc.analyse(value) {
        case .analysed(let a):
            analysis = a
        case .overLimit(let message, let partial):
            let node = node(at: component)
            doc.stopReading(at: partial.map { ExpressionSite(analysis: $0, context: .path(node), span: span) },
                            message, context: .path(node), line: span.line, column: span.column)
            return false
        }
        // A site with nothing to rewrite or report is not kept.
        guard !analysis.references.isEmpty || !analysis.problems.isEmpty else { return false }
        let site = ExpressionSite(analysis: analysis, context: .path(node(at: component)), span: span)
        doc.sites.append(site)
        guard !analysis.references.isEmpty else { return false }
        if analysis.problems.isEmpty && start >= copied {
            pieces.append(.raw(copied..<start))
            // The anchor and tag as written: under a `%TAG` directive a
            // plain `!expr` could name another tag than `!<!expr>` did.
            // (Spans of the file and shared constants: no array per site.)
            if let anchorText { pieces.append(.raw(anchorText)); pieces.append(.text(Self.space)) }
            pieces.append(tagText.map { .raw($0) } ?? .text(Self.exprTag))
            pieces.append(.text(Self.spaceQuote))
            pieces.append(.expression(doc.sites.count - 1, .yamlDoubleQuoted))
            pieces.append(.text(headerComment.isEmpty ? Self.quote : [0x22, 0x20] + headerComment))
            copied = end
        }
        return true
    }
}
