import Glibc
import Logging
import SecretfsNames
import SecretfsPOSIX
import SecretfsStore
import SecureMemory
import Synchronization

/// Who is asking: the credentials the kernel attaches to each FUSE request.
public struct Caller {
    public var uid: uid_t
    public var gid: gid_t
    public var pid: pid_t
    /// Supplementary groups, fetched only when the access decision needs them
    /// (libfuse reads them from /proc, which costs a syscall or three).
    public var supplementaryGroups: () -> [gid_t]

    public init(uid: uid_t, gid: gid_t, pid: pid_t, supplementaryGroups: @escaping () -> [gid_t] = { [] }) {
        self.uid = uid; self.gid = gid; self.pid = pid
        self.supplementaryGroups = supplementaryGroups
    }

    var actor: Actor { Actor(uid: uid, pid: pid) }
}

/// Attributes the kernel is told about a node.
public struct Attributes: Sendable {
    public var ino: UInt64
    public var isDirectory: Bool
    public var mode: mode_t
    public var uid: uid_t
    public var gid: gid_t
    public var modified: Timestamp
    public var links: Int
    /// Whether the kernel may cache the entry and attributes. Not for a
    /// staging file: the kernel's cache is shared by every uid, and a staging
    /// file is visible to its creator only.
    public var cacheable = true
}

/// The write-only directory contract, independent of libfuse: every method
/// takes a caller and returns a result or an `Errno`. `FuseBridge` turns
/// kernel requests into these calls and the results into replies.
///
/// Lock order: `lock` (namespace and handles) is taken first, then the store's
/// own lock inside each store call. Nothing calls back into this object with
/// the store lock held, so there is no cycle. Store commits happen under
/// `lock`: a commit is one fsync (~200 us) and serialising them keeps the
/// namespace and the store in the same order.
public final class SecretFilesystem: @unchecked Sendable {
    public let vault: ProjectVault
    public let options: MountOptions
    /// When this mount started: the directory's times under a group (see rootAttributes).
    private let mountedAt = Timestamp.now()
    let logger: Logger
    private let lock = Mutex(())
    private var namespace: Namespace
    private var handles: [UInt64: OpenFile] = [:]
    private var directoryListings: [UInt64: [Node]] = [:]
    /// Small locked buffers reused by write handles (see WriteBuffer).
    private let pool = BufferPool()
    private var nextHandle: UInt64 = 1

    /// An open file. Write handles buffer the new value until flush.
    final class OpenFile {
        let node: Node
        let writable: Bool
        let append: Bool
        /// nil until the first write (or O_TRUNC): then the whole new value.
        var buffer: WriteBuffer?
        /// The buffer differs from the stored value and must be committed.
        var dirty = false
        /// Bytes were written (or the file was resized) since the last commit.
        /// `flush` commits only then: shells close a duplicate of the fd
        /// before writing (`echo v > f` flushes twice), and committing the
        /// empty O_TRUNC buffer at that first flush would briefly store an
        /// empty value. A truncation with no write is committed at release.
        var written = false
        /// A failed write (EFBIG) poisons the handle: nothing is committed.
        var failure: Errno?
        /// An O_APPEND write went into the buffer: history calls the commit `append`.
        var appended = false
        /// Who opened it: the audit trail names them for the commit.
        let actor: Actor

        init(node: Node, writable: Bool, append: Bool, caller: Caller) {
            self.node = node; self.writable = writable; self.append = append; self.actor = caller.actor
        }
    }

    /// Called with the names concerned after every successful store mutation
    /// (write, truncate, delete, rename), under `lock`, and by StoreWatcher
    /// (outside `lock`) for changes made outside the mount: it must not block
    /// or call back into this object. Set before mounting; the privileged
    /// socket's WATCH subscribes through it.
    public var onChange: (@Sendable ([String]) -> Void)?

    public init(vault: ProjectVault, options: MountOptions, logger: Logger) throws {
        self.vault = vault
        self.options = options
        self.logger = logger
        self.namespace = Namespace(secrets: try vault.list())
    }

    public var secretCount: Int { lock.withLock { _ in namespace.count } }

    // MARK: Access

    /// The mount's whole access policy: owner and root always, members of the
    /// project group when one is granted, nobody else, for every operation.
    public func isAllowed(_ caller: Caller) -> Bool {
        if caller.uid == 0 || caller.uid == options.ownerUID { return true }
        guard let group = options.group else { return false }
        if caller.gid == group { return true }
        return caller.supplementaryGroups().contains(group)
    }

    private func check(_ caller: Caller) throws(Errno) {
        guard isAllowed(caller) else {
            logger.debug("refused", metadata: ["uid": "\(caller.uid)", "pid": "\(caller.pid)"])
            throw .accessDenied
        }
    }

    // MARK: Attributes

    public func rootAttributes() -> Attributes {
        let mode: mode_t = options.group == nil ? 0o700 : 0o770
        // With a group (allow_other), a non-member's stat of the mountpoint
        // itself would be answered from the kernel's attribute cache without
        // a permission check: not cached, so every one comes here and is
        // refused. But `stat --cached=always` (AT_STATX_DONT_SYNC) still reads
        // the attributes a member's stat last left on the inode, so they tell
        // nothing that changes: the directory's times are the mount's start,
        // not its last change (which would say when secrets were written).
        var a = Attributes(ino: Namespace.rootIno, isDirectory: true, mode: S_IFDIR | mode,
                           uid: options.ownerUID, gid: options.group ?? options.ownerGID,
                           modified: options.group == nil ? namespace.lastChange : mountedAt, links: 2)
        a.cacheable = options.group == nil
        return a
    }

    private func attributes(_ node: Node) -> Attributes {
        // Write-only: the owner (and the group, when granted) may write; nobody
        // may read. Size is always reported as 0 so the length never leaks.
        let mode: mode_t = options.group == nil ? 0o200 : 0o220
        var a = Attributes(ino: node.ino, isDirectory: false, mode: S_IFREG | mode,
                           uid: options.ownerUID, gid: options.group ?? options.ownerGID,
                           modified: node.updatedAt, links: node.name == nil ? 0 : 1)
        a.cacheable = !node.isStaging
        return a
    }

    /// A staging file is seen only by the uid that made it (by name, the
    /// Namespace gives each uid its own; this is for requests by inode).
    private func visible(_ node: Node, to caller: Caller) -> Bool {
        guard let owner = node.stagedBy else { return true }
        return caller.uid == owner
    }

    public func getattr(ino: UInt64, caller: Caller) throws(Errno) -> Attributes {
        try check(caller)
        return try lock.withLock { _ throws(Errno) in
            if ino == Namespace.rootIno { return rootAttributes() }
            guard let n = namespace.node(ino: ino), visible(n, to: caller) else { throw .noEntry }
            return attributes(n)
        }
    }

    /// LOOKUP: counts a kernel reference on success.
    public func lookup(parent: UInt64, name: String, caller: Caller) throws(Errno) -> Attributes {
        try check(caller)
        guard parent == Namespace.rootIno else { throw .notDirectory }
        // Bytes first: no invalid name is ever compared with a stored one.
        guard Names.isValid(name) || Names.isStaging(name) else { throw .noEntry }
        return try lock.withLock { _ throws(Errno) in
            guard let n = namespace.node(named: name, seenBy: caller.uid) else { throw .noEntry }
            n.lookups += 1
            return attributes(n)
        }
    }

    public func forget(ino: UInt64, count: UInt64) {
        lock.withLock { _ in namespace.forget(ino: ino, count: count) }
    }

    // MARK: Names and types

    private func validName(_ name: String) throws(Errno) {
        guard Names.isValid(name) else {
            logger.info("refused name", metadata: ["reason": "invalid secret name"])
            throw .invalid
        }
    }

    /// mkdir, symlink, link, mknod of special files: a flat directory of
    /// regular files has no place for them.
    public func refuseType(caller: Caller, operation: String) throws(Errno) -> Never {
        try check(caller)
        logger.info("refused \(operation)")
        throw .notPermitted
    }

    // MARK: Open, create, write, flush

    public func open(ino: UInt64, flags: Int32, caller: Caller) throws(Errno) -> UInt64 {
        try check(caller)
        return try lock.withLock { _ throws(Errno) in
            if ino == Namespace.rootIno { throw .isDirectory }
            guard let n = namespace.node(ino: ino), n.name != nil, visible(n, to: caller) else { throw .noEntry }
            let access = flags & O_ACCMODE
            let writable = access == O_WRONLY || access == O_RDWR
            if writable { try checkWriteHandleLimits(caller) }
            let h = OpenFile(node: n, writable: writable, append: flags & O_APPEND != 0, caller: caller)
            if writable && flags & O_TRUNC != 0 {
                // Atomic O_TRUNC: the old value stays in the store until the
                // new one is committed at close.
                h.buffer = try newBuffer()
                h.dirty = true
            }
            return register(h)
        }
    }

    /// Returns the new entry's attributes, its file handle, and whether the
    /// kernel may cache the entry: a created file is not in the store until
    /// its first close, and if that fails the name disappears again, so its
    /// entry must not be cached (timeout 0) or the kernel would keep a stale one.
    public func create(parent: UInt64, name: String, flags: Int32, caller: Caller) throws(Errno) -> (Attributes, UInt64, cacheable: Bool) {
        try check(caller)
        guard parent == Namespace.rootIno else { throw .notDirectory }
        let staging = Names.isStaging(name)
        if !staging { try validName(name) }
        return try lock.withLock { _ throws(Errno) in
            try checkWriteHandleLimits(caller)
            let node: Node
            var added = false
            if let existing = namespace.node(named: name, seenBy: caller.uid) {
                if flags & O_EXCL != 0 { throw .exists }
                node = existing
            } else if staging {
                expireIdleStagingFiles()
                guard namespace.stagingCount(of: caller.uid) < options.maxWriteHandlesPerUID else {
                    logger.warning("staging file limit reached", metadata: ["uid": "\(caller.uid)"])
                    throw .tooManyOpen
                }
                added = true
                // Locked memory only, until a rename onto a valid name commits it.
                node = namespace.add(name: name, info: nil, stagedBy: caller.uid)
            } else {
                added = true
                // Not in the store until the first close commits it.
                node = namespace.add(name: name, info: nil)
            }
            node.lookups += 1
            let h = OpenFile(node: node, writable: true, append: flags & O_APPEND != 0, caller: caller)
            if !node.isCommitted || flags & O_TRUNC != 0 {
                do throws(Errno) { h.buffer = try newBuffer() } catch {
                    node.lookups -= 1
                    if added { namespace.unlink(node); namespace.collect(node) }
                    throw error
                }
                h.dirty = true
            }
            return (attributes(node), register(h), node.isCommitted && !node.isStaging)
        }
    }

    /// Write handles open now, in all and per uid (see the limits in MountOptions).
    private var writeHandles = 0
    private var writeHandlesByUID: [uid_t: Int] = [:]

    /// EMFILE when the mount's or the caller's write handles are all in use.
    private func checkWriteHandleLimits(_ caller: Caller) throws(Errno) {
        if writeHandles >= options.maxWriteHandles || writeHandlesByUID[caller.uid, default: 0] >= options.maxWriteHandlesPerUID {
            logger.warning("write handle limit reached", metadata: ["uid": "\(caller.uid)", "open": "\(writeHandles)"])
            throw .tooManyOpen
        }
    }

    private func register(_ h: OpenFile) -> UInt64 {
        let fh = nextHandle
        nextHandle += 1
        handles[fh] = h
        h.node.openHandles += 1
        if h.writable {
            writeHandles += 1
            writeHandlesByUID[h.actor.uid, default: 0] += 1
        }
        return fh
    }

    private func unregister(_ h: OpenFile) {
        h.node.openHandles -= 1
        if h.node.openHandles == 0 { h.node.idleSince = monotonicSeconds() }
        guard h.writable else { return }
        writeHandles -= 1
        let left = writeHandlesByUID[h.actor.uid, default: 1] - 1
        writeHandlesByUID[h.actor.uid] = left > 0 ? left : nil
    }

    /// Staging files nobody has open are dropped once idle for the mount's
    /// `staging_timeout`. Checked when a staging file is made and when a uid
    /// runs out of buffered bytes (the two things an abandoned one takes),
    /// not on a timer: nothing else needs them gone.
    private func expireIdleStagingFiles() {
        guard let limit = options.stagingTimeout else { return }
        for e in namespace.expireStaging(idleLimit: limit) {
            logger.notice("staging file expired", metadata: ["name": "\(e.name)", "uid": "\(e.uid)",
                                                             "idle_seconds": "\(Int(e.idle))"])
        }
    }

    /// Locked bytes held for `uid` now: its open handles' buffers and its
    /// staging files. Counted only when a buffer is about to grow (rare: it
    /// doubles), so nothing has to be kept in step.
    private func bufferedBytes(of uid: uid_t) -> Int {
        var total = namespace.stagedBytes(of: uid)
        for h in handles.values where h.actor.uid == uid { total += h.buffer?.capacity ?? 0 }
        return total
    }

    /// A new empty write buffer, or ENOMEM.
    private func newBuffer() throws(Errno) -> WriteBuffer {
        guard let b = WriteBuffer(limit: options.sizeLimit + 1, pool: pool) else {
            logger.error("out of locked memory for a write buffer")
            throw .noMemory
        }
        return b
    }

    /// Loads the stored value into the handle's buffer (for writes that do not
    /// start from empty: appends, offsets, truncate to a length).
    private func ensureBuffer(_ h: OpenFile) throws(Errno) -> WriteBuffer {
        if let b = h.buffer { return b }
        if h.node.isStaging {
            // A staging file starts from what its last flush left.
            let made = h.node.staged.map { staged in
                staged.withValue(keepTrailingNewline: true) { raw in
                    WriteBuffer(limit: options.sizeLimit + 1, initial: SecureBytes(copying: raw), pool: pool)
                }
            } ?? WriteBuffer(limit: options.sizeLimit + 1, pool: pool)
            guard let b = made else { throw .noMemory }
            h.buffer = b
            return b
        }
        var current: SecureBytes?
        if let name = h.node.name, h.node.isCommitted {
            do { current = try vault.value(name) } catch {
                logger.error("cannot read stored value", metadata: ["name": "\(name)", "error": "\(error)"])
                throw .io
            }
        }
        let made = WriteBuffer(limit: options.sizeLimit + 1, initial: current, pool: pool)
        current?.wipe()
        guard let b = made else {
            logger.error("out of locked memory for a write buffer")
            throw .noMemory
        }
        h.buffer = b
        return b
    }

    /// `flags` are the file's status flags at the time of this write (the
    /// kernel sends them with each WRITE), so an O_APPEND set later with
    /// fcntl(F_SETFL) is honoured as well as one given to open.
    public func write(fh: UInt64, data: UnsafeRawBufferPointer, offset: Int64, flags: Int32 = 0) throws(Errno) -> Int {
        try lock.withLock { _ throws(Errno) in
            guard let h = handles[fh], h.writable else { throw .badHandle }
            if let failure = h.failure { throw failure }
            guard offset >= 0 else { throw .invalid }
            let b = try ensureBuffer(h)
            // O_APPEND: the kernel believes the file is empty (size 0), so it
            // sends offset 0; appending is this side's job.
            let append = h.append || flags & O_APPEND != 0
            // The buffer may hold one byte over the limit, for the trailing
            // newline that is dropped at commit; any other byte over it fails
            // now, so the writer (not only close) sees EFBIG.
            let (end, overflow) = (append ? b.count : Int(offset)).addingReportingOverflow(data.count)
            let newlineGrace = !options.keepTrailingNewline && end == options.sizeLimit + 1 && data.last == 0x0A
            var failure: Errno? = overflow || !(end <= options.sizeLimit || newlineGrace) ? .tooBig : nil
            func overBufferedBytes() -> Bool {
                bufferedBytes(of: h.actor.uid) + b.capacity(forEnd: end) - b.capacity > options.maxBufferedBytesPerUID
            }
            if failure == nil, b.capacity(forEnd: end) > b.capacity, overBufferedBytes() {
                // Abandoned staging files may be what holds the bytes.
                expireIdleStagingFiles()
                if overBufferedBytes() {
                    logger.warning("buffered bytes limit reached", metadata: ["uid": "\(h.actor.uid)",
                                                                              "limit": "\(options.maxBufferedBytesPerUID)"])
                    failure = .noMemory
                }
            }
            if failure == nil {
                do throws(Errno) {
                    if append { try b.append(data) } else { try b.write(data, at: Int(offset)) }
                } catch {
                    failure = error
                }
            }
            if failure == .noMemory {
                // Like EFBIG, the handle is poisoned: a value cut short must
                // never be committed at close; the stored value stays.
                logger.error("no locked memory to grow a write buffer", metadata: ["name": "\(h.node.name ?? "-")"])
                h.failure = .noMemory
                throw .noMemory
            }
            guard failure == nil else {
                h.failure = .tooBig
                logger.info("value over the size limit", metadata: ["name": "\(h.node.name ?? "-")", "limit": "\(options.sizeLimit)"])
                // An append (or a write at an offset) that fails here says
                // something about the stored value's length; probing for it
                // takes many such failures, so each one is audited.
                if h.node.isCommitted, !h.node.isStaging, append || offset > 0 {
                    try? vault.audit(action: "refused-size", names: h.node.name, detail: "limit \(options.sizeLimit)", actor: h.actor)
                }
                throw .tooBig
            }
            h.dirty = true
            h.written = true
            if append { h.appended = true }
            return data.count
        }
    }

    /// Runs `body` (which may commit) under `lock`, then waits, outside
    /// it, until what it committed is durable: with group commit on
    /// (Store.enableGroupCommit) concurrent writers share one sync of the
    /// WAL, and none returns before its commit is on disk. The one place the
    /// filesystem's writes wait for durability.
    private func committing<T>(_ body: () throws(Errno) -> T) throws(Errno) -> T {
        // The commit count before and after, under `lock`: an operation that
        // committed nothing (most flushes: a close of a file not written)
        // waits for nobody else's sync.
        let (result, before, after) = try lock.withLock { _ throws(Errno) in
            let before = vault.store.commitTicket()
            let result = try body()
            return (result, before, vault.store.commitTicket())
        }
        guard after > before else { return result }
        do { try vault.store.syncCommits(through: after) } catch {
            logger.error("commit not durable", metadata: ["error": "\(error)"])
            throw .io
        }
        return result
    }

    /// FLUSH (each close): commit what was written, durably. The error
    /// returned here is what close(2) returns.
    public func flush(fh: UInt64) throws(Errno) {
        try committing { () throws(Errno) in
            guard let h = handles[fh] else { throw .badHandle }
            if let failure = h.failure { throw failure }
            if h.written { try commit(h) }
        }
    }

    /// FSYNC: commit whatever differs from the store, written or truncated.
    public func fsync(fh: UInt64) throws(Errno) {
        try committing { () throws(Errno) in
            guard let h = handles[fh] else { throw .badHandle }
            try commit(h)
        }
    }

    private func commit(_ h: OpenFile) throws(Errno) {
        if let failure = h.failure { throw failure }
        guard h.writable, h.dirty, let buffer = h.buffer else { return }
        guard let name = h.node.name else {
            // Unlinked while open: like any unlinked file, its data goes nowhere.
            h.dirty = false
            return
        }
        guard buffer.valueCount(keepTrailingNewline: options.keepTrailingNewline) <= options.sizeLimit else {
            h.failure = .tooBig
            throw .tooBig
        }
        if h.node.isStaging {
            // Never stored, never audited: the bytes stay in locked memory
            // (a copy: the handle may go on writing) until a rename commits them.
            let snapshot = buffer.withValue(keepTrailingNewline: true) { raw in
                WriteBuffer(limit: options.sizeLimit + 1, initial: SecureBytes(copying: raw), pool: nil)
            }
            guard let snapshot else { throw .noMemory }
            h.node.staged?.wipe()
            h.node.staged = snapshot
            h.dirty = false
            h.written = false
            return
        }
        do {
            // Sealed straight from the write buffer: no copy of the value.
            h.node.info = try buffer.withValue(keepTrailingNewline: options.keepTrailingNewline) {
                try vault.put(name, bytes: $0, actor: h.actor, action: h.appended ? .append : .set)
            }
            h.dirty = false
            h.written = false
            h.appended = false
            namespace.lastChange = h.node.info!.updatedAt
            onChange?([name])
            logger.info("stored", metadata: ["name": "\(name)", "uid": "\(h.actor.uid)"])
        } catch {
            // The writer is told now, and the handle keeps failing: a later
            // flush or the release never stores what this close said was not
            // stored (the old value stays, as the writer was told).
            logger.error("commit failed", metadata: ["name": "\(name)", "error": "\(error)"])
            h.failure = .io
            throw .io
        }
    }

    /// RELEASE: the last close. Commits what a flush did not (errors can only
    /// be logged now), drops a created file that never got a value, wipes.
    public func release(fh: UInt64) {
        var ticket: (before: UInt64, after: UInt64) = (0, 0)
        lock.withLock { _ in
            ticket.before = vault.store.commitTicket()
            defer { ticket.after = vault.store.commitTicket() }
            guard let h = handles.removeValue(forKey: fh) else { return }
            if h.dirty && h.failure == nil { try? commit(h) }
            h.buffer?.wipe()
            unregister(h)
            if !h.node.isCommitted && !h.node.isStaging && h.node.openHandles == 0, let name = h.node.name {
                // A created file that never got a value disappears; if it had
                // been renamed over a stored secret, that secret shows again.
                namespace.unlink(h.node)
                if let stored = try? vault.info(name) { _ = namespace.add(name: name, info: stored) }
            }
            namespace.collect(h.node)
        }
        // What a release committed is made durable too (nobody waits for it,
        // but a later close must not return before an earlier commit is on disk).
        guard ticket.after > ticket.before else { return }
        do { try vault.store.syncCommits(through: ticket.after) } catch {
            logger.error("commit not durable", metadata: ["error": "\(error)"])
        }
    }

    // MARK: setattr

    public struct AttributeChange: Sendable {
        public var mode: mode_t?
        public var uid: uid_t?
        public var gid: gid_t?
        public var size: Int64?
        public var setsTimes = false
        public init() {}

        /// Times set for their own sake (touch, utimensat), not as the
        /// kernel's part of a truncate, which always asks to set mtime too.
        var setsTimesAlone: Bool { setsTimes && size == nil }
    }

    public func setattr(ino: UInt64, change: AttributeChange, fh: UInt64?, caller: Caller) throws(Errno) -> Attributes {
        try check(caller)
        return try committing { () throws(Errno) in
            // Mode, ownership and times are the mount's policy, not per file:
            // a change succeeds and changes nothing (as vfat's `quiet`), so
            // `cp -p`, `install -m` and `rsync -a` work and no change can add
            // a read bit; with -o strict_modes a real change is refused.
            if ino == Namespace.rootIno {
                if change.size != nil { throw .isDirectory }
                if options.strictModes, change.mode != nil || change.uid != nil || change.gid != nil || change.setsTimesAlone {
                    throw .notPermitted
                }
                return rootAttributes()
            }
            guard let n = namespace.node(ino: ino), visible(n, to: caller) else { throw .noEntry }
            let current = attributes(n)
            if options.strictModes {
                if let m = change.mode, m & 0o7777 != current.mode & 0o7777 { throw .notPermitted }
                if let u = change.uid, u != current.uid { throw .notPermitted }
                if let g = change.gid, g != current.gid { throw .notPermitted }
                if change.setsTimesAlone { throw .notPermitted }
            }
            if let size = change.size {
                guard size >= 0 else { throw .invalid }
                guard size <= Int64(options.sizeLimit) else { throw .tooBig }
                if let fh, let h = handles[fh], h.writable {
                    // ftruncate on an open file (dd does this): change the buffer.
                    let b = try ensureBuffer(h)
                    try b.resize(to: Int(size))
                    h.dirty = true
                    h.written = true
                } else if let name = n.name {
                    // truncate(2) by path: one commit.
                    let h = OpenFile(node: n, writable: true, append: false, caller: caller)
                    let b = size == 0 ? try newBuffer() : try ensureBuffer(h)
                    h.buffer = b
                    defer { b.wipe() }
                    try b.resize(to: Int(size))
                    h.dirty = true
                    if !options.keepTrailingNewline && size > 0 {
                        // truncate by length keeps bytes exactly: commit without dropping.
                        do {
                            n.info = try b.withValue(keepTrailingNewline: true) {
                                try vault.put(name, bytes: $0, actor: caller.actor)
                            }
                        } catch { throw .io }
                        onChange?([name])
                    } else {
                        try commit(h)
                    }
                } else {
                    throw .noEntry
                }
            }
            return attributes(n)
        }
    }

    // MARK: Directory operations

    public func unlink(parent: UInt64, name: String, caller: Caller) throws(Errno) {
        try check(caller)
        guard parent == Namespace.rootIno else { throw .notDirectory }
        guard Names.isValid(name) || Names.isStaging(name) else { throw .noEntry }
        try committing { () throws(Errno) in
            guard let n = namespace.node(named: name, seenBy: caller.uid) else { throw .noEntry }
            if n.isStaging {
                // Discarded: its bytes are wiped, nothing was ever stored.
                namespace.unlink(n)
                return
            }
            // Even a file that has no value yet may stand over a stored one
            // (renamed onto it while being written): the name goes entirely.
            do {
                if try vault.delete(name, actor: caller.actor) { onChange?([name]) }
            } catch {
                logger.error("delete failed", metadata: ["name": "\(name)", "error": "\(error)"])
                throw .io
            }
            namespace.unlink(n)
            logger.info("deleted", metadata: ["name": "\(name)", "uid": "\(caller.uid)"])
        }
    }

    public func rmdir(parent: UInt64, name: String, caller: Caller) throws(Errno) {
        try check(caller)
        guard Names.isValid(name) else { throw .noEntry }
        try lock.withLock { _ throws(Errno) in
            guard namespace.secret(named: name) != nil else { throw .noEntry }
            throw .notDirectory
        }
    }

    public static let renameNoReplace: UInt32 = 1  // RENAME_NOREPLACE (not exported to Swift)
    public static let renameExchange: UInt32 = 2   // RENAME_EXCHANGE

    public func rename(parent: UInt64, name: String, newParent: UInt64, newName: String, flags: UInt32,
                       caller: Caller) throws(Errno) {
        try check(caller)
        guard parent == Namespace.rootIno, newParent == Namespace.rootIno else { throw .notDirectory }
        guard flags & ~(Self.renameNoReplace | Self.renameExchange) == 0,
              flags != Self.renameNoReplace | Self.renameExchange else { throw .invalid }
        // EPERM rather than EINVAL: mv reports EINVAL from rename(2) as
        // "cannot move to a subdirectory of itself", which misleads.
        guard Names.isValid(name) || Names.isStaging(name) else { throw .noEntry }
        let toStaging = Names.isStaging(newName)
        guard Names.isValid(newName) || toStaging else {
            logger.info("refused name", metadata: ["reason": "invalid secret name"])
            throw .notPermitted
        }
        try committing { () throws(Errno) in
            guard let source = namespace.node(named: name, seenBy: caller.uid) else { throw .noEntry }
            let target = namespace.node(named: newName, seenBy: caller.uid)
            if source === target { return }
            if flags & Self.renameNoReplace != 0, target != nil { throw .exists }
            if source.isStaging {
                guard flags & Self.renameExchange == 0 else { throw .invalid }
                try commitStaging(source, as: newName, toStaging: toStaging, caller: caller)
                return
            }
            // A secret never becomes a staging file: that would take it out of the store.
            if toStaging || target?.isStaging == true { throw .notPermitted }
            do {
                if flags & Self.renameExchange != 0 {
                    guard let target else { throw Errno.noEntry }
                    guard source.isCommitted && target.isCommitted else { throw Errno.invalid }
                    let stored = try vault.rename(name, to: newName, mode: .exchange, actor: caller.actor)
                    onChange?([name, newName])
                    let s = source.info, t = target.info
                    namespace.exchange(source, target)
                    // Both rows got new versions.
                    source.info = stored.to ?? s
                    target.info = stored.from ?? t
                    return
                }
                if source.isCommitted {
                    let stored = try vault.rename(name, to: newName, mode: .replace, actor: caller.actor)
                    onChange?([name, newName])
                    source.info = stored.to
                }
                // A file still being created (no value yet) moved over a
                // stored one: the stored value stays in the store until the
                // new one is committed over it at close. If that never happens
                // (EFBIG, an error), release puts the stored one back in view.
            } catch let e as Errno {
                throw e
            } catch {
                logger.error("rename failed", metadata: ["from": "\(name)", "to": "\(newName)", "error": "\(error)"])
                throw .io
            }
            namespace.move(source, to: newName)
            logger.info("renamed", metadata: ["from": "\(name)", "to": "\(newName)", "uid": "\(caller.uid)"])
        }
    }

    /// A staging file renamed: onto another staging name, a move in memory;
    /// onto a valid name, its bytes become that secret in one durable write
    /// (replacing any value there), and the file is an ordinary secret from
    /// then on. Under `lock`.
    private func commitStaging(_ node: Node, as newName: String, toStaging: Bool, caller: Caller) throws(Errno) {
        if toStaging {
            namespace.move(node, to: newName)
            return
        }
        // The bytes of its last flush; a file never flushed is empty.
        let staged = node.staged
        do {
            let info: SecretInfo
            if let staged {
                info = try staged.withValue(keepTrailingNewline: options.keepTrailingNewline) {
                    try vault.put(newName, bytes: $0, actor: caller.actor)
                }
            } else {
                info = try vault.put(newName, bytes: UnsafeRawBufferPointer(start: nil, count: 0), actor: caller.actor)
            }
            node.info = info
        } catch {
            logger.error("commit of a staging file failed", metadata: ["name": "\(newName)", "error": "\(error)"])
            throw .io
        }
        staged?.wipe()
        node.staged = nil
        namespace.move(node, to: newName, stagedBy: .some(nil))
        namespace.lastChange = node.updatedAt
        onChange?([newName])
        logger.info("stored", metadata: ["name": "\(newName)", "uid": "\(caller.uid)", "from": "staging file"])
    }

    // MARK: Changes made outside this mount

    /// What `reloadFromStore` changed: the names to report (CHANGED on the
    /// socket) and to drop from the kernel's caches, and the inodes whose
    /// cached attributes are stale.
    public struct StoreChanges: Sendable, Equatable {
        public var names: [String] = []
        public var inodes: [UInt64] = []
        /// The store could not be read: nothing was applied (try again).
        public var failed = false
        public var isEmpty: Bool { names.isEmpty }
    }

    /// Re-reads the listing from the store and brings the namespace in line:
    /// names that appeared (an undelete, a restore of a deleted name, another
    /// host's write), names whose version changed and names that went. With
    /// `names` (what a shared store's change log says changed) only those are
    /// re-read; without, every name. Files being created or staged here are
    /// left alone. Reads the store under `lock`, so no commit of this mount
    /// can fall between the read and the update. Does not call `onChange`
    /// (the caller does, after invalidating the kernel's caches outside `lock`).
    public func reloadFromStore(names: [String]? = nil) -> StoreChanges {
        lock.withLock { _ in
            // What the store holds now, for the names in question.
            var current: [String: SecretInfo] = [:]
            do {
                if let names {
                    for n in names { if let info = try vault.info(n) { current[n] = info } }
                } else {
                    for s in try vault.list() { current[s.name] = s }
                }
            } catch {
                logger.error("cannot re-read the listing", metadata: ["error": "\(error)"])
                return StoreChanges(failed: true)
            }
            var changes = StoreChanges()
            for s in current.values.sorted(by: { $0.name < $1.name }) {
                if let n = namespace.secret(named: s.name) {
                    guard n.isCommitted, !n.isStaging, n.info != s else { continue }
                    n.info = s
                    changes.names.append(s.name)
                    changes.inodes.append(n.ino)
                } else {
                    _ = namespace.add(name: s.name, info: s)
                    changes.names.append(s.name)
                }
            }
            // Names the store no longer has: every committed name, or those asked about.
            let gone = names.map { $0.compactMap { namespace.secret(named: $0) } } ?? namespace.sortedNodes()
            for n in gone where n.isCommitted {
                guard let name = n.name, current[name] == nil else { continue }
                changes.names.append(name)
                changes.inodes.append(n.ino)
                namespace.unlink(n)
            }
            if !changes.isEmpty {
                namespace.lastChange = Timestamp.now()
                logger.info("changed outside the mount", metadata: ["names": "\(changes.names.count)"])
            }
            return changes
        }
    }

    // MARK: Listing

    public func opendir(ino: UInt64, caller: Caller) throws(Errno) -> UInt64 {
        try check(caller)
        guard ino == Namespace.rootIno else { throw .notDirectory }
        return lock.withLock { _ in
            let fh = nextHandle
            nextHandle += 1
            // A snapshot (copy-on-write, so free until the directory next
            // changes): offsets into it stay meaningful while names change.
            directoryListings[fh] = namespace.sortedNodes()
            return fh
        }
    }

    public struct DirectoryEntry {
        public var name: String
        public var attributes: Attributes
        /// The offset of the entry after this one.
        public var nextOffset: Int64
    }

    /// Entries from `offset` on ("." and ".." first). With `plus`, each entry
    /// handed to the kernel counts a lookup, so `accept` reports whether it fit.
    public func readdir(fh: UInt64, offset: Int64, plus: Bool, caller: Caller,
                        accept: (DirectoryEntry) -> Bool) throws(Errno) {
        try check(caller)
        try lock.withLock { _ throws(Errno) in
            guard let listing = directoryListings[fh] else { throw .badHandle }
            var index = Int(offset)
            let root = rootAttributes()
            while index < listing.count + 2 {
                let entry: DirectoryEntry
                var node: Node?
                if index == 0 {
                    entry = DirectoryEntry(name: ".", attributes: root, nextOffset: 1)
                } else if index == 1 {
                    entry = DirectoryEntry(name: "..", attributes: root, nextOffset: 2)
                } else {
                    let n = listing[index - 2]
                    guard let name = n.name else { index += 1; continue }  // removed since opendir
                    node = n
                    entry = DirectoryEntry(name: name, attributes: attributes(n), nextOffset: Int64(index + 1))
                }
                guard accept(entry) else { return }
                if plus, let node { node.lookups += 1 }
                index += 1
            }
        }
    }

    public func releasedir(fh: UInt64) {
        lock.withLock { _ in _ = directoryListings.removeValue(forKey: fh) }
    }

    public func statfs(caller: Caller) throws(Errno) -> (files: Int, nameMax: Int) {
        try check(caller)
        return lock.withLock { _ in (namespace.count, Names.maximumLength) }
    }

    /// access(2): the mount's policy first, then the mode bits as shown, so
    /// `test -r NAME` agrees with `ls -l` (write-only) even though `cat`
    /// is allowed to open the file and read nothing.
    public func access(ino: UInt64, mask: Int32, caller: Caller) throws(Errno) {
        try check(caller)
        try lock.withLock { _ throws(Errno) in
            if ino == Namespace.rootIno { return }
            guard namespace.node(ino: ino) != nil else { throw .noEntry }
            if mask & (R_OK | X_OK) != 0 { throw .accessDenied }
        }
    }

    /// Whether a handle exists (reads of an open file return nothing).
    public func checkHandle(fh: UInt64) throws(Errno) {
        try lock.withLock { _ throws(Errno) in
            guard handles[fh] != nil else { throw .badHandle }
        }
    }
}
