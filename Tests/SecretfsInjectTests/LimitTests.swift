import Foundation
import Testing
@testable import SecretfsInject

/// The bounds of DESIGN.md "Trust boundaries": every parser is depth-capped
/// and every count is limited before memory is committed, each with a
/// `.limit` problem that names the limit.
@Suite struct LimitTests {
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
        let clock = ContinuousClock()
        var out = ""
        let elapsed = try clock.measure {
            out = try rewriteExpr(source, ["A": "v"]).get()
        }
        #expect(elapsed < .seconds(10), "took \(elapsed)")
        var expected = ""
        for k in 0..<n { expected += "\"v\" /*c\(k)*/ + /*x\(k)*/ " }
        expected += "\"v\" // end\n"
        #expect(out == expected)
    }
}

