// Benchmark helper for scripts/bench-redact (not a package target: the
// script compiles it against the release build of SecretfsRedact).
//
//   harness gen LOG MEGABYTES      write a deterministic log with secrets in it
//   harness patterns N FILE        write the registered forms of N secrets, one a line;
//                                  on stderr, their count and the locked memory
//                                  (`locked=` tables, `peak=` build, `vmlck=` the
//                                  kernel's count after the build, all bytes)
//   harness run LOG N              redact LOG with N secrets to stdout; stats on stderr
//   harness adversarial MEGABYTES  a run of "aaaa…" against the value "a"*2000+"b",
//                                  timed against clean text of the same size
//
// The secrets are generated from a fixed seed, so every mode agrees on them.
import Foundation
import SecureMemory
@_spi(Testing) import SecretfsRedact

struct SplitMix {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
}

/// Secret values: API-key-like tokens, passwords with punctuation and a few
/// multi-line (PEM-like) values, as a project would have.
func secretValues(_ n: Int) -> [[UInt8]] {
    var rng = SplitMix(state: 0x5EC2E7)
    let token = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789".utf8)
    let punct = Array("!@#$%^&*()-_=+[]{};:',.<>/? \"\\".utf8)
    var out: [[UInt8]] = []
    for i in 0..<n {
        var v: [UInt8] = []
        switch i % 10 {
        case 0, 1, 2, 3, 4:
            v = Array(["sk_live_", "ghp_", "xoxb-", "AKIA", ""][i % 5].utf8)
            for _ in 0..<32 { v.append(token[rng.below(token.count)]) }
        case 5, 6, 7, 8:
            for _ in 0..<(12 + rng.below(12)) {
                v.append(rng.below(4) == 0 ? punct[rng.below(punct.count)] : token[rng.below(token.count)])
            }
        default:
            v = Array("-----BEGIN PRIVATE KEY-----\n".utf8)
            for _ in 0..<3 {
                for _ in 0..<64 { v.append(token[rng.below(token.count)]) }
                v.append(10)
            }
            v += Array("-----END PRIVATE KEY-----\n".utf8)
        }
        out.append(v)
    }
    return out
}

func makeRedactor(_ n: Int) -> (Redactor, Double) {
    let values = secretValues(n)
    let secrets = values.enumerated().map { (i, v) in
        (name: "SECRET_\(i)", value: v.withUnsafeBytes { SecureBytes(copying: $0) })
    }
    let t0 = DispatchTime.now().uptimeNanoseconds
    let r = Redactor(secrets: secrets)
    let t1 = DispatchTime.now().uptimeNanoseconds
    return (r, Double(t1 - t0) / 1e9)
}

func gen(_ path: String, megabytes: Int) {
    let values = secretValues(1000)
    var rng = SplitMix(state: 42)
    guard let f = fopen(path, "w") else { fatalError("cannot write \(path)") }
    defer { fclose(f) }
    let levels = ["INFO", "DEBUG", "WARN", "ERROR"]
    let paths = ["/api/v1/projects", "/api/v1/flows", "/healthz", "/api/v2/blocks/run", "/login"]
    let words = ["request", "completed", "started", "retrying", "upstream", "timeout", "cache", "miss",
                 "flow", "block", "httpEndpoint", "execution", "queued", "agent", "node", "config"]
    let hex = Array("0123456789abcdef".utf8)
    var total = 0
    var line: [UInt8] = []
    var lineNo = 0
    while total < megabytes << 20 {
        line.removeAll(keepingCapacity: true)
        lineNo += 1
        line += Array(String(format: "2026-11-%02dT%02d:%02d:%02d.%03dZ %@ [worker-%d] ",
                             1 + rng.below(28), rng.below(24), rng.below(60), rng.below(60), rng.below(1000),
                             levels[rng.below(4)], rng.below(16)).utf8)
        line += Array("req=".utf8)
        for _ in 0..<16 { line.append(hex[rng.below(16)]) }
        line += Array(" GET \(paths[rng.below(paths.count)])/\(rng.below(100000))?page=\(rng.below(9)) status=200 ".utf8)
        for _ in 0..<(3 + rng.below(8)) { line += Array(words[rng.below(words.count)].utf8); line.append(32) }
        if lineNo % 500 == 0 {
            // A leaked secret, in one of its forms.
            let v = values[rng.below(values.count)]
            let s = String(decoding: v, as: UTF8.self)
            switch rng.below(4) {
            case 0: line += Array("token=".utf8) + v.filter { $0 != 10 }
            case 1: line += Array("auth=Basic ".utf8) + Array(Data(Array("user:".utf8) + v).base64EncodedString().utf8)
            case 2: line += Array("q=".utf8) + Array(s.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!.utf8)
            default: line += Array("body=".utf8) + (try! JSONEncoder().encode([s]))
            }
        }
        line.append(10)
        fwrite(line, 1, line.count, f)
        total += line.count
    }
}

/// The process's locked memory in bytes (VmLck), or -1 where unknown.
func lockedByProcess() -> Int {
    guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
          let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmLck:") }),
          let kb = line.split(separator: " ").dropFirst().first.flatMap({ Int($0) })
    else { return -1 }
    return kb * 1024
}

func patterns(_ n: Int, _ path: String) {
    let (r, _) = makeRedactor(n)
    let vmlck = lockedByProcess()   // the values are released: the tables only
    guard let f = fopen(path, "w") else { fatalError("cannot write \(path)") }
    defer { fclose(f) }
    r.forEachRegisteredForm { form in
        fwrite(form.baseAddress, 1, form.count, f)
        fputc(10, f)
    }
    FileHandle.standardError.write(("\(n) secrets: \(r.formCount) forms, longest \(r.longestForm) bytes, "
        + "locked=\(r.lockedBytes) peak=\(r.peakBuildLockedBytes) vmlck=\(vmlck)\n").data(using: .utf8)!)
}

func run(_ path: String, _ n: Int) {
    let (r, buildSeconds) = makeRedactor(n)
    let fd = open(path, O_RDONLY)
    precondition(fd >= 0, "cannot open \(path)")
    let bufSize = 1 << 20
    let buf = UnsafeMutableRawPointer.allocate(byteCount: bufSize, alignment: 64)
    var outBytes = 0
    let stream = RedactingStream(redactor: r) { chunk in
        outBytes += chunk.count
        var p = chunk.baseAddress!, left = chunk.count
        while left > 0 {
            let w = write(1, p, left)
            precondition(w > 0, "write failed")
            p += w; left -= w
        }
    }
    var inBytes = 0
    let t0 = DispatchTime.now().uptimeNanoseconds
    while true {
        let got = read(fd, buf, bufSize)
        if got <= 0 { break }
        inBytes += got
        try! stream.write(UnsafeRawBufferPointer(start: buf, count: got))
    }
    try! stream.finish()
    let seconds = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
    let mb = Double(inBytes) / 1e6
    FileHandle.standardError.write(String(format: "secrets=%d forms=%d build=%.3fs redact=%.3fs %.0f MB/s (out %d bytes)\n",
                                          n, r.formCount, buildSeconds, seconds, mb / seconds, outBytes).data(using: .utf8)!)
}

func adversarial(megabytes: Int) {
    let size = megabytes << 20
    let value = [UInt8](repeating: UInt8(ascii: "a"), count: 2000) + [UInt8(ascii: "b")]
    let r = Redactor(secrets: [(name: "ADV", value: value.withUnsafeBytes { SecureBytes(copying: $0) })])
    var rng = SplitMix(state: 7)
    let clean = (0..<size).map { _ in UInt8(ascii: "c") + UInt8(rng.below(20)) }
    let run = [UInt8](repeating: UInt8(ascii: "a"), count: size)
    func time(_ input: [UInt8]) -> Double {
        var out = 0
        let stream = RedactingStream(redactor: r) { out += $0.count }
        let t0 = DispatchTime.now().uptimeNanoseconds
        input.withUnsafeBytes { raw in
            var i = 0
            while i < raw.count {
                let n = min(1 << 20, raw.count - i)
                try! stream.write(UnsafeRawBufferPointer(rebasing: raw[i..<(i + n)]))
                i += n
            }
        }
        try! stream.finish()
        precondition(out == input.count)
        return Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
    }
    let tc = time(clean), ta = time(run)
    print(String(format: "adversarial %d MB: clean %.3fs (%.0f MB/s), aaaa… %.3fs (%.0f MB/s), ratio %.2f",
                 megabytes, tc, Double(size) / 1e6 / tc, ta, Double(size) / 1e6 / ta, ta / tc))
}

let args = CommandLine.arguments
switch args.count > 1 ? args[1] : "" {
case "gen" where args.count == 4: gen(args[2], megabytes: Int(args[3])!)
case "patterns" where args.count == 4: patterns(Int(args[2])!, args[3])
case "run" where args.count == 4: run(args[2], Int(args[3])!)
case "adversarial" where args.count == 3: adversarial(megabytes: Int(args[2])!)
case "values" where args.count == 4:
    // One file per generated value (SECRET_i), to load the same secrets into a mount.
    for (i, v) in secretValues(Int(args[2])!).enumerated() {
        _ = FileManager.default.createFile(atPath: "\(args[3])/SECRET_\(i)", contents: Data(v))
    }
default:
    FileHandle.standardError.write("usage: harness gen LOG MB | patterns N FILE | run LOG N | adversarial MB | values N DIR\n".data(using: .utf8)!)
    exit(2)
}
