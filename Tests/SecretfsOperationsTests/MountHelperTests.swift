import Foundation
import Glibc
import SecretfsFS
import SecretfsMountSupport
import SecretfsTestSupport
import Testing
@testable import secretfs

/// `mount -t secretfs`, fstab lines and `umount`, through the real mount(8)
/// and umount(8) with /sbin/mount.secretfs linked to the binary under test.
@Suite(.serialized)
struct MountHelperTests {
    /// The environment without SECRETFS_*: the store and runtime directory
    /// must come from the mount options.
    static var plainEnvironment: [String: String] {
        ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("SECRETFS_") }
            .merging(["SWIFT_BACKTRACE": "enable=no"]) { $1 }
    }

    static func run(_ exe: String, _ args: [String]) throws -> ProcessOutput {
        try Processes.run(exe, args, environment: plainEnvironment)
    }

    func locations(_ f: MountFixture) -> String { "store=\(f.storeDir),runtime_dir=\(f.runtimeDir)" }

    @Test func mountTypeSecretfsMountsAndUmountUnmounts() throws {
        let f = try MountFixture()
        defer { f.close() }
        try MountHelperLink.whileInstalled {
            let o = try Self.run("/usr/bin/mount", ["-t", "secretfs", "demo", f.mnt, "-o", "group=4242," + locations(f)])
            #expect(o.status == 0 && o.stdout.isEmpty && o.stderr.isEmpty, "\(o.status) \(o.stdout) \(o.stderr)")
            let entry = try #require(MountTable.fuseEntry(at: f.mnt))
            #expect(entry.source == "secretfs:demo" && entry.fsType == "fuse.secretfs")
            // group= reached secretfs mount -o: the group may enter, the kernel checks the modes.
            #expect(f.mountOptions.contains("allow_other") && f.mountOptions.contains("default_permissions"), "\(f.mountOptions)")
            try f.expectOK(f.sh("echo by-mount-8 > $MNT/TOKEN && test \"$(stat -c %g $MNT/TOKEN)\" = 4242"))
            #expect(try f.storedValue("TOKEN") == "by-mount-8")
            let pid = try #require(f.mountPID())

            let u = try Self.run("/usr/bin/umount", [f.mnt])
            #expect(u.status == 0, "\(u.stderr)")
            #expect(MountTable.fuseEntry(at: f.mnt) == nil)
            // The mount process sees the unmount, cleans up and exits.
            #expect(f.eventually { kill(pid, 0) != 0 && access("\(f.runtimeDir)/demo.pid", F_OK) != 0 })
            #expect(access("\(f.runtimeDir)/demo.sock", F_OK) != 0)
        }
    }

    @Test func anFstabLineMountsWithMountDirAndUnmountsWithUmount() throws {
        let f = try MountFixture()
        defer { f.close() }
        let systemFstab = try? String(contentsOfFile: "/etc/fstab", encoding: .utf8)
        // The line an operator writes, with every option that mount(8),
        // systemd and fstab conventions add, in an alternative fstab (-T):
        // /etc/fstab is never touched.
        let fstab = f.root + "/fstab"
        let options = "defaults,nofail,_netdev,x-systemd.automount,x-systemd.requires=network-online.target,rw,noauto,user,"
            + "group=4242,max_size=1K," + locations(f)
        try "# test fstab\ndemo  \(f.mnt)  secretfs  \(options)  0  0\n".write(toFile: fstab, atomically: true, encoding: .utf8)
        try MountHelperLink.whileInstalled {
            let o = try Self.run("/usr/bin/mount", ["-T", fstab, f.mnt])
            #expect(o.status == 0 && o.stderr.isEmpty, "\(o.status) \(o.stderr)")
            #expect(MountTable.fuseEntry(at: f.mnt)?.source == "secretfs:demo")
            // `user` implies noexec (and nosuid, nodev), which libfuse applies.
            #expect(f.mountOptions.contains("noexec") && f.mountOptions.contains("allow_other"), "\(f.mountOptions)")
            // max_size=1K reached the mount.
            let big = try f.sh("head -c 2000 /dev/zero | tr '\\0' x > $MNT/BIG")
            #expect(big.status != 0 && big.stderr.contains("too large"), "\(big.stderr)")
            try f.expectOK(f.sh("echo small > $MNT/SMALL"))
            #expect(try f.storedValue("SMALL") == "small")
            let u = try Self.run("/usr/bin/umount", [f.mnt])
            #expect(u.status == 0 && MountTable.fuseEntry(at: f.mnt) == nil, "\(u.stderr)")
        }
        #expect((try? String(contentsOfFile: "/etc/fstab", encoding: .utf8)) == systemFstab)
    }

    @Test func optionsMapOntoSecretfsMountAndMount8sOwnOptionsAreDropped() throws {
        let f = try MountFixture()
        defer { f.close() }
        try MountHelperLink.whileInstalled {
            // --fake: mount(8) runs the helper with -f, which shows (-v) what it would run.
            // mount(8) turns `user` into noexec,nosuid,nodev, which go on to libfuse.
            let options = "defaults,nofail,_netdev,noauto,user,x-systemd.device-timeout=5,noexec,group=ops,keep_newline,"
                + "max_size=1M,cache_timeout=2,store=/var/lib/s,runtime_dir=/run/s,passphrase_file=/etc/secretfs/p,"
                + "resolver_uid=flows,resolver_group=ops,socket_idle_timeout=9,debug"
            let o = try Self.run("/usr/bin/mount", ["--fake", "-v", "-t", "secretfs", "demo", f.mnt, "-o", options])
            #expect(o.status == 0, "\(o.stderr)")
            #expect(o.stderr.contains("mount.secretfs: secretfs mount --store /var/lib/s --runtime-dir /run/s "
                                      + "--passphrase-file /etc/secretfs/p --resolver-uid flows --resolver-group ops "
                                      + "--socket-idle-timeout 9 --debug demo \(f.mnt) -o noexec,nosuid,nodev,group=ops,keep_newline,max_size=1M,cache_timeout=2\n"),
                    "\(o.stderr)")
            #expect(MountTable.fuseEntry(at: f.mnt) == nil)
            // The same call, run by hand as mount(8) would (flags combined).
            let direct = try Self.run(MountHelperLink.path, ["demo", f.mnt, "-fvsn", "-o", "rw,nofail,group=ops"])
            #expect(direct.status == 0 && direct.stderr == "mount.secretfs: secretfs mount demo \(f.mnt) -o group=ops\n", "\(direct.stderr)")
        }
    }

    @Test func aDatabaseURLIsPassedOnAsOneStringWithItsPasswordMasked() throws {
        let f = try MountFixture()
        defer { f.close() }
        let url = "postgresql://flows:s3cret@db1:5432,db2:5432/secrets?sslmode=verify-full&target_session_attrs=read-write"
        try MountHelperLink.whileInstalled {
            // Quoted, as libmount allows, because the URL holds a comma.
            let o = try Self.run("/usr/bin/mount", ["--fake", "-v", "-t", "secretfs", "demo", f.mnt, "-o", "store=\"\(url)\",group=ops"])
            #expect(o.status == 0, "\(o.stderr)")
            #expect(o.stderr.contains("secretfs mount --store 'postgresql://flows:***@db1:5432,db2:5432/secrets?sslmode=verify-full&target_session_attrs=read-write' demo \(f.mnt) -o group=ops\n"),
                    "\(o.stderr)")
            #expect(!o.stderr.contains("s3cret"))
        }
        // libpq judges what is a password, not the text's shape: one after a
        // '?' in the authority, or spelt with spaces, is not shown either.
        for (store, password) in [("postgresql://u:s3?cr3t@h/db", "cr3t"), ("host=/tmp password = pw-with-spaces application_name=a://b", "pw-with-spaces"),
                                  ("host=/tmp sslpassword='key pass'", "key pass")] {
            let shown = MountHelper.display(["mount", "--store", store, "demo", "/srv/d"])
            #expect(!shown.contains(password) && shown.contains("not shown"), "\(shown)")
        }
        #expect(MountHelper.display(["mount", "-o", "group=ops,keep_newline"]) == "secretfs mount -o group=ops,keep_newline")
        // An empty password= after the real one: libpq reads none, the screen would.
        for store in ["postgresql://u:REALPW@h/db?password=", "postgresql://u@h/db?password=REALPW&password="] {
            #expect(!MountHelper.display(["mount", "--store", store]).contains("REALPW"), "\(store)")
        }
        // What is passed on is the string itself; only the display masks it.
        let call = try MountHelper.parse(["demo", "/srv/d", "-o", "rw,store=\"\(url)\",nofail"])
        #expect(try MountHelper.mountArguments(call) == ["mount", "--store", url, "demo", "/srv/d"])
    }

    @Test(.enabled(if: TestDatabase.server != nil, "needs the PostgreSQL test cluster of scripts/test"))
    func aSharedStoreMountsFromItsURLAndKeyFileOptions() throws {
        let f = try MountFixture(shared: true)
        defer { f.close() }
        let url = try #require(f.database?.url)
        try MountHelperLink.whileInstalled {
            let o = try Self.run("/usr/bin/mount", ["-t", "secretfs", "demo", f.mnt, "-o",
                                                    "store=\(url),key_file=\(f.storeDir)/master.key,runtime_dir=\(f.runtimeDir),nofail,_netdev"])
            #expect(o.status == 0, "\(o.status) \(o.stderr)")
            try f.expectOK(f.sh("/usr/bin/printf from-fstab > $MNT/TOKEN"))
            #expect(try f.storedValue("TOKEN") == "from-fstab")
            #expect(try Self.run("/usr/bin/umount", [f.mnt]).status == 0)
        }
    }

    @Test func everyKernelMountFlagThatPassesMounts() throws {
        // The options secretfs hands to libfuse are exactly ones it takes:
        // none passes secretfs's check only to fail in libfuse.
        let f = try MountFixture()
        defer { f.close() }
        for flag in MountCommand.kernelMountFlags.sorted() {
            let o = try f.secretfs(["mount", "demo", f.mnt, "-o", flag])
            #expect(o.status == 0, "-o \(flag): \(o.stderr)")
            if o.status == 0 { try f.unmount() }
        }
    }

    @Test func unknownAndBadOptionsAreRefusedWithTheUsualErrors() throws {
        let f = try MountFixture()
        defer { f.close() }
        try MountHelperLink.whileInstalled {
            func viaMount(_ options: String, project: String = "demo") throws -> ProcessOutput {
                try Self.run("/usr/bin/mount", ["-t", "secretfs", project, f.mnt, "-o", options + "," + locations(f)])
            }
            // mount(8) reads a helper's status as its own: 1 is a usage error, 32 a failed mount.
            let unknown = try viaMount("bogus_option")
            #expect(unknown.status == 1 && unknown.stderr.contains("secretfs: error: -o bogus_option is not a mount option secretfs knows"),
                    "\(unknown.status) \(unknown.stderr)")
            #expect(try f.secretfs(["mount", "demo", f.mnt, "-o", "bogus_option"]).status == 64, "a usage error of secretfs mount too")
            // libfuse unescapes \x and \NNN: the refused options so spelt are
            // refused too, and the mount's names are secretfs's own.
            for option in ["allow\\_other", "allow\\137other", "default\\_permissions", "fsname=secretfs:other", "subtype=x"] {
                let o = try f.secretfs(["mount", "demo", f.mnt, "-o", option])
                #expect(o.status == 64 && o.stderr.contains("is not a mount option secretfs knows"), "\(option): \(o.status) \(o.stderr)")
            }
            // A mistyped store= is not repeated with its password.
            let typo = try viaMount("stor=postgresql://u:s3cr3t-pw@h/db")
            #expect(typo.status == 1 && !typo.stderr.contains("s3cr3t-pw"), "\(typo.stderr)")
            for (option, message) in [("writeback_cache", "-o writeback_cache is refused"), ("max_size=lots", "-o max_size needs"),
                                      ("allow_other", "-o allow_other is decided by secretfs")] {
                let o = try viaMount(option)
                // The very words `secretfs mount -o` says.
                let direct = try f.secretfs(["mount", "demo", f.mnt, "-o", option])
                #expect(o.status == 1 && o.stderr.contains(message) && o.stderr == direct.stderr, "\(option): \(o.status) \(o.stderr)")
            }
            let missing = try viaMount("group=4242", project: "nosuch")
            #expect(missing.status == 32 && missing.stderr.contains("nosuch"), "\(missing.status) \(missing.stderr)")
            let relative = try Self.run("/usr/bin/mount", ["-t", "secretfs", "demo", f.mnt, "-o", "store=var/lib/secretfs"])
            #expect(relative.status == 1 && relative.stderr.contains("-o store needs an absolute path or a postgresql:// URL")
                    && !relative.stderr.contains("var/lib/secretfs"), "a store value is never repeated: \(relative.stderr)")
            #expect(MountTable.fuseEntry(at: f.mnt) == nil)
        }
    }
}
