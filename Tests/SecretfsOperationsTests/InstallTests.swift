import Foundation
import Glibc
import SecretfsMountSupport
import SecretfsTestSupport
import Testing

/// scripts/install and scripts/install --uninstall, into a --destdir.
@Suite(.serialized)
struct InstallTests {
    static let script = SourceTree.root + "/scripts/install"

    /// Every entry under `dir`: type (f, d, l), path relative to it, mode, link target.
    static func tree(_ dir: String) throws -> [String] {
        let o = try Processes.run("/usr/bin/find", [dir, "-mindepth", "1", "-printf", "%y %P %m %l\\n"])
        return o.stdout.split(separator: "\n").map(String.init).sorted()
    }

    /// Runs scripts/install where the whole file system is read-only except
    /// `dest` (a mount namespace of its own): a write anywhere else fails it.
    static func installConfined(_ dest: String, _ args: [String]) throws -> ProcessOutput {
        let quoted = ([script] + args).map { "'\($0)'" }.joined(separator: " ")
        return try Processes.run("/usr/bin/unshare", ["--mount", "--propagation", "private", "/bin/sh", "-c",
                                                      "mount --bind '\(dest)' '\(dest)' && mount -o remount,bind,ro / && exec /bin/bash \(quoted)"])
    }

    static let expected = [
        "d sbin 755 ", "l sbin/mount.secretfs 777 /usr/local/bin/secretfs",
        "d usr 755 ", "d usr/local 755 ", "d usr/local/bin 755 ", "f usr/local/bin/secretfs 755 ",
        "d usr/local/lib 755 ", "d usr/local/lib/systemd 755 ", "d usr/local/lib/systemd/system 755 ",
        "f usr/local/lib/systemd/system/secretfs-resolver.service 644 ", "f usr/local/lib/systemd/system/secretfs@.service 644 ",
        "d usr/local/share 755 ", "d usr/local/share/bash-completion 755 ", "d usr/local/share/bash-completion/completions 755 ",
        "f usr/local/share/bash-completion/completions/secretfs 644 ",
        "d usr/local/share/fish 755 ", "d usr/local/share/fish/vendor_completions.d 755 ",
        "f usr/local/share/fish/vendor_completions.d/secretfs.fish 644 ",
        "d usr/local/share/man 755 ", "d usr/local/share/man/man1 755 ", "f usr/local/share/man/man1/secretfs.1 644 ",
        "d usr/local/share/secretfs 755 ", "f usr/local/share/secretfs/installed-files 644 ",
        "d usr/local/share/zsh 755 ", "d usr/local/share/zsh/site-functions 755 ", "f usr/local/share/zsh/site-functions/_secretfs 644 ",
    ].sorted()

    @Test func aDestdirInstallWritesEveryFileThereAndNothingElsewhere() throws {
        let root = try makeTestRoot("install")
        defer { _ = try? MountFixture.shell("rm -rf '\(root)'") }
        let dest = root + "/dest"
        mkdir(dest, 0o755)
        let o = try Self.installConfined(dest, ["--destdir", dest, "--binary", MountFixture.binary])
        #expect(o.status == 0, "\(o.stderr)")
        #expect(try Self.tree(dest) == Self.expected)

        // The files are what they should be: the binary, the page, the
        // completions the binary generates, the units for this prefix.
        let local = dest + "/usr/local"
        #expect(FileManager.default.contentsEqual(atPath: local + "/bin/secretfs", andPath: MountFixture.binary))
        #expect(FileManager.default.contentsEqual(atPath: local + "/share/man/man1/secretfs.1", andPath: SourceTree.root + "/man/secretfs.1"))
        for (shell, path) in [("bash", "bash-completion/completions/secretfs"), ("zsh", "zsh/site-functions/_secretfs"),
                              ("fish", "fish/vendor_completions.d/secretfs.fish")] {
            let generated = try Processes.run(MountFixture.binary, ["--generate-completion-script", shell]).stdout
            #expect(try String(contentsOfFile: local + "/share/" + path, encoding: .utf8) == generated, "\(shell)")
        }
        for unit in ServiceUnitTests.units {
            let text = try String(contentsOfFile: local + "/lib/systemd/system/" + unit, encoding: .utf8)
            let template = try String(contentsOfFile: SourceTree.root + "/systemd/\(unit).in", encoding: .utf8)
            #expect(text == template.replacingOccurrences(of: "@BINDIR@", with: "/usr/local/bin"))
            #expect(text.contains("ExecStart=/usr/local/bin/secretfs ") && !text.contains("@BINDIR@"), "\(unit)")
        }
    }

    @Test func uninstallRemovesExactlyWhatTheInstallsWrote() throws {
        let root = try makeTestRoot("install")
        defer { _ = try? MountFixture.shell("rm -rf '\(root)'") }
        let dest = root + "/dest"
        // Someone else's files, in directories the install shares.
        let setup = try MountFixture.shell("mkdir -p \(dest)/usr/local/bin \(dest)/usr/local/share/man/man1 \(dest)/sbin && "
                               + "echo tool > \(dest)/usr/local/bin/other-tool && echo page > \(dest)/usr/local/share/man/man1/other.1 && "
                               + "ln -s /bin/true \(dest)/sbin/mount.other")
        try #require(setup.status == 0, "\(setup.stderr)")
        let before = try Self.tree(dest)
        // Twice, the second time elsewhere for the units: both are recorded.
        #expect(try Self.installConfined(dest, ["--destdir", dest, "--binary", MountFixture.binary]).status == 0)
        let again = try Self.installConfined(dest, ["--destdir", dest, "--binary", MountFixture.binary, "--unitdir", "/etc/systemd/system"])
        #expect(again.status == 0, "\(again.stderr)")
        #expect(access(dest + "/etc/systemd/system/secretfs@.service", F_OK) == 0)

        let u = try Self.installConfined(dest, ["--destdir", dest, "--uninstall"])
        #expect(u.status == 0, "\(u.stderr)")
        #expect(try Self.tree(dest) == before)
        let none = try Processes.run("/bin/bash", [Self.script, "--destdir", dest, "--uninstall"])
        #expect(none.status == 1 && none.stderr.contains("nothing to uninstall"), "\(none.stderr)")
    }

    @Test func aSymlinkWhereAFileGoesIsReplacedNotWrittenThrough() throws {
        // Someone who could write an install directory leaves links where
        // the generated files go: the install replaces them, and the files
        // they point to keep their bytes and their mode.
        let root = try makeTestRoot("install")
        defer { _ = try? MountFixture.shell("rm -rf '\(root)'") }
        let dest = root + "/dest"
        let victim = dest + "/victim"
        let units = dest + "/usr/local/lib/systemd/system", completions = dest + "/usr/local/share/bash-completion/completions"
        let setup = try MountFixture.shell("mkdir -p '\(units)' '\(completions)' && printf 'precious' > '\(victim)' && chmod 0600 '\(victim)' && "
                                           + "ln -s '\(victim)' '\(units)/secretfs@.service' && ln -s '\(victim)' '\(completions)/secretfs'")
        try #require(setup.status == 0, "\(setup.stderr)")
        let o = try Self.installConfined(dest, ["--destdir", dest, "--binary", MountFixture.binary])
        #expect(o.status == 0, "\(o.stderr)")
        #expect(try String(contentsOfFile: victim, encoding: .utf8) == "precious")
        var st = stat()
        #expect(stat(victim, &st) == 0 && st.st_mode & 0o777 == 0o600)
        for path in [units + "/secretfs@.service", completions + "/secretfs"] {
            #expect(lstat(path, &st) == 0 && st.st_mode & S_IFMT == S_IFREG && st.st_mode & 0o777 == 0o644, "\(path)")
        }
        // A manifest that lists a file this script never installs removes nothing.
        try #require(try MountFixture.shell("echo 'file /usr/local/bin/other-tool' >> '\(dest)/usr/local/share/secretfs/installed-files'").status == 0)
        let u = try Self.installConfined(dest, ["--destdir", dest, "--uninstall"])
        #expect(u.status == 1 && u.stderr.contains("not a file this script installs"), "\(u.stderr)")
        #expect(access(dest + "/usr/local/bin/secretfs", F_OK) == 0)
    }

    @Test func prefixUnitdirAndHelperdirPlaceTheFilesAndThePaths() throws {
        let root = try makeTestRoot("install")
        defer { _ = try? MountFixture.shell("rm -rf '\(root)'") }
        let dest = root + "/dest"
        mkdir(dest, 0o755)
        let o = try Self.installConfined(dest, ["--prefix", "/usr", "--unitdir", "/lib/systemd/system", "--helperdir", "/usr/sbin",
                                                "--destdir", dest, "--binary", MountFixture.binary])
        #expect(o.status == 0, "\(o.stderr)")
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: dest + "/usr/sbin/mount.secretfs") == "/usr/bin/secretfs")
        let unit = try String(contentsOfFile: dest + "/lib/systemd/system/secretfs@.service", encoding: .utf8)
        #expect(unit.contains("ExecStart=/usr/bin/secretfs mount --foreground %i ") && unit.contains("ExecStop=/usr/bin/secretfs umount "))
        #expect(access(dest + "/usr/share/man/man1/secretfs.1", F_OK) == 0 && access(dest + "/usr/bin/secretfs", X_OK) == 0)
    }

    /// A relative --destdir and --binary are taken from where the caller
    /// stands, not from the source tree the script changes into.
    @Test func relativeDestdirAndBinaryAreTheCallers() throws {
        let root = try makeTestRoot("install-relative")
        defer { _ = try? MountFixture.shell("rm -rf '\(root)'") }
        mkdir(root + "/bin", 0o755)
        _ = try MountFixture.shell("cp '\(MountFixture.binary)' '\(root)/bin/secretfs'")
        let o = try Processes.run("/bin/sh", ["-c", "cd '\(root)' && exec /bin/bash '\(Self.script)' --destdir dd --binary bin/secretfs"])
        #expect(o.status == 0, "\(o.stderr)")
        #expect(try Self.tree(root + "/dd") == Self.expected)
        #expect(access(SourceTree.root + "/dd", F_OK) != 0, "installed into the source tree")
        let u = try Processes.run("/bin/sh", ["-c", "cd '\(root)' && exec /bin/bash '\(Self.script)' --destdir dd --uninstall"])
        #expect(u.status == 0, "\(u.stderr)")
        #expect(try Self.tree(root + "/dd") == [])
    }

    @Test func pathsThatCannotGoIntoAUnitFileAreRefused() throws {
        for bad in ["usr/local", "/opt/my dir", "/opt/$HOME", "/opt/100%"] {
            let o = try Processes.run("/bin/bash", [Self.script, "--prefix", bad, "--destdir", "/nonexistent", "--binary", MountFixture.binary])
            #expect(o.status == 1 && o.stderr.contains("is not an absolute path of letters"), "\(bad): \(o.stderr)")
        }
        #expect(access("/nonexistent", F_OK) != 0)
    }
}
