import CSQLite
import SecretfsNames

/// How a version came to be (the `action` column of `secrets` and `versions`).
public enum VersionAction: String, Sendable, CaseIterable {
    case set, append, rename, restore, `import`, delete
}

/// One entry of a name's history: a value it had (or a delete). Never the
/// value, never its length.
public struct VersionInfo: Sendable, Equatable {
    public var version: Int64
    public var action: VersionAction
    public var at: Timestamp
    public var uid: UInt32
    /// The value the name has now.
    public var isCurrent: Bool
    /// A delete (or the name renamed away): no value at this version.
    public var isDelete: Bool
}

/// A deleted name waiting in the trash.
public struct TrashEntry: Sendable, Equatable {
    public var name: String
    public var deletedAt: Timestamp
    public var deletedBy: UInt32
    /// Values kept (what `undelete` and `restore` can bring back).
    public var versionsKept: Int
    public var purgeAt: Timestamp
}

/// Versions, trash and their limits. The parts that need no key live here on
/// `Store` (history, trash, purge, limits), so the CLI can run them without
/// unwrapping a data key; restoring a value (which re-seals it) is on
/// `ProjectVault`.
///
/// The model (docs/store-format.md, "Versions and trash"): `secrets` holds
/// each live name's current value; `versions` holds the earlier values
/// (exactly as they were sealed, so each still opens only as its own project,
/// name and version) and delete markers (rows with an empty ciphertext: a
/// sealed value is never shorter than its 16-byte tag); `trash` holds each
/// deleted name with its purge time.
extension Store {
    static let nanosecondsPerDay: Int64 = 86_400 * 1_000_000_000

    static func checkRetention(keepVersions: Int?, keepDeletedDays: Int?) throws {
        if let k = keepVersions, !(0...Retention.maxKeepVersions).contains(k) {
            throw StoreError.invalidRetention("keep-versions must be from 0 to \(Retention.maxKeepVersions), not \(k)")
        }
        if let d = keepDeletedDays, !(0...Retention.maxKeepDeletedDays).contains(d) {
            throw StoreError.invalidRetention("keep-deleted must be from 0 to \(Retention.maxKeepDeletedDays) days, not \(d)")
        }
    }

    /// Changes a project's limits; versions beyond a lowered limit are
    /// destroyed at once, in the same transaction. A new trash period applies
    /// to names deleted from then on.
    public func setRetention(project: String, keepVersions: Int?, keepDeletedDays: Int?, actor: Actor = .current) throws {
        try Self.checkRetention(keepVersions: keepVersions, keepDeletedDays: keepDeletedDays)
        try lock.withLock { _ in
            try db.transaction("changing the limits of project \(project)") {
                let id = try projectIDLocked(project)
                if let k = keepVersions {
                    try db.statement("UPDATE projects SET keep_versions = ? WHERE id = ?").bind(1, Int64(k)).bind(2, id)
                        .run("changing keep_versions")
                }
                if let d = keepDeletedDays {
                    try db.statement("UPDATE projects SET keep_deleted_days = ? WHERE id = ?").bind(1, Int64(d)).bind(2, id)
                        .run("changing keep_deleted_days")
                }
                var destroyed = 0
                if keepVersions != nil {
                    for name in try namesWithHistoryLocked(id) { destroyed += try pruneLocked(projectID: id, name: name) }
                }
                let info = [keepVersions.map { "keep \($0) versions" }, keepDeletedDays.map { "\($0) days" }]
                    .compactMap { $0 }.joined(separator: ", ")
                try insertAudit(project: project, actor: actor, action: "project-set", names: nil,
                                detail: destroyed > 0 ? info + "; \(destroyed) versions destroyed" : info)
            }
        }
    }

    // MARK: Reading history and trash (no key needed)

    /// The live names of a project with their metadata, by name, without
    /// unwrapping its key (for `secretfs ls`).
    public func secrets(project: String) throws -> [SecretInfo] {
        try lock.withLock { _ in
            let id = try projectIDLocked(project)
            let s = try db.statement("""
                SELECT name, version, created_at, updated_at, updated_by FROM secrets WHERE project_id = ? ORDER BY name
                """).bind(1, id)
            var out: [SecretInfo] = []
            while try s.step("listing secrets") {
                out.append(SecretInfo(name: s.string(0) ?? "", version: s.int64(1), createdAt: Timestamp(nanoseconds: s.int64(2)),
                                      updatedAt: Timestamp(nanoseconds: s.int64(3)), updatedBy: UInt32(truncatingIfNeeded: s.int64(4))))
            }
            return out
        }
    }

    /// Every kept version of `name`, oldest first, the current one marked.
    /// Works for deleted names; `secretNotFound` when nothing is kept.
    public func history(project: String, name: String) throws -> [VersionInfo] {
        try lock.withLock { _ in
            let id = try projectIDLocked(project)
            let out = try historyLocked(projectID: id, name: name)
            if out.isEmpty { throw StoreError.secretNotFound(name, project: project) }
            return out
        }
    }

    func historyLocked(projectID id: Int64, name: String) throws -> [VersionInfo] {
        var out: [VersionInfo] = []
        let v = try db.statement("""
            SELECT version, action, made_at, made_by, length(ciphertext) FROM versions
            WHERE project_id = ? AND name = ? ORDER BY version
            """).bind(1, id).bind(2, name)
        while try v.step("reading the history") {
            out.append(VersionInfo(version: v.int64(0), action: VersionAction(rawValue: v.string(1) ?? "") ?? .set,
                                   at: Timestamp(nanoseconds: v.int64(2)), uid: UInt32(truncatingIfNeeded: v.int64(3)),
                                   isCurrent: false, isDelete: v.int64(4) == 0))
        }
        let c = try db.statement("SELECT version, action, updated_at, updated_by FROM secrets WHERE project_id = ? AND name = ?")
            .bind(1, id).bind(2, name)
        defer { c.reset() }
        if try c.step("reading the current version") {
            out.append(VersionInfo(version: c.int64(0), action: VersionAction(rawValue: c.string(1) ?? "") ?? .set,
                                   at: Timestamp(nanoseconds: c.int64(2)), uid: UInt32(truncatingIfNeeded: c.int64(3)),
                                   isCurrent: true, isDelete: false))
        }
        return out.sorted { $0.version < $1.version }
    }

    /// The deleted names of a project, by name.
    public func trash(project: String) throws -> [TrashEntry] {
        try lock.withLock { _ in
            let id = try projectIDLocked(project)
            let s = try db.statement("""
                SELECT t.name, t.deleted_at, t.deleted_by, t.purge_at,
                       (SELECT COUNT(*) FROM versions v
                        WHERE v.project_id = t.project_id AND v.name = t.name AND length(v.ciphertext) > 0)
                FROM trash t WHERE t.project_id = ? ORDER BY t.name
                """).bind(1, id)
            var out: [TrashEntry] = []
            while try s.step("reading the trash") {
                out.append(TrashEntry(name: s.string(0) ?? "", deletedAt: Timestamp(nanoseconds: s.int64(1)),
                                      deletedBy: UInt32(truncatingIfNeeded: s.int64(2)), versionsKept: Int(s.int64(4)),
                                      purgeAt: Timestamp(nanoseconds: s.int64(3))))
            }
            return out
        }
    }

    // MARK: Purging

    /// Destroys every version of a deleted name (secure_delete zeroes them).
    /// A live name is refused: its history goes only with its limit.
    public func purge(project: String, name: String, actor: Actor = .current) throws {
        try lock.withLock { _ in
            try db.transaction("purging \(name)") {
                let id = try projectIDLocked(project)
                guard try isInTrashLocked(id, name) else {
                    if try liveLocked(id, name) { throw StoreError.secretNotDeleted(name, project: project, purging: true) }
                    throw StoreError.secretNotFound(name, project: project)
                }
                let n = try destroyLocked(projectID: id, name: name)
                try insertAudit(project: project, actor: actor, action: "purge", names: name, detail: "\(n) versions destroyed")
            }
        }
    }

    /// Purges the whole trash of a project; returns the names purged.
    @discardableResult
    public func purgeAllDeleted(project: String, actor: Actor = .current) throws -> [String] {
        try lock.withLock { _ in
            try db.transaction("purging the trash of \(project)") {
                let id = try projectIDLocked(project)
                let names = try trashNamesLocked(id, expiredBy: nil)
                var n = 0
                for name in names { n += try destroyLocked(projectID: id, name: name) }
                if !names.isEmpty {
                    try insertAudit(project: project, actor: actor, action: "purge", names: names.joined(separator: ","),
                                    detail: "\(n) versions destroyed")
                }
                return names
            }
        }
    }

    /// Destroys what has been in the trash longer than its project keeps it,
    /// in every project. Runs at every open; each commit does the same for its
    /// own project (`purgeExpiredLocked`), so no cron job is needed.
    public func purgeExpiredTrash() throws {
        try lock.withLock { _ in
            let due = try db.statement("SELECT 1 FROM trash WHERE purge_at <= ? LIMIT 1").bind(1, now().nanoseconds)
            let any = try due.step("looking for expired trash")
            due.reset()
            guard any else { return }
            try db.transaction("purging expired trash") {
                let p = try db.statement("SELECT DISTINCT t.project_id, p.name FROM trash t JOIN projects p ON p.id = t.project_id WHERE t.purge_at <= ?")
                    .bind(1, now().nanoseconds)
                var projects: [(Int64, String)] = []
                while try p.step("looking for expired trash") { projects.append((p.int64(0), p.string(1) ?? "")) }
                for (id, name) in projects { try purgeExpiredLocked(projectID: id, projectName: name) }
            }
        }
    }

    /// `purgeExpiredLocked` for a commit: at most once a minute of the store's
    /// clock per project and process (trash is kept for days; a look on every
    /// write would be one more round trip each).
    func purgeExpiredIfDueLocked(projectID id: Int64, projectName: String) throws {
        let now = now()
        if let last = lastTrashSweep[id], now.nanoseconds - last.nanoseconds < 60_000_000_000, now >= last { return }
        try purgeExpiredLocked(projectID: id, projectName: projectName)
        lastTrashSweep[id] = now
    }

    /// Inside a transaction, with `lock` held.
    func purgeExpiredLocked(projectID id: Int64, projectName: String) throws {
        let names = try trashNamesLocked(id, expiredBy: now())
        guard !names.isEmpty else { return }
        var n = 0
        for name in names { n += try destroyLocked(projectID: id, name: name) }
        try insertAudit(project: projectName, actor: Actor(uid: 0, pid: 0), action: "purge-expired",
                        names: names.joined(separator: ","), detail: "\(n) versions destroyed")
    }

    // MARK: Building blocks (with `lock` held, inside a transaction)

    func projectIDLocked(_ project: String) throws -> Int64 {
        let s = try db.statement("SELECT id FROM projects WHERE name = ?").bind(1, project)
        defer { s.reset() }
        guard try s.step("looking up project") else { throw StoreError.projectNotFound(project) }
        return s.int64(0)
    }

    func keepVersionsLocked(_ id: Int64) throws -> (versions: Int64, days: Int64) {
        let s = try db.statement("SELECT keep_versions, keep_deleted_days FROM projects WHERE id = ?").bind(1, id)
        defer { s.reset() }
        guard try s.step("reading the project's limits") else { throw StoreError.corrupt("project \(id) vanished") }
        return Retention.clamped(keepVersions: s.int64(0), keepDeletedDays: s.int64(1))
    }

    /// What a write needs of its project's row, read as the version is taken.
    struct VersionGrant {
        var version: Int64
        var keyGeneration: Int64
        var keepVersions: Int64
        var keepDeletedDays: Int64
    }

    /// Next version number, unique across the project for its lifetime, so an
    /// old ciphertext can never be replayed into a newer row with the same
    /// name; with the project's data key generation and limits, in the same
    /// round trip (a shared store's write is a dozen of them, each a network
    /// exchange).
    func grantVersionLocked(_ id: Int64) throws -> VersionGrant {
        let s = try db.statement("""
            UPDATE projects SET last_version = last_version + 1 WHERE id = ?
            RETURNING last_version, key_generation, keep_versions, keep_deleted_days
            """).bind(1, id)
        defer { s.reset() }
        guard try s.step("allocating a version") else { throw StoreError.corrupt("project \(id) vanished") }
        let kept = Retention.clamped(keepVersions: s.int64(2), keepDeletedDays: s.int64(3))
        return VersionGrant(version: s.int64(0), keyGeneration: s.int64(1), keepVersions: kept.versions, keepDeletedDays: kept.days)
    }

    func liveLocked(_ id: Int64, _ name: String) throws -> Bool {
        let s = try db.statement("SELECT 1 FROM secrets WHERE project_id = ? AND name = ?").bind(1, id).bind(2, name)
        defer { s.reset() }
        return try s.step("looking up a secret")
    }

    func isInTrashLocked(_ id: Int64, _ name: String) throws -> Bool {
        let s = try db.statement("SELECT 1 FROM trash WHERE project_id = ? AND name = ?").bind(1, id).bind(2, name)
        defer { s.reset() }
        return try s.step("looking in the trash")
    }

    private func trashNamesLocked(_ id: Int64, expiredBy: Timestamp?) throws -> [String] {
        let s = try db.statement("SELECT name FROM trash WHERE project_id = ? AND purge_at <= ? ORDER BY name")
            .bind(1, id).bind(2, expiredBy?.nanoseconds ?? Int64.max)
        var out: [String] = []
        while try s.step("reading the trash") { out.append(s.string(0) ?? "") }
        return out
    }

    private func namesWithHistoryLocked(_ id: Int64) throws -> [String] {
        let s = try db.statement("SELECT DISTINCT name FROM versions WHERE project_id = ?").bind(1, id)
        var out: [String] = []
        while try s.step("reading the history") { out.append(s.string(0) ?? "") }
        return out
    }

    /// Copies the current value of `name` (if any) into `versions`, exactly
    /// as it was sealed; the row stays in `secrets`. Returns whether there was
    /// one; a caller that has just read the row says so (`exists`), and then
    /// need not wait for the answer (DatabaseStatement.run).
    func archiveCurrentLocked(projectID id: Int64, name: String, exists: Bool? = nil) throws -> Bool {
        let archive = try db.statement("""
            INSERT INTO versions(project_id, name, version, ciphertext, nonce, action, made_at, made_by, key_generation)
            SELECT project_id, name, version, ciphertext, nonce, action, updated_at, updated_by, key_generation
            FROM secrets WHERE project_id = ? AND name = ?
            """).bind(1, id).bind(2, name)
        if let exists {
            try archive.run("keeping the earlier value")
            return exists
        }
        return try archive.runCountingChanges("keeping the earlier value") > 0
    }

    /// Moves the current value of `name` (if any) into `versions` and removes
    /// it from `secrets`. Returns whether there was one.
    func archiveAndRemoveCurrentLocked(projectID id: Int64, name: String, exists: Bool? = nil) throws -> Bool {
        guard try archiveCurrentLocked(projectID: id, name: name, exists: exists) else { return false }
        try db.statement("DELETE FROM secrets WHERE project_id = ? AND name = ?").bind(1, id).bind(2, name)
            .run("removing a secret")
        recordChangeLocked(projectID: id, name: name)
        return true
    }

    /// `name` leaves the directory: its current value becomes a version, a
    /// delete marker records who and when, and the name goes to the trash
    /// (unless the project keeps no versions, when everything goes at once).
    /// Returns false if there was no such secret.
    func moveToTrashLocked(projectID id: Int64, name: String, actor: Actor, action: VersionAction,
                           exists: Bool? = nil) throws -> Bool {
        guard try archiveAndRemoveCurrentLocked(projectID: id, name: name, exists: exists) else { return false }
        let grant = try grantVersionLocked(id)
        let marker = grant.version
        let at = now()
        try db.statement("""
            INSERT INTO versions(project_id, name, version, ciphertext, nonce, action, made_at, made_by)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?)
            """).bind(1, id).bind(2, name).bind(3, marker).bind(4, blob: []).bind(5, blob: []).bind(6, action.rawValue)
            .bind(7, at.nanoseconds).bind(8, Int64(actor.uid)).run("recording the delete")
        let days = grant.keepDeletedDays
        // One statement whether or not a trash row is there (a live name has
        // none, but the trash row's period starts again either way).
        try db.statement("""
            INSERT INTO trash(project_id, name, deleted_at, deleted_by, purge_at) VALUES (?, ?, ?, ?, ?)
            ON CONFLICT (project_id, name) DO UPDATE SET deleted_at = excluded.deleted_at,
                deleted_by = excluded.deleted_by, purge_at = excluded.purge_at
            """)
            .bind(1, id).bind(2, name).bind(3, at.nanoseconds).bind(4, Int64(actor.uid))
            .bind(5, at.nanoseconds.addingReportingOverflow(days * Self.nanosecondsPerDay).partialValue)
            .run("moving a secret to the trash")
        try pruneLocked(projectID: id, name: name, keep: grant.keepVersions, live: false, counting: false,
                        newestArchivedNow: true)
        return true
    }

    /// Keeps the newest `keep_versions` values of `name` (the current one
    /// included) and destroys the older ones, with the delete markers older
    /// than every value kept. A deleted name with no value left leaves the
    /// trash. Returns how many values were destroyed, when `counting` (a
    /// write that does not need the count does not wait for it: every
    /// statement here may then go out unanswered, see DatabaseStatement.run).
    /// `keep` and `live`, when the caller knows them, save their lookups.
    /// `newestArchivedNow`: the caller has just archived the name's current
    /// value, the newest it has; with any versions kept that one stays, so a
    /// deleted name keeps a value and its trash row (two statements fewer
    /// for every `rm` and rename).
    @discardableResult
    func pruneLocked(projectID id: Int64, name: String, keep knownKeep: Int64? = nil, live knownLive: Bool? = nil,
                     counting: Bool = true, newestArchivedNow: Bool = false) throws -> Int {
        let keep = try knownKeep ?? keepVersionsLocked(id).versions
        let live = try knownLive ?? liveLocked(id, name)
        let earlier = max(0, keep - (live ? 1 : 0))
        let beyondLimit = try db.statement("""
            DELETE FROM versions WHERE project_id = ? AND name = ? AND length(ciphertext) > 0
            AND version NOT IN (SELECT version FROM versions WHERE project_id = ? AND name = ? AND length(ciphertext) > 0
                                ORDER BY version DESC LIMIT ?)
            """).bind(1, id).bind(2, name).bind(3, id).bind(4, name).bind(5, earlier)
        var destroyed = 0
        if counting {
            destroyed = try beyondLimit.runCountingChanges("destroying old versions")
        } else {
            try beyondLimit.run("destroying old versions")
        }
        try db.statement("""
            DELETE FROM versions WHERE project_id = ? AND name = ? AND length(ciphertext) = 0
            AND version < COALESCE((SELECT MIN(version) FROM versions WHERE project_id = ? AND name = ? AND length(ciphertext) > 0),
                                   (SELECT version FROM secrets WHERE project_id = ? AND name = ?),
                                   9223372036854775807)
            """).bind(1, id).bind(2, name).bind(3, id).bind(4, name).bind(5, id).bind(6, name).run("destroying old versions")
        if !live && !(newestArchivedNow && keep > 0) {
            // No value left of a deleted name: its delete markers and its
            // trash row go too. Each statement checks that for itself, so
            // nobody waits for the answer to "is any value left?".
            try db.statement("""
                DELETE FROM versions WHERE project_id = ? AND name = ?
                AND NOT EXISTS (SELECT 1 FROM versions WHERE project_id = ? AND name = ? AND length(ciphertext) > 0)
                """).bind(1, id).bind(2, name).bind(3, id).bind(4, name).run("destroying versions")
            try db.statement("""
                DELETE FROM trash WHERE project_id = ? AND name = ?
                AND NOT EXISTS (SELECT 1 FROM versions WHERE project_id = ? AND name = ? AND length(ciphertext) > 0)
                """).bind(1, id).bind(2, name).bind(3, id).bind(4, name).run("emptying the trash")
        }
        return destroyed
    }

    /// Destroys every version of a name that is not live, and its trash row.
    /// Returns how many values were destroyed.
    private func destroyLocked(projectID id: Int64, name: String) throws -> Int {
        let n = try db.statement("DELETE FROM versions WHERE project_id = ? AND name = ? AND length(ciphertext) > 0")
            .bind(1, id).bind(2, name).runCountingChanges("destroying versions")
        try db.statement("DELETE FROM versions WHERE project_id = ? AND name = ?").bind(1, id).bind(2, name).run("destroying versions")
        try db.statement("DELETE FROM trash WHERE project_id = ? AND name = ?").bind(1, id).bind(2, name).run("emptying the trash")
        return n
    }
}
