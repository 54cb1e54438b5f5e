import CShims
import Foundation
import Glibc
import SecretfsFS
import SecretfsMountSupport
import Testing

/// Findings of the trust-boundaries review that a hostile local user (uid
/// 65534 through setpriv), or a member overstepping, can try. Each of these
/// succeeded against the code before the fix.
@Suite(.serialized)
struct LocalUserTests {
    static let stranger: UInt32 = 65534

    // MARK: Strangers are refused by the kernel

    @Test func aStrangerCanNeitherWatchNorStatAMountWithoutAGroup() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount()
        #expect(!f.mountOptions.contains("allow_other"), "\(f.mountOptions)")
        try f.expectOK(f.sh("echo v > $MNT/API_TOKEN && ls -l $MNT >/dev/null"))

        // inotify on the mountpoint would report every name created or deleted.
        let watch = try f.sh("inotifywait -t 1 -e create $MNT", asUID: Self.stranger)
        #expect(watch.status != 0 && watch.stderr.contains("Permission denied"), "\(watch.status) \(watch.stderr)")
        // After the owner's `ls -l`, the kernel has the entry cached: still refused.
        let stat = try f.sh("stat $MNT/API_TOKEN", asUID: Self.stranger)
        #expect(stat.status != 0 && stat.stderr.contains("Permission denied"), "\(stat.stderr)")
        #expect(!stat.stdout.contains("API_TOKEN"))
    }

    @Test func withAGroupTheKernelEnforcesTheModeBits() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount(["-o", "group=4242"])
        #expect(f.mountOptions.contains("allow_other") && f.mountOptions.contains("default_permissions"), "\(f.mountOptions)")
        try f.expectOK(f.sh("echo v > $MNT/API_TOKEN && ls -l $MNT >/dev/null"))
        // A member writes and lists.
        try f.expectOK(f.sh("echo member > $MNT/BY_MEMBER && ls $MNT | grep -q API_TOKEN", asUID: Self.stranger, gid: 4242))
        #expect(try f.storedValue("BY_MEMBER") == "member")
        // A stranger is refused by the kernel on every path it answers alone.
        // Right after a member used it: the mountpoint's own attributes are
        // not served to a stranger from the kernel's cache either.
        try f.expectOK(f.sh("ls -la $MNT >/dev/null", asUID: Self.stranger, gid: 4242))
        for op in ["stat $MNT", "inotifywait -t 1 -e create $MNT", "stat $MNT/API_TOKEN", "ls $MNT", "echo x > $MNT/API_TOKEN"] {
            let o = try f.sh(op, asUID: Self.stranger)
            #expect(o.status != 0 && o.stderr.contains("Permission denied"), "\(op): \(o.stderr)")
        }
        #expect(try f.storedValue("API_TOKEN") == "v")
    }

    /// `stat --cached=always` skips the permission check and reads what a
    /// member's stat left on the inode: it must not say when secrets changed.
    @Test func aStrangersCachedStatOfAGroupMountTellsNoChangeTime() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount(["-o", "group=4242"])
        let mounted = try f.expectOK(f.sh("stat -c %Y $MNT", asUID: Self.stranger, gid: 4242)).stdout
        try f.expectOK(f.sh("sleep 1.1 && echo v > $MNT/A && echo w > $MNT/B && rm $MNT/B"))
        let member = try f.expectOK(f.sh("stat -c %Y $MNT", asUID: Self.stranger, gid: 4242)).stdout
        let cached = try f.sh("stat --cached=always -c %Y $MNT", asUID: Self.stranger + 1)
        #expect(member == mounted, "the directory's mtime moved with a write: \(mounted) -> \(member)")
        #expect(cached.status != 0 || cached.stdout == mounted, "\(cached.stdout) \(cached.stderr)")
    }

    @Test func allowOtherAndDefaultPermissionsAreNotTheUsersToSet() throws {
        let f = try MountFixture()
        defer { f.close() }
        for option in ["allow_other", "default_permissions", "allow_root"] {
            let o = try f.secretfs(["mount", f.project, f.mnt, "-o", option])
            #expect(o.status == 64 && o.stderr.contains("-o \(option) is decided by secretfs"), "\(o.stderr)")
        }
    }

    // MARK: The privileged socket's allow-list works as written

    @Test func everyAcceptedAllowListOptionWorksForARealOtherUid() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.expectOK(f.secretfs(["mount", f.project, f.mnt, "--resolver-uid", "65534",
                                   "--resolver-group", "4242", "--resolver-group", "4343"]))
        try f.expectOK(f.sh("echo token-for-resolver > $MNT/TOKEN"))
        let expr = "printf 'secrets.TOKEN' | secretfs resolve --project demo --format expr"
        // The owner is still allowed; the named uid; a member of the second group.
        for (uid, gid) in [(UInt32?.none, UInt32?.none), (Self.stranger, Self.stranger), (65000, 4343)] {
            let o = try f.sh("PATH=\(Self.binDir):$PATH; \(expr)", asUID: uid, gid: gid)
            #expect(o.status == 0 && o.stdout == "\"token-for-resolver\"", "uid \(uid.map(String.init) ?? "owner"): \(o.stderr)")
        }
        // Anyone else is refused by the kernel at connect(2).
        let o = try f.sh("PATH=\(Self.binDir):$PATH; \(expr)", asUID: 65000, gid: 65000)
        #expect(o.status == 15 && o.stderr.contains("permission denied connecting to"), "\(o.stderr)")
        #expect(!o.stdout.contains("token-for-resolver"))
    }

    @Test func aStrangerConnectingInALoopDoesNotKeepAnAllowedClientOut() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.expectOK(f.secretfs(["mount", f.project, f.mnt, "--resolver-uid", "65534"]))
        try f.expectOK(f.sh("echo served > $MNT/TOKEN"))
        let resolve = "printf secrets.TOKEN | setpriv --reuid=%d --regid=%d --clear-groups secretfs resolve --project demo --format expr"
        let script = "PATH=\(Self.binDir):$PATH; "
            + "(for i in $(seq 1 150); do \(String(format: resolve, 65000, 65000)) >/dev/null 2>&1; done) & "
            + "ok=0; for i in $(seq 1 20); do \(String(format: resolve, 65534, 65534)) >/dev/null && ok=$((ok+1)); done; wait; echo $ok"
        #expect(try f.expectOK(f.sh(script)).stdout == "20\n")
    }

    @Test func redactWithAThousandSecretsWorksAsANonRootUserUnderTheDefaultLockedMemoryLimit() throws {
        let f = try MountFixture()
        defer { f.close() }
        // 1,000 values of 40-odd bytes, each registered in all its encoded forms.
        var env = ""
        for i in 0..<1000 { env += "S\(i)=value-\(i)-" + String(repeating: String(format: "%08x", i &* 2_654_435_761), count: 4) + "\n" }
        try f.expectOK(f.secretfs(["import", "demo", "-"], stdin: env))
        try f.expectOK(f.secretfs(["mount", f.project, f.mnt, "--resolver-uid", "65534"]))
        let needle = "value-7-" + String(repeating: String(format: "%08x", 7 &* 2_654_435_761), count: 4)
        // As nobody, under the default 8 MiB RLIMIT_MEMLOCK (no CAP_IPC_LOCK).
        let script = "PATH=\(Self.binDir):$PATH; printf 'token=%s end\\n' '\(needle)' | "
            + "setpriv --reuid=65534 --regid=65534 --clear-groups prlimit --memlock=8388608:8388608 secretfs redact --project demo"
        let o = try f.sh(script)
        #expect(o.status == 0 && o.stdout == "token=[REDACTED] end\n", "\(o.status) \(o.stdout) \(o.stderr)")
        #expect(!o.stderr.contains("locked memory") && !o.stdout.contains(needle), "\(o.stderr)")
    }

    @Test func rootNeverImportsAFileAnotherUserPointedItAt() throws {
        // A root-only dotenv file, and the paths nobody can arrange to lead
        // to it: a symlink in sticky /tmp, and a directory of nobody's that
        // they can turn into a symlink between the check and the open.
        let f = try MountFixture()
        defer { f.close() }
        let secret = f.root + "/root-only.env"
        try f.expectOK(f.sh("printf 'ROOT_ONLY=root-only-value\\n' > \(secret) && chmod 0600 \(secret)"))
        let link = "/tmp/secretfs-import-link-\(getpid()).env", theirs = "/tmp/secretfs-import-dir-\(getpid())"
        defer { unlink(link); _ = try? f.sh("rm -rf \(theirs)") }
        try f.expectOK(f.sh("setpriv --reuid=65534 --regid=65534 --clear-groups sh -c 'ln -s \(secret) \(link) && mkdir \(theirs) "
                            + "&& ln -s \(secret) \(theirs)/x.env'"))
        for path in [link, theirs + "/x.env"] {
            let o = try f.secretfs(["import", "demo", path])
            #expect(o.status == 1 && o.stderr.hasPrefix("secretfs: error: ") && o.stderr.contains("hint: "), "\(path): \(o.stderr)")
        }
        #expect(try f.storedNames().isEmpty)
        // The same file given by its own path (a directory only root writes) imports.
        try f.expectOK(f.secretfs(["import", "demo", secret]))
        #expect(try f.storedValue("ROOT_ONLY") == "root-only-value")
    }

    @Test func theDaemonRefusesASocketDirectoryAnotherUserCanWrite() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.expectOK(f.sh("mkdir \(f.root)/theirs && chown 65534 \(f.root)/theirs"))
        let o = try f.sh("timeout 5 \(MountFixture.binary) resolver --listen \(f.root)/theirs/d.sock")
        #expect(o.status == 15 && o.stderr.contains("theirs") && o.stderr.contains("not safe to use"), "\(o.status) \(o.stderr)")
        #expect(access("\(f.root)/theirs/d.sock", F_OK) != 0)
    }

    @Test func aClientRefusesASocketServedByAnUntrustedUid() throws {
        let f = try MountFixture()
        defer {
            _ = try? f.sh("kill $(cat \(f.root)/their.pid) 2>/dev/null; true")
            f.close()
        }
        // uid 65534 serves a daemon socket in its own directory (which it may),
        // and the socket ends up in a directory of root's (a planted socket).
        let bin = MountFixture.binary
        try f.expectOK(f.sh("mkdir -m 0700 \(f.root)/theirs && chown 65534:65534 \(f.root)/theirs && mkdir -m 0755 \(f.root)/ours"))
        try f.expectOK(f.sh("setpriv --reuid=65534 --regid=65534 --clear-groups \(MountFixture.binaryForAnyUser) resolver --listen \(f.root)/theirs/d.sock "
                            + "--runtime-dir \(f.root)/theirs >/dev/null 2>&1 </dev/null & echo $! > \(f.root)/their.pid; "
                            + "for i in $(seq 1 300); do [ -S \(f.root)/theirs/d.sock ] && break; sleep 0.02; done; "
                            + "mv \(f.root)/theirs/d.sock \(f.root)/ours/d.sock"))
        let o = try f.sh("printf secrets.X | \(bin) resolve --project demo --format expr --resolver \(f.root)/ours/d.sock")
        #expect(o.status == 15 && o.stderr.contains("served by uid 65534") && o.stderr.contains("does not trust"), "\(o.stderr)")
    }

    @Test func aProjectMountedThroughAnotherRuntimeDirectoryIsNotDeleted() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount()
        try f.expectOK(f.sh("echo v > $MNT/A"))
        let o = try f.sh("SECRETFS_RUNTIME_DIR=\(f.root)/elsewhere \(MountFixture.binary) project delete demo --force")
        #expect(o.status == 12 && o.stderr.contains("is mounted from this store"), "\(o.status) \(o.stderr)")
        #expect(try f.storedValue("A") == "v")
    }

    @Test func aGroupMembersReadIsRefusedByTheKernel() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount(["-o", "group=4242"])
        try f.expectOK(f.sh("echo v > $MNT/A"))
        let o = try f.sh("cat $MNT/A", asUID: Self.stranger, gid: 4242)
        #expect(o.status != 0 && o.stderr.contains("Permission denied") && o.stdout.isEmpty, "\(o.stderr)")
        // Root (the owner here) reads nothing and succeeds, as on any mount.
        #expect(try f.expectOK(f.sh("cat $MNT/A")).stdout.isEmpty)
    }

    // MARK: Names are bytes

    @Test func aKelvinSignDoesNotAliasK() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount()
        try f.expectOK(f.sh("echo kept-value > $MNT/API_KEY"))
        let kelvin = "API_$(printf '\\342\\204\\252')EY"
        for op in ["rm \"$MNT/\(kelvin)\"", "stat \"$MNT/\(kelvin)\"", "mv \"$MNT/\(kelvin)\" $MNT/OTHER"] {
            let o = try f.sh(op)
            #expect(o.status != 0 && o.stderr.contains("No such file"), "\(op): \(o.stderr)")
        }
        #expect(try f.expectOK(f.sh("ls $MNT")).stdout == "API_KEY\n")
        #expect(try f.storedValue("API_KEY") == "kept-value")
        #expect(try f.expectOK(f.secretfs(["audit", "demo"])).stdout.contains("delete") == false)
    }

    // MARK: Options and limits

    @Test func anOversizedMaxSizeIsAUsageErrorNotACrash() throws {
        let f = try MountFixture()
        defer { f.close() }
        for value in ["99999999999999M", "9223372036854775807K", "-1", "1.5K", "M"] {
            let o = try f.secretfs(["mount", f.project, f.mnt, "-o", "max_size=\(value)"])
            #expect(o.status == 64 && o.stderr.hasPrefix("secretfs: error: -o max_size"), "\(value): \(o.status) \(o.stderr)")
        }
    }

    @Test func thousandsOfOpenWriteHandlesGetEMFILEAndTheMountStaysUp() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount()
        var fds: [Int32] = []
        defer { for fd in fds { close(fd) } }
        var refusal: Int32 = 0
        for i in 0..<600 {
            let fd = open("\(f.mnt)/H\(i)", O_WRONLY | O_CREAT | O_TRUNC, 0o600)
            if fd < 0 { refusal = errno; break }
            fds.append(fd)
        }
        #expect(refusal == EMFILE, "errno \(refusal) after \(fds.count) handles")
        #expect(fds.count == MountOptions().maxWriteHandlesPerUID)
        for fd in fds { close(fd) }
        fds = []
        // Still serving, and the handles are free again.
        try f.expectOK(f.sh("echo after > $MNT/AFTER && ls $MNT | grep -q AFTER"))
        #expect(try f.storedValue("AFTER") == "after")
    }

    @Test func oneUidsPendingValuesAreBoundedInBytes() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount(["-o", "max_size=16M"])
        var fds: [Int32] = []
        defer { for fd in fds { close(fd) } }
        let chunk = [UInt8](repeating: 0x42, count: 8 << 20)
        var refusal: Int32 = 0
        for i in 0..<20 {
            let fd = open("\(f.mnt)/BIG\(i)", O_WRONLY | O_CREAT | O_TRUNC, 0o600)
            #expect(fd >= 0)
            fds.append(fd)
            let n = chunk.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n < 0 { refusal = errno; break }
        }
        // 64 MiB for one uid at max_size=16M (not 20 x 16 MiB), then ENOMEM.
        #expect(refusal == ENOMEM, "errno \(refusal) after \(fds.count) handles")
        #expect(fds.count <= 9)
        let opened = fds.count
        for fd in fds { close(fd) }
        fds = []
        try f.expectOK(f.sh("echo after > $MNT/AFTER"))
        #expect(try f.eventually { try f.storedValue("AFTER") == "after" })
        // The handle that ran out was poisoned: no value cut short was stored.
        let names = try f.storedNames().filter { $0.hasPrefix("BIG") }
        #expect(names.count == opened - 1, "\(names)")
        for n in names where n.hasPrefix("BIG") { #expect(try f.storedBytes(n)?.count == 8 << 20, "\(n)") }
    }

    @Test func appendSetWithFcntlAfterOpenIsHonoured() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount()
        try f.expectOK(f.sh("printf old > $MNT/LOG"))
        let fd = open("\(f.mnt)/LOG", O_WRONLY)
        #expect(fd >= 0)
        #expect(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_APPEND) == 0)
        #expect(Array("-new".utf8).withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } == 4)
        #expect(close(fd) == 0)
        #expect(try f.eventually { try f.storedValue("LOG") == "old-new" })
    }

    @Test func aSecondMountOfTheSameProjectIsRefused() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount()
        try f.expectOK(f.sh("mkdir -p $MNT.2 && echo v > $MNT/A"))
        let o = try f.sh("SECRETFS_RUNTIME_DIR=\(f.root)/run2 \(MountFixture.binary) mount demo $MNT.2")
        #expect(o.status == 13 && o.stderr.contains("already mounted from the store"), "\(o.stderr)")
        #expect(MountTable.fuseEntry(at: f.mnt + ".2") == nil)
    }

    // MARK: The mountpoint is trusted as the store is

    /// Before the fix the mountpoint was checked through its path and mounted
    /// through it again: a stranger who owned it (in a sticky /tmp) or could
    /// write its parent swapped it for a symlink, and root's mount landed on
    /// the directory the link named.
    @Test func aMountpointAStrangerCouldSwapIsRefused() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.expectOK(f.sh("""
            mkdir victim sticky open && chmod 1777 sticky && chmod 0777 open && chmod 0755 .
            setpriv --reuid=\(Self.stranger) --regid=\(Self.stranger) --clear-groups sh -c \
              'mkdir sticky/mine && ln -s \(f.root)/victim sticky/link && mkdir open/m'
            """))
        let cases: [(String, String)] = [
            ("sticky/link", "sticky/link is a symbolic link owned by uid \(Self.stranger)"),
            ("sticky/mine", "sticky/mine is owned by uid \(Self.stranger)"),
            ("open/m", "open is writable by other users (mode 0777)"),
        ]
        for (path, problem) in cases {
            let o = try f.secretfs(["mount", f.project, f.root + "/" + path])
            #expect(o.status == 13 && o.stderr.contains("is not safe to mount on") && o.stderr.contains(problem)
                    && o.stderr.contains("hint: "), "\(path): \(o.stderr)")
        }
        for path in ["victim", "sticky/link", "sticky/mine", "open/m"] {
            #expect(MountTable.fuseEntry(at: f.root + "/" + path) == nil, "\(path) was mounted")
        }
    }

    /// A symlink the caller owns is followed: the mount is made, listed and
    /// unmounted under the directory it names.
    @Test func aMountpointThroughOwnSymlinkMountsTheDirectoryItNames() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.expectOK(f.sh("ln -s $MNT link"))
        let o = try f.expectOK(f.secretfs(["mount", f.project, f.root + "/link"]))
        #expect(o.stdout.contains("at \(f.mnt) "), "\(o.stdout)")
        #expect(MountTable.fuseEntry(at: f.mnt) != nil)
        try f.expectOK(f.sh("echo v > link/A"))
        #expect(try f.expectOK(f.secretfs(["status"])).stdout.contains(f.mnt))
        try f.expectOK(f.secretfs(["umount", f.root + "/link"]))
        #expect(MountTable.fuseEntry(at: f.mnt) == nil)
        #expect(try f.storedValue("A") == "v")
    }

    // MARK: Output that reaches a terminal

    @Test func auditEscapesControlCharacters() throws {
        let f = try MountFixture()
        defer { f.close() }
        // A database writer (attacker 4) puts terminal escapes into a row.
        try f.expectOK(f.sh("sqlite3 \(f.storeDir)/secretfs.db \"INSERT INTO audit(project, at, uid, pid, action, names, detail) " +
                            "VALUES ('demo', 1, 0, 1, 'set', 'A', 'x' || char(27) || '[2J' || char(10) || 'forged line')\""))
        let out = try f.expectOK(f.secretfs(["audit", "demo"])).stdout
        #expect(!out.contains("\u{1b}") && !out.contains("\nforged line"), "\(out)")
        #expect(out.contains("\\u{1b}[2J\\u{a}forged line"))
        // Project names in listings come from the database too.
        try f.expectOK(f.sh("sqlite3 \(f.storeDir)/secretfs.db \"UPDATE projects SET name = 'x' || char(27) || '[2J' WHERE name = 'demo'\""))
        for args in [["project", "list"], ["status"]] {
            let listing = try f.expectOK(f.secretfs(args)).stdout
            #expect(!listing.contains("\u{1b}") && listing.contains("x\\u{1b}[2J"), "\(args): \(listing)")
        }
    }

    @Test func runKeepsSecretfsSettingsFromTheCommand() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount()
        try f.expectOK(f.sh("echo v > $MNT/A"))
        let o = try f.expectOK(f.secretfs(["run", "--project", "demo", "--env", "A", "--", "env"]))
        #expect(o.stdout.contains("A=") && !o.stdout.contains("SECRETFS_"), "\(o.stdout)")
    }

    /// Where other uids find the binary (see MountFixture.binaryForAnyUser).
    static var binDir: String { (MountFixture.binaryForAnyUser as NSString).deletingLastPathComponent }
}
