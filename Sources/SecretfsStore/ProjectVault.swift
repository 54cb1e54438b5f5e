import CSQLite
import SecretfsNames
import SecureMemory

/// One project's secrets, with its data key unwrapped in locked memory.
/// Every mutation is one `BEGIN IMMEDIATE` transaction that also writes the
/// audit row, so the store never holds a change without its audit record.
public final class ProjectVault: @unchecked Sendable {
    // @unchecked: immutable fields; all database access goes through the
    // store's lock.
    public let store: Store
    public let id: Int64
    public let name: String
    /// Data keys by generation (see docs/store-format.md, "Rotating a data
    /// key"), and the newest one known; both only under the store's lock.
    private var keys: [Int64: SecureBytes]
    private var generation: Int64

    init(store: Store, id: Int64, name: String, dataKey: SecureBytes, generation: Int64) {
        self.store = store
        self.id = id
        self.name = name
        self.keys = [generation: dataKey]
        self.generation = generation
    }

    /// Follows a rotation of the data key made elsewhere: the new key is
    /// sealed under the one this vault holds, so no master key is needed.
    /// Under the store's lock (every write does it inside its transaction).
    func followLocked() throws {
        let s = try db.statement("SELECT key_generation FROM projects WHERE id = ?").bind(1, id)
        guard try s.step("reading the key generation") else { s.reset(); throw StoreError.projectNotFound(name) }
        let newest = s.int64(0)
        s.reset()
        while generation < newest {
            let next = generation + 1
            let l = try db.statement("SELECT forward_key, forward_nonce FROM key_links WHERE project_id = ? AND generation = ?")
                .bind(1, id).bind(2, next)
            guard try l.step("reading the key chain") else {
                l.reset()
                throw StoreError.corrupt("the data key of project '\(name)' was rotated past what this process can follow; open the project again (remount)")
            }
            let sealed = Envelope.Sealed(ciphertext: l.blob(0), nonce: l.blob(1))
            l.reset()
            guard let current = keys[generation],
                  let key = Envelope.open(sealed, key: current, associatedData: Envelope.keyLinkAD(projectID: id, generation: next, forward: true)) else {
                throw StoreError.corrupt("the key chain of project '\(name)' does not open")
            }
            keys[next] = key
            generation = next
        }
    }

    /// The data key of generation `g`: known, reached forward through the
    /// chain, or backward from the newest (rows not yet re-sealed).
    func keyLocked(_ g: Int64) throws -> SecureBytes {
        if let k = keys[g] { return k }
        try followLocked()
        if let k = keys[g] { return k }
        var lowest = keys.keys.min() ?? generation
        while lowest > g {
            let l = try db.statement("SELECT backward_key, backward_nonce FROM key_links WHERE project_id = ? AND generation = ?")
                .bind(1, id).bind(2, lowest)
            guard try l.step("reading the key chain") else { l.reset(); break }
            let sealed = Envelope.Sealed(ciphertext: l.blob(0), nonce: l.blob(1))
            l.reset()
            guard let from = keys[lowest],
                  let key = Envelope.open(sealed, key: from, associatedData: Envelope.keyLinkAD(projectID: id, generation: lowest, forward: false)) else {
                break
            }
            keys[lowest - 1] = key
            lowest -= 1
        }
        if let k = keys[g] { return k }
        throw StoreError.corrupt("a value of project '\(name)' is sealed under a data key generation (\(g)) that is not in the store")
    }

    /// Catches up with a rotation now (the mount's StoreWatcher calls this
    /// when the store changes), so the chain can be dropped when it ends.
    public func followKeyRotation() throws {
        try store.lock.withLock { _ in try followLocked() }
    }

    private var db: DatabaseConnection { store.db }

    // MARK: Reading

    /// All secrets' metadata, ordered by name.
    public func list() throws -> [SecretInfo] {
        try store.lock.withLock { _ in
            let s = try db.statement("""
                SELECT name, version, created_at, updated_at, updated_by FROM secrets
                WHERE project_id = ? ORDER BY name
                """).bind(1, id)
            var out: [SecretInfo] = []
            while try s.step("listing secrets") {
                // A name no secretfs would store (written into a shared
                // database by hand: a '/', a staging '.' name, a control
                // character) is never listed: the mount, its socket and the
                // resolver see stored names only.
                let i = info(s)
                if Names.isValid(i.name) { out.append(i) }
            }
            s.reset()
            db.releaseCachedPages()
            return out
        }
    }

    public func info(_ name: String) throws -> SecretInfo? {
        try store.lock.withLock { _ in try infoLocked(name) }
    }

    private func infoLocked(_ name: String) throws -> SecretInfo? {
        let s = try infoStatement(name)
        defer { s.reset() }
        return try s.step("looking up a secret") ? info(s) : nil
    }

    private func infoStatement(_ name: String) throws -> DatabaseStatement {
        try db.statement("""
            SELECT name, version, created_at, updated_at, updated_by FROM secrets
            WHERE project_id = ? AND name = ?
            """).bind(1, id).bind(2, name)
    }

    private func info(_ s: DatabaseStatement) -> SecretInfo {
        SecretInfo(name: s.string(0) ?? "", version: s.int64(1), createdAt: Timestamp(nanoseconds: s.int64(2)),
                   updatedAt: Timestamp(nanoseconds: s.int64(3)), updatedBy: UInt32(truncatingIfNeeded: s.int64(4)))
    }

    /// Decrypts one value into locked memory; nil if there is no such secret.
    public func value(_ name: String) throws -> SecureBytes? {
        try store.lock.withLock { _ in try valueLocked(name) }
    }

    typealias SealedRow = (sealed: Envelope.Sealed, version: Int64, keyGeneration: Int64)

    /// The current sealed row of `name`, if any.
    private func sealedLocked(_ name: String) throws -> SealedRow? {
        let s = try db.statement("SELECT ciphertext, nonce, version, key_generation FROM secrets WHERE project_id = ? AND name = ?")
            .bind(1, id).bind(2, name)
        defer { s.reset() }
        guard try s.step("reading a secret") else { return nil }
        return Self.sealedRow(s, from: 0)
    }

    /// The row's columns ciphertext, nonce, version, key_generation, from `column` on.
    private static func sealedRow(_ s: DatabaseStatement, from column: Int32) -> SealedRow {
        (Envelope.Sealed(ciphertext: s.blob(column), nonce: s.blob(column + 1)), s.int64(column + 2), s.int64(column + 3))
    }

    /// Opens a sealed row of `name` into `out` (exactly its plaintext's size).
    private func openLocked(_ row: (sealed: Envelope.Sealed, version: Int64, keyGeneration: Int64), _ name: String,
                            into out: SecureBytes) throws {
        let dataKey = try keyLocked(row.keyGeneration)
        guard Envelope.open(row.sealed, key: dataKey, associatedData: Envelope.valueAD(projectID: id, version: row.version, name: name),
                            into: out) else {
            throw StoreError.corrupt("secret '\(name)' of project '\(self.name)' does not decrypt (moved or altered row)")
        }
    }

    private func valueLocked(_ name: String) throws -> SecureBytes? {
        guard let row = try sealedLocked(name) else { return nil }
        let plain = SecureBytes(capacity: Envelope.plaintextSize(row.sealed), count: Envelope.plaintextSize(row.sealed))
        try openLocked(row, name, into: plain)
        return plain
    }

    /// Decrypts several values at once (for the privileged socket), auditing
    /// the read as one event. Names that do not exist are absent from the
    /// result. The values are slices of one locked buffer: one allocation for
    /// the lot, not a guarded, locked mapping each (SecureBytes(slicing:)).
    public func values(_ names: [String], actor: Actor, action: String = "get") throws -> [String: SecureBytes] {
        try store.lock.withLock { _ in
            let (rows, _) = try sealedRowsLocked(names)
            let out = try openInArenaLocked(rows)
            try store.insertAudit(project: self.name, actor: actor, action: action,
                                  names: names.joined(separator: ","), detail: "\(out.count) found")
            return out
        }
    }

    /// Decrypts several values straight into memory the caller lays out (the
    /// privileged socket opens them in its reply frame instead of in a buffer
    /// of their own that it then copies: one locked allocation, a copy and a
    /// map of 500 slices less per GET). `place` gets the names found, in the
    /// order asked and each once, with the size of each value, and the names
    /// not found; it returns where each found value goes (locked memory of
    /// exactly its size, kept by the caller), or nil to take none. Read and
    /// audited as `values` does, also when `place` takes none (the values are
    /// then opened and wiped as `values` would have, so a row that does not
    /// open is reported the same way).
    public func openValues(_ names: [String], actor: Actor, action: String = "get",
                           into place: ([(name: String, size: Int)], _ missing: [String]) -> [SecureBytes]?) throws {
        try store.lock.withLock { _ in
            let (rows, missing) = try sealedRowsLocked(names)
            let found = rows.map { (name: $0.name, size: Envelope.plaintextSize($0.row.sealed)) }
            if let slots = place(found, missing) {
                precondition(slots.count == rows.count, "one place per value")
                for (r, slot) in zip(rows, slots) { try openLocked(r.row, r.name, into: slot) }
            } else {
                for v in try openInArenaLocked(rows).values { v.wipe() }
            }
            try store.insertAudit(project: self.name, actor: actor, action: action,
                                  names: names.joined(separator: ","), detail: "\(rows.count) found")
        }
    }

    /// The current sealed rows of `names` (each once, in the order asked),
    /// and the names that have none.
    private func sealedRowsLocked(_ names: [String]) throws -> (rows: [(name: String, row: SealedRow)], missing: [String]) {
        // One read snapshot for the batch (Database.readSnapshot says
        // why), which also makes the values one consistent state.
        try db.readSnapshot("reading secrets") { () throws -> ([(name: String, row: SealedRow)], [String]) in
            // Each name once, compared as bytes: Swift's String equality is
            // canonical equivalence (U+212A KELVIN SIGN equals "K"), and a
            // name asked for must never be answered with another's row. Only
            // valid names (ASCII, where the two agree) can be stored at all.
            var asked: [(name: String, valid: Bool)] = []
            asked.reserveCapacity(names.count)
            var seen = Set<[UInt8]>(minimumCapacity: names.count)
            for n in names where seen.insert(Array(n.utf8)).inserted { asked.append((n, Names.isValid(n))) }
            let unique = asked.filter(\.valid).map(\.name)
            // Up to `batchSize` names a statement: one B-tree walk and one
            // step per row instead of a bind, a step and a reset per name
            // (on a shared store, one round trip instead of one per name).
            var found: [String: SealedRow] = [:]
            found.reserveCapacity(unique.count)
            let statement = try db.statement(Self.sealedRowsSQL)
            var start = 0
            while start < unique.count {
                let chunk = unique[start..<min(start + Self.batchSize, unique.count)]
                statement.bind(1, id)
                // A short last chunk repeats its last name: one statement text
                // (one prepared statement) for every batch.
                for i in 0..<Self.batchSize { statement.bind(Int32(i + 2), chunk[min(chunk.startIndex + i, chunk.endIndex - 1)]) }
                while try statement.step("reading secrets") {
                    guard let name = statement.string(0) else { continue }
                    found[name] = Self.sealedRow(statement, from: 1)
                }
                statement.reset()
                start += Self.batchSize
            }
            var rows: [(name: String, row: SealedRow)] = []
            var missing: [String] = []
            rows.reserveCapacity(found.count)
            for (n, valid) in asked {
                if valid, let row = found[n] { rows.append((n, row)) } else { missing.append(n) }
            }
            return (rows, missing)
        }
    }

    /// Names read by one statement of a batch (`sealedRowsLocked`).
    static let batchSize = 64
    static let sealedRowsSQL = "SELECT name, ciphertext, nonce, version, key_generation FROM secrets WHERE project_id = ? AND name IN ("
        + Array(repeating: "?", count: batchSize).joined(separator: ", ") + ")"

    /// The values of `rows`, opened as slices of one locked buffer.
    private func openInArenaLocked(_ rows: [(name: String, row: SealedRow)]) throws -> [String: SecureBytes] {
        let total = rows.reduce(0) { $0 + Envelope.plaintextSize($1.row.sealed) }
        guard let arena = SecureBytes(allocating: total, count: total) else { throw StoreError.outOfLockedMemory }
        var out: [String: SecureBytes] = [:]
        out.reserveCapacity(rows.count)
        var offset = 0
        for r in rows {
            let size = Envelope.plaintextSize(r.row.sealed)
            let value = SecureBytes(slicing: arena, offset: offset, count: size)
            try openLocked(r.row, r.name, into: value)
            out[r.name] = value
            offset += size
        }
        return out
    }

    // MARK: Writing
    //
    // Every change keeps what it replaces (docs/store-format.md, "Versions
    // and trash"): the earlier value moves to `versions` as it was sealed,
    // the oldest values beyond the project's limit are destroyed in the same
    // transaction, and a deleted name goes to the trash.

    private func writeRowLocked(_ name: String, value: SecureBytes, actor: Actor, createdAt: Timestamp?,
                                action: VersionAction, previous: SecretInfo?? = nil) throws -> SecretInfo {
        try value.withUnsafeBytes {
            try writeRowLocked(name, bytes: $0, actor: actor, createdAt: createdAt, action: action, previous: previous)
        }
    }

    /// Seals `value` as the new current version of `name`, keeping the
    /// earlier one as a version. Returns the new metadata. `previous`, when
    /// the caller has just read it in this transaction, is the current row
    /// (nil: none), which saves looking it up again.
    private func writeRowLocked(_ name: String, bytes value: UnsafeRawBufferPointer, actor: Actor,
                                createdAt: Timestamp?, action: VersionAction, previous known: SecretInfo?? = nil,
                                grant granted: Store.VersionGrant? = nil) throws -> SecretInfo {
        let previous = try known ?? infoLocked(name)
        // Whether the name may have earlier values that the limit applies to.
        let mayHaveHistory: Bool
        if previous != nil {
            // The row itself is overwritten below (an update in place, which
            // PostgreSQL can do without a new index entry: a delete and an
            // insert would leave a dead row and index entry per write).
            _ = try store.archiveCurrentLocked(projectID: id, name: name, exists: true)
            mayHaveHistory = true
        } else {
            // Live again: whatever the trash kept of it is now its history.
            // (Only a name with no current value can be in the trash, and a
            // name with neither has no versions: every way out of the
            // directory leaves a trash row for as long as versions remain.
            // Rows put in by hand could break that; the name's next
            // overwrite, rm or a retention change still prunes them.)
            let leaveTrash = try db.statement("DELETE FROM trash WHERE project_id = ? AND name = ?").bind(1, id).bind(2, name)
            if store.location.isShared {
                // Not waiting for the count costs less than the prune it could save.
                try leaveTrash.run("updating the trash")
                mayHaveHistory = true
            } else {
                mayHaveHistory = try leaveTrash.runCountingChanges("updating the trash") > 0
            }
        }
        let grant = try granted ?? store.grantVersionLocked(id)
        let version = grant.version
        // A rotation made elsewhere: follow its link to the new key first.
        if grant.keyGeneration != generation { try followLocked() }
        guard generation == grant.keyGeneration, let dataKey = keys[generation] else {
            throw StoreError.corrupt("the data key of project '\(self.name)' is not at the generation the store names")
        }
        let keyGeneration = generation
        let sealed = Envelope.seal(value, key: dataKey,
                                   associatedData: Envelope.valueAD(projectID: id, version: version, name: name))
        let now = store.now()
        let created = createdAt ?? previous?.createdAt ?? now
        try db.statement("""
            INSERT INTO secrets(project_id, name, ciphertext, nonce, version, created_at, updated_at, updated_by, action, key_generation)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (project_id, name) DO UPDATE SET ciphertext = excluded.ciphertext, nonce = excluded.nonce,
                version = excluded.version, created_at = excluded.created_at, updated_at = excluded.updated_at,
                updated_by = excluded.updated_by, action = excluded.action, key_generation = excluded.key_generation
            """)
            .bind(1, id).bind(2, name).bind(3, blob: sealed.ciphertext).bind(4, blob: sealed.nonce).bind(5, version)
            .bind(6, created.nanoseconds).bind(7, now.nanoseconds).bind(8, Int64(actor.uid)).bind(9, action.rawValue)
            .bind(10, keyGeneration).run("writing a secret")
        store.recordChangeLocked(projectID: id, name: name)
        if mayHaveHistory {
            try store.pruneLocked(projectID: id, name: name, keep: grant.keepVersions, live: true, counting: false)
        }
        try store.purgeExpiredIfDueLocked(projectID: id, projectName: self.name)
        return SecretInfo(name: name, version: version, createdAt: created, updatedAt: now, updatedBy: actor.uid)
    }

    /// Creates or replaces a value, durably, in one transaction.
    @discardableResult
    public func put(_ name: String, value: SecureBytes, actor: Actor, action: VersionAction = .set) throws -> SecretInfo {
        try value.withUnsafeBytes { try put(name, bytes: $0, actor: actor, action: action) }
    }

    /// Creates or replaces a value from bytes in the caller's locked memory
    /// (the filesystem commits straight from its write buffer, no copy).
    /// `action` is what history shows (`set`, or `append` for an O_APPEND write).
    @discardableResult
    public func put(_ name: String, bytes value: UnsafeRawBufferPointer, actor: Actor,
                    action: VersionAction = .set) throws -> SecretInfo {
        guard Names.isValid(name) else { throw StoreError.invalidSecretName(name) }
        return try store.lock.withLock { _ in
            try db.transaction("writing secret \(name)") {
                // The current row and the version granted, read in one
                // round trip on a shared store (neither depends on the other).
                let current = try infoStatement(name)
                try current.prefetch("looking up a secret")
                let grant = try store.grantVersionLocked(id)
                let previous = try current.step("looking up a secret") ? info(current) : nil
                current.reset()
                let info = try writeRowLocked(name, bytes: value, actor: actor, createdAt: nil, action: action,
                                              previous: .some(previous), grant: grant)
                try store.insertAudit(project: self.name, actor: actor, action: previous != nil ? "update" : "create",
                                      names: name, detail: action == .append ? "append" : nil)
                return info
            }
        }
    }

    /// Deletes a secret; false if it did not exist. Its value stays in the
    /// trash with its versions (for `undelete`) until the project's period
    /// ends or it is purged; with no versions kept it is destroyed at once
    /// (secure_delete overwrites the freed pages).
    @discardableResult
    public func delete(_ name: String, actor: Actor) throws -> Bool {
        try store.lock.withLock { _ in
            try db.transaction("deleting secret \(name)") {
                guard try store.moveToTrashLocked(projectID: id, name: name, actor: actor, action: .delete) else { return false }
                try store.purgeExpiredIfDueLocked(projectID: id, projectName: self.name)
                try store.insertAudit(project: self.name, actor: actor, action: "delete", names: name, detail: nil)
                return true
            }
        }
    }

    public enum RenameMode: Sendable { case replace, noReplace, exchange }

    /// Renames `from` to `to` in one transaction. The name is part of the
    /// associated data, so the value is re-sealed under its new name, as a new
    /// version of `to` (whose earlier value is kept); `from` goes to the
    /// trash with its versions, as after a delete. Returns the new metadata of
    /// `to` and, for an exchange, of `from` (a mount shows them at once,
    /// without asking the store again).
    @discardableResult
    public func rename(_ from: String, to: String, mode: RenameMode = .replace,
                       actor: Actor) throws -> (to: SecretInfo?, from: SecretInfo?) {
        guard Names.isValid(to) else { throw StoreError.invalidSecretName(to) }
        if from == to { return (nil, nil) }
        return try store.lock.withLock { _ in
            try db.transaction("renaming secret \(from)") {
                guard let fromInfo = try infoLocked(from), let fromValue = try valueLocked(from) else {
                    throw StoreError.secretNotFound(from, project: self.name)
                }
                let toInfo = try infoLocked(to)
                switch mode {
                case .noReplace:
                    if toInfo != nil { throw StoreError.secretExists(to) }
                case .exchange:
                    guard let toInfo, let toValue = try valueLocked(to) else { throw StoreError.secretNotFound(to, project: self.name) }
                    let newTo = try writeRowLocked(to, value: fromValue, actor: actor, createdAt: fromInfo.createdAt, action: .rename,
                                                   previous: .some(toInfo))
                    let newFrom = try writeRowLocked(from, value: toValue, actor: actor, createdAt: toInfo.createdAt, action: .rename,
                                                     previous: .some(fromInfo))
                    try store.insertAudit(project: self.name, actor: actor, action: "exchange",
                                          names: "\(from),\(to)", detail: nil)
                    return (newTo, newFrom)
                case .replace:
                    break
                }
                _ = try store.moveToTrashLocked(projectID: id, name: from, actor: actor, action: .rename, exists: true)
                let newTo = try writeRowLocked(to, value: fromValue, actor: actor, createdAt: fromInfo.createdAt, action: .rename,
                                               previous: .some(toInfo))
                try store.insertAudit(project: self.name, actor: actor, action: "rename",
                                      names: "\(from),\(to)", detail: toInfo != nil ? "replaced \(to)" : nil)
                return (newTo, nil)
            }
        }
    }

    // MARK: Bulk import

    public enum ImportStatus: String, Sendable { case new, changed, unchanged }

    /// Writes every entry in one transaction (all or nothing), each changed
    /// or new value as a new version with action `import`; unchanged values
    /// (compared here, in constant time) are not written again. With
    /// `dryRun` nothing is written. One audit row either way (`import` or
    /// `import-dry-run`) with the names and the counts.
    public func importValues(_ entries: [ImportEntry], dryRun: Bool, actor: Actor,
                             progress: ((Int) -> Void)? = nil) throws -> [(name: String, status: ImportStatus)] {
        for e in entries where !Names.isValid(e.name) { throw StoreError.invalidSecretName(e.name) }
        return try store.lock.withLock { _ in
            try db.transaction("importing into \(name)") {
                var out: [(name: String, status: ImportStatus)] = []
                out.reserveCapacity(entries.count)
                for e in entries {
                    let status: ImportStatus
                    if let current = try valueLocked(e.name) {
                        status = current.count == e.value.count && current.constantTimeEquals(e.value) ? .unchanged : .changed
                        current.wipe()
                    } else {
                        status = .new
                    }
                    if !dryRun && status != .unchanged {
                        _ = try writeRowLocked(e.name, value: e.value, actor: actor, createdAt: nil, action: .import)
                    }
                    out.append((e.name, status))
                    if out.count % 250 == 0 { progress?(out.count) }
                }
                let count = { (s: ImportStatus) in out.filter { $0.status == s }.count }
                try store.insertAudit(project: self.name, actor: actor, action: dryRun ? "import-dry-run" : "import",
                                      names: out.filter { $0.status != .unchanged }.map(\.name).joined(separator: ","),
                                      detail: "\(count(.new)) new, \(count(.changed)) changed, \(count(.unchanged)) unchanged")
                return out
            }
        }
    }

    // MARK: Rollback without read

    /// Makes version `version` of `name` its current value again, as a new
    /// version (action `restore`). The value is opened and re-sealed here,
    /// inside the store process: it is never returned. Works for a deleted
    /// name too (which leaves the trash). Audited as `restore`.
    @discardableResult
    public func restore(_ name: String, version: Int64, actor: Actor) throws -> SecretInfo {
        try store.lock.withLock { _ in
            try db.transaction("restoring \(name)") {
                let info = try restoreLocked(name, version: version, actor: actor)
                try store.insertAudit(project: self.name, actor: actor, action: "restore", names: name,
                                      detail: "version \(version) as version \(info.version)")
                return info
            }
        }
    }

    /// Brings back a deleted name with the last value it had, as a new
    /// version. Audited as `undelete`.
    @discardableResult
    public func undelete(_ name: String, actor: Actor) throws -> SecretInfo {
        try store.lock.withLock { _ in
            try db.transaction("undeleting \(name)") {
                guard try store.isInTrashLocked(id, name) else {
                    if try infoLocked(name) != nil { throw StoreError.secretNotDeleted(name, project: self.name, purging: false) }
                    throw StoreError.secretNotFound(name, project: self.name)
                }
                let s = try db.statement("""
                    SELECT MAX(version) FROM versions WHERE project_id = ? AND name = ? AND length(ciphertext) > 0
                    """).bind(1, id).bind(2, name)
                guard try s.step("reading the history"), !s.isNull(0) else {
                    s.reset()
                    throw StoreError.secretNotFound(name, project: self.name)
                }
                let last = s.int64(0)
                s.reset()
                let info = try restoreLocked(name, version: last, actor: actor)
                try store.insertAudit(project: self.name, actor: actor, action: "undelete", names: name,
                                      detail: "version \(last) as version \(info.version)")
                return info
            }
        }
    }

    private func restoreLocked(_ name: String, version: Int64, actor: Actor) throws -> SecretInfo {
        if let current = try infoLocked(name), current.version == version {
            throw StoreError.versionIsCurrent(name, version: version, project: self.name)
        }
        let s = try db.statement("SELECT ciphertext, nonce, key_generation FROM versions WHERE project_id = ? AND name = ? AND version = ?")
            .bind(1, id).bind(2, name).bind(3, version)
        guard try s.step("reading a version") else {
            s.reset()
            // A name with neither a value nor any version is not a secret
            // with a missing version: say which it is.
            let any = try db.statement("SELECT 1 FROM versions WHERE project_id = ? AND name = ? LIMIT 1").bind(1, id).bind(2, name)
            let kept = try any.step("reading the history")
            any.reset()
            if !kept, try infoLocked(name) == nil { throw StoreError.secretNotFound(name, project: self.name) }
            throw StoreError.versionNotFound(name, version: version, delete: false, project: self.name)
        }
        let sealed = Envelope.Sealed(ciphertext: s.blob(0), nonce: s.blob(1))
        let keyGeneration = s.int64(2)
        s.reset()
        if sealed.ciphertext.isEmpty { throw StoreError.versionNotFound(name, version: version, delete: true, project: self.name) }
        let dataKey = try keyLocked(keyGeneration)
        guard let plain = Envelope.open(sealed, key: dataKey,
                                        associatedData: Envelope.valueAD(projectID: id, version: version, name: name)) else {
            throw StoreError.corrupt("version \(version) of '\(name)' in project '\(self.name)' does not decrypt (moved or altered row)")
        }
        defer { plain.wipe() }
        return try writeRowLocked(name, value: plain, actor: actor, createdAt: nil, action: .restore)
    }

    /// Records an event that changes no secret (a refused caller, a socket read).
    public func audit(action: String, names: String? = nil, detail: String? = nil, actor: Actor) throws {
        try store.lock.withLock { _ in
            try store.insertAudit(project: name, actor: actor, action: action, names: names, detail: detail)
        }
    }

    /// A counter that moves when the project may have changed outside this
    /// process. SQLite: `PRAGMA data_version` on this store's connection, which
    /// moves whenever another connection (a CLI command, another process)
    /// commits, not for this connection's own commits, and costs no I/O beyond
    /// the shared-memory index. A shared store: the project's newest change
    /// log sequence (one index probe), which also moves for this mount's own
    /// commits (re-reading then finds nothing new). A mount polls it to notice
    /// restores, undeletes, and other hosts' writes.
    public func storeDataVersion() throws -> Int64 {
        try store.lock.withLock { _ in
            let s = store.location.isShared
                ? try db.statement("SELECT COALESCE(MAX(seq), 0) FROM change_log WHERE project_id = ?").bind(1, id)
                : try db.statement("PRAGMA data_version")
            defer { s.reset() }
            guard try s.step("reading the store's change counter") else { return 0 }
            return s.int64(0)
        }
    }

    /// The highest version handed out so far: changes whenever any secret of
    /// the project changes (the socket's watch operation compares it).
    public func currentVersion() throws -> Int64 {
        try store.lock.withLock { _ in
            let s = try db.statement("SELECT last_version FROM projects WHERE id = ?").bind(1, id)
            defer { s.reset() }
            guard try s.step("reading the project version") else { throw StoreError.projectNotFound(name) }
            return s.int64(0)
        }
    }
}
