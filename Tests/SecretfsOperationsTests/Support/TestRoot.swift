import Foundation
import Glibc
import SecretfsMountSupport

/// The checkout these tests belong to (scripts/, systemd/, man/).
enum SourceTree {
    static let root: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<4 { url.deleteLastPathComponent() }   // Support/, SecretfsOperationsTests/, Tests/
        return url.path
    }()
}

struct CommandFailedHere: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// mkdtemp under the mount tests' prefix, so the suites' sweeps know it.
func makeTestRoot(_ tag: String) throws -> String {
    var template = Array((MountFixture.prefix + "\(getpid())-\(tag)-XXXXXX").utf8CString)
    guard mkdtemp(&template) != nil else { throw POSIXError(.EIO) }
    let root = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    chmod(root, 0o755)
    return root
}
