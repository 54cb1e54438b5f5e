import Testing
@testable import SecretfsInject

@Suite struct TokenizerTests {
    /// ECMAScript's punctuators, as the spec lists them (plus `@`, read as
    /// one so a decorator is not a stray character).
    static let punctuators: Set<String> = [
        "{", "}", "(", ")", "[", "]", ";", ",", "<", ">", "+", "-", "*", "/", "%", "&", "|", "^", "!", "~", "?", ":",
        "=", ".", "@",
        "=>", "==", "!=", "<=", ">=", "&&", "||", "??", "?.", "++", "--", "+=", "-=", "*=", "/=", "%=", "&=", "|=",
        "^=", "**", "<<", ">>",
        "...", "===", "!==", "**=", "<<=", ">>=", ">>>", "&&=", "||=", "??=",
        ">>>=",
    ]

    /// The byte matcher against the list: every string of up to four bytes
    /// over the punctuator characters (and a digit, for `?.5`), longest match.
    @Test func punctuatorMatchingIsTheLongestListedPunctuator() {
        let alphabet = Array("{}()[];,<>+-*/%&|^!~?:=.@5".utf8) + [0]
        var checked = 0
        for a in alphabet where a != 0 {
            for b in alphabet { for c in alphabet { for d in alphabet {
                let bytes = [a, b, c, d]
                let text = String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
                var expected = 0
                for n in stride(from: min(4, text.utf8.count), through: 1, by: -1)
                    where Self.punctuators.contains(String(text.prefix(n))) {
                    // `?.` before a digit is `?` then a number.
                    if n == 2 && text.hasPrefix("?.") && text.dropFirst(2).first?.isNumber == true { continue }
                    expected = n
                    break
                }
                #expect(punctuatorLength(a, b, c, d) == expected, "\(text)")
                checked += 1
            } } }
        }
        #expect(checked == 26 * 27 * 27 * 27)
    }
}
