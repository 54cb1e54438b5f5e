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
    // received which values), so a line is built in one String, without
    // copying the metadata, without reflection and without strftime.
    func log(event: LogEvent) {
        var text = ""
        text.reserveCapacity(192)
        appendTimestamp(&text)
        text += " "
        text += event.level.rawValue   // the case name, as "\(level)" printed it
        text += " "
        text += label
        text += ": "
        text += event.message.description
        if metadata.isEmpty {
            if let extra = event.metadata { append(extra, to: &text) }
        } else {
            var all = metadata
            if let extra = event.metadata { all.merge(extra) { $1 } }
            append(all, to: &text)
        }
        text += "\n"
        text.withUTF8 { try? writeRaw(fd: 2, UnsafeRawBufferPointer($0)) }
    }

    private func append(_ metadata: Logger.Metadata, to text: inout String) {
        for (key, value) in metadata.sorted(by: { $0.key < $1.key }) {
            text += " "
            text += key
            text += "="
            if case .string(let s) = value { text += s } else { text += value.description }
        }
    }

    /// `2026-11-26T12:00:00.000Z` (UTC, milliseconds), formatted into a
    /// fixed buffer and appended once.
    private func appendTimestamp(_ text: inout String) {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        var secs = ts.tv_sec
        var tmv = tm()
        gmtime_r(&secs, &tmv)
        var buf = (UInt64(0), UInt64(0), UInt64(0))   // 24 bytes, the stamp's length
        withUnsafeMutableBytes(of: &buf) { b in
            var at = 0
            func digits(_ v: Int, _ width: Int) {
                var v = v
                for i in stride(from: at + width - 1, through: at, by: -1) { b[i] = UInt8(48 + v % 10); v /= 10 }
                at += width
            }
            func char(_ c: UInt8) { b[at] = c; at += 1 }
            digits(Int(tmv.tm_year) + 1900, 4); char(0x2D)
            digits(Int(tmv.tm_mon) + 1, 2); char(0x2D)
            digits(Int(tmv.tm_mday), 2); char(0x54)
            digits(Int(tmv.tm_hour), 2); char(0x3A)
            digits(Int(tmv.tm_min), 2); char(0x3A)
            digits(Int(tmv.tm_sec), 2); char(0x2E)
            digits(ts.tv_nsec / 1_000_000, 3); char(0x5A)
            text += String(decoding: UnsafeRawBufferPointer(rebasing: b[0..<at]), as: UTF8.self)
        }
    }
}

func makeLogger(label: String = "secretfs", debug: Bool = false) -> Logger {
    var logger = Logger(label: label) { l in StderrLogHandler(label: l, level: debug ? .debug : .info) }
    logger.logLevel = debug ? .debug : .info
    return logger
}
