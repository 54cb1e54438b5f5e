import CSQLite
import Foundation
import Glibc
import SecretfsMountSupport
import SecretfsTestSupport
import SecretfsFS
import Testing

/// Directories and files another local user could plant or swap, driven
/// through the real binary as root: the runtime directory (pid file, log), the
/// store directory, the key and passphrase files, and key derivation
/// parameters read from the database. "Another user" is uid 65534.
@Suite(.serialized)
struct TrustBoundaryTests {
    let other: UInt32 = 65534

    func contents(_ path: String) -> String? {
        try? String(contentsOfFile: path, encoding: .utf8)
    }

    /// A root-owned file that a followed link would overwrite or append to.
    func victim(_ f: MountFixture, _ name: String) -> String {
        let path = f.root + "/" + name
        #expect(FileManager.default.createFile(atPath: path, contents: Data("precious\n".utf8)))
        return path
    }

    func mode(_ path: String) -> mode_t {
        var st = stat()
        return lstat(path, &st) == 0 ? st.st_mode & 0o7777 : 0
    }

    @Test func aRuntimeDirectoryOfAnotherUserIsRefused() throws {
        let f = try MountFixture()
        defer { f.close() }
        let pidVictim = victim(f, "victim-pid"), logVictim = victim(f, "victim-log")
        mkdir(f.runtimeDir, 0o755)
        chown(f.runtimeDir, other, other)
        // The attack: the directory's owner points the mount's files
        // at files of root's.
        try f.expectOK(f.sh("ln -s \(pidVictim) \(f.runtimeDir)/demo.pid && ln -s \(logVictim) \(f.runtimeDir)/demo.log",
                            asUID: other))
        let o = try f.secretfs(["mount", f.project, f.mnt])
        #expect(o.status == 13, "\(o.stderr)")
        #expect(o.stderr.contains("secretfs: error: runtime directory \(f.runtimeDir) is not safe to use: "
                                  + "\(f.runtimeDir) is owned by uid 65534, not by you or root"), "\(o.stderr)")
        #expect(o.stderr.contains("hint: chown $(id -un) \(f.runtimeDir), or pass --runtime-dir"), "\(o.stderr)")
        #expect(MountTable.fuseEntry(at: f.mnt) == nil)
        #expect(contents(pidVictim) == "precious\n" && contents(logVictim) == "precious\n")

        // An ancestor anyone may write is as bad (only a sticky root-owned one,
        // as /tmp, is not: others cannot rename what they do not own there).
        chown(f.runtimeDir, 0, 0)
        chmod(f.root, 0o777)
        let writable = try f.secretfs(["mount", f.project, f.mnt])
        chmod(f.root, 0o755)
        #expect(writable.status == 13)
        #expect(writable.stderr.contains("\(f.root) is writable by other users (mode 0777)"), "\(writable.stderr)")
        #expect(writable.stderr.contains("hint: chmod go-w \(f.root)"), "\(writable.stderr)")
        #expect(contents(pidVictim) == "precious\n" && contents(logVictim) == "precious\n")
    }

    @Test func linksInATrustedRuntimeDirectoryAreNeverFollowed() throws {
        let f = try MountFixture()
        defer { f.close() }
        let target = victim(f, "victim")
        mkdir(f.runtimeDir, 0o755)
        let pid = f.runtimeDir + "/demo.pid", log = f.runtimeDir + "/demo.log"

        symlink(target, log)
        let viaLog = try f.secretfs(["mount", f.project, f.mnt])
        #expect(viaLog.status == 13, "\(viaLog.stderr)")
        #expect(viaLog.stderr.contains("secretfs: error: cannot use the log file: \(log) is a symbolic link; secretfs does not follow it"),
                "\(viaLog.stderr)")
        #expect(viaLog.stderr.contains("hint: move \(log) away"), "\(viaLog.stderr)")
        #expect(MountTable.fuseEntry(at: f.mnt) == nil)
        unlink(log)

        symlink(target, pid)
        let viaPid = try f.secretfs(["mount", f.project, f.mnt])
        #expect(viaPid.status == 13, "\(viaPid.stderr)")
        #expect(viaPid.stderr.contains("secretfs: error: cannot use the pid file: \(pid) is a symbolic link; secretfs does not follow it"),
                "\(viaPid.stderr)")
        #expect(viaPid.stderr.contains("hint: remove \(pid)"), "\(viaPid.stderr)")
        #expect(MountTable.fuseEntry(at: f.mnt) == nil)
        #expect(contents(target) == "precious\n", "neither link was followed")
        unlink(pid)

        // A stale pid file (its mount died: no lock) is replaced by a new one.
        #expect(FileManager.default.createFile(atPath: pid, contents: Data("1\n/nowhere\n".utf8)))
        try f.mount()
        let mountPID = try #require(f.mountPID())
        #expect(mountPID != 1)
        #expect(mode(pid) == 0o644 && mode(log) == 0o600)
        #expect(try f.expectOK(f.secretfs(["status"])).stdout.contains(f.mnt))
        try f.unmount()
        #expect(f.eventually { access(pid, F_OK) != 0 }, "the mount removes its own pid file")
        #expect(contents(target) == "precious\n")
    }

    @Test func storeDirectoriesAndKeyFilesOfAnotherUserAreRefused() throws {
        let f = try MountFixture()
        defer { f.close() }
        chown(f.storeDir, other, other)
        let dirOwned = try f.secretfs(["project", "list"])
        #expect(dirOwned.status == 10, "\(dirOwned.stderr)")
        #expect(dirOwned.stderr.contains("secretfs: error: store directory \(f.storeDir) is not safe to use: "
                                         + "\(f.storeDir) is owned by uid 65534"), "\(dirOwned.stderr)")
        #expect(dirOwned.stderr.contains("hint: chown $(id -un) \(f.storeDir); the store directory and every directory above it"),
                "\(dirOwned.stderr)")
        chown(f.storeDir, 0, 0)
        chmod(f.storeDir, 0o777)
        let writable = try f.secretfs(["mount", f.project, f.mnt])
        #expect(writable.status == 10 && writable.stderr.contains("is writable by other users"), "\(writable.stderr)")
        chmod(f.storeDir, 0o700)

        let key = f.storeDir + "/master.key"
        chown(key, other, other)
        let keyOwned = try f.secretfs(["mount", f.project, f.mnt])
        #expect(keyOwned.status == 11, "\(keyOwned.stderr)")
        #expect(keyOwned.stderr.contains("secretfs: error: cannot trust the master key file: \(key) is owned by uid 65534"),
                "\(keyOwned.stderr)")
        #expect(keyOwned.stderr.contains("hint: "))
        #expect(MountTable.fuseEntry(at: f.mnt) == nil)
        chown(key, 0, 0)
        try f.mount()
        try f.unmount()

        // init: an existing directory open to others is refused unless it is
        // the caller's own and empty.
        let used = f.root + "/used"
        try f.expectOK(f.sh("mkdir -m 755 \(used) && touch \(used)/notes"))
        let refused = try f.secretfs(["init", "--store", used])
        #expect(refused.status == 10, "\(refused.stderr)")
        #expect(refused.stderr.contains("store directory \(used) has mode 755"), "\(refused.stderr)")
        #expect(refused.stderr.contains("hint: chmod 0700 \(used)"), "\(refused.stderr)")
        try f.expectOK(f.sh("rm \(used)/notes"))
        try f.expectOK(f.secretfs(["init", "--store", used]))
        #expect(mode(used) == 0o700 && mode(used + "/secretfs.db") == 0o600)
    }

    @Test func passphraseFilesAndKeyDerivationParametersAreChecked() throws {
        let f = try MountFixture(initStore: false)
        defer { f.close() }
        let pass = f.root + "/pass.txt"
        try f.expectOK(f.sh("echo 'correct horse battery staple' > \(pass) && chmod 644 \(pass)"))
        let open = try f.secretfs(["init", "--passphrase-file", pass])
        #expect(open.status == 11, "\(open.stderr)")
        #expect(open.stderr.contains("secretfs: error: passphrase file \(pass) has mode 644"), "\(open.stderr)")
        #expect(open.stderr.contains("hint: chmod 0600 \(pass)"), "\(open.stderr)")
        #expect(access(f.storeDir, F_OK) != 0, "a refused init leaves nothing behind")
        chmod(pass, 0o600)
        try f.expectOK(f.secretfs(["init", "--passphrase-file", pass]))
        try f.expectOK(f.secretfs(["project", "create", "demo", "--passphrase-file", pass]))

        // A memory limit beyond what an Int holds used to trap every command
        // that derives the key.
        var db: OpaquePointer?
        #expect(sqlite3_open(f.storeDir + "/secretfs.db", &db) == SQLITE_OK)
        #expect(sqlite3_exec(db, "UPDATE meta SET value = CAST('18446744073709551615' AS BLOB) WHERE key = 'kdf_memlimit'",
                             nil, nil, nil) == SQLITE_OK)
        sqlite3_close(db)
        for args in [["project", "create", "other"], ["mount", "demo", f.mnt]] {
            let o = try f.secretfs(args + ["--passphrase-file", pass])
            #expect(o.status == 10, "\(args): exit \(o.status) \(o.stderr)")
            #expect(o.stderr.contains("secretfs: error: the store is damaged: the key derivation memory limit "
                                      + "18446744073709551615 is outside"), "\(o.stderr)")
            #expect(o.stderr.contains("hint: restore the store from a backup"), "\(o.stderr)")
        }
        #expect(MountTable.fuseEntry(at: f.mnt) == nil)
        // Commands that need no key are unaffected.
        try f.expectOK(f.secretfs(["project", "list"]))
    }
}
