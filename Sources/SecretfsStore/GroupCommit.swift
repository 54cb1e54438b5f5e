import Glibc
import Synchronization

/// Group commit for a mount of the embedded store (issue 11, goal 5).
///
/// A close must return only once its value is durable, and each commit of
/// SQLite's FULL mode fsyncs the WAL inside the transaction, under every
/// lock the mount holds: concurrent writers then pay one fsync each, one
/// after another. With group commit the mount's connection commits with
/// `synchronous = NORMAL` (the WAL frames are written, not yet synced) under
/// its locks, and each writer then calls `syncCommits()` outside them: one
/// fsync of the WAL file makes every commit written before it durable, so
/// writers that arrive while a sync runs share the next one. SQLite itself
/// syncs the WAL before it checkpoints it, and the database after, so a
/// frame is durable once this fsync returns whatever checkpoint comes later.
///
/// A committed value is visible (to a socket GET, to `ls`) a little before
/// it is durable; a close never returns before. Commands other than a mount
/// keep FULL and never use this. A shared store commits synchronously on the
/// server (PostgreSQL groups concurrent commits itself): nothing to do here.
final class GroupCommit: @unchecked Sendable {
    // @unchecked: `durable` and `syncing` are guarded by `mutex`.
    private let wal: Int32
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let cond = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    /// Commits made: counted after each COMMIT returned (under the store's
    /// lock, so one writer at a time), when its WAL frames are written.
    /// Read without that lock by a writer about to sync.
    let committed = Atomic<UInt64>(0)
    /// Commits known durable, and whether a sync is running (under `mutex`).
    private var durable: UInt64 = 0
    private var syncing = false
    /// fsyncs run so far (under `mutex`; read by tests).
    private(set) var syncs = 0

    /// How the WAL is synced: fsync (tests put their own in, to commit
    /// while a sync runs).
    private let sync: @Sendable (Int32) -> Int32

    init(walDescriptor: Int32, sync: @escaping @Sendable (Int32) -> Int32 = { fsync($0) }) {
        wal = walDescriptor
        self.sync = sync
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(cond, nil)
    }

    deinit {
        close(wal)
        pthread_cond_destroy(cond)
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
        cond.deallocate()
    }

    /// Returns once commits 1...`target` are durable: by the sync of a
    /// writer already running, or by one this call runs. The errno of a
    /// failed fsync, or 0.
    func waitDurable(through target: UInt64) -> Int32 {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        while durable < target {
            if syncing {
                pthread_cond_wait(cond, mutex)
                continue
            }
            // This caller syncs, for every commit made up to now: later
            // writers' frames are in the WAL too, and the writers waiting
            // for this sync to end must find theirs covered by it, not run
            // one sync each after it (which made 8 writers little faster
            // than 1). Counted before the fsync starts: a commit counted
            // later may have written its frames after the sync began.
            syncing = true
            pthread_mutex_unlock(mutex)
            let covered = max(target, committed.load(ordering: .acquiring))
            let rc = retryOnInterruptSync { sync(wal) }
            let error = rc == 0 ? 0 : errno
            pthread_mutex_lock(mutex)
            syncing = false
            syncs += 1
            if error == 0 { durable = max(durable, covered) }
            pthread_cond_broadcast(cond)
            if error != 0 { return error }
        }
        return 0
    }
}

private func retryOnInterruptSync(_ call: () -> Int32) -> Int32 {
    while true {
        let rc = call()
        if rc == 0 || errno != EINTR { return rc }
    }
}

extension Store {
    /// Turns group commit on for this (a mount's) connection of an embedded
    /// store: commits no longer sync, and `syncCommits()` makes them durable.
    /// A shared store is left as it is.
    public func enableGroupCommit() throws {
        guard !location.isShared, let sqlite = db as? SQLiteConnection else { return }
        let dir = try Self.trustedDirectory(location, creating: false)
        let wal: Int32
        do { wal = try dir.open(Self.databaseName + "-wal", O_RDONLY) } catch {
            throw StoreError.io(path: location.databasePath + "-wal", errno: error.errno, action: "open")
        }
        try lock.withLock { _ in
            let group = GroupCommit(walDescriptor: wal)
            try sqlite.execute("PRAGMA synchronous = NORMAL", context: "configuring group commit")
            sqlite.afterTransaction = { committed in
                if committed { group.committed.add(1, ordering: .releasing) }
            }
            groupCommit = group
        }
    }

    /// How many commits this process has made (with group commit on; 0
    /// when it is off): taken before and after an operation, it says whether
    /// the operation committed, and through which commit it must wait.
    public func commitTicket() -> UInt64 {
        lock.withLock { _ in groupCommit?.committed.load(ordering: .acquiring) ?? 0 }
    }

    /// Returns once commits up to `ticket` (all of them so far, if nil) are
    /// durable (group commit; immediately when it is off). Called outside
    /// every lock.
    public func syncCommits(through ticket: UInt64? = nil) throws {
        guard let group = lock.withLock({ _ in groupCommit }) else { return }
        let target = ticket ?? group.committed.load(ordering: .acquiring)
        let error = group.waitDurable(through: target)
        if error != 0 { throw StoreError.io(path: location.databasePath + "-wal", errno: error, action: "fsync") }
    }
}
