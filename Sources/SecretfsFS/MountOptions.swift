import Glibc

/// What a mount grants and how it treats values. Parsed from `-o` by the CLI.
public struct MountOptions: Sendable, Equatable {
    /// The mount's owner: always allowed, shown as the files' owner.
    public var ownerUID: uid_t
    public var ownerGID: gid_t
    /// A project group whose members may use the mount too (nil: owner and root only).
    public var group: gid_t?
    /// Keep the one trailing newline that `echo` adds (default: drop it).
    public var keepTrailingNewline: Bool = false
    /// Largest value accepted, in bytes, after the trailing newline is dropped.
    public var sizeLimit: Int = 64 * 1024
    /// How long the kernel may cache names and attributes (seconds). Only this
    /// process changes the project while it is mounted, so caching is safe.
    public var cacheTimeout: Double = 1.0
    /// Write handles open at once on this mount, and per uid: each holds a
    /// locked buffer, so a member opening files in a loop gets EMFILE
    /// instead of exhausting the mount's (locked) memory.
    public var maxWriteHandles = 1024
    public var maxWriteHandlesPerUID = 128
    /// Locked bytes one uid's open write handles and staging files may hold
    /// at once: enough for several values at the size limit, far less than
    /// `maxWriteHandlesPerUID` of them (2 GiB at max_size=16M). Past it a
    /// growing write gets ENOMEM.
    public var maxBufferedBytesPerUID: Int { max(16 << 20, 4 * (sizeLimit + 1)) }
    /// Seconds a staging file may lie closed before it is discarded (nil:
    /// never). Nobody can list staging files, so one a killed rsync or editor
    /// left would otherwise hold a slot and locked bytes until the unmount.
    public var stagingTimeout: Double? = 600
    /// Refuse mode, owner and time changes with EPERM instead of accepting
    /// them without effect.
    public var strictModes = false
    /// Extra options handed to libfuse as `-o` (e.g. `fsname=...`).
    public var fuseOptions: [String] = []

    public init(ownerUID: uid_t = getuid(), ownerGID: gid_t = getgid()) {
        self.ownerUID = ownerUID
        self.ownerGID = ownerGID
    }
}

/// A filesystem error: the errno the caller sees.
public struct Errno: Error, Equatable, CustomStringConvertible, Sendable {
    public let code: Int32
    public init(_ code: Int32) { self.code = code }
    public var description: String { String(cString: strerror(code)) }

    public static let accessDenied = Errno(EACCES)
    public static let noEntry = Errno(ENOENT)
    public static let invalid = Errno(EINVAL)
    public static let notPermitted = Errno(EPERM)
    public static let exists = Errno(EEXIST)
    public static let tooBig = Errno(EFBIG)
    public static let isDirectory = Errno(EISDIR)
    public static let notDirectory = Errno(ENOTDIR)
    public static let io = Errno(EIO)
    public static let badHandle = Errno(EBADF)
    public static let noData = Errno(ENODATA)
    public static let notSupported = Errno(EOPNOTSUPP)
    public static let noMemory = Errno(ENOMEM)
    public static let tooManyOpen = Errno(EMFILE)
    public static let nameTooLong = Errno(ENAMETOOLONG)
}
