import Foundation
import SecureMemory
import Testing
@testable import SecretfsInject

/// The bounds of DESIGN.md "Trust boundaries": every parser is depth-capped
/// and every count is limited before memory is committed, each with a
/// `.limit` problem that names the limit.
@Suite(.serialized) struct LimitTests {
    private func limitProblems(_ scan: InjectionScan) -> [String] {
        scan.problems.filter { $0.kind == .limit }.map(\.description)
    }

    @Test func documentSizeIsCheckedBeforeParsing() {
        let limits = InjectionLimits(maxDocumentBytes: 64)
        let text = "{\"a\": \"secrets.A\"" + String(repeating: " ", count: 60) + "}"
        let scan = Injector.scan(text, format: .config, limits: limits)
        #expect(scan.problems.map(\.description) == ["1:1: document: \(text.utf8.count) bytes, over the limit of 64 bytes"])
        #expect(scan.problems.first?.kind == .limit)
        #expect(scan.referencedNames.isEmpty, "nothing was parsed")
        // At the limit it is read.
        #expect(Injector.scan(String(text.dropLast(text.utf8.count - 64)), format: .expr, limits: limits).problems
            .allSatisfy { $0.kind != .limit })
        // The default is the daemon's largest request frame.
        let big = [UInt8](repeating: 0x20, count: (16 << 20) + 1)
        #expect(Injector.scan(big, format: .expr).problems.map(\.description)
                == ["1:1: document: 16777217 bytes, over the limit of 16777216 bytes"])
    }

    @Test func configNestingIsCappedWithoutRecursion() {
        // A million `[` used to overflow the stack of the recursive skipValue.
        let deep = "{\"a\": " + String(repeating: "[", count: 1_000_000) + "}"
        let scan = Injector.scan(deep, format: .config)
        #expect(limitProblems(scan) == [#"field "a" 1:518: config: nesting deeper than 512 levels"#])

        // 511 brackets inside the object are 512 levels: read to the end.
        func nested(_ n: Int) -> String {
            "{\"a\": " + String(repeating: "[", count: n) + String(repeating: "]", count: n)
                + ", \"b\": {\"x\": [1, {\"y\": null}]}, \"c\": \"secrets.C\"}"
        }
        let ok = Injector.scan(nested(511), format: .config)
        #expect(limitProblems(ok).isEmpty)
        #expect(ok.problems.map(\.message) == ["config: the value must be a string holding the expression source",
                                               "config: the value must be a string holding the expression source"])
        #expect(ok.referencedNames == ["C"], "the fields after the skipped values are read")
        #expect(limitProblems(Injector.scan(nested(512), format: .config)).count == 1)
        #expect(limitProblems(Injector.scan(nested(3), format: .config, limits: InjectionLimits(maxNestingDepth: 3)))
                == [#"field "a" 1:9: config: nesting deeper than 3 levels"#])
        // Objects count like arrays; malformed skipped values are still errors.
        #expect(limitProblems(Injector.scan("{\"a\": " + String(repeating: "{\"k\":", count: 100_000), format: .config)).count == 1)
        #expect(Injector.scan(#"{"a": [1, {"k" 2}]}"#, format: .config).problems.last?.description
                == #"1:16: config: expected ':'"#)
    }

    @Test func expressionNestingIsCapped() throws {
        let parens = Injector.scan(String(repeating: "(", count: 1_000_000) + "secrets.A", format: .expr)
        #expect(parens.problems.map(\.description) == ["1:513: expression: nesting deeper than 512 levels"])
        #expect(parens.problems.first?.kind == .limit)
        // Template substitutions nest too: `${` inside `${` inside ….
        let templates = Injector.scan(String(repeating: "`${", count: 600) + "1", format: .expr)
        #expect(templates.problems.map(\.description) == ["1:1537: expression: nesting deeper than 512 levels"])
        // 512 levels are fine, and the references inside are found.
        let ok = String(repeating: "[", count: 512) + "secrets.A" + String(repeating: "]", count: 512)
        #expect(Injector.scan(ok, format: .expr).problems.isEmpty)
        #expect(try rewriteExpr(ok, ["A": "v"]).get() == String(repeating: "[", count: 512) + "\"v\"" + String(repeating: "]", count: 512))
        // In a flow the problem has the field's context and file position.
        let flow = "a:\n  b: !expr '" + String(repeating: "{", count: 600) + "'\n"
        #expect(Injector.scan(flow, format: .flow).problems.map(\.description) == ["a.b 2:525: expression: nesting deeper than 512 levels"])
    }

    @Test func commentsAreMatchedToReferencesInLinearTime() throws {
        // Every reference carries a comment, and comments sit between them:
        // the old matching filtered every comment for every reference.
        let n = 30_000
        var source = ""
        for k in 0..<n { source += "secrets /*c\(k)*/ .A + /*x\(k)*/ " }
        source += "secrets // end\n.A"
        // Linear by construction, and checked as such (not timed): each
        // reference holds only the comment gaps between its own tokens, so
        // producing the output reads every comment once.
        let analysis = ExpressionAnalysis(Array(source.utf8))
        #expect(analysis.references.count == n + 1)
        #expect(analysis.references.allSatisfy { $0.commentGaps.count == 1 }, "one gap each: between `secrets` and `.A`")
        let gaps = analysis.references.flatMap(\.commentGaps)
        #expect(zip(gaps, gaps.dropFirst()).allSatisfy { $0.upperBound <= $1.lowerBound }, "no gap is read twice")
        let out = try rewriteExpr(source, ["A": "v"]).get()
        var expected = ""
        for k in 0..<n { expected += "\"v\" /*c\(k)*/ + /*x\(k)*/ " }
        expected += "\"v\" // end\n"
        #expect(out == expected)
    }

    @Test func flowNestingIsCapped() throws {
        // Flow style.
        let flowStyle = "a: " + String(repeating: "[", count: 600)
        #expect(Injector.scan(flowStyle, format: .flow).problems.map(\.description) == [
            "a" + String(repeating: "[0]", count: 511) + " 1:515: flow: nesting deeper than 512 levels",
        ])
        let closed = "a: " + String(repeating: "[", count: 600) + String(repeating: "]", count: 600) + "\n"
        #expect(limitProblems(Injector.scan(closed, format: .flow)).count == 1)
        // Far deeper, libyaml's own limit (1000 levels, counted as it reads
        // ahead) answers first: still one problem, no crash.
        let deeper = Injector.scan("a: " + String(repeating: "[", count: 1_000_000), format: .flow).problems
        #expect(deeper.count == 1 && deeper[0].message.hasPrefix("flow: YAML: Maximum nesting level reached"))
        // Block style, indented one more step per level.
        var block = ""
        for level in 0..<600 { block += String(repeating: " ", count: level) + "k:\n" }
        let scan = Injector.scan(block, format: .flow)
        #expect(scan.problems.count == 1)
        #expect(scan.problems.first?.kind == .limit)
        #expect(scan.problems.first?.description.hasSuffix(" 513:513: flow: nesting deeper than 512 levels") == true)
        // 512 levels are read, and an expression at the bottom is rewritten.
        let ok = String(repeating: "[", count: 511) + "{a: !expr secrets.A}" + String(repeating: "]", count: 511)
        #expect(Injector.scan(ok, format: .flow).problems.isEmpty)
        #expect(try rewrite(ok, .flow, ["A": Array("v".utf8)]).get().contains(#"{a: !expr "\"v\""}"#))
    }

    @Test func siteAndReferenceCountsAreLimited() {
        let flow = String(repeating: "- !expr 1\n", count: 100_001)
        #expect(limitProblems(Injector.scan(flow, format: .flow)) == ["[100000] 100001:9: flow: more than 100000 !expr expressions"])
        #expect(Injector.scan(String(repeating: "- !expr 1\n", count: 100_000), format: .flow).problems.isEmpty)

        let refs = String(repeating: "secrets.A+", count: 100_000) + "secrets.B"
        let scan = Injector.scan(refs, format: .expr)
        #expect(scan.problems.map(\.description) == ["1:1000001: expression: more than 100000 secret references"])
        #expect(Injector.scan(String(repeating: "secrets.A+", count: 99_999) + "secrets.B", format: .expr).problems.isEmpty)

        // The limits are the caller's; the count runs over the whole document.
        let small = InjectionLimits(maxSites: 3, maxReferences: 4)
        let config = #"{"a": "secrets.A", "b": "secrets.B + secrets.C", "c": "1", "d": "2"}"#
        #expect(Injector.scan(config, format: .config, limits: small).problems.map(\.description)
                == [#"field "d" 1:65: config: more than 3 fields"#])
        let config2 = #"{"a": "secrets.A", "b": "secrets.B + secrets.C", "c": "secrets.D + secrets.E"}"#
        #expect(Injector.scan(config2, format: .config, limits: small).problems.map(\.description)
                == [#"field "c" 1:68: config: more than 4 secret references"#])
        let yaml = "a: !expr secrets.A\nb:\n  c: [!expr secrets.B, !expr 'secrets.C +\n    secrets.D + secrets.E']\n"
        #expect(Injector.scan(yaml, format: .flow, limits: small).problems.map(\.description)
                == ["b.c[1] 4:17: flow: more than 4 secret references"])
    }

    @Test func problemsAreLimited() {
        let many = String(repeating: "secrets + ", count: 5_000) + "1"
        let scan = Injector.scan(many, format: .expr)
        #expect(scan.problems.count == 1_001)
        #expect(scan.problems.dropLast().allSatisfy { $0.kind == .notStatic })
        #expect(scan.problems.last?.description == "1:10001: expression: more than 1000 problems; the rest of the document was not read")
        // Document problems count too.
        let fields = "{" + (0..<30).map { "\"f\($0)\": 1" }.joined(separator: ", ") + "}"
        let config = Injector.scan(fields, format: .config, limits: InjectionLimits(maxProblems: 10))
        #expect(config.problems.count == 11)
        #expect(config.problems.last?.message == "config: more than 10 problems; the rest of the document was not read")
        // Missing secrets (phase 2, and from the names alone) are listed up to the limit too.
        let missing = Injector.scan(String(repeating: "secrets.GONE + ", count: 3_000) + "1", format: .expr)
        let listed = missing.missingSecretProblems(existing: [])
        #expect(listed.count == 1_001)
        #expect(listed.last?.description == "1:15001: expression: more than 1000 problems; the rest are not listed")
        do {
            let _: TestBuffer = try missing.rewrite { _ in nil }
            Issue.record("expected an error")
        } catch {
            #expect(error.problems.count == 1_001)
            #expect(error.problems.dropLast().allSatisfy { $0.kind == .missingSecret })
        }
    }

    @Test func deepFlowSitesShareTheirPath() throws {
        // 100,000 sites 500 levels down: each used to hold its own copy of
        // the whole path (and render it), over 1 GiB at this depth.
        let depth = 500
        let flow = String(repeating: "{level: ", count: depth) + "["
            + String(repeating: "!expr secrets.A, ", count: 99_999) + "!expr 'secrets[k]']" + String(repeating: "}", count: depth)
        let peak = try PeakMemory.measure {
            let scan = Injector.scan(flow, format: .flow)
            #expect(scan.referenceCount == 99_999)
            // The one problem still names the whole path.
            #expect(scan.problems.map(\.description) == [
                String(repeating: "level.", count: depth - 1) + "level[99999] 1:\(8 * depth + 1 + 17 * 99_999 + 8): secrets[k] cannot be resolved statically; hint: use secrets.NAME",
            ])
        }
        #expect(peak < 300 << 20, "the scan took \(peak >> 20) MiB at its peak")
    }

    /// Nested, so that it runs serialized with the other memory measurements.
    @Suite struct OutputSizeTests {
        @Test func aLargeOutputIsRefusedBeforeItIsAllocated() throws {
            // A 60 KB secret referenced 20,000 times: 1.2 GB of output.
            let source = Array(repeating: "secrets.BIG", count: 20_000).joined(separator: "+")
            let scan = Injector.scan(source, format: .expr)
            let big = TestBuffer([UInt8](repeating: 0x78, count: 60_000))
            let expected = 20_000 * 60_002 + 19_999
            #expect(try scan.outputSize(maximum: .max) { _ in big } == expected)
            var thrown: InjectionError?
            let peak = try PeakMemory.measure {
                do {
                    let _: TestBuffer = try scan.rewrite(maximum: 64 << 20) { _ in big }
                } catch let error as InjectionError {
                    thrown = error
                }
            }
            #expect(thrown?.problems.map(\.description) == ["1:1: output: \(expected) bytes, over the limit of 67108864 bytes"])
            #expect(thrown?.problems.first?.kind == .limit)
            #expect(peak < 200 << 20, "refusing took \(peak >> 20) MiB")
            // The default maximum is the scan's limit (64 MiB unless given).
            #expect(throws: InjectionError.self) { try scan.outputSize { _ in big } }
            let small = Injector.scan(source, format: .expr, limits: InjectionLimits(maxOutputBytes: 1 << 40))
            #expect(try small.outputSize { _ in big } == expected)
        }

        @Test func theSizeIsExactForEveryFormatAndOutput() throws {
            let cases: [(String, InjectionFormat)] = [
                (try String(contentsOf: fixturesDirectory.appendingPathComponent("demo-bot.flow.yaml"), encoding: .utf8), .flow),
                (try String(contentsOf: fixturesDirectory.appendingPathComponent("demo-bot.installation.json"), encoding: .utf8), .config),
                (FlowTests.handmade, .flow),
                ("secrets.Q + `${secrets.BT}` + secrets /* c */ .CTRL // x\n+ secrets['ODD'] + secrets.EMOJI", .expr),
                ("{\"a\": \"secrets.NL + secrets.LS\", \"b\": \"1\"}", .config),
                ("x: !expr '[secrets.Q, secrets.BS, secrets.BT, secrets.NL, secrets.LS, secrets.EMOJI, secrets.CTRL, secrets.ODD]'\n", .flow),
            ]
            let values = corpusValues.merging(["A": #"v"1"#]) { $1 }
            func lookup(_ name: String) -> TestBuffer? { TestBuffer(values[name] ?? "value of \(name)") }
            for (text, format) in cases {
                let scan = Injector.scan(text, format: format)
                #expect(scan.problems.isEmpty)
                let document: TestBuffer = try scan.rewrite(lookup)
                let bindings: TestBuffer = try scan.bindings(lookup)
                #expect(try scan.outputSize(.document, lookup) == document.count)
                #expect(try scan.outputSize(.bindings, lookup) == bindings.count)
                // At exactly its size it is produced; one byte less is refused.
                let exact: TestBuffer = try scan.rewrite(maximum: document.count, lookup)
                #expect(exact.bytes == document.bytes)
                #expect(throws: InjectionError.self) { let _: TestBuffer = try scan.rewrite(maximum: document.count - 1, lookup) }
                #expect(throws: InjectionError.self) { let _: TestBuffer = try scan.bindings(maximum: bindings.count - 1, lookup) }
            }
        }

        /// The one-pass form for a caller's own buffer: in the room when it
        /// fits, else placed at its exact size; the same bytes and the same
        /// limit either way.
        @Test func producingIntoARoomGivesTheSameOutputAndLimits() throws {
            let cases: [(String, InjectionFormat)] = [
                (try String(contentsOf: fixturesDirectory.appendingPathComponent("demo-bot.flow.yaml"), encoding: .utf8), .flow),
                (try String(contentsOf: fixturesDirectory.appendingPathComponent("demo-bot.installation.json"), encoding: .utf8), .config),
                ("secrets.Q + `${secrets.BT}` + secrets /* c */ .CTRL // x\n+ secrets['ODD'] + secrets.EMOJI", .expr),
            ]
            let values = corpusValues.merging(["A": #"v"1"#]) { $1 }
            func lookup(_ name: String) -> TestBuffer? { TestBuffer(values[name] ?? "value of \(name)") }
            for (text, format) in cases {
                let scan = Injector.scan(text, format: format)
                let given = scan.referencedNames.map(lookup)
                for output in InjectionOutput.allCases {
                    let expected: TestBuffer = output == .document ? try scan.rewrite(lookup) : try scan.bindings(lookup)
                    for roomSize in [0, 1, expected.count - 1, expected.count, expected.count + 100] {
                        let room = UnsafeMutableRawBufferPointer.allocate(byteCount: max(roomSize, 1), alignment: 1)
                        defer { room.deallocate() }
                        let view = UnsafeMutableRawBufferPointer(rebasing: room[0..<roomSize])
                        var placed: [UInt8]?
                        let result = try scan.produce(output, values: given, room: view) { size, fill in
                            let b = TestBuffer(capacity: size, count: size)
                            b.withUnsafeMutableBytes(fill)
                            placed = b.bytes
                        }
                        switch result {
                        case .inRoom(let count):
                            #expect(roomSize >= expected.count && placed == nil)
                            #expect(Array(view[0..<count]) == expected.bytes)
                        case .placed:
                            #expect(roomSize < expected.count)
                            #expect(placed == expected.bytes)
                        }
                        // One byte over the maximum is refused, in the room or not.
                        #expect(throws: InjectionError.self) {
                            _ = try scan.produce(output, maximum: expected.count - 1, values: given, room: view) { _, _ in
                                Issue.record("placed over the limit")
                            }
                        }
                    }
                }
            }
        }

        /// The one-shot form, a new locked buffer: values that fit the
        /// estimate are written in one pass into a buffer that is trimmed to
        /// them (its capacity is the estimate); values that escape to several
        /// times their size do not fit, and the output is measured and
        /// written at its exact size. The same bytes, and the same limit,
        /// either way.
        @Test func aNewBufferInOnePassOrAfterMeasuringGivesTheSameOutputAndLimits() throws {
            let texts: [(String, InjectionFormat)] = [
                (try String(contentsOf: fixturesDirectory.appendingPathComponent("demo-bot.flow.yaml"), encoding: .utf8), .flow),
                (try String(contentsOf: fixturesDirectory.appendingPathComponent("demo-bot.installation.json"), encoding: .utf8), .config),
                ("secrets.Q + `${secrets.BT}` + secrets /* c */ .CTRL // x\n+ secrets['ODD'] + secrets.EMOJI", .expr),
                ("x: !expr '[secrets.Q, secrets.BS, secrets.BT, secrets.NL, secrets.CTRL]'\ny: !expr \"secrets.NL + '\\\\\\\\' + \\\"q\\\"\"\n", .flow),
            ]
            // Plain values, the corpus's awkward ones, and control
            // characters that each become a six-byte \u escape.
            let valueSets: [(name: String, value: (String) -> String, fitsEstimate: Bool?)] = [
                ("plain", { "value-of-\($0)" }, true),
                ("corpus", { corpusValues[$0] ?? "value of \($0)" }, nil),
                ("controls", { _ in String(repeating: "\u{1}", count: 200) }, false),
            ]
            var seen = Set<Bool>()
            for (text, format) in texts {
                let scan = Injector.scan(text, format: format)
                #expect(scan.problems.isEmpty)
                for set in valueSets {
                    let given = scan.referencedNames.map { name in Array(set.value(name).utf8).withUnsafeBytes { SecureBytes(copying: $0) } }
                    func lookup(_ name: String) -> TestBuffer? { TestBuffer(set.value(name)) }
                    for output in InjectionOutput.allCases {
                        let expected: TestBuffer = output == .document ? try scan.rewrite(lookup) : try scan.bindings(lookup)
                        let out = try scan.produce(output, values: given)
                        #expect(out.withUnsafeBytes { Array($0) } == expected.bytes, "\(format) \(set.name) \(output)")
                        let onePass = out.capacity > out.count
                        if let fits = set.fitsEstimate { #expect(onePass == fits, "\(format) \(set.name) \(output)") }
                        seen.insert(onePass)
                        let exact = try scan.produce(output, maximum: expected.count, values: given)
                        #expect(exact.withUnsafeBytes { Array($0) } == expected.bytes)
                        #expect(throws: InjectionError.self) { _ = try scan.produce(output, maximum: expected.count - 1, values: given) }
                    }
                    // A missing value is the missing-secret problem, as in rewrite.
                    if !given.isEmpty {
                        #expect(throws: InjectionError.self) {
                            _ = try scan.produce(.document, values: [nil] + given.dropFirst().map { Optional($0) })
                        }
                    }
                }
            }
            #expect(seen == [true, false], "both paths taken")
        }

        /// A document that amplifies a large value is refused by measuring,
        /// in the room form too: past the room no value is written again
        /// (20,000 references to 60 KB would be 1.2 GB of work).
        @Test func anAmplifyingDocumentIsRefusedInTheRoomFormToo() throws {
            let scan = Injector.scan(Array(repeating: "secrets.BIG", count: 20_000).joined(separator: "+"), format: .expr)
            let big = TestBuffer(String(repeating: "v", count: 60_000))
            let room = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 1)
            defer { room.deallocate() }
            do {
                _ = try scan.produce(.document, maximum: 64 << 20, values: [big], room: room) { _, _ in
                    Issue.record("placed over the limit")
                }
                Issue.record("expected the limit")
            } catch {
                #expect(error.problems.map(\.kind) == [.limit])
                #expect(error.problems.first?.message.contains("over the limit") == true)
            }
        }

        @Test func outputSizeReportsTheSameProblemsAsRewrite() {
            let scan = Injector.scan("secrets.GONE + secrets[x]", format: .expr)
            #expect(throws: InjectionError.self) { try scan.outputSize { _ in TestBuffer("v") } }
            let missing = Injector.scan("secrets.GONE", format: .expr)
            do {
                _ = try missing.outputSize { (_: String) -> TestBuffer? in nil }
                Issue.record("expected an error")
            } catch {
                #expect(error.problems.map(\.description) == ["1:1: secret GONE does not exist in the project"])
            }
        }
    }
}

/// The growth of the process's peak resident size while `body` runs (the
/// kernel's high-water mark, reset first). Other tests running at the same
/// time can only add to it.
enum PeakMemory {
    static func measure(_ body: () throws -> Void) throws -> Int {
        try "5".write(toFile: "/proc/self/clear_refs", atomically: false, encoding: .utf8)
        let base = try status("VmRSS:")
        try body()
        return try status("VmHWM:") - base
    }

    private static func status(_ field: String) throws -> Int {
        let text = try String(contentsOfFile: "/proc/self/status", encoding: .utf8)
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix(field) }),
              let kib = Int(line.split(separator: " ")[1]) else {
            throw CocoaError(.fileReadCorruptFile)
        }
        return kib << 10
    }
}
