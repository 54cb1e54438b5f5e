import Foundation
@testable import SecretfsInject

/// A plain heap buffer standing in for `SecureBytes` (the test target does not
/// link SecureMemory); same shape, same protocol.
final class TestBuffer: SecretBuffer {
    let storage: UnsafeMutableRawBufferPointer
    let count: Int
    init(capacity: Int, count: Int) {
        storage = .allocate(byteCount: max(capacity, 1), alignment: 1)
        storage.initializeMemory(as: UInt8.self, repeating: 0)
        self.count = count
    }
    convenience init(_ bytes: [UInt8]) {
        self.init(capacity: bytes.count, count: bytes.count)
        for (i, b) in bytes.enumerated() { storage[i] = b }
    }
    convenience init(_ s: String) { self.init(Array(s.utf8)) }
    deinit { storage.deallocate() }
    func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeRawBufferPointer(rebasing: storage[0..<count]))
    }
    func withUnsafeMutableBytes<R>(_ body: (UnsafeMutableRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeMutableRawBufferPointer(rebasing: storage[0..<count]))
    }
    var bytes: [UInt8] { withUnsafeBytes { Array($0) } }
    var string: String { String(decoding: bytes, as: UTF8.self) }
}

/// Rewrites with `values`; returns the output text or the error description.
func rewrite(_ source: String, _ format: InjectionFormat, _ values: [String: [UInt8]]) -> Result<String, InjectionError> {
    let scan = Injector.scan(source, format: format)
    do {
        let out: TestBuffer = try scan.rewrite { name in values[name].map { TestBuffer($0) } }
        return .success(out.string)
    } catch {
        return .failure(error)
    }
}

func rewriteExpr(_ source: String, _ values: [String: String]) -> Result<String, InjectionError> {
    rewrite(source, .expr, values.mapValues { Array($0.utf8) })
}

let fixturesDirectory: URL = {
    // Tests/SecretfsInjectTests/Support.swift -> repo root -> ../shared/fixtures
    let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    // The shared fixtures are the contract; Tests/Fixtures is a committed copy
    // for machines that have no shared/ beside the clone.
    for candidate in [repo.appendingPathComponent("../shared/fixtures"), URL(fileURLWithPath: "/work/shared/fixtures"),
                      repo.appendingPathComponent("Tests/Fixtures")] {
        if FileManager.default.fileExists(atPath: candidate.path) { return candidate.standardizedFileURL }
    }
    return repo.appendingPathComponent("../shared/fixtures")
}()
