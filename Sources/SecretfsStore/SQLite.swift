import CSQLite

/// The embedded backend's connection: a thin wrapper over one SQLite
/// connection (see DatabaseConnection).
final class SQLiteConnection: DatabaseConnection {
    private(set) var handle: OpaquePointer?
    let path: String
    private var cache: [String: SQLiteStatement] = [:]

    /// Opens an existing database file (`init` creates it beforehand, 0600 and
    /// O_EXCL, so SQLite never creates a file itself). SQLITE_OPEN_NOFOLLOW
    /// refuses a symlink anywhere in `path`: callers pass a canonical path.
    /// `immutable`: read-only, and the file is taken as it is: no locks,
    /// and no journal or WAL beside it is ever read (for a backup, which may
    /// lie in a directory where others create files).
    init(path: String, readOnly: Bool = false, immutable: Bool = false) throws {
        self.path = path
        var flags = (readOnly || immutable ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE) | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_NOFOLLOW
        var name = path
        if immutable {
            flags |= SQLITE_OPEN_URI
            // A URI's path: '%', '?' and '#' are escaped, the rest is as is.
            var escaped = ""
            for c in path.unicodeScalars {
                switch c {
                case "%": escaped += "%25"
                case "?": escaped += "%3f"
                case "#": escaped += "%23"
                default: escaped.unicodeScalars.append(c)
                }
            }
            name = "file:" + escaped + "?immutable=1"
        }
        var db: OpaquePointer?
        let rc = sqlite3_open_v2(name, &db, flags, nil)
        guard rc == SQLITE_OK, let db else {
            let message = db.map { String(cString: sqlite3_errmsg($0)) } ?? "out of memory"
            if let db { sqlite3_close_v2(db) }
            throw StoreError.sqlite(code: rc, message: message, context: "opening \(path)")
        }
        handle = db
        sqlite3_extended_result_codes(db, 1)
    }

    deinit {
        cache.removeAll()  // finalize statements before closing
        if let handle { sqlite3_close_v2(handle) }
    }

    func close() {
        cache.removeAll()
        if let handle { sqlite3_close_v2(handle) }
        handle = nil
    }

    var lastErrorMessage: String { handle.map { String(cString: sqlite3_errmsg($0)) } ?? "closed" }

    func execute(_ sql: String, context: String) throws {
        let rc = sqlite3_exec(handle, sql, nil, nil, nil)
        guard rc == SQLITE_OK else {
            throw StoreError.sqlite(code: rc, message: lastErrorMessage, context: context)
        }
    }

    /// As `execute`, from the statement cache: what every transaction runs
    /// (BEGIN, COMMIT) is not parsed again each time, as `sqlite3_exec`
    /// would at every call.
    func executePrepared(_ sql: String, context: String) throws {
        let s = try sqliteStatement(sql)
        defer { s.reset() }
        _ = try s.step(context)
    }

    /// A prepared statement, cached by its SQL text and reset before reuse.
    func statement(_ sql: String) throws -> DatabaseStatement { try sqliteStatement(sql) }

    func sqliteStatement(_ sql: String) throws -> SQLiteStatement {
        if let s = cache[sql] {
            s.reset()
            return s
        }
        var stmt: OpaquePointer?
        let rc = sqlite3_prepare_v3(handle, sql, -1, UInt32(SQLITE_PREPARE_PERSISTENT), &stmt, nil)
        guard rc == SQLITE_OK, let stmt else {
            throw StoreError.sqlite(code: rc, message: lastErrorMessage, context: "preparing statement")
        }
        let s = SQLiteStatement(stmt, connection: self)
        cache[sql] = s
        return s
    }

    var changes: Int { Int(sqlite3_changes(handle)) }

    var beforeCommit: (() throws -> Void)?
    var afterTransaction: ((Bool) -> Void)?

    /// Runs `body` in a `BEGIN IMMEDIATE` transaction: committed when it
    /// returns, rolled back when it throws. IMMEDIATE takes the write lock up
    /// front so two processes never deadlock upgrading read locks.
    func transaction<T>(_ context: String, _ body: () throws -> T) throws -> T {
        try executePrepared("BEGIN IMMEDIATE", context: context)
        do {
            let result = try body()
            try beforeCommit?()
            try executePrepared("COMMIT", context: context)
            afterTransaction?(true)
            return result
        } catch {
            _ = sqlite3_exec(handle, "ROLLBACK", nil, nil, nil)
            afterTransaction?(false)
            throw error
        }
    }
}

extension SQLiteConnection {
    func releaseCachedPages() {
        _ = sqlite3_db_release_memory(handle)
    }

    func readSnapshot<T>(_ context: String, _ body: () throws -> T) throws -> T {
        // Inside a transaction already: its snapshot serves.
        guard sqlite3_get_autocommit(handle) != 0 else { return try body() }
        try executePrepared("BEGIN DEFERRED", context: context)
        do {
            let result = try body()
            try executePrepared("COMMIT", context: context)
            return result
        } catch {
            _ = sqlite3_exec(handle, "ROLLBACK", nil, nil, nil)
            throw error
        }
    }
}

/// SQLITE_TRANSIENT is a macro Swift cannot import (PLATFORM-NOTES).
private let transient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)

final class SQLiteStatement: DatabaseStatement {
    let stmt: OpaquePointer
    unowned let connection: SQLiteConnection

    init(_ stmt: OpaquePointer, connection: SQLiteConnection) {
        self.stmt = stmt
        self.connection = connection
    }

    deinit { sqlite3_finalize(stmt) }

    func reset() {
        sqlite3_reset(stmt)
        sqlite3_clear_bindings(stmt)
    }

    @discardableResult
    func bind(_ index: Int32, _ value: Int64) -> Self {
        sqlite3_bind_int64(stmt, index, value); return self
    }

    @discardableResult
    func bind(_ index: Int32, _ value: String?) -> Self {
        if let value { sqlite3_bind_text(stmt, index, value, -1, transient) } else { sqlite3_bind_null(stmt, index) }
        return self
    }

    @discardableResult
    func bind(_ index: Int32, blob: [UInt8]) -> Self {
        blob.withUnsafeBytes { raw in
            // A zero-length blob must still be a blob, not NULL.
            _ = sqlite3_bind_blob(stmt, index, raw.baseAddress ?? UnsafeRawPointer(bitPattern: 1), Int32(raw.count), transient)
        }
        return self
    }

    /// Steps once; true when a row is available.
    func step(_ context: String) throws -> Bool {
        let rc = sqlite3_step(stmt)
        switch rc {
        case SQLITE_ROW: return true
        case SQLITE_DONE: return false
        default:
            throw StoreError.sqlite(code: rc, message: connection.lastErrorMessage, context: context)
        }
    }

    // SQLite runs in this process: nothing to gain by deferring.
    func prefetch(_ context: String) throws {}

    func run(_ context: String) throws { try runNow(context) }

    func runCountingChanges(_ context: String) throws -> Int {
        try runNow(context)
        return connection.changes
    }

    func run(_ context: String, returning rows: @escaping ([Int64]) -> Void) throws {
        rows(try firstColumnOfEveryRow(context))
    }

    func int64(_ column: Int32) -> Int64 { sqlite3_column_int64(stmt, column) }

    func isNull(_ column: Int32) -> Bool { sqlite3_column_type(stmt, column) == SQLITE_NULL }

    func string(_ column: Int32) -> String? {
        guard let p = sqlite3_column_text(stmt, column) else { return nil }
        return String(cString: p)
    }

    func blob(_ column: Int32) -> [UInt8] {
        let n = Int(sqlite3_column_bytes(stmt, column))
        guard n > 0, let p = sqlite3_column_blob(stmt, column) else { return [] }
        return Array(UnsafeRawBufferPointer(start: p, count: n))
    }
}
