import Glibc
import SecureMemory

/// `project rotate-key`: a new data key for one project, every kept value
/// re-sealed under it, while the project may be mounted.
///
/// 1. One transaction makes generation G+1: a random key, wrapped by the
///    master key as the project's key, and a `key_links` row holding it
///    sealed under key G (forward, for a mount that holds only key G) and
///    key G sealed under it (backward, to open rows not yet re-sealed).
///    Every write after this commit (a mount's too: it follows the link in
///    its transaction) seals under G+1.
/// 2. Batches of rows (current values and kept versions) still under an older
///    generation are opened and sealed again under G+1 (same AD, new nonce),
///    each batch one transaction, with progress.
/// 3. When none is left (after giving a mounted project's watcher time to
///    follow), the link is deleted: nothing sealed under an older key remains
///    (secure_delete zeroes what the updates replaced).
extension Store {
    public struct RotationProgress: Sendable { public var done: Int; public var total: Int }

    @discardableResult
    public func rotateKey(project: String, batchSize: Int = 500, settle: Double = 1.0, actor: Actor = .current,
                          progress: ((RotationProgress) -> Void)? = nil) throws -> Int {
        guard masterKey.count == Envelope.keyBytes else { throw StoreError.keyNotLoaded }
        // 1: the new generation.
        let (id, newGen, newKey, total) = try lock.withLock { _ in
            try db.transaction("rotating the data key of \(project)") { () throws -> (Int64, Int64, SecureBytes, Int) in
                let s = try db.statement("SELECT id, wrapped_key, wrap_nonce, key_generation FROM projects WHERE name = ?").bind(1, project)
                guard try s.step("opening project") else { s.reset(); throw StoreError.projectNotFound(project) }
                let id = s.int64(0), gen = s.int64(3)
                let wrapped = Envelope.Sealed(ciphertext: s.blob(1), nonce: s.blob(2))
                s.reset()
                let ad = Envelope.projectKeyAD(storeID: storeID, projectID: id, projectName: project)
                guard let oldKey = Envelope.open(wrapped, key: masterKey, associatedData: ad) else {
                    throw StoreError.corrupt("the data key of project '\(project)' does not open with this master key")
                }
                defer { oldKey.wipe() }
                let newKey = SecureBytes.random(count: Envelope.keyBytes)
                let next = gen + 1
                let forward = Envelope.seal(newKey, key: oldKey, associatedData: Envelope.keyLinkAD(projectID: id, generation: next, forward: true))
                let backward = Envelope.seal(oldKey, key: newKey, associatedData: Envelope.keyLinkAD(projectID: id, generation: next, forward: false))
                try db.statement("""
                    INSERT INTO key_links(project_id, generation, forward_key, forward_nonce, backward_key, backward_nonce)
                    VALUES (?, ?, ?, ?, ?, ?)
                    """).bind(1, id).bind(2, next).bind(3, blob: forward.ciphertext).bind(4, blob: forward.nonce)
                    .bind(5, blob: backward.ciphertext).bind(6, blob: backward.nonce).run("linking the new data key")
                // Mounts on other hosts hear of it now and follow the link
                // before the rotation ends and drops it.
                recordChangeLocked(projectID: id, name: nil)
                let rewrapped = Envelope.seal(newKey, key: masterKey, associatedData: ad)
                try db.statement("UPDATE projects SET wrapped_key = ?, wrap_nonce = ?, key_generation = ? WHERE id = ?")
                    .bind(1, blob: rewrapped.ciphertext).bind(2, blob: rewrapped.nonce).bind(3, next).bind(4, id)
                    .run("storing the new data key")
                let c = try db.statement("""
                    SELECT (SELECT COUNT(*) FROM secrets WHERE project_id = ? AND key_generation < ?)
                         + (SELECT COUNT(*) FROM versions WHERE project_id = ? AND key_generation < ? AND length(ciphertext) > 0)
                    """).bind(1, id).bind(2, next).bind(3, id).bind(4, next)
                _ = try c.step("counting values")
                let total = Int(c.int64(0))
                c.reset()
                return (id, next, newKey, total)
            }
        }
        defer { newKey.wipe() }
        // Keys of older generations, reached backward from the new one.
        var keys: [Int64: SecureBytes] = [newGen: newKey]
        func key(_ g: Int64) throws -> SecureBytes {
            var lowest = keys.keys.min()!
            while lowest > g, keys[g] == nil {
                let l = try db.statement("SELECT backward_key, backward_nonce FROM key_links WHERE project_id = ? AND generation = ?")
                    .bind(1, id).bind(2, lowest)
                guard try l.step("reading the key chain") else { l.reset(); break }
                let sealed = Envelope.Sealed(ciphertext: l.blob(0), nonce: l.blob(1))
                l.reset()
                guard let k = Envelope.open(sealed, key: keys[lowest]!, associatedData: Envelope.keyLinkAD(projectID: id, generation: lowest, forward: false)) else { break }
                keys[lowest - 1] = k
                lowest -= 1
            }
            guard let k = keys[g] else { throw StoreError.corrupt("a value of project '\(project)' is under an unknown data key generation \(g)") }
            return k
        }
        // 2: batches.
        var done = 0
        while true {
            let n = try lock.withLock { _ in
                try db.transaction("re-sealing values of \(project)") { () throws -> Int in
                    var rows: [(table: String, name: String, version: Int64, gen: Int64, sealed: Envelope.Sealed)] = []
                    for table in ["secrets", "versions"] {
                        let s = try db.statement("""
                            SELECT name, version, key_generation, ciphertext, nonce FROM \(table)
                            WHERE project_id = ? AND key_generation < ? AND length(ciphertext) > 0 LIMIT ?
                            """).bind(1, id).bind(2, newGen).bind(3, Int64(batchSize))
                        while try s.step("reading values to re-seal") {
                            rows.append((table, s.string(0) ?? "", s.int64(1), s.int64(2), Envelope.Sealed(ciphertext: s.blob(3), nonce: s.blob(4))))
                        }
                        if rows.count >= batchSize { break }
                    }
                    for r in rows {
                        let ad = Envelope.valueAD(projectID: id, version: r.version, name: r.name)
                        guard let plain = Envelope.open(r.sealed, key: try key(r.gen), associatedData: ad) else {
                            throw StoreError.corrupt("version \(r.version) of '\(r.name)' in project '\(project)' does not decrypt")
                        }
                        let sealed = Envelope.seal(plain, key: newKey, associatedData: ad)
                        plain.wipe()
                        try db.statement("""
                            UPDATE \(r.table) SET ciphertext = ?, nonce = ?, key_generation = ?
                            WHERE project_id = ? AND name = ? AND version = ?
                            """).bind(1, blob: sealed.ciphertext).bind(2, blob: sealed.nonce).bind(3, newGen)
                            .bind(4, id).bind(5, r.name).bind(6, r.version).run("re-sealing a value")
                    }
                    return rows.count
                }
            }
            done += n
            progress?(RotationProgress(done: done, total: max(total, done)))
            if n == 0 { break }
        }
        // 3: the chain goes once a mount has had time to follow it. A shared
        // store's mounts are on other hosts, out of sight: always wait (they
        // heard of the rotation through the change log's NOTIFY at step 1).
        if location.isShared || isMounted(project) { usleep(useconds_t(settle * 1_000_000)) }
        try lock.withLock { _ in
            try db.transaction("finishing the rotation of \(project)") {
                let left = try db.statement("""
                    SELECT (SELECT COUNT(*) FROM secrets WHERE project_id = ? AND key_generation < ?)
                         + (SELECT COUNT(*) FROM versions WHERE project_id = ? AND key_generation < ? AND length(ciphertext) > 0)
                    """).bind(1, id).bind(2, newGen).bind(3, id).bind(4, newGen)
                _ = try left.step("counting values")
                let remaining = left.int64(0)
                left.reset()
                if remaining > 0 { throw StoreError.corrupt("\(remaining) values of '\(project)' were not re-sealed") }
                try db.statement("UPDATE versions SET key_generation = ? WHERE project_id = ? AND length(ciphertext) = 0")
                    .bind(1, newGen).bind(2, id).run("updating delete markers")
                try db.statement("DELETE FROM key_links WHERE project_id = ?").bind(1, id).run("dropping the old key")
                try insertAudit(project: project, actor: actor, action: "rotate-key", names: nil,
                                detail: "generation \(newGen), \(done) values re-sealed")
            }
        }
        for (g, k) in keys where g != newGen { k.wipe() }
        // secure_delete zeroes what a delete or update frees, but a page that
        // SQLite rebalanced may keep stale bytes of a moved cell in its gap:
        // VACUUM rewrites every page, so no fragment of a ciphertext under
        // the old key survives (measured: without it, a few did).
        try lock.withLock { _ in try db.execute("VACUUM", context: "rewriting the database after the rotation") }
        return done
    }
}
