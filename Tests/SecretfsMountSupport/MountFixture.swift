import Foundation
import Glibc
import SecretfsFS
import SecretfsStore
import SecureMemory
import SecretfsTestSupport

/// Everything a mount test needs: its own store, runtime directory and
/// mountpoint under /tmp/secretfs-test-*, the real `secretfs` binary, shell
/// commands, and an in-process view of the store to check stored values.
/// Every fixture unmounts what it mounted in `close()`; mounts left behind by
/// a crashed run are unmounted by `sweepLeftovers()` before the next run.
///
/// The store is a directory, or with SECRETFS_TEST_BACKEND=postgresql (the
/// second pass of scripts/test) a fresh database of the test cluster
/// (`TestDatabase`), `storeDir` then holding only the key file: the same
/// tests drive both backends.
public final class MountFixture: @unchecked Sendable {
    public static let prefix = "/tmp/secretfs-test-"
    public let root: String
    /// The store directory; for a shared store, the directory of its key file.
    public let storeDir: String
    /// The shared store's database, if the store is one.
    public let database: TestDatabase?
    /// Whether this fixture made `database` (and drops it at close).
    private let ownsDatabase: Bool
    public let runtimeDir: String
    public let mnt: String
    public let project: String

    public typealias Output = ProcessOutput

    /// The secretfs binary, built beside the test bundle.
    public static let binary: String = {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        var dir = URL(fileURLWithPath: exe).deletingLastPathComponent()
        // The bundle may be a directory (…/secretfsPackageTests.xctest) on some layouts.
        for _ in 0..<3 {
            let candidate = dir.appendingPathComponent("secretfs").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            dir = dir.deletingLastPathComponent()
        }
        return "secretfs"
    }()

    /// The binary at a path every uid can reach (the build directory may sit
    /// under a 0700 home, as in CI's clone): a copy in
    /// /tmp/secretfs-test-bin, made once per test run. For tests that run it
    /// as another user through setpriv.
    public static let binaryForAnyUser: String = {
        let dir = "/tmp/secretfs-test-bin"
        let target = dir + "/secretfs"
        let script = "mkdir -p \(dir) && chmod 0755 \(dir) && cp '\(binary)' \(target).new.$$ && chmod 0755 \(target).new.$$ "
            + "&& mv -f \(target).new.$$ \(target)"
        guard let o = try? shell(script), o.status == 0 else { return binary }
        return target
    }()

    nonisolated(unsafe) private static var swept = false
    private static let sweepLock = NSLock()

    /// The test process a fixture path belongs to: roots are
    /// `/tmp/secretfs-test-PID-XXXXXX`, PID the test runner's. Nil for a path
    /// of the older form (no PID).
    public static func owningPID(of path: String) -> pid_t? {
        guard path.hasPrefix(prefix) else { return nil }
        let digits = path.dropFirst(prefix.count).prefix { $0.isASCII && $0.isNumber }
        guard !digits.isEmpty, path.dropFirst(prefix.count + digits.count).first == "-" else { return nil }
        return pid_t(digits)
    }

    /// Unmounts FUSE mounts left under the test prefix by an earlier crashed
    /// run: only those whose test process is gone, so a run never pulls the
    /// mounts from under another run going on at the same time.
    public static func sweepLeftovers() {
        sweepLock.lock()
        defer { sweepLock.unlock() }
        if swept { return }
        swept = true
        for e in MountTable.entries() where e.mountpoint.hasPrefix(prefix) && e.fsType.hasPrefix("fuse") {
            if let pid = owningPID(of: e.mountpoint), pid == getpid() || kill(pid, 0) == 0 || errno == EPERM { continue }
            _ = try? shell("fusermount3 -u -z '\(e.mountpoint)' || umount -l '\(e.mountpoint)'")
        }
    }

    /// `sharing`: another host of `other`'s shared store (its database and a
    /// copy of its key file; own runtime directory and mountpoint), nothing
    /// created. `shared`: a shared store whatever SECRETFS_TEST_BACKEND says.
    public init(project: String = "demo", initStore: Bool = true, createProject: Bool = true,
                shared: Bool = TestDatabase.isDefault, sharing other: MountFixture? = nil) throws {
        Self.sweepLeftovers()
        var template = Array((Self.prefix + "\(getpid())-XXXXXX").utf8CString)
        guard mkdtemp(&template) != nil else { throw POSIXError(.EIO) }
        root = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        // mkdtemp makes 0700; other uids must reach the mountpoint so that the
        // mount (not this directory) is what refuses or admits them.
        chmod(root, 0o755)
        storeDir = root + "/store"
        runtimeDir = root + "/run"
        mnt = root + "/mnt"
        self.project = project
        try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
        if let other {
            guard let db = other.database else { throw CommandFailed(message: "sharing needs a shared store") }
            database = db
            ownsDatabase = false
            try Self.shell("install -d -m 0700 '\(storeDir)' && install -m 0400 '\(other.storeDir)/master.key' '\(storeDir)/master.key'")
                .requireSuccess()
            return
        }
        if shared {
            database = try TestDatabase.create()
            ownsDatabase = true
            try Self.shell("install -d -m 0700 '\(storeDir)'").requireSuccess()
        } else {
            database = nil
            ownsDatabase = false
        }
        if initStore {
            try expectOK(secretfs(["init"]))
            if createProject { try expectOK(secretfs(["project", "create", project])) }
        }
    }

    /// Unmounts, kills a stray mount process, deletes the temp tree.
    public func close() {
        if MountTable.fuseEntry(at: mnt) != nil {
            _ = try? Self.shell("fusermount3 -u -z '\(mnt)' 2>/dev/null || umount -l '\(mnt)'")
        }
        if let pid = mountPID() { kill(pid, SIGKILL) }
        _ = try? Self.shell("rm -rf --one-file-system '\(root)'")
        if ownsDatabase, let database { database.drop() }
    }

    /// The store as messages name it: the directory, or the database without a password.
    public var storeDisplayName: String { storeLocation.directory }

    /// What --store / SECRETFS_STORE is for this fixture.
    public var storeArgument: String { database?.conninfo ?? storeDir }

    public var storeLocation: StoreLocation {
        guard let database else { return StoreLocation(directory: storeDir) }
        // The conninfo is the test cluster's own, with no password: it parses.
        return StoreLocation(postgres: try! PostgresTarget(database.conninfo), keyFile: storeDir + "/master.key")
    }

    deinit { close() }

    public var environment: [String: String] {
        var env = ProcessInfo.processInfo.environment
        env["SECRETFS_STORE"] = storeArgument
        if database != nil { env["SECRETFS_KEY_FILE"] = storeDir + "/master.key" }
        env["SECRETFS_RUNTIME_DIR"] = runtimeDir
        env["SWIFT_BACKTRACE"] = "enable=no"
        return env
    }

    // MARK: Running things

    @discardableResult
    public func secretfs(_ args: [String], stdin: String? = nil) throws -> Output {
        try Self.run(Self.binary, args, environment: environment, stdin: stdin)
    }

    /// Runs a shell script in the mountpoint directory's parent, with the
    /// fixture's environment; `MNT` is the mountpoint.
    @discardableResult
    public func sh(_ script: String, asUID uid: UInt32? = nil, gid: UInt32? = nil, groups: [UInt32]? = nil) throws -> Output {
        var env = environment
        env["MNT"] = mnt
        if let uid {
            var args = ["--reuid=\(uid)", "--regid=\(gid ?? uid)"]
            if let groups, !groups.isEmpty {
                args.append("--groups=" + groups.map(String.init).joined(separator: ","))
            } else {
                args.append("--clear-groups")
            }
            return try Self.run("/usr/bin/setpriv", args + ["/bin/sh", "-c", "cd / && " + script], environment: env, stdin: nil)
        }
        return try Self.run("/bin/sh", ["-c", "cd '\(root)' || exit 1\n" + script], environment: env, stdin: nil)
    }

    public static func shell(_ script: String) throws -> Output {
        try run("/bin/sh", ["-c", script], environment: ProcessInfo.processInfo.environment, stdin: nil)
    }

    public static func run(_ exe: String, _ args: [String], environment: [String: String], stdin: String?) throws -> Output {
        try Processes.run(exe, args, environment: environment, stdin: stdin)
    }

    /// The output of a command that must have succeeded; otherwise a thrown
    /// `CommandFailed` (which the test records, with its stderr).
    @discardableResult
    public func expectOK(_ o: Output) throws -> Output {
        if o.status != 0 { throw CommandFailed(output: o) }
        return o
    }

    // MARK: Mounting

    public func mount(_ extra: [String] = []) throws {
        try expectOK(secretfs(["mount", project, mnt] + extra))
        guard MountTable.fuseEntry(at: mnt) != nil else { throw CommandFailed(message: "no FUSE mount at \(mnt) after mount") }
    }

    public func unmount() throws {
        try expectOK(secretfs(["umount", mnt]))
        guard MountTable.fuseEntry(at: mnt) == nil else { throw CommandFailed(message: "\(mnt) still mounted after umount") }
    }

    public func mountPID() -> pid_t? {
        guard let text = try? String(contentsOfFile: "\(runtimeDir)/\(project).pid", encoding: .utf8),
              let line = text.split(separator: "\n").first else { return nil }
        return pid_t(line)
    }

    /// The mount's line in /proc/self/mountinfo (its options, the fs type,
    /// the source), or "" when nothing is mounted there.
    public var mountOptions: String {
        // Read to the end, not with String(contentsOfFile:): Foundation reads a
        // file whose size is 0 (all of /proc) only until the first short read,
        // and the kernel hands mountinfo out a page at a time, so with more
        // than ~4 KiB of mounts the line for this mount could be missing.
        let data = FileHandle(forReadingAtPath: "/proc/self/mountinfo")?.readDataToEndOfFile() ?? Data()
        let text = String(decoding: data, as: UTF8.self)
        return text.split(separator: "\n").first { $0.split(separator: " ").dropFirst(4).first.map(String.init) == mnt }
            .map(String.init) ?? ""
    }

    public var logText: String {
        (try? String(contentsOfFile: "\(runtimeDir)/\(project).log", encoding: .utf8)) ?? ""
    }

    // MARK: The store, in process (users have no read path; tests do)

    public func openVault() throws -> ProjectVault {
        try Store.open(at: storeLocation, keySource: .keyFile).openProject(project)
    }

    /// The stored value as a String (tests only), nil if absent.
    public func storedValue(_ name: String) throws -> String? {
        guard let v = try openVault().value(name) else { return nil }
        return v.withUnsafeBytes { String(decoding: $0, as: UTF8.self) }
    }

    public func storedBytes(_ name: String) throws -> [UInt8]? {
        guard let v = try openVault().value(name) else { return nil }
        return v.withUnsafeBytes { Array($0) }
    }

    public func storedNames() throws -> [String] {
        try openVault().list().map(\.name)
    }

    /// Waits (briefly) for a condition that depends on an asynchronous RELEASE.
    public func eventually(_ condition: () throws -> Bool) rethrows -> Bool {
        for _ in 0..<500 {   // up to 5 s: generous for a loaded CI machine
            if try condition() { return true }
            usleep(10_000)
        }
        return false
    }
}


/// A command that should have succeeded and did not.
public struct CommandFailed: Error, CustomStringConvertible {
    public var description: String
    init(output o: ProcessOutput) { description = "exit \(o.status): \(o.stderr)" }
    init(message: String) { description = message }
}

extension ProcessOutput {
    /// Throws `CommandFailed` unless the command exited 0.
    @discardableResult
    public func requireSuccess() throws -> ProcessOutput {
        if status != 0 { throw CommandFailed(output: self) }
        return self
    }
}

/// A fresh database on the PostgreSQL test cluster that scripts/test starts
/// (SECRETFS_TEST_PG_HOST / _PORT; see scripts/lib/postgres.sh), one per
/// fixture, dropped at its close (the cluster goes at the end of the run).
public struct TestDatabase: Sendable {
    public let name: String
    public let conninfo: String

    /// SECRETFS_TEST_BACKEND=postgresql: every fixture's store is a database.
    public static var isDefault: Bool { ProcessInfo.processInfo.environment["SECRETFS_TEST_BACKEND"] == "postgresql" }

    /// The cluster's server (host, port), if the run has one.
    public static var server: (host: String, port: String)? {
        let env = ProcessInfo.processInfo.environment
        guard let host = env["SECRETFS_TEST_PG_HOST"], let port = env["SECRETFS_TEST_PG_PORT"] else { return nil }
        return (host, port)
    }

    /// The superuser connection to the cluster's maintenance database.
    public static var adminConninfo: String? {
        if let c = ProcessInfo.processInfo.environment["SECRETFS_TEST_PG_CONNINFO"] { return c }
        return server.map { "host=\($0.host) port=\($0.port) user=postgres dbname=postgres" }
    }

    nonisolated(unsafe) private static var counter = 0
    private static let counterLock = NSLock()

    public static func create() throws -> TestDatabase {
        guard let admin = adminConninfo else {
            throw CommandFailed(message: "no PostgreSQL test cluster: run the tests through scripts/test (it starts one)")
        }
        counterLock.lock()
        counter += 1
        let name = "secretfs_test_\(getpid())_\(counter)"
        counterLock.unlock()
        try MountFixture.shell("psql '\(admin)' -qX -v ON_ERROR_STOP=1 -c 'CREATE DATABASE \(name)'").requireSuccess()
        // A server of the developer's own: its keyword=value conninfo, the
        // database named last (libpq takes the last value of a keyword).
        let conninfo = server.map { "host=\($0.host) port=\($0.port) user=postgres dbname=\(name)" } ?? admin + " dbname=\(name)"
        return TestDatabase(name: name, conninfo: conninfo)
    }

    /// The database as a postgresql:// URL (the test cluster's socket directory as its host).
    public var url: String? {
        guard let server = Self.server else { return nil }
        return "postgresql://postgres@localhost:\(server.port)/\(name)?host=\(server.host)"
    }

    /// Runs SQL on this database with psql; its output.
    public func sql(_ statement: String) throws -> String {
        try MountFixture.shell("psql '\(conninfo)' -qXAt -v ON_ERROR_STOP=1 -c \"\(statement)\"").requireSuccess().stdout
    }

    public func drop() {
        guard let admin = Self.adminConninfo else { return }
        _ = try? MountFixture.shell("psql '\(admin)' -qX -c 'DROP DATABASE IF EXISTS \(name) WITH (FORCE)'")
    }
}
