import Foundation
import Testing
import Yams
@testable import SecretfsInject

private func fixture(_ name: String) throws -> String {
    try String(contentsOf: fixturesDirectory.appendingPathComponent(name), encoding: .utf8)
}

@Suite struct FlowTests {
    @Test func flowWithoutReferencesIsByteIdentical() throws {
        let text = try fixture("sample-endpoint.flow.yaml")
        let scan = Injector.scan(text, format: .flow)
        #expect(scan.problems.isEmpty)
        #expect(scan.referencedNames.isEmpty)
        let out: TestBuffer = try scan.rewrite { _ in nil }
        #expect(out.bytes == Array(text.utf8))
    }

    @Test func demoBotRoundTrip() throws {
        let text = try fixture("demo-bot.flow.yaml")
        let scan = Injector.scan(text, format: .flow)
        #expect(scan.problems.isEmpty)
        #expect(scan.referencedNames == ["ANTHROPIC_API_KEY", "API_TOKEN", "DEMO_BOT_SLACK_BOT_TOKEN", "DEMO_BOT_SLACK_SIGNING_SECRET"])
        let out: TestBuffer = try scan.rewrite { name in corpusValues[name].map { TestBuffer($0) } }
        let outText = out.string

        // Same structure; `!expr` tags kept; literals unchanged; each expression
        // equal to the expected rewrite of the original.
        let before = try #require(try Yams.compose(yaml: text))
        let after = try #require(try Yams.compose(yaml: outText))
        var expressions = 0
        func same(_ a: Node, _ b: Node, _ path: String) throws {
            switch (a, b) {
            case (.scalar(let x), .scalar(let y)):
                #expect(x.tag.rawValue == y.tag.rawValue, "tag at \(path)")
                if x.tag.rawValue == "!expr" {
                    expressions += 1
                    let expected = try rewriteExpr(x.string, corpusValues).get()
                    #expect(y.string == expected, "expression at \(path)")
                    if x.string == expected { #expect(x.style == y.style, "untouched expression keeps its style at \(path)") }
                } else {
                    #expect(x.string == y.string && x.style == y.style, "literal at \(path)")
                }
            case (.mapping(let x), .mapping(let y)):
                #expect(Array(x.keys) == Array(y.keys), "keys at \(path)")
                for ((k, v), (_, w)) in zip(x, y) { try same(v, w, path + "." + (k.string ?? "?")) }
            case (.sequence(let x), .sequence(let y)):
                #expect(x.count == y.count)
                for (n, (v, w)) in zip(x, y).enumerated() { try same(v, w, path + "[\(n)]") }
            default:
                Issue.record("node kind differs at \(path)")
            }
        }
        try same(before, after, "")
        #expect(expressions == 6)

        // Every line outside the rewritten expressions is byte for byte the same,
        // in the same order.
        let all = text.split(separator: "\n", omittingEmptySubsequences: false)
        let headers = all.firstIndex { $0.contains("headers: !expr |") }!
        let body = all.firstIndex { $0.contains("body: !expr") }!
        let kept = all.enumerated()
            .filter { !(headers..<body).contains($0.offset) }.map(\.element)
            .filter { !$0.contains("secrets.") || $0.contains("description:") || $0.contains("Secrets are referenced") }
        #expect(kept.count == all.count - 9)
        var outLines = outText.split(separator: "\n", omittingEmptySubsequences: false)[...]
        for line in kept {
            guard let k = outLines.firstIndex(of: line) else {
                Issue.record("line lost: \(line)")
                break
            }
            outLines = outLines[(k + 1)...]
        }
        // The untouched expression keeps its original quoting.
        #expect(outText.contains("url: !expr '`https://api.anthropic.com/v1/messages`'"))
        #expect(outText.contains("      botToken: !expr \"\\\"xoxb-123-456-abc\\\"\"\n"))
    }

    static let handmade = #"""
    # top comment
    appInstallations:
      bot:
        config:
          token: !expr secrets.A   # trailing comment
          literal: "secrets.A"     # not an expression
    blocks:
      - name: First
        inputs:
          default:
            config:
              a: !expr 'secrets.A + ''x'''
              b: !expr "secrets.A + \"y\""
              c: &anc !expr |  # header comment
                `${secrets.A}`

              d: !expr
                secrets.A +
                1
              e: {k: !expr secrets.A, l: plain}
              g: !expr '`untouched`'
              h: !expr >-
                secrets.A
                + "z"
              ü: !expr secrets.A # é
      - name: Second
        note: secrets.A

    """#

    static let handmadeExpected = #"""
    # top comment
    appInstallations:
      bot:
        config:
          token: !expr "\"v\\\"1\""   # trailing comment
          literal: "secrets.A"     # not an expression
    blocks:
      - name: First
        inputs:
          default:
            config:
              a: !expr "\"v\\\"1\" + 'x'"
              b: !expr "\"v\\\"1\" + \"y\""
              c: &anc !expr "`${\"v\\\"1\"}`\n" # header comment

              d: !expr "\"v\\\"1\" + 1"
              e: {k: !expr "\"v\\\"1\"", l: plain}
              g: !expr '`untouched`'
              h: !expr "\"v\\\"1\" + \"z\""
              ü: !expr "\"v\\\"1\"" # é
      - name: Second
        note: secrets.A

    """#

    @Test func handmadeFlowRewritesOnlyExpressionScalars() throws {
        let scan = Injector.scan(Self.handmade, format: .flow)
        #expect(scan.problems.isEmpty)
        let out: TestBuffer = try scan.rewrite { $0 == "A" ? TestBuffer(#"v"1"#) : nil }
        #expect(out.string == Self.handmadeExpected)
        // libyaml agrees on what we wrote.
        let node = try #require(try Yams.compose(yaml: out.string))
        let config = try #require(node["blocks"]?[0]?["inputs"]?["default"]?["config"])
        #expect(config["c"]?.scalar?.string == "`${\"v\\\"1\"}`\n")
        #expect(config["c"]?.tag.rawValue == "!expr")
        #expect(config["h"]?.scalar?.string == #""v\"1" + "z""#)
    }

    @Test func lineEndingsBOMAndMultibyteText() throws {
        let cases: [(String, String)] = [
            ("a: !expr secrets.A\r\nb: 1\r\n", "a: !expr \"\\\"v\\\"\"\r\nb: 1\r\n"),
            ("\u{FEFF}a: !expr secrets.A\n", "\u{FEFF}a: !expr \"\\\"v\\\"\"\n"),
            ("é🔑: [!expr 'secrets.A + \"é\"', x]\n", "é🔑: [!expr \"\\\"v\\\" + \\\"é\\\"\", x]\n"),
            // Starts a statement and a line break follows: parenthesized (see ExpressionAnalysis).
            ("a: !expr |\r\n  secrets.A\r\n  + 1\r\nb: 2\r\n", "a: !expr \"(\\\"v\\\")\\n+ 1\\n\"\r\nb: 2\r\n"),
            // libyaml's other line breaks end a block scalar too, and stay (found by the flow fuzzer).
            ("a: !expr >-\n  secrets.A\u{2028}b: 2\n", "a: !expr \"\\\"v\\\"\"\u{2028}b: 2\n"),
            ("a: !expr |\n  secrets.A\u{85}\u{2029}b: 2\n", "a: !expr \"\\\"v\\\"\\n\"\u{85}\u{2029}b: 2\n"),
        ]
        for (input, expected) in cases {
            let out: TestBuffer = try Injector.scan(input, format: .flow).rewrite { _ in TestBuffer("v") }
            #expect(out.string == expected)
            // The same keys, in the same order, as libyaml reads them.
            #expect(try Yams.compose(yaml: out.string)?.mapping.map { Array($0.keys) }
                    == Yams.compose(yaml: input)?.mapping.map { Array($0.keys) })
        }
    }

    @Test func awkwardValuesSurviveYAML() throws {
        let flow = "x: !expr '[secrets.Q, secrets.BS, secrets.BT, secrets.NL, secrets.LS, secrets.EMOJI, secrets.CTRL, secrets.ODD]'\n"
        let out: TestBuffer = try Injector.scan(flow, format: .flow).rewrite { corpusValues[$0].map { TestBuffer($0) } }
        let node = try #require(try Yams.compose(yaml: out.string))
        let expr = try #require(node["x"]?.scalar?.string)
        let expected = try rewriteExpr("[secrets.Q, secrets.BS, secrets.BT, secrets.NL, secrets.LS, secrets.EMOJI, secrets.CTRL, secrets.ODD]", corpusValues).get()
        #expect(expr == expected)
        #expect(!out.string.dropLast().contains("\n"), "the replacement stays on one line")
    }

    @Test func flowErrorsNameBlockFieldAndFilePosition() throws {
        var text = try fixture("demo-bot.flow.yaml")
        text = text.replacingOccurrences(of: #""x-api-key": secrets.ANTHROPIC_API_KEY"#, with: #""x-api-key": secrets[key]"#)
        text = text.replacingOccurrences(of: "!expr '`https://api.example.com/data?token=${secrets.API_TOKEN}`'",
                                         with: "!expr '`https://api.example.com/data?token=${secrets}`'")
        text = text.replacingOccurrences(of: "botToken: !expr secrets.DEMO_BOT_SLACK_BOT_TOKEN",
                                         with: "botToken: !expr \"secrets.DEMO_BOT_SLACK_BOT_TOKEN + \\\"\"")
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        func lineOf(_ needle: String) -> Int { lines.firstIndex { $0.contains(needle) }! + 1 }
        func colOf(_ needle: String, _ inLine: String) -> Int {
            let l = lines[lineOf(inLine) - 1]
            return l.distance(from: l.startIndex, to: l.range(of: needle)!.lowerBound) + 1
        }
        let scan = Injector.scan(text, format: .flow)
        #expect(scan.problems.map(\.description) == [
            "appInstallations.demoBot.config.botToken \(lineOf("botToken")):\(colOf("\\\"\"", "botToken")): unterminated string literal",
            "blocks[1] \"Ask Claude\" inputs.default.config.headers \(lineOf("x-api-key")):\(colOf("secrets", "x-api-key")): secrets[key] cannot be resolved statically; hint: use secrets.NAME",
            "blocks[2] \"Fetch Data\" inputs.default.config.url \(lineOf("token=")):\(colOf("secrets", "token=")): secrets used as a whole cannot be resolved statically; hint: reference each secret as secrets.NAME",
        ])
        #expect(scan.referencedNames == ["ANTHROPIC_API_KEY", "DEMO_BOT_SLACK_BOT_TOKEN", "DEMO_BOT_SLACK_SIGNING_SECRET"])

        // Missing secrets are located the same way.
        let ok = try fixture("demo-bot.flow.yaml")
        do {
            let _: TestBuffer = try Injector.scan(ok, format: .flow).rewrite { $0 == "API_TOKEN" ? nil : TestBuffer("v") }
            Issue.record("expected an error")
        } catch {
            let okLines = ok.split(separator: "\n", omittingEmptySubsequences: false)
            let n = okLines.firstIndex { $0.contains("token=${") }!
            let col = okLines[n].distance(from: okLines[n].startIndex, to: okLines[n].range(of: "secrets.API_TOKEN")!.lowerBound) + 1
            #expect(error.description == "blocks[2] \"Fetch Data\" inputs.default.config.url \(n + 1):\(col): secret API_TOKEN does not exist in the project")
        }
    }

    @Test func aliasesOfRewrittenExpressionsAreRefused() throws {
        // An alias repeats the node as written: the rewritten value would be
        // carried wherever the alias stands, a mapping key or a block name
        // included, where nothing evaluates it.
        func problems(_ flow: String) -> [String] { Injector.scan(flow, format: .flow).problems.map(\.description) }
        let hint = "write the expression again instead of aliasing it"
        #expect(problems("a: &t !expr secrets.A\nb: *t\n")
                == ["b 2:4: flow: *t is an alias of an !expr that references secrets (&t at 1:4); \(hint)"])
        #expect(problems("a: &t !expr 'secrets.A'\nm:\n  *t : 1\n")
                == ["m 3:3: flow: *t is an alias of an !expr that references secrets (&t at 1:4); \(hint)"])
        #expect(problems("x: &t !expr secrets.A\nblocks:\n  - name: *t\n    type: t\n")
                == ["blocks[0].name 3:11: flow: *t is an alias of an !expr that references secrets (&t at 1:4); \(hint)"])
        // A collection that holds a rewritten expression, at any depth.
        #expect(problems("x: &c {k: [1, !expr secrets.A]}\ny: [*c]\n")
                == ["y[0] 2:5: flow: *c is an alias of an !expr that references secrets (&c at 1:4); \(hint)"])
        // Allowed: aliases of expressions with no reference, and of a name
        // anchored again on a node with nothing rewritten.
        let fine = "a: &u !expr '1 + 2'\nb: *u\nc: &t !expr secrets.A\nd: &t {k: 1}\ne: *t\n"
        #expect(problems(fine).isEmpty)
        let out: TestBuffer = try Injector.scan(fine, format: .flow).rewrite { _ in TestBuffer("v") }
        #expect(out.string == "a: &u !expr '1 + 2'\nb: *u\nc: &t !expr \"\\\"v\\\"\"\nd: &t {k: 1}\ne: *t\n")
        // `!expr` inside a key (a collection used as a key) is refused like one on a key.
        #expect(problems("? [!expr secrets.A]\n: v\n") == ["1:4: flow: !expr inside a mapping key is not supported"])
        #expect(problems("m: {? {k: !expr secrets.A} : v}\n") == ["m 1:11: flow: !expr inside a mapping key is not supported"])
    }

    @Test func tagsAndAnchorsAreKeptAsWritten() throws {
        // Under `%TAG ! …` a plain `!expr` names another tag: the rewrite
        // keeps the tag as it was written (found by the flow fuzzer).
        let cases: [(String, String)] = [
            ("%TAG ! tag:x,2000:\n---\na: !<!expr> secrets.A\n", "%TAG ! tag:x,2000:\n---\na: !<!expr> \"\\\"v\\\"\"\n"),
            ("a: !e%78pr secrets.A\n", "a: !e%78pr \"\\\"v\\\"\"\n"),
            ("a: !expr &x secrets.A\n", "a: &x !expr \"\\\"v\\\"\"\n"),
            // A comment between the properties and the expression.
            ("a: &x # note\n  !expr # more\n  secrets[k]\n", ""),
        ]
        for (input, expected) in cases {
            let scan = Injector.scan(input, format: .flow)
            if expected.isEmpty {
                #expect(scan.problems.map(\.description) == ["a 3:3: secrets[k] cannot be resolved statically; hint: use secrets.NAME"])
                continue
            }
            let out: TestBuffer = try scan.rewrite { _ in TestBuffer("v") }
            #expect(out.string == expected)
            let node = try #require(try Yams.compose(yaml: out.string))
            #expect(node["a"]?.tag.rawValue == "!expr")
        }
    }

    @Test func documentErrors() {
        #expect(Injector.scan("a: !expr {b: 1}\n", format: .flow).problems.map(\.description)
                == ["a 1:4: flow: !expr must tag a scalar (the expression source), not a mapping"])
        #expect(Injector.scan("a: [1\nb: 2\n", format: .flow).problems.map(\.description).first?.hasPrefix("flow: YAML:") == false)
        let yamlError = Injector.scan("a: [1\nb: 2\n", format: .flow).problems
        #expect(yamlError.count == 1 && yamlError[0].kind == .document && yamlError[0].message.hasPrefix("flow: YAML: "))
        #expect(Injector.scan("!expr secrets.A: 1\n", format: .flow).problems.map(\.description)
                == ["1:1: flow: !expr on a mapping key is not supported"])
        // Folded and quoted multi-line expressions still locate their tokens.
        let folded = "x:\n  y: !expr >\n    1 +\n      secrets[k]\n"
        #expect(Injector.scan(folded, format: .flow).problems.map(\.description)
                == ["x.y 4:7: secrets[k] cannot be resolved statically; hint: use secrets.NAME"])
        let quoted = "x: !expr \"1 +\n  \\t secrets[k]\"\n"
        #expect(Injector.scan(quoted, format: .flow).problems.map(\.description)
                == ["x 2:6: secrets[k] cannot be resolved statically; hint: use secrets.NAME"])
    }
}

@Suite struct ConfigAndBindingsTests {
    @Test func configKeepsFieldOrderAndRewritesEachField() throws {
        let text = try String(contentsOf: fixturesDirectory.appendingPathComponent("demo-bot.installation.json"), encoding: .utf8)
        let scan = Injector.scan(text, format: .config)
        #expect(scan.referencedNames == ["DEMO_BOT_SLACK_BOT_TOKEN", "DEMO_BOT_SLACK_SIGNING_SECRET"])
        let out: TestBuffer = try scan.rewrite { corpusValues[$0].map { TestBuffer($0) } }
        let obj = try #require(try JSONSerialization.jsonObject(with: Data(out.bytes)) as? [String: String])
        #expect(obj["botToken"] == #""xoxb-123-456-abc""#)
        #expect(obj["signingSecret"] == (try rewriteExpr("secrets.DEMO_BOT_SLACK_SIGNING_SECRET", corpusValues).get()))
        #expect(obj["team"] == #""T0123ABCD""#)
        let s = out.string
        #expect(s.hasPrefix("{\n  \"botToken\": ") && s.hasSuffix("\n}\n"))
        #expect(s.range(of: "botToken")!.lowerBound < s.range(of: "signingSecret")!.lowerBound)
        #expect(s.range(of: "signingSecret")!.lowerBound < s.range(of: "\"team\"")!.lowerBound)

        let empty: TestBuffer = try Injector.scan(" { } ", format: .config).rewrite { _ in nil }
        #expect(empty.string == "{}\n")
    }

    @Test func bindingsHoldJustTheReferencedNames() throws {
        let scan = Injector.scan("secrets.CTRL + `${secrets.LS}` + secrets['ODD'] + secrets.EMOJI + secrets.Q + secrets.CTRL", format: .expr)
        let out: TestBuffer = try scan.bindings { corpusValues[$0].map { TestBuffer($0) } }
        let obj = try #require(try JSONSerialization.jsonObject(with: Data(out.bytes)) as? [String: String])
        #expect(obj.count == 5)
        for name in ["CTRL", "LS", "ODD", "EMOJI", "Q"] { #expect(obj[name] == corpusValues[name]) }
        #expect(out.string.hasPrefix(#"{"CTRL":""#) && out.string.hasSuffix("}\n"))
        #expect(!out.string.contains("\u{2028}"))
        let none: TestBuffer = try Injector.scan("1 + 'secrets.A'", format: .expr).bindings { _ in nil }
        #expect(none.string == "{}\n")
    }

    @Test func formatFromPath() {
        #expect(InjectionFormat.forPath("x/flow.YAML") == .flow)
        #expect(InjectionFormat.forPath("a.yml") == .flow)
        #expect(InjectionFormat.forPath("c.json") == .config)
        #expect(InjectionFormat.forPath("-") == nil)
    }
}
