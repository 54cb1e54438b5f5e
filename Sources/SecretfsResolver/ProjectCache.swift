import Glibc
import Logging
import SecretfsInject
import SecretfsProtocol
import SecretfsRedact
import SecureMemory
import Synchronization

/// A failure talking to a project's mount, already in the daemon's words.
struct UpstreamFailure: Error {
    var code: DaemonErrorCode
    var message: String

    init(_ code: DaemonErrorCode, _ message: String) {
        self.code = code
        self.message = message
    }

    init(_ e: ProtocolError) {
        switch e.kind {
        case .notMounted, .connectionRefused: code = .notMounted
        case .server(.notAllowed), .permissionDenied: code = .mountRefused
        default: code = .mountFailed
        }
        message = e.message
    }
}

/// What the daemon holds for one project: the values it was asked for (in
/// locked memory, as the mount sent them), the names known to be missing,
/// the name list, and built redactors, all valid only while a WATCH on the
/// mount's socket is live.
///
/// Invalidation: the mount's CHANGED events drop the named values (all of
/// them when the event is incomplete), the name list and every redactor; the
/// watch ending (the mount went away) drops everything. A fetch is stored
/// only if no event arrived while it was in flight (`generation`), and only
/// while the watch is live, so a cached value is never older than the last
/// event.
///
/// Dropped values are not wiped in place (a request on another thread may be
/// rewriting with them): the cache lets go of its reference, and the buffer
/// is wiped by `sodium_free` as soon as the last request using it is done.
///
/// Lock order: `state` is a leaf lock. Nothing is sent, fetched or logged
/// while holding it, except the non-blocking watcher wake-ups.
final class ProjectCache: @unchecked Sendable {
    // @unchecked: mutable state is in `state` (a Mutex); the rest is immutable.
    let project: String
    let socketPath: String
    let logger: Logger
    let fetchTimeout: Double

    struct RedactorKey: Hashable {
        var minimumLength: Int
        var mask: String
    }

    private struct State {
        var values: [String: SecureBytes] = [:]
        var missing: Set<String> = []
        var names: [String]?
        var redactors: [RedactorKey: Redactor] = [:]
        /// Bumped by every event that drops anything.
        var generation: UInt64 = 0
        var watch: SecretWatch?
        var watchLive = false
        var watchStarting = false
        var watchEpoch: UInt64 = 0
        var endedEpoch: UInt64 = 0
        /// A watch was lost: the next one that starts tells the watchers
        /// (changes may have happened in between).
        var watchLost = false
        var lastWatchAttempt: Double = -1e9
        var watchers: [UInt64: DaemonWatcherQueue] = [:]
        var stopped = false
        var invalidations = 0
    }
    private let state = Mutex(State())

    init(project: String, socketPath: String, logger: Logger, fetchTimeout: Double) {
        self.project = project
        self.socketPath = socketPath
        self.logger = logger
        self.fetchTimeout = fetchTimeout
    }

    // MARK: Watching the mount

    /// Starts the WATCH on the mount's socket if none is live (at most one
    /// attempt per `retryInterval` seconds after a failure). Never throws: a
    /// project without a watch is simply not cached.
    func ensureWatch(retryInterval: Double = 0.5) {
        let now = SocketIO.monotonicNow()
        let epoch = state.withLock { s -> UInt64? in
            guard !s.stopped, !s.watchLive, !s.watchStarting, now - s.lastWatchAttempt >= retryInterval else { return nil }
            s.watchStarting = true
            s.lastWatchAttempt = now
            s.watchEpoch += 1
            return s.watchEpoch
        }
        guard let epoch else { return }
        let watch: SecretWatch
        do {
            watch = try SecretWatch.start(socketPath: socketPath, timeout: fetchTimeout) { [weak self] event in
                self?.handle(event, epoch: epoch)
            }
        } catch {
            state.withLock { $0.watchStarting = false }
            logger.debug("cannot watch the project", metadata: ["project": "\(project)", "error": "\(error.message)"])
            return
        }
        let (live, tellWatchers, stopped) = state.withLock { s -> (Bool, [DaemonWatcherQueue], Bool) in
            s.watchStarting = false
            if s.stopped { return (false, [], true) }
            guard s.endedEpoch != epoch else { return (false, [], false) }
            s.watch = watch
            s.watchLive = true
            // Anything cached before this watch is of unknown age.
            s.values.removeAll()
            s.missing.removeAll()
            s.names = nil
            s.redactors.removeAll()
            s.generation &+= 1
            let tell = s.watchLost ? Array(s.watchers.values) : []
            s.watchLost = false
            return (true, tell, false)
        }
        if stopped { watch.cancel(); return }
        for w in tellWatchers { w.enqueue([], complete: false) }
        if live {
            logger.info("watching the project's mount", metadata: ["project": "\(project)", "version": "\(watch.initialVersion)"])
        }
    }

    private func handle(_ event: SecretWatch.Event, epoch: UInt64) {
        switch event {
        case .changed(let change):
            let watchers = state.withLock { s -> [DaemonWatcherQueue] in
                s.generation &+= 1
                s.invalidations += 1
                if change.complete {
                    for n in change.names {
                        s.values.removeValue(forKey: n)
                        s.missing.remove(n)
                    }
                } else {
                    s.values.removeAll()
                    s.missing.removeAll()
                }
                s.names = nil
                s.redactors.removeAll()
                return Array(s.watchers.values)
            }
            for w in watchers { w.enqueue(change.names, complete: change.complete) }
            logger.info("secrets changed; cached values dropped",
                        metadata: ["project": "\(project)", "names": "\(change.names.joined(separator: ","))",
                                   "complete": "\(change.complete)"])
        case .ended(let error):
            let (watchers, wasCurrent) = state.withLock { s -> ([DaemonWatcherQueue], Bool) in
                s.endedEpoch = epoch
                guard s.watchEpoch == epoch else { return ([], false) }
                s.generation &+= 1
                s.invalidations += 1
                s.values.removeAll()
                s.missing.removeAll()
                s.names = nil
                s.redactors.removeAll()
                s.watch = nil
                s.watchLive = false
                s.watchLost = true
                return (Array(s.watchers.values), true)
            }
            guard wasCurrent else { return }
            for w in watchers { w.enqueue([], complete: false) }
            if let error {
                logger.warning("the project's mount went away; cache dropped",
                               metadata: ["project": "\(project)", "error": "\(error.message)"])
            }
        }
    }

    /// Stops the watch and drops everything (daemon shutdown).
    func stop() {
        let watch = state.withLock { s -> SecretWatch? in
            s.stopped = true
            s.values.removeAll()
            s.missing.removeAll()
            s.names = nil
            s.redactors.removeAll()
            s.watchLive = false
            defer { s.watch = nil }
            return s.watch
        }
        watch?.cancel()
    }

    // MARK: Watchers (the daemon's own WATCH clients)

    func addWatcher(_ id: UInt64, _ queue: DaemonWatcherQueue) {
        state.withLock { $0.watchers[id] = queue }
    }

    func removeWatcher(_ id: UInt64) {
        _ = state.withLock { $0.watchers.removeValue(forKey: id) }
    }

    // MARK: Values

    /// The values of `names` that exist (references to locked buffers, shared
    /// with the cache: callers must not wipe or modify them), and the names
    /// that do not exist. Fetches from the mount only the names not cached.
    func values(_ names: [String]) throws(UpstreamFailure) -> (values: [String: SecureBytes], missing: [String]) {
        ensureWatch()
        var found: [String: SecureBytes] = [:]
        var missing: [String] = []
        var wanted: [String] = []
        let (generation, live) = state.withLock { s -> (UInt64, Bool) in
            for n in names {
                if let v = s.values[n] { found[n] = v } else if s.missing.contains(n) { missing.append(n) } else { wanted.append(n) }
            }
            return (s.generation, s.watchLive)
        }
        if wanted.isEmpty { return (found, missing) }

        let fetched: SecretValues
        do {
            let client = try PrivilegedClient(socketPath: socketPath, timeout: fetchTimeout)
            defer { client.close() }
            fetched = try client.values(wanted)
        } catch {
            throw UpstreamFailure(error)
        }
        state.withLock { s in
            guard live, s.watchLive, s.generation == generation else { return }
            for (n, v) in fetched.values { s.values[n] = v }
            for n in fetched.missing { s.missing.insert(n) }
        }
        for (n, v) in fetched.values { found[n] = v }
        missing += fetched.missing
        logger.debug("fetched from the mount", metadata: ["project": "\(project)", "names": "\(wanted.joined(separator: ","))",
                                                          "found": "\(fetched.values.count)"])
        return (found, missing)
    }

    /// Every name of the project (cached until the next change).
    func names() throws(UpstreamFailure) -> [String] {
        ensureWatch()
        let (cached, generation, live) = state.withLock { ($0.names, $0.generation, $0.watchLive) }
        if let cached { return cached }
        let listing: SecretListing
        do {
            let client = try PrivilegedClient(socketPath: socketPath, timeout: fetchTimeout)
            defer { client.close() }
            listing = try client.list()
        } catch {
            throw UpstreamFailure(error)
        }
        let names = listing.secrets.map(\.name)
        state.withLock { s in
            if live, s.watchLive, s.generation == generation { s.names = names }
        }
        return names
    }

    /// The redactor for every value of the project with these options, and
    /// the cache generation it belongs to. Built from values fetched for the
    /// purpose (not kept: only the matcher tables stay).
    func redactor(_ key: RedactorKey) throws(UpstreamFailure) -> (Redactor, UInt64) {
        ensureWatch()
        let (cached, generation, live) = state.withLock { ($0.redactors[key], $0.generation, $0.watchLive) }
        if let cached { return (cached, generation) }
        var fetched: [String: SecureBytes] = [:]
        do {
            let client = try PrivilegedClient(socketPath: socketPath, timeout: fetchTimeout)
            defer { client.close() }
            let names = try client.list().secrets.map(\.name)
            if !names.isEmpty { fetched = try client.values(names).values }
        } catch {
            throw UpstreamFailure(error)
        }
        defer { for v in fetched.values { v.wipe() } }
        let redactor = Redactor(secrets: fetched.sorted { $0.key < $1.key }.map { (name: $0.key, value: $0.value) },
                                options: RedactionOptions(minimumLength: key.minimumLength, mask: key.mask))
        state.withLock { s in
            if live, s.watchLive, s.generation == generation { s.redactors[key] = redactor }
        }
        logger.info("built a redactor", metadata: ["project": "\(project)", "registered": "\(redactor.registeredNames.count)",
                                                   "skipped": "\(redactor.skipped.map(\.name).joined(separator: ","))"])
        return (redactor, generation)
    }

    /// The generation now (a REDACT stream rebuilds when it moves).
    var generation: UInt64 { state.withLock { $0.generation } }

    /// For tests and the log: cached value count, events that dropped
    /// something, and whether the watch is live.
    var stats: (cachedValues: Int, invalidations: Int, watching: Bool) {
        state.withLock { ($0.values.count, $0.invalidations, $0.watchLive) }
    }
}

/// The queue of one daemon WATCH connection: changed names (or "everything")
/// waiting to be sent, and a pipe that wakes the connection's thread.
final class DaemonWatcherQueue: @unchecked Sendable {
    // @unchecked: `pending` is a Mutex; the descriptors are immutable.
    let readFD: Int32
    let writeFD: Int32
    private struct Pending {
        var has = false
        var names: [String] = []
        var seen: Set<String> = []
        var complete = true
    }
    private let pending = Mutex(Pending())
    static let maxQueued = 1024

    init?() {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { return nil }
        for fd in fds {
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        }
        readFD = fds[0]
        writeFD = fds[1]
    }

    deinit {
        close(readFD)
        close(writeFD)
    }

    func enqueue(_ names: [String], complete: Bool) {
        pending.withLock { p in
            p.has = true
            if !complete { p.complete = false }
            guard p.complete else { p.names = []; p.seen = []; return }
            for n in names where p.seen.insert(n).inserted { p.names.append(n) }
            if p.names.count > Self.maxQueued {
                p.complete = false
                p.names = []
                p.seen = []
            }
        }
        var one: UInt8 = 1
        _ = write(writeFD, &one, 1)   // a full pipe already means "wake up"
    }

    /// What is queued (and clears it), or nil.
    func take() -> (names: [String], complete: Bool)? {
        var scratch = [UInt8](repeating: 0, count: 64)
        while read(readFD, &scratch, scratch.count) > 0 {}
        return pending.withLock { p -> ([String], Bool)? in
            guard p.has else { return nil }
            defer { p = Pending() }
            return (p.names, p.complete)
        }
    }
}
