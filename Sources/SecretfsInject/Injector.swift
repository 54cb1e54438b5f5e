import SecureMemory

/// The three input formats of `secretfs resolve`.
public enum InjectionFormat: String, Sendable, CaseIterable {
    /// A flow definition (YAML); only scalars tagged `!expr` are expressions.
    case flow
    /// An app installation config: a JSON object of field name -> expression source.
    case config
    /// One JavaScript expression, the whole input.
    case expr

    /// The format implied by a file name: `.yaml`/`.yml` flow, `.json` config.
    public static func forPath(_ path: String) -> InjectionFormat? {
        let lower = path.lowercased()
        if lower.hasSuffix(".yaml") || lower.hasSuffix(".yml") { return .flow }
        if lower.hasSuffix(".json") { return .config }
        return nil
    }
}

/// Entry point. Two phases, so that only referenced secrets are ever fetched:
///
/// ```swift
/// let scan = Injector.scan(bytes, format: .flow)          // phase 1: no secrets needed
/// guard scan.problems.isEmpty else { report(scan.problems) }
/// let values = fetch(scan.referencedNames)                 // least privilege
/// let out: SecureBytes = try scan.rewrite { values[$0] }   // phase 2
/// ```
public enum Injector {
    /// Phase 1: parses the document, tokenizes every expression in it and
    /// finds the secret references. Never needs a value and never fails: what
    /// is wrong is listed in `problems`, including any of `limits` that the
    /// document goes past (a `.limit` problem; the document size is checked
    /// before anything is parsed).
    ///
    /// `yamlOnSecondThread`: whether a flow's YAML is parsed on a second
    /// thread while this one handles its events (YAMLEvents); nil decides
    /// by the document's size. A one-shot command has the machine to itself
    /// and gains the time; a server answering many clients passes false
    /// (the second thread's work would be taken from the other clients).
    public static func scan(_ source: [UInt8], format: InjectionFormat,
                            limits: InjectionLimits = .default,
                            yamlOnSecondThread: Bool? = nil) -> InjectionScan {
        var doc = DocumentPlan(source: source, format: format, limits: limits)
        if source.count > limits.maxDocumentBytes {
            doc.stopReading(line: 1, column: 1,
                            "document: \(source.count) bytes, over the limit of \(limits.maxDocumentBytes) bytes")
            return InjectionScan(format: format, plan: doc)
        }
        switch format {
        case .expr:
            doc.addWholeExpression()
        case .config:
            ConfigReader.read(into: &doc)
        case .flow:
            FlowReader.read(into: &doc, secondThread: yamlOnSecondThread)
        }
        return InjectionScan(format: format, plan: doc)
    }

    /// Convenience: `scan` of UTF-8 text.
    public static func scan(_ source: String, format: InjectionFormat,
                            limits: InjectionLimits = .default) -> InjectionScan {
        scan(Array(source.utf8), format: format, limits: limits)
    }
}

/// The result of phase 1, and phase 2 on it.
public struct InjectionScan: Sendable {
    public let format: InjectionFormat
    /// Every distinct secret name statically referenced, sorted. Fetch only these.
    public let referencedNames: [String]
    /// Problems found without any value (syntax, non-static use, invalid
    /// names, document errors), in document order. Non-empty means `rewrite`
    /// and `bindings` will throw them.
    public let problems: [InjectionProblem]
    /// Number of references (occurrences) in the document.
    public let referenceCount: Int
    let plan: DocumentPlan
    /// For each site, the index in `referencedNames` of each reference's
    /// name: phase 2 finds values by position instead of hashing names at
    /// every reference (a scan may be reused for many rewrites).
    let nameIndices: [[Int]]

    init(format: InjectionFormat, plan: DocumentPlan) {
        self.format = format
        self.plan = plan
        // Read in place: a `for site in plan.sites` copies every site (and
        // retains its arrays) just to look at it. Each reference's name is
        // hashed once: numbered in the order first seen, then renumbered in
        // sorted order (hashing every name into a set, then again to find
        // its sorted index, was most of this).
        var firstSeen: [String] = []
        var indexOf: [String: Int] = [:]
        var count = 0
        var withProblems: [Int] = []
        var indices: [[Int]] = []
        plan.sites.withUnsafeBufferPointer { sites in
            for i in sites.indices { count += sites[i].analysis.references.count }
            indexOf.reserveCapacity(count)
            indices.reserveCapacity(sites.count)
            for i in sites.indices {
                var site: [Int] = []
                sites[i].analysis.references.withUnsafeBufferPointer { refs in
                    site.reserveCapacity(refs.count)
                    for j in refs.indices {
                        let k = indexOf[refs[j].name, default: firstSeen.count]
                        if k == firstSeen.count {
                            firstSeen.append(refs[j].name)
                            indexOf[refs[j].name] = k
                        }
                        site.append(k)
                    }
                }
                indices.append(site)
                if !sites[i].analysis.problems.isEmpty { withProblems.append(i) }
            }
        }
        let order = firstSeen.indices.sorted { firstSeen[$0] < firstSeen[$1] }
        var rank = [Int](repeating: 0, count: order.count)
        for (sorted, k) in order.enumerated() { rank[k] = sorted }
        for i in indices.indices { for j in indices[i].indices { indices[i][j] = rank[indices[i][j]] } }
        referencedNames = order.map { firstSeen[$0] }
        referenceCount = count
        nameIndices = indices
        var list = plan.documentProblems
        for i in withProblems {
            let site = plan.sites[i]
            let context = plan.context(site.context)
            var locate = SiteLocator(file: plan.source, site: site)
            for p in site.analysis.problems {
                let (line, column) = locate.position(p.position)
                list.append(InjectionProblem(kind: p.kind, context: context, line: line, column: column, message: p.message))
            }
        }
        list.sort { ($0.line, $0.column) < ($1.line, $1.column) }
        if let stop = plan.stop { list.append(stop) }
        problems = list
    }

    /// Phase 2: the document with every reference replaced by a JavaScript
    /// string literal of its value, assembled in one buffer of `B` (use
    /// `SecureBytes`) of exactly the output length.
    ///
    /// `lookup` is called once per name in `referencedNames` and returns the
    /// value, or nil if the project has no such secret. Throws every problem at
    /// once: the phase-1 problems if any (then `lookup` is not called), else
    /// every missing secret at each reference and every value that is not
    /// valid UTF-8. Messages name secrets, never values.
    ///
    /// The output's size is computed first (see `outputSize`); over
    /// `maximum` (by default the scan's `InjectionLimits.maxOutputBytes`) it
    /// is a `.limit` problem and nothing is allocated.
    ///
    /// Output: `flow` is the input file byte for byte except each `!expr`
    /// scalar that holds a reference, which becomes `!expr "…"` (a YAML
    /// double-quoted scalar, anchor kept); `config` is a JSON object with the
    /// same fields in the same order, each value the rewritten expression;
    /// `expr` is the rewritten expression.
    public func rewrite<B: SecretBuffer>(maximum: Int? = nil, _ lookup: (String) -> B?) throws(InjectionError) -> B {
        try produce(.document, maximum: maximum, lookup)
    }

    /// Phase 2, for runtimes that bind `secrets` themselves: a JSON object of
    /// just the referenced names (sorted) and their values as JSON strings,
    /// `{"A":"…","B":"…"}` plus a newline, assembled in `B`. Same errors and
    /// size limit as `rewrite`.
    public func bindings<B: SecretBuffer>(maximum: Int? = nil, _ lookup: (String) -> B?) throws(InjectionError) -> B {
        try produce(.bindings, maximum: maximum, lookup)
    }

    /// The exact number of bytes `rewrite` (`.document`) or `bindings`
    /// (`.bindings`) would return for these values, computed without building
    /// the output or copying a value: the size of each value's literal is
    /// measured once per secret, then counted at each reference. Same errors
    /// as `rewrite`, including the `.limit` problem when the size is over
    /// `maximum` (by default the scan's `InjectionLimits.maxOutputBytes`;
    /// pass `Int.max` for the size whatever it is).
    ///
    /// A daemon that must refuse replies over its frame limit calls this (or
    /// passes its limit as `maximum` to `rewrite`) before anything is allocated.
    public func outputSize<B: SecretBuffer>(_ output: InjectionOutput = .document, maximum: Int? = nil,
                                            _ lookup: (String) -> B?) throws(InjectionError) -> Int {
        let values = try resolve(try lookUpAll(lookup))
        return try measure(output, values, maximum: maximum ?? plan.limits.maxOutputBytes)
    }

    private func produce<B: SecretBuffer>(_ output: InjectionOutput, maximum: Int?,
                                          _ lookup: (String) -> B?) throws(InjectionError) -> B {
        let values = try resolve(try lookUpAll(lookup))
        let size = try measure(output, values, maximum: maximum ?? plan.limits.maxOutputBytes)
        let b = B(capacity: size, count: size)
        b.withUnsafeMutableBytes { write(output, values, exactly: $0) }
        return b
    }

    /// `lookup` once per referenced name, in order; not at all when phase 1
    /// found problems (they are thrown).
    private func lookUpAll<B: SecretBuffer>(_ lookup: (String) -> B?) throws(InjectionError) -> [B?] {
        guard problems.isEmpty else { throw InjectionError(problems: problems) }
        return referencedNames.map(lookup)
    }

    /// Phase 2 into a new locked buffer, for a caller that has none of its
    /// own (the one-shot `resolve`), in one pass when it can: the output is
    /// written while it is counted into a buffer of an estimated size (the
    /// document, each reference's value with its two quotes, and an eighth
    /// more for escapes), which is then trimmed to it. Measuring first, the
    /// way `rewrite` does, walked the whole document a second time (a third
    /// of phase 2's instructions). An output that does
    /// not fit the estimate (values full of characters to escape) is
    /// measured and written again into a buffer of exactly its size, and the
    /// first buffer, which may hold part of a value, is wiped. Same errors as
    /// `rewrite`; nothing over `maximum` is returned.
    public func produce(_ output: InjectionOutput, maximum: Int? = nil,
                        values given: [SecureBytes?]) throws(InjectionError) -> SecureBytes {
        let limit = maximum ?? plan.limits.maxOutputBytes
        // At least a byte (SecureBytes allocates one anyway), at most one
        // over the limit: an output that reaches the end of the room is
        // measured, so no bigger room is ever needed to refuse it.
        let room = SecureBytes(capacity: max(1, min(estimatedSize(output, given), limit &+ 1)))
        var placed: SecureBytes?
        let placement = room.withUnsafeMutableCapacity { raw in
            Result { () throws(InjectionError) in
                try produceInRoom(output, maximum: limit, values: given, room: raw) { size, fill in
                    let b = SecureBytes(capacity: size, count: size)
                    b.withUnsafeMutableBytes(fill)
                    placed = b
                }
            }
        }
        switch placement {
        case .success(.inRoom(let count)):
            room.setCount(count)
            return room
        case .success(.placed):
            room.wipe()
            return placed!
        case .failure(let error):
            room.wipe()
            throw error
        }
    }

    /// What `produce(_:maximum:values:)` expects the output to need: its
    /// text, and each value once per reference with its quotes, plus slack.
    /// A guess either way (escapes make it longer, the references' own text
    /// shorter); saturates rather than overflows.
    private func estimatedSize(_ output: InjectionOutput, _ values: [SecureBytes?]) -> Int {
        var n = 0
        func add(_ k: Int) { n = n &+ k < n ? .max : n &+ k }
        switch output {
        case .document:
            add(plan.source.count)
            for site in nameIndices { for k in site { add((values[k]?.count ?? 0) + 2) } }
        case .bindings:
            add(3)
            for (k, name) in referencedNames.enumerated() { add(name.utf8.count + (values[k]?.count ?? 0) + 6) }
        }
        add(n / 8 + 64)
        return n
    }

    /// Where `produce(_:maximum:values:room:orElse:)` put the output.
    public enum Placement: Sendable, Equatable {
        /// In the room given, its first `count` bytes.
        case inRoom(count: Int)
        /// Where `place` said (it did not fit the room).
        case placed
    }

    /// Phase 2 in one pass when the output fits `room`, memory the caller
    /// already holds (the resolver daemon's reply buffer): the output is
    /// written there while it is counted, and `.inRoom` says how much. When
    /// it does not fit, the pass stops writing values, and the output is
    /// measured and checked against `maximum` (the errors of `rewrite`), and
    /// `place(size, fill)` finds exactly `size` bytes of locked memory and
    /// calls `fill` on them (or does not call it, when it has none to offer).
    ///
    /// Either way `room` may hold part of the output afterwards (values):
    /// the caller wipes it. Nothing is allocated before the size is checked,
    /// as `room` is allocated already.
    ///
    /// Specialised for `SecureBytes` here: called from the daemon's module,
    /// the generic version ran on runtime metadata lookups (about a tenth of
    /// the resolver daemon's user time).
    @_specialize(exported: true, where B == SecureBytes)
    public func produce<B: SecretBuffer>(_ output: InjectionOutput, maximum: Int? = nil, values given: [B?],
                                         room: UnsafeMutableRawBufferPointer,
                                         orElse place: (_ size: Int, _ fill: (UnsafeMutableRawBufferPointer) -> Void) -> Void)
        throws(InjectionError) -> Placement {
        try produceInRoom(output, maximum: maximum, values: given, room: room, orElse: place)
    }

    // The body of `produce(_:maximum:values:room:orElse:)`, which this
    // module calls here: a call to the exported specialisation from inside
    // the module named a symbol the release build does not emit.
    private func produceInRoom<B: SecretBuffer>(_ output: InjectionOutput, maximum: Int?, values given: [B?],
                                                room: UnsafeMutableRawBufferPointer,
                                                orElse place: (_ size: Int, _ fill: (UnsafeMutableRawBufferPointer) -> Void) -> Void)
        throws(InjectionError) -> Placement {
        let values = try resolve(given)
        let limit = maximum ?? plan.limits.maxOutputBytes
        // First pass into the room. Once past it, values are no longer
        // written (nor counted): a document of many references to a large
        // value would otherwise cost its whole output here (a document can
        // amplify its size many times over), and `measure` counts that in
        // time proportional to the document and the values instead.
        var first = SpillingSink(room)
        switch output {
        case .document:
            emitDocument(into: &first) { k, outer, s in
                if s.spilled { return }
                values[k].withUnsafeBytes { s.putJSStringLiteral($0, outer: outer) }
            }
        case .bindings:
            emitBindings(into: &first) { k, s in
                if s.spilled { return }
                values[k].withUnsafeBytes { raw in forEachScalar(raw) { s.putJSONEscaped($0) } }
            }
        }
        if !first.spilled {
            guard first.count <= limit else { throw Self.overLimit(first.count, limit) }
            return .inRoom(count: first.count)
        }
        let size = try measure(output, values, maximum: limit)
        place(size) { raw in
            precondition(raw.count == size, "the output buffer must have exactly the measured size")
            write(output, values, exactly: raw)
        }
        return .placed
    }

    /// The output into `raw`, which has exactly its measured size.
    private func write<B: SecretBuffer>(_ output: InjectionOutput, _ values: [B], exactly raw: UnsafeMutableRawBufferPointer) {
        var w = WritingSink(raw)
        write(output, values, into: &w)
        precondition(w.offset == raw.count, "injector length computation was wrong")
    }

    /// The output, into `sink`.
    private func write<B: SecretBuffer, S: ByteSink>(_ output: InjectionOutput, _ values: [B], into sink: inout S) {
        switch output {
        case .document:
            emitDocument(into: &sink) { k, outer, s in values[k].withUnsafeBytes { s.putJSStringLiteral($0, outer: outer) } }
        case .bindings:
            emitBindings(into: &sink) { k, s in values[k].withUnsafeBytes { raw in forEachScalar(raw) { s.putJSONEscaped($0) } } }
        }
    }

    private static func overLimit(_ count: Int, _ maximum: Int) -> InjectionError {
        InjectionError(problems: [InjectionProblem(
            kind: .limit, context: "", line: 1, column: 1,
            message: "output: \(count) bytes, over the limit of \(maximum) bytes")])
    }

    /// The output size: every byte of text counted, every value measured
    /// once per escaping it is written with. `values` is indexed as
    /// `referencedNames`.
    private func measure<B: SecretBuffer>(_ output: InjectionOutput, _ values: [B],
                                          maximum: Int) throws(InjectionError) -> Int {
        var counter = CountingSink()
        switch output {
        case .document:
            // A value's literal size per escaping (-1: not measured yet); a
            // document has one or two escapings, so a short list.
            var sizes: [(outer: OuterEscaping, sizes: [Int])] = []
            emitDocument(into: &counter) { k, outer, s in
                let o: Int
                if let i = sizes.firstIndex(where: { $0.outer == outer }) {
                    o = i
                } else {
                    sizes.append((outer, [Int](repeating: -1, count: values.count)))
                    o = sizes.count - 1
                }
                if sizes[o].sizes[k] >= 0 { s.add(sizes[o].sizes[k]); return }
                var c = CountingSink()
                values[k].withUnsafeBytes { c.putJSStringLiteral($0, outer: outer) }
                sizes[o].sizes[k] = c.count
                s.add(c.count)
            }
        case .bindings:
            emitBindings(into: &counter) { k, s in
                var c = CountingSink()
                values[k].withUnsafeBytes { raw in forEachScalar(raw) { c.putJSONEscaped($0) } }
                s.add(c.count)
            }
        }
        guard counter.count <= maximum else { throw Self.overLimit(counter.count, maximum) }
        return counter.count
    }

    /// A missing-secret problem at each reference to a name not in
    /// `existing`. Lets a caller report missing secrets together with the
    /// phase-1 problems, knowing only the project's names (no values).
    /// At most `InjectionLimits.maxProblems` of them, then one `.limit`
    /// problem saying the rest are not listed.
    public func missingSecretProblems(existing: Set<String>) -> [InjectionProblem] {
        plan.referenceProblems(max: plan.limits.maxProblems) { r in
            existing.contains(r.name) ? nil : (.missingSecret, "secret \(r.name) does not exist in the project", r.name)
        }
    }

    /// The values (given and returned in the order of `referencedNames`);
    /// every missing or non-UTF-8 one is an error.
    private func resolve<B: SecretBuffer>(_ given: [B?]) throws(InjectionError) -> [B] {
        guard problems.isEmpty else { throw InjectionError(problems: problems) }
        precondition(given.count == referencedNames.count, "one value (or nil) per referenced name")
        var values: [B] = []
        values.reserveCapacity(referencedNames.count)
        var missing = Set<String>()
        var notUTF8 = Set<String>()
        for (name, value) in zip(referencedNames, given) {
            if let v = value {
                if v.isValidUTF8Value { values.append(v) } else { notUTF8.insert(name) }
            } else {
                missing.insert(name)
            }
        }
        guard !missing.isEmpty || !notUTF8.isEmpty else { return values }
        var reportedUTF8 = Set<String>()
        throw InjectionError(problems: plan.referenceProblems(max: plan.limits.maxProblems) { r in
            if missing.contains(r.name) {
                return (.missingSecret, "secret \(r.name) does not exist in the project", r.name)
            }
            if notUTF8.contains(r.name), reportedUTF8.insert(r.name).inserted {
                return (.invalidUTF8Value, "secret \(r.name) is not valid UTF-8 and cannot become a JavaScript string", r.name)
            }
            return nil
        })
    }

    /// The document; `literal(k, outer, &sink)` writes the JavaScript
    /// string literal of the value of `referencedNames[k]` through `outer`.
    private func emitDocument<S: ByteSink>(into sink: inout S, literal: (Int, OuterEscaping, inout S) -> Void) {
        // Sites through a borrowed buffer and a pointer: `plan.sites[index]
        // .analysis` copied the whole analysis (a retain and a release of
        // each of its arrays) for every site of every pass.
        plan.source.withUnsafeBytes { source in
            plan.sites.withUnsafeBufferPointer { sites in
                for piece in plan.pieces {
                    switch piece {
                    case .raw(let range):
                        sink.put(run: UnsafeRawBufferPointer(rebasing: source[range]))
                    case .text(let bytes):
                        sink.put(bytes: bytes)
                    case .expression(let index, let outer):
                        let site = sites.baseAddress! + index
                        nameIndices[index].withUnsafeBufferPointer { indices in
                            ExpressionAnalysis.emit(source: site.pointee.analysis.source,
                                                    references: site.pointee.analysis.references,
                                                    into: &sink, outer: outer) { n, s in literal(indices[n], outer, &s) }
                        }
                    }
                }
            }
        }
    }

    /// The bindings object; `value(k, &sink)` writes the JSON string
    /// content of the value of `referencedNames[k]`.
    private func emitBindings<S: ByteSink>(into sink: inout S, value: (Int, inout S) -> Void) {
        sink.put(0x7B)
        for (k, name) in referencedNames.enumerated() {
            if k > 0 { sink.put(0x2C) }
            sink.put(bytes: jsonQuoted(name))
            sink.put(0x3A)
            sink.put(0x22)
            value(k, &sink)
            sink.put(0x22)
        }
        sink.put(0x7D)
        sink.put(0x0A)
    }
}

/// What phase 2 produces (see `InjectionScan.outputSize`).
public enum InjectionOutput: String, Sendable, CaseIterable {
    /// `InjectionScan.rewrite`: the document with values in place.
    case document
    /// `InjectionScan.bindings`: `{"NAME":"value",…}`.
    case bindings
}
