import Foundation
import SecretfsMountSupport
import SecretfsTestSupport

/// The tree scripts/install writes with `--prefix ROOT/prefix --helperdir
/// ROOT/prefix/sbin`, the binary under test standing in for the release build.
struct Installation {
    let prefix: String

    init(under root: String) throws {
        prefix = root + "/prefix"
        let o = try Processes.run("/bin/bash", [SourceTree.root + "/scripts/install", "--prefix", prefix,
                                                "--helperdir", prefix + "/sbin", "--binary", MountFixture.binary])
        guard o.status == 0 else { throw CommandFailedHere("scripts/install: exit \(o.status): \(o.stderr)") }
    }

    var binDirectory: String { prefix + "/bin" }
    var unitDirectory: String { prefix + "/lib/systemd/system" }
    func unit(_ name: String) -> String { unitDirectory + "/" + name }
}
