import Foundation
import Glibc
import SecretfsFS
import SecretfsMountSupport
import SecretfsTestSupport
import Testing

/// The installed systemd units. No systemd runs on these machines, so:
/// `systemd-analyze verify` and its offline security review read the files,
/// and each unit's commands run as ServiceEmulation starts them (its
/// environment, its command lines, the hardening a process can apply to
/// itself) with NOTIFY_SOCKET pointed at a socket of the test's.
@Suite(.serialized)
struct ServiceUnitTests {
    static let units = ["secretfs@.service", "secretfs-resolver.service"]

    // MARK: The files, as systemd reads them

    @Test func systemdAnalyzeVerifiesBothUnitsWithoutAWord() throws {
        let root = try makeTestRoot("units")
        defer { _ = try? MountFixture.shell("rm -rf '\(root)'") }
        let installed = try Installation(under: root)
        // An instance of the template, as `systemctl start secretfs@demo` loads it.
        // MANPATH: Documentation=man:secretfs(1) must resolve to the installed page.
        var env = ProcessInfo.processInfo.environment
        env["MANPATH"] = installed.prefix + "/share/man"
        let o = try Processes.run("/usr/bin/systemd-analyze", ["verify", installed.unit("secretfs@demo.service"),
                                                               installed.unit("secretfs-resolver.service")], environment: env)
        // verify warns about unknown keys and bad values and still exits 0: no output at all.
        #expect(o.status == 0 && o.stdout.isEmpty && o.stderr.isEmpty, "\(o.status) \(o.stdout) \(o.stderr)")

        // And the check itself is not blind: a bad line in a copy is reported.
        let broken = root + "/broken@.service"
        try (String(contentsOfFile: installed.unit("secretfs@.service"), encoding: .utf8)
             .replacingOccurrences(of: "LockPersonality=yes", with: "LockPersonality=perhaps"))
            .write(toFile: broken, atomically: true, encoding: .utf8)
        let b = try Processes.run("/usr/bin/systemd-analyze", ["verify", root + "/broken@demo.service"], environment: env)
        #expect(b.stderr.contains("broken@.service") && b.stderr.contains("perhaps"), "\(b.stderr)")
    }

    @Test func systemdsOwnSecurityReviewRatesTheUnits() throws {
        let root = try makeTestRoot("units")
        defer { _ = try? MountFixture.shell("rm -rf '\(root)'") }
        let installed = try Installation(under: root)
        var env = ProcessInfo.processInfo.environment
        env["MANPATH"] = installed.prefix + "/share/man"
        // Exposure 0 (locked down) to 10 (not at all); the mount keeps its
        // mount namespace (see below), the resolver has every sandbox.
        for (unit, threshold) in [("secretfs@demo.service", 6), ("secretfs-resolver.service", 4)] {
            let o = try Processes.run("/usr/bin/systemd-analyze", ["security", "--offline=yes", "--threshold=\(threshold * 10)",
                                                                   installed.unit(unit)], environment: env)
            #expect(o.status == 0, "\(unit): \(o.stdout.split(separator: "\n").last ?? "") \(o.stderr)")
        }
    }

    /// Every setting that gives the service a file-system namespace would
    /// keep the FUSE mount inside it (systemd.exec(5), MountFlags=).
    static let namespacing = ["ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "PrivateMounts", "ReadWritePaths",
                              "ReadOnlyPaths", "InaccessiblePaths", "ExecPaths", "NoExecPaths", "TemporaryFileSystem", "BindPaths",
                              "BindReadOnlyPaths", "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs",
                              "ProtectControlGroups", "ProtectProc", "ProcSubset", "ProtectHostname", "ProtectClock",
                              "MountFlags", "RootDirectory", "RootImage", "PrivateUsers", "DynamicUser", "StateDirectory",
                              "RuntimeDirectory", "LogsDirectory", "CacheDirectory", "ConfigurationDirectory", "MountAPIVFS"]

    @Test func theMountUnitHasNoSettingThatWouldHideTheMount() throws {
        let unit = try UnitFile(SourceTree.root + "/systemd/secretfs@.service.in")
        let found = unit.keys().filter(Self.namespacing.contains)
        #expect(found.isEmpty, "\(found)")
        // The resolver mounts nothing: it has them.
        let resolver = try UnitFile(SourceTree.root + "/systemd/secretfs-resolver.service.in")
        #expect(resolver.value("ProtectSystem") == "strict" && resolver.value("PrivateTmp") == "yes")
    }

    /// Why: what systemd does for those settings (a new mount namespace, every
    /// mount a slave, then shared again) done by hand, on a shared mount as
    /// systemd's own root is. A mount made by hand in a namespace that keeps
    /// propagation is seen outside; one made after systemd's steps is not.
    @Test func aMountMadeInsideSystemdsNamespaceStaysInsideIt() throws {
        let f = try MountFixture()
        defer { f.close() }
        let shared = f.root + "/shared"
        try f.expectOK(f.sh("mkdir -p \(shared)/a \(shared)/b && mount --bind \(shared) \(shared) && mount --make-shared \(shared)"))
        defer { _ = try? MountFixture.shell("umount -l '\(shared)'") }
        let bin = MountFixture.binary
        func mountInside(_ steps: String, at dir: String) throws -> (inside: Bool, outside: Bool) {
            let o = try f.sh("unshare --mount --propagation unchanged sh -c '\(steps) \(bin) mount demo \(dir) >/dev/null "
                             + "&& grep -c \" \(dir) \" /proc/self/mountinfo'")
            let inside = o.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "1"
            let outside = MountTable.fuseEntry(at: dir) != nil
            // The mount process lives on in that namespace: end it.
            if let pid = f.mountPID() {
                kill(pid, SIGTERM)
                _ = f.eventually { kill(pid, 0) != 0 }
            }
            if outside { _ = try? MountFixture.shell("umount -l '\(dir)'") }
            return (inside, outside)
        }
        let plain = try mountInside("", at: shared + "/a")
        #expect(plain == (true, true), "a namespace that keeps propagation: \(plain)")
        let systemd = try mountInside("mount --make-rslave / && mount --make-rshared / &&", at: shared + "/b")
        #expect(systemd == (true, false), "systemd's namespace: \(systemd)")
    }

    // MARK: secretfs@.service, run

    /// An installed unit of the fixture's, run as ServiceEmulation starts it:
    /// its settings file written to %E/secretfs/`settings`, %t under the
    /// fixture's root, NOTIFY_SOCKET at a socket of the test's.
    struct UnitRun {
        let f: MountFixture
        let emulation: ServiceEmulation
        let notify: NotifyListener
        let environment: [String: String]

        init(_ f: MountFixture, unit: String, instance: String = "", settings: String, _ text: String,
             notifyAddress: String? = nil, readOnlyPaths: [String] = []) throws {
            self.f = f
            let installed = try Installation(under: f.root)
            let etc = f.root + "/etc", run = f.root + "/runroot"
            try FileManager.default.createDirectory(atPath: etc + "/secretfs", withIntermediateDirectories: true)
            try FileManager.default.createDirectory(atPath: run, withIntermediateDirectories: true)
            try text.write(toFile: "\(etc)/secretfs/\(settings)", atomically: true, encoding: .utf8)
            var emulation = ServiceEmulation(try UnitFile(installed.unit(unit)), instance: instance, configRoot: etc, runtimeRoot: run)
            emulation.readOnlyPaths = readOnlyPaths
            self.emulation = emulation
            notify = try NotifyListener(notifyAddress ?? f.root + "/notify.sock")
            environment = try emulation.environment(adding: ["NOTIFY_SOCKET": notify.address, "SWIFT_BACKTRACE": "enable=no"])
        }

        /// Runs each `key=` command to its end (ExecStartPre=, ExecStop=).
        func run(_ key: String) throws -> [ProcessOutput] {
            try emulation.commands(key, environment: environment).map { argv in
                let cmd = try emulation.hardened(argv)
                return try Processes.run(cmd[0], Array(cmd.dropFirst()), environment: environment)
            }
        }

        /// RuntimeDirectory=, ExecStartPre=, then ExecStart= in the background: the main process.
        func start() throws -> Spawned {
            try emulation.prepareRuntimeDirectories()
            for o in try run("ExecStartPre") { try f.expectOK(o) }
            let argv = try #require(try emulation.commands("ExecStart", environment: environment).first)
            let cmd = try emulation.hardened(argv)
            return try Spawned(cmd[0], Array(cmd.dropFirst()), environment: environment, in: f.root)
        }
    }

    /// secretfs@PROJECT with /etc/secretfs/PROJECT.conf.
    func mountUnit(_ f: MountFixture, project: String = "demo", conf: String, notifyAddress: String? = nil) throws -> UnitRun {
        try UnitRun(f, unit: "secretfs@.service", instance: project, settings: "\(project).conf", conf, notifyAddress: notifyAddress)
    }

    func conf(_ f: MountFixture, _ extra: String = "") -> String {
        """
        # the fixture's store, a mountpoint the unit creates
        MOUNTPOINT=\(f.mnt)
        SECRETFS_STORE=\(f.database?.url ?? f.storeDir)
        SECRETFS_RUNTIME_DIR=\(f.runtimeDir)
        \(f.database != nil ? "SECRETFS_KEY_FILE=\(f.storeDir)/master.key" : "")
        \(extra)
        """
    }

    @Test(.enabled(if: TestDatabase.server != nil, "needs the PostgreSQL test cluster of scripts/test"))
    func theMountUnitMountsASharedStoreFromItsURL() throws {
        let f = try MountFixture(shared: true)
        defer { f.close() }
        rmdir(f.mnt)
        let service = try mountUnit(f, conf: conf(f))
        let main = try service.start()
        defer { main.finish() }
        let messages = service.notify.messages(until: "READY=1", timeout: 15) { main.poll() != nil }
        #expect(messages.last?.fields.contains("READY=1") == true, "no READY=1: \(main.stderr)")
        try f.expectOK(f.sh("/usr/bin/printf from-the-unit > $MNT/TOKEN"))
        #expect(try f.storedValue("TOKEN") == "from-the-unit")
        for o in try service.run("ExecStop") { #expect(o.status == 0, "\(o.stderr)") }
        #expect(main.wait() == 0, "\(main.stderr)")
    }

    @Test func theMountUnitIsReadyOnlyOnceTheMountAnswersAndStopsCleanly() throws {
        let f = try MountFixture()
        defer { f.close() }
        rmdir(f.mnt)   // ExecStartPre creates it
        // cache_timeout=60: what the mount answered stays in the kernel's cache
        // for the check below (no group: a group mount never lets the kernel
        // cache its root's attributes, so that strangers are always refused).
        let service = try mountUnit(f, conf: conf(f, "OPTIONS=max_size=1K,cache_timeout=60\nARGS=--resolver-group 4242"))
        let main = try service.start()
        defer { main.finish() }

        let messages = service.notify.messages(until: "READY=1", timeout: 15) { main.poll() != nil }
        // At READY=1 the mount has already answered: with the mount process
        // frozen, stat(2) of the mountpoint still returns at once, from what
        // the kernel was told (it would wait for ever for an unanswered mount).
        let entry = MountTable.fuseEntry(at: f.mnt)
        kill(main.pid, SIGSTOP)
        let frozen = try Processes.run("/usr/bin/timeout", ["-s", "KILL", "5", "/usr/bin/stat", "-c", "%d", f.mnt])
        kill(main.pid, SIGCONT)
        var parent = stat()
        let answered = frozen.status == 0 && stat(f.root, &parent) == 0 && frozen.stdout != "\(parent.st_dev)\n"
        let ready = try #require(messages.last, "no READY=1: \(main.stderr)")
        #expect(ready.fields.contains("READY=1") && messages.count == 1, "\(messages)")
        #expect(ready.pid == main.pid, "READY=1 from pid \(ready.pid), the main process is \(main.pid)")
        #expect(entry?.source == "secretfs:demo" && answered, "at READY=1: \(String(describing: entry)), stat \(frozen.status) \(frozen.stdout)")
        #expect(ready.fields.contains("STATUS=serving project demo at \(f.mnt)"), "\(ready)")
        // The configuration file reached the mount (OPTIONS: max_size; ARGS: the socket's group).
        #expect(try f.sh("head -c 2000 /dev/zero > $MNT/BIG").status != 0)
        try f.expectOK(f.sh("echo from-the-unit > $MNT/TOKEN"))
        #expect(try f.storedValue("TOKEN") == "from-the-unit")
        var sock = stat()
        #expect(stat("\(f.runtimeDir)/demo.sock", &sock) == 0 && sock.st_gid == 4242)

        // ExecStop: unmounts, and the mount process says STOPPING=1 and exits 0.
        for o in try service.run("ExecStop") { #expect(o.status == 0, "\(o.stderr)") }
        let stopping = service.notify.messages(until: "STOPPING=1", timeout: 10)
        #expect(stopping.last?.fields.contains("STOPPING=1") == true && stopping.last?.pid == main.pid, "\(stopping)")
        #expect(main.wait() == 0, "\(main.stderr)")
        #expect(MountTable.fuseEntry(at: f.mnt) == nil && access("\(f.runtimeDir)/demo.pid", F_OK) != 0)
    }

    @Test func sigtermUnmountsAndSaysStopping() throws {
        let f = try MountFixture()
        defer { f.close() }
        // An abstract NOTIFY_SOCKET name, as systemd may hand out.
        let service = try mountUnit(f, conf: conf(f), notifyAddress: "@secretfs-test-notify-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        let main = try service.start()
        defer { main.finish() }
        let ready = service.notify.messages(until: "READY=1", timeout: 15) { main.poll() != nil }
        #expect(ready.last?.fields.contains("READY=1") == true, "\(ready) \(main.stderr)")
        main.signal(SIGTERM)
        let stopping = service.notify.messages(until: "STOPPING=1", timeout: 10)
        #expect(stopping.last?.fields.contains("STOPPING=1") == true, "\(stopping)")
        #expect(main.wait() == 0, "\(main.stderr)")
        #expect(MountTable.fuseEntry(at: f.mnt) == nil)
    }

    @Test func aBusyMountStillStopsOnTheSigtermThatFollowsAFailedExecStop() throws {
        let f = try MountFixture()
        defer { f.close() }
        let service = try mountUnit(f, conf: conf(f))
        let main = try service.start()
        defer { main.finish() }
        #expect(service.notify.messages(until: "READY=1", timeout: 15) { main.poll() != nil }.last?.fields.contains("READY=1") == true)
        // A shell sitting in the mount keeps it busy.
        let user = try Spawned("/bin/sh", ["-c", "cd \(f.mnt) && exec sleep 60"], environment: [:], in: f.root)
        defer { user.finish() }
        #expect(f.eventually { (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(user.pid)/cwd")) == f.mnt })
        let stop = try service.run("ExecStop")
        #expect(stop.map(\.status) == [13] && stop[0].stderr.contains("busy"), "\(stop.map(\.stderr))")
        #expect(MountTable.fuseEntry(at: f.mnt) != nil)
        // systemd then sends SIGTERM: libfuse detaches the mount (lazily) and the process exits.
        main.signal(SIGTERM)
        #expect(service.notify.messages(until: "STOPPING=1", timeout: 10).last?.fields.contains("STOPPING=1") == true)
        #expect(main.wait() == 0, "\(main.stderr)")
        #expect(MountTable.fuseEntry(at: f.mnt) == nil)
    }

    @Test func aMountThatFailsNeverSaysReady() throws {
        let f = try MountFixture()
        defer { f.close() }
        let service = try mountUnit(f, project: "nosuch", conf: conf(f))
        let main = try service.start()
        defer { main.finish() }
        let messages = service.notify.messages(until: "READY=1", timeout: 15) { main.poll() != nil }
        #expect(messages.isEmpty, "\(messages)")
        #expect(main.wait() == 12 && main.stderr.contains("nosuch"), "\(String(describing: main.poll())) \(main.stderr)")
    }

    @Test func withoutAConfigurationFileTheMountpointIsTheDocumentedDefault() throws {
        let root = try makeTestRoot("units")
        defer { _ = try? MountFixture.shell("rm -rf '\(root)'") }
        let installed = try Installation(under: root)
        // %E/secretfs holds no demo.conf.
        let emulation = ServiceEmulation(try UnitFile(installed.unit("secretfs@.service")), instance: "demo",
                                         configRoot: root + "/etc", runtimeRoot: "/run")
        let env = try emulation.environment()
        let bin = installed.binDirectory + "/secretfs"
        let start = try emulation.commands("ExecStart", environment: env)
        #expect(start == [[bin, "mount", "--foreground", "demo", "/srv/secrets/demo", "-o", ""]], "\(start)")
        #expect(try emulation.commands("ExecStop", environment: env) == [[bin, "umount", "/srv/secrets/demo"]])
        #expect(try emulation.commands("ExecStartPre", environment: env) == [["/bin/mkdir", "-p", "/srv/secrets/demo"]])
    }

    // MARK: secretfs-resolver.service, run

    @Test func theResolverUnitIsReadyOnceItListensAndServesThroughItsSandbox() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount()
        try f.expectOK(f.sh("echo through-the-daemon > $MNT/TOKEN"))
        // ProtectSystem=strict leaves the mounts' runtime directory read-only to the daemon.
        let service = try UnitRun(f, unit: "secretfs-resolver.service", settings: "secretfs-resolver.conf",
                                  "ALLOW=--allow-group 4242\nSECRETFS_RUNTIME_DIR=\(f.runtimeDir)\n",
                                  notifyAddress: "@secretfs-test-notify-\(getpid())-\(UInt32.random(in: 0...UInt32.max))",
                                  readOnlyPaths: [f.runtimeDir])
        let main = try service.start()
        defer { main.finish() }

        let socket = service.emulation.runtimeRoot + "/secretfs-resolver/resolver.sock"
        let messages = service.notify.messages(until: "READY=1", timeout: 15) { main.poll() != nil }
        // At READY=1 the socket already listens: with the daemon frozen, the
        // kernel still completes a connection (into the listen backlog).
        kill(main.pid, SIGSTOP)
        let fd = connectUnix(socket)
        let connectError = errno
        kill(main.pid, SIGCONT)
        #expect(fd >= 0, "connect at READY=1: \(String(cString: strerror(connectError)))")
        if fd >= 0 { close(fd) }
        let ready = try #require(messages.last, "no READY=1: \(main.stderr)")
        #expect(ready.fields.contains("READY=1") && ready.pid == main.pid && messages.count == 1, "\(messages)")
        // ALLOW from the configuration file: the socket is the group's.
        var st = stat()
        #expect(stat(socket, &st) == 0 && st.st_gid == 4242 && st.st_mode & 0o777 == 0o660, "\(st.st_mode)")
        // It reaches the mount's socket from its sandbox and resolves.
        let o = try f.sh("printf secrets.TOKEN | \(MountFixture.binary) resolve --project demo --format expr --resolver \(socket)")
        #expect(o.status == 0 && o.stdout == "\"through-the-daemon\"", "\(o.status) \(o.stderr) \(main.stderr)")

        main.signal(SIGTERM)
        let stopping = service.notify.messages(until: "STOPPING=1", timeout: 10)
        #expect(stopping.last?.fields.contains("STOPPING=1") == true && stopping.last?.pid == main.pid, "\(stopping)")
        #expect(main.wait() == 0, "\(main.stderr)")
        #expect(access(socket, F_OK) != 0)
    }
}

/// connect(2) to a Unix stream socket: the fd, or -1 with errno set.
func connectUnix(_ path: String) -> Int32 {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { return -1 }
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in bytes.enumerated() { raw[i] = b } }
    let rc = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    if rc != 0 { let e = errno; close(fd); errno = e; return -1 }
    return fd
}
