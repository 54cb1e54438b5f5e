// libFuzzer harness: an installation config (the JSON reader, then each
// field as an expression). Checks, besides not crashing: phase 2's
// invariants (Support.swift); that the output is JSON that Foundation reads,
// with one string per field; and, when Foundation reads the input as an
// object of strings too, that each output field is the rewrite of the
// input field.

import Foundation
import SecretfsInject

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzConfig(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let source = Array(UnsafeBufferPointer(start: data, count: size))
    underTinyLimits(source, .config)
    let scan = Injector.scan(source, format: .config)
    guard let out = phaseTwo(source, scan) else { return 0 }
    let parsed = try? JSONSerialization.jsonObject(with: Data(out)) as? [String: String]
    require(parsed != nil, "the output is not a JSON object of strings: \(String(decoding: out, as: UTF8.self))")
    // Foundation's reader drops a raw U+FEFF inside a string (the JSON
    // text says it is a character, and the config reader keeps it): such
    // inputs are not compared.
    guard !source.containsBOM,
          let input = try? JSONSerialization.jsonObject(with: Data(source)) as? [String: String] else { return 0 }
    require(input.count == parsed!.count, "\(input.count) fields in, \(parsed!.count) out")
    for (key, expression) in input {
        let expected = rewriteExpression(Array(expression.utf8))
        require(expected != nil, "field \(key) rewrites in the document but not alone")
        require(parsed![key].map { Array($0.utf8) } == expected, "field \(key) is not the rewrite of its expression")
    }
    return 0
}

extension Array where Element == UInt8 {
    var containsBOM: Bool {
        indices.contains { $0 + 2 < count && self[$0] == 0xEF && self[$0 + 1] == 0xBB && self[$0 + 2] == 0xBF }
    }
}
