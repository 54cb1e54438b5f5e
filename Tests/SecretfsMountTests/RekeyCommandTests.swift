import Foundation
import Glibc
import SecretfsMountSupport
import SecretfsStore
import Testing

/// `secretfs rekey` while a project is mounted: the mount keeps writing, a
/// remount works with the new key, the old key is refused.
@Suite(.serialized)
struct RekeyCommandTests {
    @Test func rekeyWhileMountedThenWritesAndARemount() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount()
        try f.expectOK(f.sh("echo before-rekey > $MNT/A"))
        try f.expectOK(f.sh("cp $SECRETFS_STORE/master.key \(f.root)/old.key && head -c 32 /dev/urandom > \(f.root)/new.key && chmod 0400 \(f.root)/new.key"))
        let o = try f.expectOK(f.secretfs(["rekey", "--new-key-file", f.root + "/new.key"]))
        #expect(o.stdout.hasPrefix("re-wrapped 1 project key under the new key, now \(f.storeDir)/master.key"), "\(o.stdout)")
        try f.expectOK(f.sh("echo after-rekey > $MNT/B && echo again >> $MNT/A"))
        try f.unmount()
        try f.mount()
        try f.expectOK(f.sh("echo after-remount > $MNT/C"))
        #expect(try f.storedValue("A") == "before-rekeyagain" && f.storedValue("B") == "after-rekey" && f.storedValue("C") == "after-remount")
        try f.unmount()
        try f.expectOK(f.sh("chmod 0600 $SECRETFS_STORE/master.key && cp \(f.root)/old.key $SECRETFS_STORE/master.key && chmod 0400 $SECRETFS_STORE/master.key"))
        let refused = try f.secretfs(["mount", "demo", f.mnt])
        #expect(refused.status == 11 && refused.stderr.contains("the master key does not open this store"), "\(refused.stderr)")
        let usage = try f.secretfs(["rekey"])
        #expect(usage.status == 64 && usage.stderr.contains("exactly one of --new-key-file"))
        #expect(!(o.stdout + o.stderr + f.logText).contains("before-rekey"))
    }
}
