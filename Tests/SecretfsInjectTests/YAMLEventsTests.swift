import Foundation
@testable import SecretfsInject
import Testing

/// A flow's YAML parsed on a second thread (YAMLEvents, for large documents)
/// gives the very scan the one-thread parse gives: the same names, problems
/// and output, for every kind of document, including ones that stop early
/// (a YAML error, a limit) with events still queued.
struct YAMLEventsTests {
    /// What a scan says, as text: its names, references, problems and output.
    private func outcome(_ source: [UInt8], limits: InjectionLimits = .default, secondThread: Bool) -> String {
        let scan = Injector.scan(source, format: .flow, limits: limits, yamlOnSecondThread: secondThread)
        var lines = ["names: \(scan.referencedNames)", "references: \(scan.referenceCount)"]
        lines += scan.problems.map { "problem: \($0.description)" }
        if scan.problems.isEmpty {
            do {
                let out: TestBuffer = try scan.rewrite { TestBuffer("value-of-\($0)\n\"'`${x}") }
                lines.append("output: \(out.string)")
            } catch {
                lines.append("error: \(error)")
            }
        }
        return lines.joined(separator: "\n")
    }

    private func expectSame(_ source: [UInt8], limits: InjectionLimits = .default,
                            sourceLocation: SourceLocation = #_sourceLocation) {
        let here = outcome(source, limits: limits, secondThread: false)
        let there = outcome(source, limits: limits, secondThread: true)
        #expect(here == there, sourceLocation: sourceLocation)
    }

    /// `blocks` blocks of references, anchors and literals (the shape of
    /// scripts/bench-resolve's flows).
    private func flow(blocks: Int) -> String {
        var lines = ["appInstallations: {}", "blocks:"]
        for i in 0..<blocks {
            lines += [
                "  - name: Block \(i)",
                "    type: { coreBlock: httpRequest }",
                "    inputs:",
                "      default:",
                "        config: &c\(i)",
                "          url: !expr '`https://api.example.com/\(i)?t=${secrets.S\(i % 50)}`'",
                "          headers: !expr |",
                "            { \"x\": secrets.K\(i % 7), // secrets.NOT_A_REFERENCE",
                "              \"y\": `Bearer ${secrets['T\(i % 11)']}` }",
                "          note: \"secrets.LITERAL stays\"",
            ]
        }
        lines.append("notes: []")
        return lines.joined(separator: "\n") + "\n"
    }

    @Test func theFixturesAndSeedsScanAlikeOnEitherThread() throws {
        let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        var sources: [[UInt8]] = []
        for dir in [fixturesDirectory, repo.appendingPathComponent("Fuzz/seeds/inject-flow")] {
            for name in try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted()
            where name.hasSuffix(".yaml") || dir.lastPathComponent == "inject-flow" {
                sources.append(Array(try Data(contentsOf: dir.appendingPathComponent(name))))
            }
        }
        #expect(sources.count >= 3)
        for s in sources { expectSame(s) }
    }

    @Test func largeFlowsScanAlikeAndStopAlike() {
        let big = Array(flow(blocks: 3000).utf8)   // ~1 MB: many batches
        expectSame(big)
        expectSame([])
        expectSame(Array("blocks: []\n".utf8))
        // A YAML error far into the document, after thousands of events.
        expectSame(big + Array("bad: [unclosed\n  - : :\n".utf8))
        expectSame(Array(flow(blocks: 1500).utf8) + Array("\t- tab\n".utf8) + big)
        // Limits that stop the reader with batches still queued behind it.
        expectSame(big, limits: InjectionLimits(maxSites: 100))
        expectSame(big, limits: InjectionLimits(maxReferences: 10))
        expectSame(big, limits: InjectionLimits(maxProblems: 2))
        let deep = String(repeating: "[", count: 5000) + String(repeating: "]", count: 5000)
        expectSame(Array(("blocks: " + deep + "\n").utf8))
        // Stopped by an early error, many times over: nothing leaks or hangs.
        let early = Array("blocks: [\n  - name: x\n    a: !expr 'secrets.A'\n  - : : :\n".utf8) + big
        for _ in 0..<50 { expectSame(early) }
    }

    @Test func eventsArriveInOrderAndEachOnce() {
        let source = Array(flow(blocks: 2000).utf8)
        var here: [(Int32, Int)] = []
        var there: [(Int32, Int)] = []
        source.withUnsafeBufferPointer { buf in
            _ = YAMLEvents.read(buf, secondThread: false) { e in here.append((Int32(e.type.rawValue), e.start_mark.index)); return true }
            _ = YAMLEvents.read(buf, secondThread: true) { e in there.append((Int32(e.type.rawValue), e.start_mark.index)); return true }
        }
        #expect(here.count > 20_000)
        #expect(here.map(\.0) == there.map(\.0) && here.map(\.1) == there.map(\.1))
        // A handler that stops at the 100th event sees exactly 100.
        var seen = 0
        source.withUnsafeBufferPointer { buf in
            _ = YAMLEvents.read(buf, secondThread: true) { _ in seen += 1; return seen < 100 }
        }
        #expect(seen == 100)
    }
}
