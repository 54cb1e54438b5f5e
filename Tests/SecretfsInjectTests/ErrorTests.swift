import Foundation
import Testing
@testable import SecretfsInject

private func problems(_ source: String, _ format: InjectionFormat = .expr,
                      _ values: [String: [UInt8]] = [:]) -> [String] {
    switch rewrite(source, format, values) {
    case .success(let out): return ["unexpected success: \(out)"]
    case .failure(let e): return e.problems.map(\.description)
    }
}

@Suite struct ErrorTests {
    @Test(arguments: [
        ("secrets[key]", "1:1: secrets[key] cannot be resolved statically; hint: use secrets.NAME"),
        ("x + secrets[ a + 'b' ]", "1:5: secrets[ a + 'b' ] cannot be resolved statically; hint: use secrets.NAME"),
        (#"secrets["A" + x]"#, #"1:1: secrets["A" + x] cannot be resolved statically; hint: use secrets.NAME"#),
        ("secrets?.[k]", "1:1: secrets?.[k] cannot be resolved statically; hint: use secrets.NAME"),
        ("secrets[`${a}`]", "1:1: secrets[`${a}`] cannot be resolved statically; hint: use secrets.NAME"),
        ("secrets", "1:1: secrets used as a whole cannot be resolved statically; hint: reference each secret as secrets.NAME"),
        ("f(secrets)", "1:3: secrets used as a whole cannot be resolved statically; hint: reference each secret as secrets.NAME"),
        ("({...secrets})", "1:6: secrets used as a whole cannot be resolved statically; hint: reference each secret as secrets.NAME"),
        ("typeof secrets", "1:8: secrets used as a whole cannot be resolved statically; hint: reference each secret as secrets.NAME"),
        ("x = secrets", "1:5: secrets used as a whole cannot be resolved statically; hint: reference each secret as secrets.NAME"),
        ("(secrets) => secrets.A", "1:2: secrets used as a whole cannot be resolved statically; hint: reference each secret as secrets.NAME"),
        ("({ secrets })", "1:4: shorthand { secrets } cannot be resolved statically; hint: use secrets.NAME"),
        ("({ a, secrets, b })", "1:7: shorthand { secrets } cannot be resolved statically; hint: use secrets.NAME"),
        (#"secrets["a-b"]"#, #"1:1: invalid secret name "a-b"; names match [A-Za-z_][A-Za-z0-9_]*"#),
        ("secrets['1A']", #"1:1: invalid secret name "1A"; names match [A-Za-z_][A-Za-z0-9_]*"#),
        ("secrets.ünï", #"1:1: invalid secret name "ünï"; names match [A-Za-z_][A-Za-z0-9_]*"#),
        ("secrets.$x", #"1:1: invalid secret name "$x"; names match [A-Za-z_][A-Za-z0-9_]*"#),
        ("secrets.A = 1", "1:1: secrets.A cannot be assigned to"),
        ("secrets.A += 1", "1:1: secrets.A cannot be assigned to"),
        ("secrets['A']++", "1:1: secrets.A cannot be assigned to"),
        ("--secrets.A", "1:3: secrets.A cannot be assigned to"),
        ("secrets.#x", "1:1: secrets.#x is not a secret reference; hint: use secrets.NAME"),
        ("secrets.", "1:1: expected a secret name after 'secrets.'"),
        ("secrets?.)", "1:1: expected a secret name after 'secrets?.'"),
        ("'abc", "1:1: unterminated string literal"),
        ("x + \"abc\ndef\"", "1:5: unterminated string literal"),
        ("`abc", "1:1: unterminated template literal"),
        ("a + `x${ b }y${ `inner", "1:17: unterminated template literal"),
        ("`a${ b ", "1:1: unterminated template literal"),
        ("1 /* abc", "1:3: unterminated comment"),
        ("x = /abc", "1:5: unterminated regular expression literal"),
        ("x = /[/", "1:5: unterminated regular expression literal"),
        ("a # b", "1:3: unexpected character '#'"),
        ("secr\\u00zzets", "1:5: invalid escape in identifier"),
    ])
    func expressionError(_ source: String, _ expected: String) {
        #expect(problems(source) == [expected])
    }

    @Test func everyProblemAtOnceWithPositions() {
        let source = "secrets.A +\n  secrets[k] + /* */ secrets +\n\t({ secrets }) + 'é' + secrets['x y'] + `${secrets.B} ${'"
        #expect(problems(source) == [
            "2:3: secrets[k] cannot be resolved statically; hint: use secrets.NAME",
            "2:22: secrets used as a whole cannot be resolved statically; hint: reference each secret as secrets.NAME",
            "3:5: shorthand { secrets } cannot be resolved statically; hint: use secrets.NAME",
            #"3:24: invalid secret name "x y"; names match [A-Za-z_][A-Za-z0-9_]*"#,
            "3:57: unterminated string literal",
        ])
        // Phase 1 alone reports them too, and the valid references are still listed.
        let scan = Injector.scan(source, format: .expr)
        #expect(scan.problems.count == 5)
        #expect(scan.referencedNames == ["A", "B"])
    }

    @Test func missingSecretsAreReportedAtEachReference() {
        let source = "secrets.NOPE + secrets.A +\n secrets['NOPE'] + secrets.GONE"
        #expect(problems(source, .expr, ["A": Array("v".utf8)]) == [
            "1:1: secret NOPE does not exist in the project",
            "2:2: secret NOPE does not exist in the project",
            "2:20: secret GONE does not exist in the project",
        ])
    }

    @Test func invalidUTF8ValueNamesTheSecretNotTheValue() throws {
        let value: [UInt8] = [0x41, 0x42, 0xFF, 0x43, 0x44]
        let scan = Injector.scan("secrets.BIN + secrets.BIN + secrets.OK", format: .expr)
        do {
            let _: TestBuffer = try scan.rewrite { $0 == "BIN" ? TestBuffer(value) : TestBuffer("fine-value") }
            Issue.record("expected an error")
        } catch {
            #expect(error.problems.map(\.description) == [
                "1:1: secret BIN is not valid UTF-8 and cannot become a JavaScript string",
            ])
            #expect(error.problems[0].kind == .invalidUTF8Value)
            #expect(error.problems[0].secretName == "BIN")
            #expect(!error.description.contains("AB") && !error.description.contains("fine-value"))
        }
        do {
            let _: TestBuffer = try scan.bindings { $0 == "BIN" ? TestBuffer(value) : TestBuffer("fine-value") }
            Issue.record("expected an error")
        } catch {
            #expect(error.problems.map(\.kind) == [.invalidUTF8Value])
        }
    }

    @Test func phaseOneProblemsStopPhaseTwoWithoutLookups() {
        let scan = Injector.scan("secrets.A + secrets[x]", format: .expr)
        var asked = 0
        do {
            let _: TestBuffer = try scan.rewrite { _ in asked += 1; return TestBuffer("v") }
            Issue.record("expected an error")
        } catch {
            #expect(error.problems.count == 1)
        }
        #expect(asked == 0)
    }

    @Test func errorsNeverContainValues() {
        // Every error path with values present: none of them may echo a value.
        let values: [String: [UInt8]] = ["A": Array("VALUE-A-§".utf8), "B": [0xC3, 0x28]]
        let source = "secrets.A + secrets.B + secrets.MISSING + `${secrets.A}"
        for text in problems(source, .expr, values) + problems("secrets.A + secrets.B + secrets.MISSING", .expr, values) {
            #expect(!text.contains("VALUE-A"))
        }
    }

    @Test func configErrorsNameTheField() {
        let config = """
        {
          "botToken": "secrets.DEMO_BOT_SLACK_BOT_TOKEN",
          "team": "secrets[team]",
          "other": "'x' + secrets",
          "n": 3,
          "esc": "\\u0041 + \\"q\\" + secrets['a b']"
        }
        """
        #expect(problems(config, .config, ["DEMO_BOT_SLACK_BOT_TOKEN": [0x41]]) == [
            #"field "team" 3:12: secrets[team] cannot be resolved statically; hint: use secrets.NAME"#,
            #"field "other" 4:19: secrets used as a whole cannot be resolved statically; hint: reference each secret as secrets.NAME"#,
            #"field "n" 5:8: config: the value must be a string holding the expression source"#,
            #"field "esc" 6:28: invalid secret name "a b"; names match [A-Za-z_][A-Za-z0-9_]*"#,
        ])
        #expect(problems(#"{"a": "secrets.X"}"#, .config) == [#"field "a" 1:8: secret X does not exist in the project"#])
        #expect(problems("[1]", .config) == ["1:1: config: expected a JSON object of field name -> expression"])
        #expect(problems(#"{"a": "x""#, .config) == ["1:10: config: expected ',' or '}'"])
        #expect(problems(#"{"a": "x", "a": "y"}"#, .config) == [#"field "a" 1:12: config: duplicate field"#])
    }
}
