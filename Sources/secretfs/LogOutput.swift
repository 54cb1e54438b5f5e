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

    func log(event: LogEvent) {
        var all = metadata
        if let extra = event.metadata { all.merge(extra) { $1 } }
        var text = "\(timestampNow()) \(event.level) \(label): \(event.message)"
        for key in all.keys.sorted() { text += " \(key)=\(all[key]!)" }
        text += "\n"
        writeStderr(text)
    }

    private func timestampNow() -> String {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        var secs = ts.tv_sec
        var tmv = tm()
        gmtime_r(&secs, &tmv)
        var buf = [CChar](repeating: 0, count: 32)
        strftime(&buf, buf.count, "%Y-%m-%dT%H:%M:%S", &tmv)
        let ms = ts.tv_nsec / 1_000_000
        return cString(buf) + "." + String(repeating: "0", count: ms < 10 ? 2 : ms < 100 ? 1 : 0) + String(ms) + "Z"
    }
}

func makeLogger(label: String = "secretfs", debug: Bool = false) -> Logger {
    var logger = Logger(label: label) { l in StderrLogHandler(label: l, level: debug ? .debug : .info) }
    logger.logLevel = debug ? .debug : .info
    return logger
}
