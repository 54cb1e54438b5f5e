import Glibc
import Logging

/// One log line per event on stderr: `2026-11-26T12:00:00Z info secretfs: message key=value`.
/// The mount's stderr is its log file once it runs in the background.
/// Nothing in secretfs passes a value to a logger: log calls carry names,
/// uids and errno only, and tests grep the log for the values they wrote.
struct StderrLogHandler: LogHandler {
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level
    let label: String

    init(label: String, level: Logger.Level) {
        self.label = label
        self.logLevel = level
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    // The resolver daemon writes one line per request (its audit of who
    // received which values), so a line is built as bytes in one buffer:
    // no copy of the metadata, no reflection, no strftime, and no String
    // appends (about two dozen of them were most of a line's cost).
    func log(event: LogEvent) {
        var line: [UInt8] = []
        line.reserveCapacity(256)
        appendTimestamp(&line)
        line.append(0x20)
        line.append(contentsOf: event.level.rawValue.utf8)   // the case name, as "\(level)" printed it
        line.append(0x20)
        line.append(contentsOf: label.utf8)
        line.append(0x3A); line.append(0x20)
        line.append(contentsOf: event.message.description.utf8)
        if metadata.isEmpty {
            if let extra = event.metadata { append(extra, to: &line) }
        } else {
            var all = metadata
            if let extra = event.metadata { all.merge(extra) { $1 } }
            append(all, to: &line)
        }
        line.append(0x0A)
        line.withUnsafeBytes { try? writeRaw(fd: 2, $0) }
    }

    private func append(_ metadata: Logger.Metadata, to line: inout [UInt8]) {
        for (key, value) in metadata.sorted(by: { $0.key < $1.key }) {
            line.append(0x20)
            line.append(contentsOf: key.utf8)
            line.append(0x3D)
            if case .string(let s) = value { line.append(contentsOf: s.utf8) } else { line.append(contentsOf: value.description.utf8) }
        }
    }

    /// `2026-11-26T12:00:00.000Z` (UTC, milliseconds).
    private func appendTimestamp(_ line: inout [UInt8]) {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        var secs = ts.tv_sec
        var tmv = tm()
        gmtime_r(&secs, &tmv)
        func digits(_ v: Int, _ width: Int) {
            var d: (UInt8, UInt8, UInt8, UInt8) = (48, 48, 48, 48)
            var v = v
            withUnsafeMutableBytes(of: &d) { b in
                for i in stride(from: width - 1, through: 0, by: -1) { b[i] = UInt8(48 + v % 10); v /= 10 }
                line.append(contentsOf: b[0..<width])
            }
        }
        digits(Int(tmv.tm_year) + 1900, 4); line.append(0x2D)
        digits(Int(tmv.tm_mon) + 1, 2); line.append(0x2D)
        digits(Int(tmv.tm_mday), 2); line.append(0x54)
        digits(Int(tmv.tm_hour), 2); line.append(0x3A)
        digits(Int(tmv.tm_min), 2); line.append(0x3A)
        digits(Int(tmv.tm_sec), 2); line.append(0x2E)
        digits(ts.tv_nsec / 1_000_000, 3); line.append(0x5A)
    }
}

func makeLogger(label: String = "secretfs", debug: Bool = false) -> Logger {
    var logger = Logger(label: label) { l in StderrLogHandler(label: l, level: debug ? .debug : .info) }
    logger.logLevel = debug ? .debug : .info
    return logger
}
