import Foundation
import Glibc
import SecretfsMountSupport

/// /sbin/mount.secretfs, where mount(8) looks for the helper, as a link to
/// the binary under test while `body` runs, and gone afterwards however
/// `body` ends. A lock keeps two test runs on this machine from sharing it.
/// A helper that a crashed run left (a link into a build directory) is
/// replaced; a real installation is not touched, and the test fails.
enum MountHelperLink {
    static let path = "/sbin/mount.secretfs"
    private static let lockPath = "/tmp/secretfs-test-mount-helper.lock"

    static func whileInstalled<T>(_ body: () throws -> T) throws -> T {
        let lock = open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard lock >= 0 else { throw CommandFailedHere("cannot open \(lockPath): \(String(cString: strerror(errno)))") }
        defer { close(lock) }
        while flock(lock, LOCK_EX) != 0 && errno == EINTR {}

        var st = stat()
        if lstat(path, &st) == 0 {
            let target = (try? FileManager.default.destinationOfSymbolicLink(atPath: path)) ?? ""
            guard st.st_mode & S_IFMT == S_IFLNK, isLeftover(target) else {
                throw CommandFailedHere("\(path) is installed (\(target.isEmpty ? "a file" : "-> " + target)); "
                                        + "these tests would replace it: uninstall it, or run them on another machine")
            }
            unlink(path)
        }
        guard symlink(MountFixture.binary, path) == 0 else {
            throw CommandFailedHere("cannot link \(path): \(String(cString: strerror(errno)))")
        }
        defer { unlink(path) }
        return try body()
    }

    /// A link made by these tests: to a `secretfs` inside a SwiftPM build directory.
    static func isLeftover(_ target: String) -> Bool {
        target.hasSuffix("/secretfs") && target.split(separator: "/").contains { $0.hasPrefix(".build") }
    }
}
