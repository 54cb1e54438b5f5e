import SecretfsTestSupport
import Foundation
@testable import SecretfsInject

/// One expression judged by Node: `original` evaluated with `secrets` bound to
/// `values` must equal `rewritten` evaluated with no `secrets` in scope.
struct JudgedCase {
    var label: String
    var original: String
    var rewritten: String
    var values: [String: String]
    /// Both sides are expected to throw (the same error type).
    var expectError = false
}

struct NodeVerdict {
    var label: String
    var ok: Bool
    var detail: String
}

enum NodeJudge {
    /// Evaluates every case in one `node` process.
    static func judge(_ cases: [JudgedCase]) throws -> [NodeVerdict] {
        let payload = cases.map { c -> [String: Any] in
            ["label": c.label, "orig": c.original, "rewritten": c.rewritten, "values": c.values, "expectError": c.expectError]
        }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("secretfs-inject-\(getpid())-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let casesFile = dir.appendingPathComponent("cases.json")
        let scriptFile = dir.appendingPathComponent("judge.js")
        try JSONSerialization.data(withJSONObject: payload).write(to: casesFile)
        try script.write(to: scriptFile, atomically: true, encoding: .utf8)

        let run = try Processes.run("/usr/bin/env", ["node", scriptFile.path, casesFile.path])
        let data = Data(run.stdout.utf8)
        guard run.status == 0,
              let list = try JSONSerialization.jsonObject(with: data) as? [[String: Any]] else {
            throw NSError(domain: "node", code: Int(run.status),
                          userInfo: [NSLocalizedDescriptionKey: run.stdout + run.stderr])
        }
        return list.map {
            NodeVerdict(label: $0["label"] as? String ?? "?", ok: $0["ok"] as? Bool ?? false,
                        detail: $0["detail"] as? String ?? "")
        }
    }

    static let script = #"""
    'use strict';
    const fs = require('fs');
    const util = require('util');
    const cases = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
    const outputs = { sampleEndpoint: { params: { name: 'world' } }, slackMention: { text: 'hi "there"' } };
    function run(f) {
      try { return { value: f() }; } catch (e) { return { error: e && e.constructor ? e.constructor.name : String(e) }; }
    }
    const show = (r) => util.inspect(r, { depth: 6, breakLength: Infinity });
    const results = cases.map((c) => {
      // Sloppy-mode function bodies, as the expression is evaluated on the platform.
      const a = run(() => new Function('secrets', 'outputs', 'return (\n' + c.orig + '\n);')(c.values, outputs));
      if (typeof globalThis.secrets !== 'undefined') throw new Error('secrets leaked into global scope');
      const b = run(() => new Function('outputs', 'return (\n' + c.rewritten + '\n);')(outputs));
      let ok = util.isDeepStrictEqual(a, b);
      if (ok && c.expectError !== ('error' in a)) ok = false;
      return { label: c.label, ok, detail: 'original ' + show(a) + ' rewritten ' + show(b) + ' source ' + JSON.stringify(c.rewritten) };
    });
    process.stdout.write(JSON.stringify(results));
    """#
}
