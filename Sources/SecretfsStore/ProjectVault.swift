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
    private let dataKey: SecureBytes

    init(store: Store, id: Int64, name: String, dataKey: SecureBytes) {
        self.store = store
        self.id = id
        self.name = name
        self.dataKey = dataKey
    }

    private var db: SQLiteConnection { store.db }

    // MARK: Reading

    /// All secrets' metadata, ordered by name.
    public func list() throws -> [SecretInfo] {
        try store.lock.withLock { _ in
            let s = try db.statement("""
                SELECT name, version, created_at, updated_at, updated_by FROM secrets
                WHERE project_id = ? ORDER BY name
                """).bind(1, id)
            var out: [SecretInfo] = []
            while try s.step("listing secrets") { out.append(info(s)) }
            return out
        }
    }

    public func info(_ name: String) throws -> SecretInfo? {
        try store.lock.withLock { _ in try infoLocked(name) }
    }

    private func infoLocked(_ name: String) throws -> SecretInfo? {
        let s = try db.statement("""
            SELECT name, version, created_at, updated_at, updated_by FROM secrets
            WHERE project_id = ? AND name = ?
            """).bind(1, id).bind(2, name)
        defer { s.reset() }
        return try s.step("looking up a secret") ? info(s) : nil
    }

    private func info(_ s: SQLiteStatement) -> SecretInfo {
        SecretInfo(name: s.string(0) ?? "", version: s.int64(1), createdAt: Timestamp(nanoseconds: s.int64(2)),
                   updatedAt: Timestamp(nanoseconds: s.int64(3)), updatedBy: UInt32(truncatingIfNeeded: s.int64(4)))
    }

    /// Decrypts one value into locked memory; nil if there is no such secret.
    public func value(_ name: String) throws -> SecureBytes? {
        try store.lock.withLock { _ in try valueLocked(name) }
    }

    private func valueLocked(_ name: String) throws -> SecureBytes? {
        let s = try db.statement("SELECT ciphertext, nonce, version FROM secrets WHERE project_id = ? AND name = ?")
            .bind(1, id).bind(2, name)
        defer { s.reset() }
        guard try s.step("reading a secret") else { return nil }
        let sealed = Envelope.Sealed(ciphertext: s.blob(0), nonce: s.blob(1))
        guard let plain = Envelope.open(sealed, key: dataKey,
                                        associatedData: Envelope.valueAD(projectID: id, version: s.int64(2), name: name)) else {
            throw StoreError.corrupt("secret '\(name)' of project '\(self.name)' does not decrypt (moved or altered row)")
        }
        return plain
    }

    /// Decrypts several values at once (for the privileged socket), auditing
    /// the read as one event. Names that do not exist are absent from the result.
    public func values(_ names: [String], actor: Actor, action: String = "get") throws -> [String: SecureBytes] {
        try store.lock.withLock { _ in
            var out: [String: SecureBytes] = [:]
            for n in names where out[n] == nil {
                if let v = try valueLocked(n) { out[n] = v }
            }
            try store.insertAudit(project: self.name, actor: actor, action: action,
                                  names: names.joined(separator: ","), detail: "\(out.count) found")
            return out
        }
    }

    // MARK: Writing

    /// Next version number, unique across the project for its lifetime, so an
    /// old ciphertext can never be replayed into a newer row with the same name.
    private func nextVersion() throws -> Int64 {
        let s = try db.statement("UPDATE projects SET last_version = last_version + 1 WHERE id = ? RETURNING last_version")
            .bind(1, id)
        defer { s.reset() }
        guard try s.step("allocating a version") else { throw StoreError.projectNotFound(name) }
        return s.int64(0)
    }

    private func writeRowLocked(_ name: String, value: SecureBytes, actor: Actor, createdAt: Timestamp?) throws -> SecretInfo {
        try value.withUnsafeBytes { try writeRowLocked(name, bytes: $0, actor: actor, createdAt: createdAt) }
    }

    private func writeRowLocked(_ name: String, bytes value: UnsafeRawBufferPointer, actor: Actor,
                                createdAt: Timestamp?) throws -> SecretInfo {
        let version = try nextVersion()
        let sealed = Envelope.seal(value, key: dataKey,
                                   associatedData: Envelope.valueAD(projectID: id, version: version, name: name))
        let now = Timestamp.now()
        let s = try db.statement("""
            INSERT INTO secrets(project_id, name, ciphertext, nonce, version, created_at, updated_at, updated_by)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT(project_id, name) DO UPDATE SET
                ciphertext = excluded.ciphertext, nonce = excluded.nonce, version = excluded.version,
                updated_at = excluded.updated_at, updated_by = excluded.updated_by
            RETURNING created_at
            """)
        s.bind(1, id).bind(2, name).bind(3, blob: sealed.ciphertext).bind(4, blob: sealed.nonce).bind(5, version)
            .bind(6, (createdAt ?? now).nanoseconds).bind(7, now.nanoseconds).bind(8, Int64(actor.uid))
        defer { s.reset() }
        guard try s.step("writing a secret") else { throw StoreError.corrupt("upsert returned no row") }
        return SecretInfo(name: name, version: version, createdAt: Timestamp(nanoseconds: s.int64(0)),
                          updatedAt: now, updatedBy: actor.uid)
    }

    /// Creates or replaces a value, durably, in one transaction.
    @discardableResult
    public func put(_ name: String, value: SecureBytes, actor: Actor) throws -> SecretInfo {
        try value.withUnsafeBytes { try put(name, bytes: $0, actor: actor) }
    }

    /// Creates or replaces a value from bytes in the caller's locked memory
    /// (the filesystem commits straight from its write buffer, no copy).
    @discardableResult
    public func put(_ name: String, bytes value: UnsafeRawBufferPointer, actor: Actor) throws -> SecretInfo {
        guard Names.isValid(name) else { throw StoreError.invalidSecretName(name) }
        return try store.lock.withLock { _ in
            try db.transaction("writing secret \(name)") {
                let existed = try infoLocked(name) != nil
                let info = try writeRowLocked(name, bytes: value, actor: actor, createdAt: nil)
                try store.insertAudit(project: self.name, actor: actor, action: existed ? "update" : "create",
                                      names: name, detail: nil)
                return info
            }
        }
    }

    /// Deletes a secret; false if it did not exist. secure_delete overwrites
    /// the freed ciphertext pages.
    @discardableResult
    public func delete(_ name: String, actor: Actor) throws -> Bool {
        try store.lock.withLock { _ in
            try db.transaction("deleting secret \(name)") {
                try db.statement("DELETE FROM secrets WHERE project_id = ? AND name = ?").bind(1, id).bind(2, name)
                    .run("deleting a secret")
                guard db.changes > 0 else { return false }
                try store.insertAudit(project: self.name, actor: actor, action: "delete", names: name, detail: nil)
                return true
            }
        }
    }

    public enum RenameMode: Sendable { case replace, noReplace, exchange }

    /// Renames `from` to `to` in one transaction. The name is part of the
    /// associated data, so the value is re-sealed under its new name.
    public func rename(_ from: String, to: String, mode: RenameMode = .replace, actor: Actor) throws {
        guard Names.isValid(to) else { throw StoreError.invalidSecretName(to) }
        if from == to { return }
        try store.lock.withLock { _ in
            try db.transaction("renaming secret \(from)") {
                guard let fromInfo = try infoLocked(from), let fromValue = try valueLocked(from) else {
                    throw StoreError.secretNotFound(from)
                }
                let toInfo = try infoLocked(to)
                switch mode {
                case .noReplace:
                    if toInfo != nil { throw StoreError.secretExists(to) }
                case .exchange:
                    guard let toInfo, let toValue = try valueLocked(to) else { throw StoreError.secretNotFound(to) }
                    _ = try writeRowLocked(to, value: fromValue, actor: actor, createdAt: fromInfo.createdAt)
                    _ = try writeRowLocked(from, value: toValue, actor: actor, createdAt: toInfo.createdAt)
                    try store.insertAudit(project: self.name, actor: actor, action: "exchange",
                                          names: "\(from),\(to)", detail: nil)
                    return
                case .replace:
                    break
                }
                try db.statement("DELETE FROM secrets WHERE project_id = ? AND name = ?").bind(1, id).bind(2, from)
                    .run("renaming a secret")
                try db.statement("DELETE FROM secrets WHERE project_id = ? AND name = ?").bind(1, id).bind(2, to)
                    .run("renaming a secret")
                _ = try writeRowLocked(to, value: fromValue, actor: actor, createdAt: fromInfo.createdAt)
                try store.insertAudit(project: self.name, actor: actor, action: "rename",
                                      names: "\(from),\(to)", detail: toInfo != nil ? "replaced \(to)" : nil)
            }
        }
    }

    /// Records an event that changes no secret (a refused caller, a socket read).
    public func audit(action: String, names: String? = nil, detail: String? = nil, actor: Actor) throws {
        try store.lock.withLock { _ in
            try store.insertAudit(project: name, actor: actor, action: action, names: names, detail: detail)
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
