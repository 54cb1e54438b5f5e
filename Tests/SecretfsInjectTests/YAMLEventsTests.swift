import CYAML
import Foundation
import Glibc
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

    @Test func eventsArriveInOrderAndEachIsDeletedOnce() {
        let source = Array(flow(blocks: 2000).utf8)
        var here: [(Int32, Int)] = []
        var there: [(Int32, Int)] = []
        source.withUnsafeBufferPointer { buf in
            var tally = YAMLEvents.Tally()
            _ = YAMLEvents.read(buf, secondThread: false, tally: &tally) { e in
                here.append((Int32(e.type.rawValue), e.start_mark.index)); return true
            }
            #expect(tally.parsed == here.count && tally.deleted == tally.parsed)
            tally = YAMLEvents.Tally()
            _ = YAMLEvents.read(buf, secondThread: true, tally: &tally) { e in
                there.append((Int32(e.type.rawValue), e.start_mark.index)); return true
            }
            #expect(tally.parsed == there.count && tally.deleted == tally.parsed)
        }
        #expect(here.count > 20_000)
        #expect(here.map(\.0) == there.map(\.0) && here.map(\.1) == there.map(\.1))
    }

    /// A handler that stops at the n-th event sees exactly n, whatever the
    /// batch boundaries (64, then 128, 256, ... events), and every event
    /// parsed, handled or not, is deleted once.
    @Test(arguments: [1, 2, 63, 64, 65, 191, 192, 193, 448, 449, 5000])
    func aHandlerStoppingAnywhereLeavesNothingBehind(stopAt: Int) {
        for source in [Array(flow(blocks: 2000).utf8), Array(flow(blocks: 2000).utf8) + Array("bad: [x\n- : :\n".utf8)] {
            for secondThread in [false, true] {
                var seen = 0
                var tally = YAMLEvents.Tally()
                let failure = source.withUnsafeBufferPointer { buf in
                    YAMLEvents.read(buf, secondThread: secondThread, tally: &tally) { _ in seen += 1; return seen < stopAt }
                }
                #expect(seen == stopAt && failure == nil)
                #expect(tally.deleted == tally.parsed && tally.parsed >= seen)
            }
        }
        // Stopping at the stream's last event, and never stopping.
        let source = Array("a: 1\n".utf8)
        for secondThread in [false, true] {
            var seen = 0
            var tally = YAMLEvents.Tally()
            source.withUnsafeBufferPointer { buf in
                _ = YAMLEvents.read(buf, secondThread: secondThread, tally: &tally) { _ in seen += 1; return true }
            }
            #expect(seen == 8 && tally.parsed == 8 && tally.deleted == 8)
        }
    }

    @Test func aThreadThatCannotStartFallsBackToTheCallingOne() {
        let source = Array(flow(blocks: 500).utf8)
        var seen = 0
        var tally = YAMLEvents.Tally()
        let failure = source.withUnsafeBufferPointer { buf in
            YAMLEvents.read(buf, secondThread: true, startThread: false, tally: &tally) { _ in seen += 1; return true }
        }
        #expect(failure == nil && seen > 5000 && tally.parsed == seen && tally.deleted == seen)
        #expect(tally.peakOutstandingBytes == 0)   // no second thread ran
    }

    /// libyaml expands a `!h!x` tag with its %TAG prefix in every event: a
    /// few bytes of document can hold a large tag. On the second thread the
    /// parser stops running ahead at the byte limit, not at a count of events.
    @Test func tagExpansionCannotMakeTheParserRunAheadWithoutBound() {
        let prefix = "tag:" + String(repeating: "p", count: 128 << 10)
        var doc = "%TAG !a! \(prefix)\n---\nblocks:\n"
        for _ in 0..<3000 { doc += "- !a!x a\n" }
        let source = Array(doc.utf8)
        var tally = YAMLEvents.Tally()
        var seen = 0
        let failure = source.withUnsafeBufferPointer { buf in
            YAMLEvents.read(buf, secondThread: true, tally: &tally) { _ in
                seen += 1
                // A slow handler: the parser gets all the time it wants to run ahead.
                if seen == 1 { usleep(300_000) }
                return true
            }
        }
        #expect(failure == nil && seen > 3000 && tally.deleted == tally.parsed)
        // One tagged scalar is about 128 KiB: a little over the 1 MiB limit
        // at most (without it: 390 MB, the queue's four batches of events).
        #expect(YAMLEvents.maxOutstandingBytes <= 1 << 20)
        #expect(tally.peakOutstandingBytes > 0 && tally.peakOutstandingBytes <= (1 << 20) + (256 << 10),
                "\(tally.peakOutstandingBytes) bytes of events outstanding")
        expectSame(source)
    }

    /// What an event says, every field the reader could look at, as text.
    private func describe(_ e: yaml_event_t) -> String {
        func str(_ p: UnsafeMutablePointer<yaml_char_t>?) -> String {
            p.map { "\"" + String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self)) + "\"" } ?? "nil"
        }
        var d = "\(e.type.rawValue) \(e.start_mark.index)-\(e.end_mark.index) \(e.start_mark.line):\(e.start_mark.column)"
        switch e.type {
        case YAML_SCALAR_EVENT:
            let s = e.data.scalar
            let bytes = Array(UnsafeBufferPointer(start: s.value, count: Int(s.length)))
            d += " scalar \(bytes) nul:\(s.value[Int(s.length)]) tag \(str(s.tag)) anchor \(str(s.anchor))"
            d += " \(s.plain_implicit) \(s.quoted_implicit) \(s.style.rawValue)"
        case YAML_SEQUENCE_START_EVENT:
            let s = e.data.sequence_start
            d += " seq tag \(str(s.tag)) anchor \(str(s.anchor)) \(s.implicit) \(s.style.rawValue)"
        case YAML_MAPPING_START_EVENT:
            let s = e.data.mapping_start
            d += " map tag \(str(s.tag)) anchor \(str(s.anchor)) \(s.implicit) \(s.style.rawValue)"
        case YAML_ALIAS_EVENT:
            d += " alias \(str(e.data.alias.anchor))"
        case YAML_DOCUMENT_START_EVENT:
            var p = e.data.document_start.tag_directives.start
            while let q = p, q != e.data.document_start.tag_directives.end {
                d += " %TAG \(str(q.pointee.handle)) \(str(q.pointee.prefix))"
                p = q + 1
            }
            d += " implicit \(e.data.document_start.implicit)"
        default:
            break
        }
        return d
    }

    /// On the second thread an event's strings are copied into its batch's
    /// block and libyaml's event deleted at once, unless they do not fit;
    /// the handler sees the very same events either way: values with NUL
    /// bytes (a `\0` escape), tags expanded from %TAG, anchors and aliases,
    /// a scalar larger than a block and blocks that fill mid-batch.
    @Test func copiedEventsAreTheEventsLibyamlMade() {
        var doc = "%TAG !e! tag:example.com,2026:\n--- !e!root\nblocks:\n"
        for i in 0..<4000 {
            doc += "- &a\(i) !e!item { name: \"n\\0\(i)\\x01\", v: !expr 'secrets.S\(i % 9)', s: [1, '\(i)'] }\n"
            if i % 500 == 0 { doc += "- *a\(i)\n- big\(i): \(String(repeating: "x", count: 70_000 + i))\n" }
        }
        doc += "...\n---\nsecond: document\n"
        let source = Array(doc.utf8)
        var here: [String] = []
        var there: [String] = []
        source.withUnsafeBufferPointer { buf in
            var tally = YAMLEvents.Tally()
            #expect(YAMLEvents.read(buf, secondThread: false, tally: &tally) { here.append(describe($0)); return true } == nil)
            tally = YAMLEvents.Tally()
            #expect(YAMLEvents.read(buf, secondThread: true, tally: &tally) { there.append(describe($0)); return true } == nil)
            #expect(tally.deleted == tally.parsed && tally.parsed == there.count)
        }
        #expect(here.count > 40_000)
        #expect(here.contains { $0.contains("%TAG \"!e!\" \"tag:example.com,2026:\"") })
        #expect(here.contains { $0.contains("scalar [110, 0, 51,") })
        // The first difference only: the events are too many to print.
        let first = here.indices.first { $0 >= there.count || here[$0] != there[$0] }
        #expect(here.count == there.count && first == nil,
                "event \(first ?? -1): \(first.map { here[$0].prefix(200) } ?? "") / \(first.map { there[$0].prefix(200) } ?? "")")
        expectSame(source)
    }
}
