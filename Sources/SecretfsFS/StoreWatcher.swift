import Glibc
import CShims
import Logging
import SecretfsPOSIX
import Synchronization

/// The one place a mount learns of changes made outside it (a CLI restore,
/// undelete or purge, an expired trash): a thread polls the store's
/// `PRAGMA data_version` every `interval` (a read of SQLite's shared-memory
/// index, no disk I/O), and when it moves it re-reads the listing
/// (`SecretFilesystem.reloadFromStore`), drops the kernel's cached entries and
/// attributes for what changed, and reports the names through the
/// filesystem's `onChange` (the privileged socket's CHANGED, so resolver
/// daemons drop cached values). The mount's own commits do not move
/// data_version; they report themselves.
///
/// A shared (PostgreSQL) store: the counter is the project's newest change-
/// log sequence, the thread waits on the store's NOTIFY (ChangeNotifications)
/// instead of sleeping, so another host's change shows within milliseconds,
/// and only the names the log lists since the last sequence seen are re-read.
/// After a lost connection the sequence comparison is the resync.
public final class StoreWatcher: @unchecked Sendable {
    // @unchecked: `thread` is set by start and read by stop, on one thread.
    private let filesystem: SecretFilesystem
    private let invalidate: @Sendable (SecretFilesystem.StoreChanges) -> Void
    private let interval: Double
    private let stopping = Atomic<Bool>(false)
    /// What the thread waits on between polls: `stop` ends the wait at once.
    private var wakeup: Wakeup?
    private var thread: pthread_t?
    /// The last poll failed (touched by the polling thread only).
    private var failing = false
    /// When the whole listing was last re-read (monotonic seconds; polling thread only).
    private var lastFullReload = 0.0
    /// A shared store's listing is re-read whole this often whatever its
    /// change log says: other hosts write that log, and a forged or broken
    /// sequence must not freeze what this mount shows for longer than this.
    public static let sharedFullReloadInterval = 60.0
    /// More names than this in one poll are read as one listing, not one
    /// query each (a flood of log rows must not hold the filesystem lock).
    public static let maxNamesPerPoll = 256

    /// `invalidate` drops kernel caches (FuseSession.invalidate); called
    /// outside every lock before `onChange`.
    public init(filesystem: SecretFilesystem, interval: Double = 0.2,
                invalidate: @escaping @Sendable (SecretFilesystem.StoreChanges) -> Void) {
        self.filesystem = filesystem
        self.interval = interval
        self.invalidate = invalidate
    }

    /// One poll: true when the store changed and the changes were applied.
    @discardableResult
    public func poll(last: inout Int64?) -> Bool {
        let now: Int64
        // A shared store's log names what changed since the sequence seen
        // last, but for this mount's own commits; nil when it cannot say
        // (pruned, too far behind, a whole-project change such as a key
        // rotation; always for the embedded store): then every name is re-read.
        var names: [String]?
        do {
            now = try filesystem.vault.storeDataVersion()
            if let before = last, before != now {
                names = try filesystem.vault.changedNames(since: before)
                // A rotation of the data key made elsewhere: follow its link
                // now, before the rotation ends and drops it.
                if names == nil { try filesystem.vault.followKeyRotation() }
            }
        } catch {
            // Not silent: outside changes go unseen until the store answers
            // again (said once per outage; writes report their own errors).
            if !failing {
                filesystem.logger.warning("store unavailable: cannot follow changes made outside the mount; listings are served from the last state",
                                          metadata: ["error": "\(error)"])
            }
            failing = true
            return false
        }
        if failing { filesystem.logger.info("store available again: following changes made outside the mount") }
        failing = false
        // The whole listing: at the first poll (what changed between the
        // mount's first read and now), and now and then on a shared store.
        let clock = monotonicSeconds()
        let full = last == nil
            || (filesystem.vault.store.location.isShared && clock - lastFullReload >= Self.sharedFullReloadInterval)
        if !full {
            if last == now { return false }
            if names?.isEmpty == true {
                last = now   // only this mount's own commits
                return false
            }
        }
        let asked = full ? nil : names.flatMap { $0.count > Self.maxNamesPerPoll ? nil : $0 }
        let changes = filesystem.reloadFromStore(names: asked)
        // Applied, or not at all: the sequence seen moves only once it is.
        guard !changes.failed else { return false }
        last = now
        if full || asked == nil { lastFullReload = clock }
        guard !changes.isEmpty else { return false }
        invalidate(changes)
        filesystem.onChange?(changes.names)
        return true
    }

    public func start() -> Bool {
        guard thread == nil, let wakeup = Wakeup() else { return false }
        self.wakeup = wakeup
        final class Box { let body: () -> Void; init(_ b: @escaping () -> Void) { body = b } }
        let box = Unmanaged.passRetained(Box { [self] in
            // Named, for `top -H` and for the shared-store benchmark, which
            // tells this thread's queries from the writes' (scripts/bench-fs).
            _ = secretfs_name_thread("store-watcher")
            loop(wakeup)
        }).toOpaque()
        var tid = pthread_t()
        let rc = pthread_create(&tid, nil, { p in
            Unmanaged<Box>.fromOpaque(p!).takeRetainedValue().body()
            return nil
        }, box)
        if rc != 0 {
            Unmanaged<Box>.fromOpaque(box).release()
            self.wakeup = nil
            return false
        }
        thread = tid
        return true
    }

    /// Stops the thread and waits for it (before the session is closed).
    public func stop() {
        stopping.store(true, ordering: .releasing)
        wakeup?.wake()
        if let t = thread { pthread_join(t, nil) }
        thread = nil
        wakeup = nil
    }

    private func loop(_ wakeup: Wakeup) {
        var last: Int64?
        poll(last: &last)
        // A shared store announces other hosts' changes (NOTIFY): a poll
        // follows each notice at once, and one runs at least every
        // `interval` anyway, covering a notice lost with its connection.
        // `stop` (an unmount) wakes every wait: an unmount does not wait
        // out an interval (only a connect or a query already under way).
        let notifications = filesystem.vault.changeNotifications()
        var listening: Bool?
        var nextPoll = monotonicSeconds() + interval
        while !stopping.load(ordering: .acquiring) {
            var now = false
            let remaining = max(0, nextPoll - monotonicSeconds())
            if let notifications {
                switch notifications.wait(timeout: remaining, wake: wakeup) {
                case .quiet:
                    break
                case .changed:
                    now = true
                case .lost(let why):
                    if listening != false {
                        filesystem.logger.warning("lost the store's change notifications; reconnecting", metadata: ["error": "\(why)"])
                    }
                    listening = false
                case .restored:
                    filesystem.logger.info(listening == false ? "listening to the store's change notifications again"
                                                              : "listening to the store's change notifications")
                    listening = true
                    now = true   // notices sent while away are lost: resync
                }
            } else {
                wakeup.sleep(remaining)
            }
            if now || monotonicSeconds() >= nextPoll {
                poll(last: &last)
                nextPoll = monotonicSeconds() + interval
            }
        }
    }
}
