import CSodium
import Glibc
import SecretfsPOSIX
import SecureMemory

/// What `store copy` did.
public struct StoreCopyReport: Sendable, Equatable {
    /// Rows copied per table, in copy order.
    public var rows: [(table: String, count: Int)]
    /// The target's every data key and kept value opened with the key.
    public var opened: Int
    public static func == (a: Self, b: Self) -> Bool {
        a.opened == b.opened && a.rows.map(\.table) == b.rows.map(\.table) && a.rows.map(\.count) == b.rows.map(\.count)
    }
}

extension Store {
    /// The tables a copy carries and their columns, in an order that keeps
    /// every foreign key satisfied. The change log is not among them: it is
    /// the shared store's transport, not its data (a new store's mounts start
    /// from its listing).
    private static let copiedTables: [(name: String, columns: [(String, ColumnKind)], order: String)] = [
        ("meta", [("key", .text), ("value", .blob)], "key"),
        ("projects", [("id", .integer), ("name", .text), ("wrapped_key", .blob), ("wrap_nonce", .blob),
                      ("created_at", .integer), ("last_version", .integer), ("keep_versions", .integer),
                      ("keep_deleted_days", .integer), ("key_generation", .integer)], "id"),
        ("key_links", [("project_id", .integer), ("generation", .integer), ("forward_key", .blob), ("forward_nonce", .blob),
                       ("backward_key", .blob), ("backward_nonce", .blob)], "project_id, generation"),
        ("secrets", [("project_id", .integer), ("name", .text), ("ciphertext", .blob), ("nonce", .blob), ("version", .integer),
                     ("created_at", .integer), ("updated_at", .integer), ("updated_by", .integer), ("action", .text),
                     ("key_generation", .integer)], "project_id, name"),
        ("versions", [("project_id", .integer), ("name", .text), ("version", .integer), ("ciphertext", .blob), ("nonce", .blob),
                      ("action", .text), ("made_at", .integer), ("made_by", .integer), ("key_generation", .integer)],
         "project_id, name, version"),
        ("trash", [("project_id", .integer), ("name", .text), ("deleted_at", .integer), ("deleted_by", .integer),
                   ("purge_at", .integer)], "project_id, name"),
        ("audit", [("id", .integer), ("project", .text), ("at", .integer), ("uid", .integer), ("pid", .integer),
                   ("action", .text), ("names", .text), ("detail", .text)], "id"),
    ]

    private enum ColumnKind { case integer, text, blob }

    private enum Cell: Equatable {
        case null, integer(Int64), text(String), blob([UInt8])
    }

    /// Meta rows that belong to one database, not to the store: its schema
    /// version (recorded differently by each backend) and a backup's manifest.
    private static let localMeta: Set<String> = ["schema_version", "change_log_pruned_through", manifestKey]

    private static func readRows(_ db: DatabaseConnection, _ table: (name: String, columns: [(String, ColumnKind)], order: String))
        throws -> [[Cell]] {
        let s = try db.statement("SELECT \(table.columns.map(\.0).joined(separator: ", ")) FROM \(table.name) ORDER BY \(table.order)")
        var rows: [[Cell]] = []
        while try s.step("reading \(table.name)") {
            var row: [Cell] = []
            for (i, c) in table.columns.enumerated() {
                let col = Int32(i)
                if s.isNull(col) { row.append(.null); continue }
                switch c.1 {
                case .integer: row.append(.integer(s.int64(col)))
                case .text: row.append(.text(s.string(col) ?? ""))
                case .blob: row.append(.blob(s.blob(col)))
                }
            }
            if table.name == "meta", case .text(let k) = row[0], localMeta.contains(k) { continue }
            rows.append(row)
        }
        return rows
    }

    /// Copies this store, every project with its versions, trash, key chain
    /// and audit trail, to a new store at `target` (a directory or a
    /// database; refused if it holds a store): the ciphertexts as they are,
    /// no value decrypted on the way (the associated data names projects by
    /// id and the store by its id, both copied, never the backend). A
    /// key-file store's key goes to the target's key file (0400), or must
    /// match the one already there. Then the copy is checked: every table
    /// read back equal, and every data key and value of the target opened
    /// with the key. The source is read in one transaction under its write
    /// lock (a consistent copy: its writers wait while it is read).
    public func copy(to target: StoreLocation) throws -> StoreCopyReport {
        guard masterKey.count == Envelope.keyBytes else { throw StoreError.keyNotLoaded }
        if target.kind == location.kind { throw StoreError.storeExists(target.directory) }
        // 1: every row of the source, read in one transaction (a consistent
        // copy; writers wait only while it is read, not while it is written).
        let (data, usesKeyFile) = try lock.withLock { _ in
            try db.transaction("reading the store to copy") { () throws -> ([[[Cell]]], Bool) in
                (try Self.copiedTables.map { try Self.readRows(db, $0) }, try Self.getMeta(db, "kdf") == nil)
            }
        }
        // 2: the target, written and checked in one transaction: a copy that
        // does not check out is rolled back (and what was created removed).
        let (targetDB, undo) = try Self.emptyStore(at: target, key: usesKeyFile ? masterKey : nil)
        do {
            return try targetDB.transaction("writing the copy") {
                if target.isShared {
                    for m in Self.migrations { try targetDB.execute(Self.postgresDDL(m), context: "creating the schema") }
                    try targetDB.execute(Self.changeLogDDL, context: "creating the change log")
                    try Self.putMeta(targetDB, "schema_version", Array(String(Self.migrations.count).utf8))
                }
                for (t, rows) in zip(Self.copiedTables, data) {
                    let marks = Array(repeating: "?", count: t.columns.count).joined(separator: ", ")
                    let insert = try targetDB.statement(
                        "INSERT INTO \(t.name)(\(t.columns.map(\.0).joined(separator: ", "))) VALUES (\(marks))")
                    for row in rows {
                        insert.reset()
                        for (i, cell) in row.enumerated() {
                            let index = Int32(i + 1)
                            switch cell {
                            case .null: insert.bind(index, nil as String?)
                            case .integer(let v): insert.bind(index, v)
                            case .text(let v): insert.bind(index, v)
                            case .blob(let v): insert.bind(index, blob: v)
                            }
                        }
                        try insert.run("copying \(t.name)")
                    }
                }
                if target.isShared {
                    // Explicit ids were written: new rows must number after them.
                    for (table, column) in [("projects", "id"), ("audit", "id")] {
                        try targetDB.statement("""
                            SELECT setval(pg_get_serial_sequence('\(table)', '\(column)'), COALESCE(MAX(\(column)), 0) + 1, false) FROM \(table)
                            """).run("numbering \(table)")
                    }
                }
                var report = StoreCopyReport(rows: [], opened: 0)
                for (t, rows) in zip(Self.copiedTables, data) {
                    guard try Self.readRows(targetDB, t) == rows else {
                        throw StoreError.corrupt("the copy's \(t.name) table does not read back as written")
                    }
                    report.rows.append((t.name, rows.count))
                }
                let check = try Self.openEverySealedBlob(targetDB, storeID: storeID, masterKey: masterKey, manifest: nil)
                if let f = check.failures.first { throw StoreError.corrupt("in the copy, \(f) does not open") }
                report.opened = check.opened
                return report
            }
        } catch {
            undo()
            throw error
        }
    }

    /// A new, empty store's database at `target` (refused if one is there),
    /// with `key` written as its key file when given, and how to remove what
    /// this made if the copy then fails.
    private static func emptyStore(at target: StoreLocation, key: SecureBytes?) throws -> (DatabaseConnection, () -> Void) {
        switch target.kind {
        case .postgres(let t):
            let db = try PostgresConnection(target: t)
            if try sharedSchemaVersion(db) != nil { throw StoreError.storeExists(t.displayName) }
            var undo: () -> Void = {}
            if let key { undo = try placeKeyFile(key, at: target) }
            return (db, undo)
        case .directory:
            let dir = try trustedDirectory(target, creating: true)
            try narrowNewStoreDirectory(dir)
            for name in fileNames where ((try? dir.status(of: name)) ?? nil) != nil { throw StoreError.storeExists(target.directory) }
            var created: [String] = []
            let undo = { for name in created.reversed() { dir.remove(name) } }
            do {
                if let key { _ = try placeKeyFile(key, at: target); created.append(keyFileName) }
                do { close(try dir.create(databaseName, O_RDWR, mode: 0o600)) } catch {
                    throw StoreError.io(path: target.databasePath, errno: error.errno, action: "create")
                }
                created += [databaseName, databaseName + "-wal", databaseName + "-shm"]
                let db = try SQLiteConnection(path: dir.canonicalPath(of: databaseName))
                try configure(db)
                try migrate(db)
                try checkSchema(db)
                return (db, undo)
            } catch {
                undo()
                throw error
            }
        }
    }

    /// Writes `key` as the target's key file (0400, fsync'd), or accepts the
    /// file already there if it holds the same key (a host that has the key
    /// already); another key there is refused. Returns how to remove it.
    static func placeKeyFile(_ key: SecureBytes, at target: StoreLocation) throws -> () -> Void {
        let dir: TrustedDirectory
        do {
            dir = try TrustedDirectory.open(target.keyDirectoryPath, creatingWith: 0o700, checkingOwnMode: true)
        } catch {
            switch error.problem {
            case .system(let e): throw StoreError.io(path: target.keyDirectoryPath, errno: e, action: "open the key directory")
            default: throw StoreError.keyFileUntrusted(error)
            }
        }
        let name = target.keyFileName
        if ((try? dir.status(of: name)) ?? nil) != nil {
            let existing = try readKeyFile(at: dir.descriptor, name, path: target.keyFilePath)
            defer { existing.wipe() }
            guard existing.constantTimeEquals(key) else {
                throw StoreError.io(path: target.keyFilePath, errno: EEXIST, action: "use (it holds another key) the key file")
            }
            return {}
        }
        let fd: Int32
        do { fd = try dir.create(name, O_WRONLY, mode: 0o400) } catch {
            throw StoreError.io(path: target.keyFilePath, errno: error.errno, action: "create")
        }
        defer { close(fd) }
        do { try writeKey(key, to: fd, path: target.keyFilePath) } catch {
            dir.remove(name)
            throw error
        }
        syncDirectory(dir)
        return { dir.remove(name) }
    }
}
