import Foundation
import Glibc
import SecretfsPOSIX
import Testing

/// A fresh directory under /tmp (mkdtemp: 0700, owned by this process's uid);
/// /tmp is the sticky, root-owned, world-writable ancestor the trust rule
/// accepts. The tests run as root, so "another user" is uid 65534.
func makeTempDirectory(_ prefix: String = "secretfs-trust-test") -> String {
    var template = Array("/tmp/\(prefix)-XXXXXX".utf8CString)
    _ = mkdtemp(&template)
    return template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
}

func removeTree(_ path: String) {
    try? FileManager.default.removeItem(atPath: path)
}

let otherUID: UInt32 = 65534

/// Writes a file with exactly `mode`.
func makeFile(_ path: String, _ text: String = "", mode: mode_t = 0o600, sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(FileManager.default.createFile(atPath: path, contents: Data(text.utf8)), sourceLocation: sourceLocation)
    chmod(path, mode)
}

/// The directory-trust rule (TrustedDirectory) and the O_NOFOLLOW opens.
struct TrustedDirectoryTests {
    func problem(_ path: String, creatingWith mode: mode_t? = nil, checkingOwnMode: Bool = true) -> TrustError? {
        do {
            _ = try TrustedDirectory.open(path, creatingWith: mode, checkingOwnMode: checkingOwnMode)
            return nil
        } catch {
            return error
        }
    }

    @Test func ownAndRootDirectoriesUnderTmpAreTrusted() throws {
        let base = makeTempDirectory()
        defer { removeTree(base) }
        let dir = try TrustedDirectory.open(base)
        #expect(dir.path == base)
        #expect(dir.canonicalPath == base)
        #expect(dir.owner == geteuid())
        #expect(dir.mode == 0o700)
        // `.` and `..` are resolved.
        #expect(try TrustedDirectory.open(base + "/./../" + (base as NSString).lastPathComponent).canonicalPath == base)
    }

    @Test func aDirectoryOrAncestorOwnedByAnotherUserIsRefused() throws {
        let base = makeTempDirectory()
        defer { removeTree(base) }
        mkdir(base + "/shared", 0o755)
        mkdir(base + "/shared/store", 0o700)
        chown(base + "/shared/store", otherUID, otherUID)
        #expect(problem(base + "/shared/store") == TrustError(path: base + "/shared/store", problem: .ownedByOther(uid: otherUID)))
        // Owner checks apply even where the mode is left to the caller.
        #expect(problem(base + "/shared/store", checkingOwnMode: false)?.problem == .ownedByOther(uid: otherUID))
        chown(base + "/shared/store", 0, 0)
        chown(base + "/shared", otherUID, otherUID)
        #expect(problem(base + "/shared/store") == TrustError(path: base + "/shared", problem: .ownedByOther(uid: otherUID)))
        let e = try #require(problem(base + "/shared/store"))
        #expect(e.description.contains(base + "/shared") && e.description.contains("65534"))
        #expect(e.fix == "chown $(id -un) \(base)/shared")
    }

    @Test func writableByOthersIsRefusedExceptForStickyRootAncestors() throws {
        let base = makeTempDirectory()
        defer { removeTree(base) }
        let dir = base + "/d"
        mkdir(dir, 0o700)
        chmod(dir, 0o777)
        #expect(problem(dir) == TrustError(path: dir, problem: .writableByOthers(mode: 0o777)))
        chmod(dir, 0o770)
        #expect(problem(dir)?.problem == .writableByOthers(mode: 0o770))
        // Sticky does not excuse the directory itself: others could create the
        // names secretfs is about to use.
        chmod(dir, 0o1777)
        #expect(problem(dir)?.problem == .writableByOthers(mode: 0o1777))
        // ...but it does an ancestor owned by root (as /tmp).
        mkdir(dir + "/inner", 0o700)
        #expect(problem(dir + "/inner") == nil)
        chmod(dir, 0o777)
        #expect(problem(dir + "/inner") == TrustError(path: dir, problem: .writableByOthers(mode: 0o777)))
        // A sticky world-writable ancestor of another user is not /tmp.
        chmod(dir, 0o1777)
        chown(dir, otherUID, otherUID)
        #expect(problem(dir + "/inner")?.problem == .ownedByOther(uid: otherUID))
        // The directory's own mode can be left to the caller (init).
        chown(dir, 0, 0)
        chmod(dir + "/inner", 0o777)
        #expect(problem(dir + "/inner", checkingOwnMode: false) == nil)
    }

    @Test func symlinksAreFollowedOnlyWhenOwnedByYouOrRoot() throws {
        let base = makeTempDirectory()
        defer { removeTree(base) }
        mkdir(base + "/real", 0o700)
        mkdir(base + "/real/store", 0o700)
        symlink(base + "/real", base + "/abs")
        symlink("real/../real", base + "/rel")
        let viaAbsolute = try TrustedDirectory.open(base + "/abs/store")
        #expect(viaAbsolute.canonicalPath == base + "/real/store")
        #expect(viaAbsolute.path == base + "/abs/store")
        #expect(try TrustedDirectory.open(base + "/rel/store").canonicalPath == base + "/real/store")
        lchown(base + "/abs", otherUID, otherUID)
        #expect(problem(base + "/abs/store") == TrustError(path: base + "/abs", problem: .symlinkOwnedByOther(uid: otherUID)))
        // A link's target is checked like any path.
        lchown(base + "/abs", 0, 0)
        chown(base + "/real", otherUID, otherUID)
        #expect(problem(base + "/abs/store") == TrustError(path: base + "/real", problem: .ownedByOther(uid: otherUID)))
        symlink(base + "/loop", base + "/loop")
        #expect(problem(base + "/loop")?.problem == .tooManySymlinks)
        makeFile(base + "/file")
        #expect(problem(base + "/file") == TrustError(path: base + "/file", problem: .notADirectory))
        #expect(problem(base + "/missing")?.problem == .system(errno: ENOENT))
    }

    @Test func missingComponentsAreCreatedAndChecked() throws {
        let base = makeTempDirectory()
        defer { removeTree(base) }
        let dir = try TrustedDirectory.open(base + "/a/b/c", creatingWith: 0o700)
        #expect(dir.canonicalPath == base + "/a/b/c")
        var st = stat()
        #expect(stat(base + "/a/b", &st) == 0 && st.st_mode & 0o7777 == 0o700)
        // Creating goes no further than the first untrusted component.
        chown(base + "/a", otherUID, otherUID)
        #expect(problem(base + "/a/x/y", creatingWith: 0o700)?.path == base + "/a")
        #expect(access(base + "/a/x", F_OK) != 0)
    }

    @Test func filesAreCreatedNewAndNeverThroughASymlink() throws {
        let base = makeTempDirectory()
        defer { removeTree(base) }
        let dir = try TrustedDirectory.open(base)
        makeFile(base + "/target", "keep")
        symlink(base + "/target", base + "/planted")
        #expect(throws: SystemError(errno: EEXIST)) { _ = try dir.create("planted", O_WRONLY, mode: 0o600) }
        #expect(throws: SystemError(errno: ELOOP)) { _ = try dir.open("planted", O_WRONLY | O_APPEND) }
        #expect(throws: TrustError(path: base + "/planted", problem: .symbolicLink)) {
            _ = try dir.openOwnFile("planted", O_WRONLY | O_APPEND)
        }
        #expect(try String(contentsOfFile: base + "/target", encoding: .utf8) == "keep")
        let fd = try dir.create("new", O_WRONLY, mode: 0o640)
        #expect(try fileStatus(fd).st_mode & 0o7777 == 0o640)
        #expect(fcntl(fd, F_GETFD) & FD_CLOEXEC != 0)
        close(fd)
        #expect(throws: SystemError(errno: EEXIST)) { _ = try dir.create("new", O_WRONLY, mode: 0o600) }
    }

    @Test func ownFilesMustBeRegularSingleLinkedAndYours() throws {
        let base = makeTempDirectory()
        defer { removeTree(base) }
        let dir = try TrustedDirectory.open(base)
        mkfifo(base + "/fifo", 0o600)   // would block a plain open for writing
        #expect(throws: TrustError(path: base + "/fifo", problem: .system(errno: ENXIO))) {
            _ = try dir.openOwnFile("fifo", O_WRONLY)
        }
        #expect(throws: TrustError(path: base + "/fifo", problem: .notARegularFile(kind: "FIFO"))) {
            _ = try dir.openOwnFile("fifo", O_RDWR)
        }
        makeFile(base + "/file")
        link(base + "/file", base + "/hardlink")
        #expect(throws: TrustError(path: base + "/file", problem: .multipleLinks(2))) {
            _ = try dir.openOwnFile("file", O_WRONLY)
        }
        unlink(base + "/hardlink")
        chown(base + "/file", otherUID, otherUID)
        #expect(throws: TrustError(path: base + "/file", problem: .ownedByOther(uid: otherUID))) {
            _ = try dir.openOwnFile("file", O_WRONLY)
        }
        chown(base + "/file", geteuid(), getegid())
        let fd = try dir.openOwnFile("file", O_WRONLY | O_APPEND)
        #expect(fcntl(fd, F_GETFL) & O_NONBLOCK == 0)
        close(fd)
    }

    @Test func secretFilesMustBeRegularPrivateAndYoursOrRoots() throws {
        let base = makeTempDirectory()
        defer { removeTree(base) }
        func check(_ path: String) -> TrustError.Problem? {
            do {
                close(try openSecretFile(at: AT_FDCWD, path, path: path))
                return nil
            } catch {
                return error.problem
            }
        }
        let file = base + "/secret"
        makeFile(file, "x")
        #expect(check(file) == nil)
        chmod(file, 0o400)
        #expect(check(file) == nil)
        chmod(file, 0o644)
        #expect(check(file) == .accessibleByOthers(mode: 0o644))
        chmod(file, 0o600)
        chown(file, otherUID, otherUID)
        #expect(check(file) == .ownedByOther(uid: otherUID))
        chown(file, 0, 0)
        symlink(file, base + "/link")
        #expect(check(base + "/link") == .symbolicLink)
        mkfifo(base + "/fifo", 0o600)
        #expect(check(base + "/fifo") == .notARegularFile(kind: "FIFO"), "a FIFO is refused without blocking")
        #expect(check(base + "/missing") == .system(errno: ENOENT))
    }

    @Test func interruptedCallsAreRetriedAndOthersReturned() {
        var calls = 0
        let result = retryOnInterrupt { () -> Int32 in
            calls += 1
            if calls < 3 { errno = EINTR; return -1 }
            return 7
        }
        #expect(result == 7 && calls == 3)
        calls = 0
        let failed = retryOnInterrupt { () -> Int32 in
            calls += 1
            errno = EBADF
            return -1
        }
        #expect(failed == -1 && errno == EBADF && calls == 1)
        #expect(errnoText(ENOENT) == "No such file or directory")
    }
}
