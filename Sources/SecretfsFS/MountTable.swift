import Glibc

/// Reads /proc/self/mountinfo, the kernel's own view of what is mounted.
public enum MountTable {
    public struct Entry: Sendable {
        public var mountpoint: String
        public var fsType: String
        public var source: String
    }

    public static func entries() -> [Entry] {
        guard let f = fopen("/proc/self/mountinfo", "r") else { return [] }
        defer { fclose(f) }
        var out: [Entry] = []
        var line: UnsafeMutablePointer<CChar>?
        var cap = 0
        while getline(&line, &cap, f) > 0 {
            let text = String(cString: line!)
            let fields = text.split(separator: " ", omittingEmptySubsequences: false)
            // Field 5 is the mount point; after the "-" separator: fs type, source.
            guard fields.count > 5, let dash = fields.firstIndex(of: "-"), dash + 2 < fields.count else { continue }
            out.append(Entry(mountpoint: unescape(String(fields[4])), fsType: String(fields[dash + 1]),
                             source: unescape(String(fields[dash + 2]).trimmingNewline())))
        }
        free(line)
        return out
    }

    public static func isMountpoint(_ path: String) -> Bool {
        entries().contains { $0.mountpoint == path }
    }

    public static func fuseEntry(at path: String) -> Entry? {
        entries().last { $0.mountpoint == path && $0.fsType.hasPrefix("fuse") }
    }

    /// mountinfo escapes space, tab, newline and backslash as \ooo octal.
    static func unescape(_ s: String) -> String {
        guard s.contains("\\") else { return s }
        var bytes: [UInt8] = []
        let u = Array(s.utf8)
        var i = 0
        while i < u.count {
            if u[i] == 0x5C, i + 3 < u.count,
               let v = UInt8(String(decoding: u[(i + 1)...(i + 3)], as: UTF8.self), radix: 8) {
                bytes.append(v); i += 4
            } else {
                bytes.append(u[i]); i += 1
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

extension String {
    func trimmingNewline() -> String {
        hasSuffix("\n") ? String(dropLast()) : self
    }
}
