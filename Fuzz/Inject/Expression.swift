// libFuzzer harness: one JavaScript expression (the tokenizer, the
// reference finder and the rewriter). Checks, besides not crashing:
// phase 2's invariants (Support.swift), and that a rewrite is code with no
// reference left in it: scanning it again finds no reference and no
// problem (one more nesting level is allowed: a reference that is a
// statement of its own is written `("v")`).

import SecretfsInject

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzExpression(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let source = Array(UnsafeBufferPointer(start: data, count: size))
    underTinyLimits(source, .expr)
    let scan = Injector.scan(source, format: .expr)
    guard let out = phaseTwo(source, scan) else { return 0 }
    let limits = InjectionLimits(maxNestingDepth: InjectionLimits.default.maxNestingDepth + 1)
    let again = Injector.scan(out, format: .expr, limits: limits)
    require(again.referencedNames.isEmpty, "references left after the rewrite: \(again.referencedNames)")
    require(again.problems.isEmpty, "the rewrite does not scan: \(again.problems)")
    return 0
}
