// libFuzzer harness: a flow definition (libyaml's events, the flow reader,
// the in-place rewrite). Checks, besides not crashing: phase 2's
// invariants (Support.swift), and that libyaml reads the output as the same
// event stream: same events, anchors, tags, aliases and scalars, except that
// each `!expr` scalar is the rewrite of the original expression (and a
// rewritten one is double-quoted).

import CYAML
import SecretfsInject

struct YAMLEvent: Equatable {
    var type: yaml_event_type_t
    var anchor: String?
    var tag: String?
    var value: [UInt8] = []
    var style: yaml_scalar_style_t?
}

/// The events of `source`, or nil if libyaml refuses it.
func yamlEvents(_ source: [UInt8]) -> [YAMLEvent]? {
    func text(_ p: UnsafeMutablePointer<yaml_char_t>?) -> String? {
        p.map { String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self)) }
    }
    var parser = yaml_parser_t()
    guard yaml_parser_initialize(&parser) != 0 else { return nil }
    defer { yaml_parser_delete(&parser) }
    let input = source.isEmpty ? [0] : source
    return input.withUnsafeBufferPointer { buf -> [YAMLEvent]? in
        yaml_parser_set_input_string(&parser, buf.baseAddress, source.count)
        yaml_parser_set_encoding(&parser, YAML_UTF8_ENCODING)
        var events: [YAMLEvent] = []
        var event = yaml_event_t()
        while true {
            guard yaml_parser_parse(&parser, &event) != 0 else { return nil }
            defer { yaml_event_delete(&event) }
            var e = YAMLEvent(type: event.type)
            switch event.type {
            case YAML_SCALAR_EVENT:
                let s = event.data.scalar
                e.anchor = text(s.anchor)
                e.tag = text(s.tag)
                e.value = Array(UnsafeBufferPointer(start: s.value, count: Int(s.length)))
                e.style = s.style
            case YAML_SEQUENCE_START_EVENT:
                e.anchor = text(event.data.sequence_start.anchor)
                e.tag = text(event.data.sequence_start.tag)
            case YAML_MAPPING_START_EVENT:
                e.anchor = text(event.data.mapping_start.anchor)
                e.tag = text(event.data.mapping_start.tag)
            case YAML_ALIAS_EVENT:
                e.anchor = text(event.data.alias.anchor)
            default:
                break
            }
            events.append(e)
            if event.type == YAML_STREAM_END_EVENT { return events }
        }
    }
}

/// libyaml on a second thread (YAMLEvents, used for large flows) gives the
/// scan the calling thread gives: names, references, problems and output.
func sameOnTheSecondThread(_ source: [UInt8], _ scan: InjectionScan? = nil, limits: InjectionLimits) {
    let here = scan ?? Injector.scan(source, format: .flow, limits: limits, yamlOnSecondThread: false)
    let there = Injector.scan(source, format: .flow, limits: limits, yamlOnSecondThread: true)
    require(here.referencedNames == there.referencedNames && here.referenceCount == there.referenceCount,
            "the second thread's scan finds other references")
    require(here.problems.map(\.description) == there.problems.map(\.description),
            "the second thread's scan reports other problems")
    require(phaseTwo(source, here) == phaseTwo(source, there), "the second thread's scan rewrites otherwise")
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzFlow(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let source = Array(UnsafeBufferPointer(start: data, count: size))
    underTinyLimits(source, .flow)
    let scan = Injector.scan(source, format: .flow)
    sameOnTheSecondThread(source, scan, limits: .default)
    sameOnTheSecondThread(source, limits: InjectionLimits(maxDocumentBytes: 4096, maxNestingDepth: 6, maxSites: 3,
                                                          maxReferences: 4, maxProblems: 3, maxOutputBytes: 256))
    guard let out = phaseTwo(source, scan) else { return 0 }
    let text = String(decoding: out, as: UTF8.self)
    guard let before = yamlEvents(source) else {
        require(false, "a document libyaml refuses was rewritten")
        return 0
    }
    let after = yamlEvents(out)
    require(after != nil, "libyaml refuses the output: \(text)")
    require(before.count == after!.count, "\(before.count) events in, \(after!.count) out: \(text)")
    for (a, b) in zip(before, after!) {
        require(a.type == b.type && a.anchor == b.anchor && a.tag == b.tag, "events differ: \(text)")
        guard a.type == YAML_SCALAR_EVENT else { continue }
        if a.tag == "!expr" {
            let expected = rewriteExpression(a.value)
            require(expected == b.value, "an !expr is not the rewrite of its expression: \(text)")
            require(expected == a.value ? a.style == b.style : b.style == YAML_DOUBLE_QUOTED_SCALAR_STYLE,
                    "an !expr changed style: \(text)")
        } else {
            require(a.value == b.value && a.style == b.style, "a literal changed: \(text)")
        }
    }
    return 0
}
