import Foundation
import SecretfsStore
import SecureMemory
import Testing

/// The import parser: dotenv as people write it and a JSON object of strings,
/// straight into locked memory; errors name the line and the name, never a value.
struct ImportDocumentTests {
    func parse(_ text: String, _ format: ImportDocument.Format = .env) throws(ImportFailure) -> [String: String] {
        let input = Array(text.utf8).withUnsafeBytes { SecureBytes(copying: $0) }
        var out: [String: String] = [:]
        for e in try ImportDocument.parse(input, format: format) {
            out[e.name] = e.value.withUnsafeBytes { String(decoding: $0, as: UTF8.self) }
        }
        return out
    }

    /// The only problem of a file with one.
    func failure(_ text: String, _ format: ImportDocument.Format = .env) -> ImportError? {
        let all = problems(text, format)
        #expect(all.count <= 1, "\(all)")
        return all.first
    }

    func problems(_ text: String, _ format: ImportDocument.Format = .env) -> [ImportError] {
        do throws(ImportFailure) { _ = try parse(text, format); return [] } catch { return error.problems }
    }

    static let tricky = "\u{FEFF}# a comment line\n"
        + "export EXPORTED=plain value   \n"
        + "PLAIN=abc=def==\r\n"
        + "SINGLE='literal \\n $HOME # not a comment'\n"
        + "DOUBLE=\"line1\\nline2\\t\\\"quoted\\\" \\\\ back\"  # comment after\n"
        + "MULTI=\"first\r\nsecond line\"\n"
        + "\r\n"
        + "   # indented comment\n"
        + "CRLF=crlf-value\r\n"
        + "EMPTY=\n"
        + "SPACED = spaced-value # trailing comment\n"
        + "HASH=a#b\n"
        + "QEMPTY=\"\"\n"
        + "LAST=no-newline-at-end"

    static let trickyValues: [String: String] = [
        "EXPORTED": "plain value", "PLAIN": "abc=def==", "SINGLE": "literal \\n $HOME # not a comment",
        "DOUBLE": "line1\nline2\t\"quoted\" \\ back", "MULTI": "first\nsecond line", "CRLF": "crlf-value",
        "EMPTY": "", "SPACED": "spaced-value", "HASH": "a#b", "QEMPTY": "", "LAST": "no-newline-at-end",
    ]

    @Test func dotenvAsPeopleWriteIt() throws {
        #expect(try parse(Self.tricky) == Self.trickyValues)
    }

    @Test func jsonObjectOfStrings() throws {
        let text = "{\n  \"A\": \"x\\n\\\"y\\\" \\u00e9 \\ud83d\\ude00\",\n  \"B\": \"\"\n}\n"
        #expect(try parse(text, .json) == ["A": "x\n\"y\" é 😀", "B": ""])
        #expect(try parse("{}", .json).isEmpty)
    }

    @Test func errorsNameTheLineAndTheNameNeverTheValue() {
        let cases: [(String, ImportDocument.Format, ImportError)] = [
            ("A=1\nB=\"never-closed-value\nC=3\n", .env, ImportError(line: 2, name: "B", problem: "unterminated double quote")),
            ("A=1\n\nC='never-closed-value", .env, ImportError(line: 3, name: "C", problem: "unterminated single quote")),
            ("A=1\nnot a line\n", .env, ImportError(line: 2, name: nil, problem: "expected NAME=value")),
            ("A=1\n9BAD=secret-value-x\n", .env, ImportError(line: 2, name: nil, problem: "not a valid name before '=' (names match [A-Za-z_][A-Za-z0-9_]*)")),
            // A value pasted without a name: no part of it is echoed.
            ("A=1\nsecret-value-x\n", .env, ImportError(line: 2, name: nil, problem: "not a valid name before '=' (names match [A-Za-z_][A-Za-z0-9_]*)")),
            ("secret value-x=1\n", .env, ImportError(line: 1, name: nil, problem: "expected NAME=value")),
            ("secretvaluex\n", .env, ImportError(line: 1, name: nil, problem: "expected NAME=value")),
            ("A=\"x\" trailing-secret-value\n", .env, ImportError(line: 1, name: "A", problem: "unexpected text after the closing quote")),
            ("A=1\nA=2\n", .env, ImportError(line: 2, name: "A", problem: "given twice (first on line 1)")),
            ("{\"A\": \"x\",\n \"B\": 42}", .json, ImportError(line: 2, name: "B", problem: "the value is not a string")),
            ("{\"A\": \"secret-value-x", .json, ImportError(line: 1, name: "A", problem: "unterminated string")),
            ("[\"A\"]", .json, ImportError(line: 1, name: nil, problem: "expected a JSON object of names to strings")),
        ]
        for (text, format, expected) in cases {
            let e = failure(text, format)
            #expect(e == expected, "\(text)")
            #expect(e.map { !$0.description.contains("secret") && !$0.description.contains("never-closed") } == true)
        }
    }

    /// A file with several bad lines lists each, in order, and the reader
    /// goes on after each (an unterminated quote takes the rest of the file).
    @Test func everyBadLineIsListed() {
        let text = "OK=1\nbad-name=x\nA B=x\nGOOD=2\nOK=3\n1ABC=x\nQ=\"x\" tail\nLAST=4\nU='open\nnever=closed\n"
        let found = problems(text).map { "\($0.line) \($0.name ?? "-") \($0.problem)" }
        #expect(found == [
            "2 - not a valid name before '=' (names match [A-Za-z_][A-Za-z0-9_]*)",
            "3 - expected NAME=value",
            "5 OK given twice (first on line 1)",
            "6 - not a valid name before '=' (names match [A-Za-z_][A-Za-z0-9_]*)",
            "7 Q unexpected text after the closing quote",
            "9 U unterminated single quote",
        ], "\(found)")
        // At most maxProblems, then the reader stops.
        let many = String(repeating: "-x\n", count: 100)
        #expect(problems(many).count == ImportDocument.maxProblems)
    }
}
