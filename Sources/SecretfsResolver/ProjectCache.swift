import Glibc
import Logging
import SecretfsInject
import SecretfsPOSIX
import SecretfsProtocol
import SecretfsRedact
import SecureMemory
import Synchronization

/// A failure talking to a project's mount, already in the daemon's words.
struct UpstreamFailure: Error {
    var code: WireErrorCode
    var message: String

    init(_ code: WireErrorCode, _ message: String) {
        self.code = code
        self.message = message
    }

    init(_ e: ProtocolError) {
        switch e.kind {
        case .notListening, .connectionRefused: code = .notMounted
        case .server(.notAllowed), .permissionDenied: code = .mountRefused
        case .server(.storeUnavailable): code = .storeUnavailable
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
    /// Redactors kept (`ResolverDaemonLimits.maxRedactorsPerProject`); past
    /// it, the one used least recently goes.
    let maxRedactors: Int
    /// Redactors alive at once, cached or not (`maxLiveRedactorsPerProject`).
    let maxLiveRedactors: Int

    /// A redactor built here, for as long as anything (the cache, a stream)
    /// holds it: what `maxLiveRedactors` counts, and what a stream whose key
    /// the cache let go can share again.
    private final class LiveRedactor: @unchecked Sendable {   // used under `state`'s lock only
        let key: RedactorKey
        let generation: UInt64
        weak var redactor: Redactor?
        init(_ key: RedactorKey, _ generation: UInt64, _ redactor: Redactor) {
            self.key = key
            self.generation = generation
            self.redactor = redactor
        }
    }

    struct RedactorKey: Hashable {
        var minimumLength: Int
        var mask: String
    }

    private struct State {
        var values: [String: SecureBytes] = [:]
        var missing: Set<String> = []
        var names: [String]?
        var redactors: [RedactorKey: (redactor: Redactor, lastUsed: UInt64)] = [:]
        /// Counts redactor lookups: the order of `lastUsed`.
        var redactorClock: UInt64 = 0
        /// Every redactor built and still alive, and builds under way.
        var live: [LiveRedactor] = []
        var building = 0
        /// REDACT streams running on this cache (it is not evicted while any does).
        var streams = 0
        /// Bumped by every event that drops anything.
        var generation: UInt64 = 0
        /// The feed on the mount's socket, once one could be started. It
        /// reconnects by itself; `watchLive` says whether it is up now.
        var feed: ChangeFeed?
        var watchLive = false
        var feedStarting = false
        var lastFeedAttempt: Double = -1e9
        var watchers: [UInt64: ChangeQueue] = [:]
        var stopped = false
        var invalidations = 0
        /// Monotonic seconds of the last request (the daemon evicts idle caches).
        var lastUsed: Double = 0
    }
    private let state = Mutex(State())

    init(project: String, socketPath: String, logger: Logger, fetchTimeout: Double, maxRedactors: Int, maxLiveRedactors: Int) {
        self.project = project
        self.maxRedactors = maxRedactors
        self.maxLiveRedactors = maxLiveRedactors
        self.socketPath = socketPath
        self.logger = logger
        self.fetchTimeout = fetchTimeout
    }

    // MARK: Watching the mount

    /// Starts the change feed on the mount's socket if none runs yet (at most
    /// one attempt per `retryInterval` seconds while the mount is not there).
    /// Never throws: a project without a live feed is simply not cached.
    /// Once started, the feed reconnects by itself (a remount, a mount
    /// restart): values are cached only while it is up.
    func ensureWatch(retryInterval: Double = 0.5) {
        let now = monotonicSeconds()
        let go = state.withLock { s -> Bool in
            s.lastUsed = now
            guard !s.stopped, s.feed == nil, !s.feedStarting, now - s.lastFeedAttempt >= retryInterval else { return false }
            s.feedStarting = true
            s.lastFeedAttempt = now
            return true
        }
        guard go else { return }
        let feed: ChangeFeed
        do {
            feed = try PrivilegedClient.changeFeed(socketPath: socketPath, timeout: fetchTimeout) { [weak self] event in
                self?.handle(event)
                return true
            }
        } catch {
            state.withLock { $0.feedStarting = false }
            logger.debug("cannot watch the project", metadata: ["project": "\(project)", "error": "\(error.message)"])
            return
        }
        let stopped = state.withLock { s -> Bool in
            s.feedStarting = false
            if s.stopped { return true }
            s.feed = feed
            s.watchLive = true
            // Anything cached before the feed started is of unknown age.
            dropAll(&s)
            return false
        }
        if stopped { feed.cancel(); return }
        logger.info("watching the project's mount", metadata: ["project": "\(project)"])
    }

    private func dropAll(_ s: inout State) {
        s.values.removeAll()
        s.missing.removeAll()
        s.names = nil
        s.redactors.removeAll()
        s.generation &+= 1
    }

    private func handle(_ event: ChangeFeed.Event) {
        switch event {
        case .changed(let names, let complete):
            let watchers = state.withLock { s -> [ChangeQueue] in
                s.generation &+= 1
                s.invalidations += 1
                if complete {
                    for n in names {
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
            for w in watchers { w.enqueue(names, complete: complete) }
            logger.info("secrets changed; cached values dropped",
                        metadata: ["project": "\(project)", "names": "\(names.joined(separator: ","))",
                                   "complete": "\(complete)"])
        case .lost(let error):
            let watchers = state.withLock { s -> [ChangeQueue] in
                s.invalidations += 1
                s.watchLive = false
                dropAll(&s)
                return Array(s.watchers.values)
            }
            for w in watchers { w.enqueue([], complete: false) }
            logger.warning("lost the watch on the project's mount; cache dropped, reconnecting",
                           metadata: ["project": "\(project)", "error": "\(error.message)"])
        case .restored:
            // Changes may have happened while it was down: everything changed.
            let watchers = state.withLock { s -> [ChangeQueue] in
                s.invalidations += 1
                s.watchLive = true
                dropAll(&s)
                return Array(s.watchers.values)
            }
            for w in watchers { w.enqueue([], complete: false) }
            logger.info("watching the project's mount again", metadata: ["project": "\(project)"])
        }
    }

    /// Stops the feed and drops everything (daemon shutdown, or eviction).
    func stop() {
        let feed = state.withLock { s -> ChangeFeed? in
            s.stopped = true
            dropAll(&s)
            s.watchLive = false
            defer { s.feed = nil }
            return s.feed
        }
        feed?.cancel()
    }

    /// For eviction: whether a client watches the project or streams
    /// through it (an evicted cache's feed stops, and a stream on it would
    /// never see another change), and when it was last used.
    var usage: (watched: Bool, lastUsed: Double) {
        state.withLock { (!$0.watchers.isEmpty || $0.streams > 0, $0.lastUsed) }
    }

    /// A REDACT stream starts or ends on this cache.
    func streamStarted() { state.withLock { $0.streams += 1 } }
    func streamEnded() { state.withLock { $0.streams -= 1 } }

    // MARK: Watchers (the daemon's own WATCH clients)

    func addWatcher(_ id: UInt64, _ queue: ChangeQueue) {
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
        let hits = try orderedValues(names)
        var found: [String: SecureBytes] = [:]
        found.reserveCapacity(names.count)
        var missing: [String] = []
        for (n, v) in zip(names, hits) { if let v { found[n] = v } else { missing.append(n) } }
        return (found, missing)
    }

    /// `values`, in the order of `names` (nil: no such secret), for RESOLVE:
    /// no dictionary to build and hash into again.
    func orderedValues(_ names: [String]) throws(UpstreamFailure) -> [SecureBytes?] {
        // Every connection's requests come through this lock: one short hold
        // per request when the watch runs (the usual case), which also does
        // `ensureWatch`'s bookkeeping; nothing is allocated under it but the
        // result's room.
        let now = monotonicSeconds()
        var hits: [SecureBytes?] = []
        hits.reserveCapacity(names.count)
        var wanted: [String] = []
        func lookUp(_ s: inout State) {
            hits.removeAll(keepingCapacity: true)
            wanted.removeAll()
            for n in names {
                let v = s.values[n]
                hits.append(v)
                if v == nil && !s.missing.contains(n) { wanted.append(n) }
            }
        }
        var (generation, live, watched) = state.withLock { s -> (UInt64, Bool, Bool) in
            guard s.feed != nil else { return (0, false, false) }
            s.lastUsed = now
            lookUp(&s)
            return (s.generation, s.watchLive, true)
        }
        if !watched {
            // No feed yet (or it could not be started): start it, then look.
            ensureWatch()
            (generation, live) = state.withLock { s -> (UInt64, Bool) in
                lookUp(&s)
                return (s.generation, s.watchLive)
            }
        }
        if wanted.isEmpty { return hits }

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
        for i in hits.indices where hits[i] == nil { hits[i] = fetched.values[names[i]] }
        logger.debug("fetched from the mount", metadata: ["project": "\(project)", "names": "\(wanted.joined(separator: ","))",
                                                          "found": "\(fetched.values.count)"])
        return hits
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
    /// `replacing`: the redactor the caller lets go once it has the new one
    /// (a stream's rebuild), not counted against `maxLiveRedactors`.
    func redactor(_ key: RedactorKey, replacing old: Redactor? = nil) throws(UpstreamFailure) -> (Redactor, UInt64) {
        ensureWatch()
        let found = state.withLock { s -> Result<(Redactor?, UInt64, Bool), UpstreamFailure> in
            s.redactorClock &+= 1
            s.redactors[key]?.lastUsed = s.redactorClock
            if let cached = s.redactors[key]?.redactor { return .success((cached, s.generation, s.watchLive)) }
            s.live.removeAll { $0.redactor == nil }
            // One the cache let go that a stream still holds, as current as
            // a cached one would be: shared again, and cached again.
            if s.watchLive, let held = s.live.first(where: { $0.key == key && $0.generation == s.generation })?.redactor {
                cacheLocked(&s, key, held)
                return .success((held, s.generation, true))
            }
            func alive() -> Int {
                s.live.removeAll { $0.redactor == nil }
                return s.live.filter { $0.redactor !== old }.count + s.building
            }
            // The cache gives way first: a matcher only it holds is freed
            // when it lets go (one a stream holds lives on, and counts).
            while alive() >= maxLiveRedactors,
                  let oldest = s.redactors.min(by: { $0.value.lastUsed < $1.value.lastUsed })?.key {
                s.redactors.removeValue(forKey: oldest)
            }
            let inUse = alive()
            // A rebuild replaces the caller's own one for one: never refused,
            // or the stream would go on with values that have changed.
            guard inUse < maxLiveRedactors || old != nil else {
                return .failure(UpstreamFailure(.busy, "\(inUse) redaction matchers of project \(project) are in use, the most it may have "
                                                + "(one per minimum length and mask, and one per stream while the mount's change feed is down); "
                                                + "close a redaction stream, or use the minimum length and mask the others use"))
            }
            s.building += 1
            return .success((nil, s.generation, s.watchLive))
        }
        let (cached, generation, live): (Redactor?, UInt64, Bool)
        switch found {
        case .success(let f): (cached, generation, live) = f
        case .failure(let e): throw e
        }
        if let cached { return (cached, generation) }
        defer { state.withLock { $0.building -= 1 } }
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
            s.live.append(LiveRedactor(key, generation, redactor))
            guard live, s.watchLive, s.generation == generation else { return }
            cacheLocked(&s, key, redactor)
        }
        logger.info("built a redactor", metadata: ["project": "\(project)", "registered": "\(redactor.registeredNames.count)",
                                                   "skipped": "\(redactor.skipped.map(\.name).joined(separator: ","))"])
        return (redactor, generation)
    }

    /// Keeps `redactor` as the one for `key`, the least recently used going
    /// when the cache is full.
    private func cacheLocked(_ s: inout State, _ key: RedactorKey, _ redactor: Redactor) {
        if s.redactors[key] == nil, s.redactors.count >= maxRedactors,
           let oldest = s.redactors.min(by: { $0.value.lastUsed < $1.value.lastUsed })?.key {
            s.redactors.removeValue(forKey: oldest)
        }
        s.redactorClock &+= 1
        s.redactors[key] = (redactor, s.redactorClock)
    }

    /// The generation now (a REDACT stream rebuilds when it moves).
    var generation: UInt64 { state.withLock { $0.generation } }

    /// For tests and the log: cached value count, events that dropped
    /// something, whether the watch is live, and redactors kept.
    var stats: (cachedValues: Int, invalidations: Int, watching: Bool, redactors: Int) {
        state.withLock { ($0.values.count, $0.invalidations, $0.watchLive, $0.redactors.count) }
    }
}
