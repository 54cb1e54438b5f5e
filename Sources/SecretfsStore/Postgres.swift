import CPostgres
import Glibc

/// The shared backend's connection: one libpq connection to the PostgreSQL
/// database that many hosts mount from (see DatabaseConnection).
///
/// libpq rather than postgres-nio: its calls block, which is what a FUSE
/// worker thread wants (it waits for its commit anyway), and it brings
/// libpq's own handling of `~/.pgpass`, `PGPASSFILE`, `PGSSLMODE`,
/// `sslmode=verify-full` and the rest of the libpq environment, so secretfs
/// never sees the database password (docs/deployment.md).
///
/// A lost connection is reset on the next use; a statement that fails to
/// reach the server outside a transaction is retried once on the new
/// connection. When the server cannot be reached, every call throws
/// `StoreError.unavailable` at once, and the next call tries again.
final class PostgresConnection: DatabaseConnection {
    private var conn: OpaquePointer?
    let target: PostgresTarget
    /// Bumped on every (re)connect: statements prepared on an earlier
    /// connection are prepared again.
    fileprivate private(set) var generation = 0
    private var cache: [String: PostgresStatement] = [:]
    private var nextStatementID = 0
    private var inTransaction = false
    /// In pipeline mode: the body of a write transaction, whose statements
    /// are sent without waiting for each answer (DatabaseStatement.run).
    fileprivate private(set) var pipelined = false
    /// What was sent in the pipeline and not read back yet, in order.
    private var pending: [Pending] = []
    /// The most statements sent before their answers are read: the server
    /// queues its answers while nobody reads them, and a connection whose
    /// both ends wait to write would hang.
    static let pipelineDepth = 64
    var beforeCommit: (() throws -> Void)?
    var afterTransaction: ((Bool) -> Void)?

    /// The advisory lock every write transaction takes first: writers of all
    /// hosts run one at a time, as SQLite's BEGIN IMMEDIATE makes them on one
    /// host, so a transaction's reads and its compare-and-set of the version
    /// see no other writer's half-done work. (The number spells "secretfs".)
    static let writeLockKey: Int64 = 0x7365_6372_6574_6673

    /// How long a writer waits for that lock, unless the role or database
    /// sets its own `lock_timeout`: a mount commits under its own locks, so
    /// a wait that never ends (a host holding the lock, cut off) would stall
    /// the whole mount; past this the write fails with EIO instead.
    static let lockWait = "30s"
    static let boundLockWait = "SELECT set_config('lock_timeout', '\(lockWait)', true) WHERE current_setting('lock_timeout') = '0';"

    let pq: LibPQ

    init(target: PostgresTarget) throws {
        self.target = target
        pq = try LibPQ.get()
        try connect()
    }

    deinit {
        cache.removeAll()
        if let conn { pq.finish(conn) }
    }

    // MARK: Connecting

    /// libpq keywords set before the user's own conninfo, which overrides
    /// them: a bound on connecting and on a silent network, and a name in
    /// pg_stat_activity. A setting libpq's environment gives
    /// (PGCONNECT_TIMEOUT, PGAPPNAME, ...) is left to libpq.
    static var connectDefaults: [(String, String)] {
        let defaults: [(String, String, String)] = [
            ("connect_timeout", "5", "PGCONNECT_TIMEOUT"),
            ("keepalives_idle", "10", ""),
            ("keepalives_interval", "5", ""),
            ("keepalives_count", "3", ""),
            ("tcp_user_timeout", "15000", "PGTCPUSERTIMEOUT"),
            ("application_name", "secretfs", "PGAPPNAME"),
        ]
        return defaults.filter { $0.2.isEmpty || getenv($0.2) == nil }.map { ($0.0, $0.1) }
    }

    /// A new connection to `target` (the connection string expanded by
    /// libpq), or nil with libpq's message.
    static func open(_ target: PostgresTarget, extra: [(String, String)] = []) -> (OpaquePointer?, String?) {
        let pq: LibPQ
        do { pq = try LibPQ.get() } catch { return (nil, error.description) }
        let pairs = connectDefaults + extra + [("dbname", target.conninfo)]
        let keys = pairs.map { strdup($0.0) }
        let values = pairs.map { strdup($0.1) }
        defer {
            keys.forEach { free($0) }
            values.forEach { free($0) }
        }
        var k: [UnsafePointer<CChar>?] = keys.map { UnsafePointer($0) } + [nil]
        var v: [UnsafePointer<CChar>?] = values.map { UnsafePointer($0) } + [nil]
        guard let c = pq.connectdbParams(&k, &v, 1) else { return (nil, "out of memory") }
        if pq.status(c) != CONNECTION_OK {
            let message = firstLine(pq.errorMessage(c))
            pq.finish(c)
            return (nil, message)
        }
        // Notices (NOTICE, WARNING) would go to stderr by default: nowhere instead.
        _ = pq.setNoticeProcessor(c, { _, _ in }, nil)
        return (c, nil)
    }

    private func connect() throws {
        let (c, message) = Self.open(target)
        guard let c else { throw StoreError.unavailable(target.displayName, message ?? "cannot connect") }
        if let conn { pq.finish(conn) }
        conn = c
        generation += 1
        // Every commit waits for its WAL flush, whatever the server's default:
        // a close that returned 0 must survive a crash of the server.
        // A host cut off in the middle of a write transaction holds the write
        // lock of every host: the server ends such a session after a minute.
        // (The store's own transactions are never idle: each runs its
        // statements back to back.)
        try execute("SET synchronous_commit = on; SET client_min_messages = warning; SET idle_in_transaction_session_timeout = '60s'",
                    context: "configuring the session")
    }

    /// The connection, reset first if it was lost.
    private func live() throws -> OpaquePointer {
        if let conn, pq.status(conn) == CONNECTION_OK { return conn }
        try connect()
        return conn!
    }

    var isBroken: Bool { conn.map { pq.status($0) != CONNECTION_OK } ?? true }

    /// How this connection reaches the server, for doctor.
    var transport: StoreTransport {
        guard let conn else { return .unencryptedTCP }
        if pq.sslInUse(conn) == 1 {
            // Whether the server's certificate and name were checked.
            var mode = ""
            if let options = pq.conninfo(conn) {
                var o = options
                while let k = o.pointee.keyword {
                    if String(cString: k) == "sslmode", let v = o.pointee.val { mode = String(cString: v) }
                    o += 1
                }
                pq.conninfoFree(options)
            }
            return mode == "verify-full" ? .tls : .tlsUnverified(mode)
        }
        if let h = pq.host(conn), String(cString: h).hasPrefix("/") { return .unixSocket }
        return .unencryptedTCP
    }

    static func firstLine(_ p: UnsafeMutablePointer<CChar>?) -> String { firstLine(p.map { UnsafePointer($0) }) }

    static func firstLine(_ p: UnsafePointer<CChar>?) -> String {
        guard let p else { return "unknown error" }
        return printable(String(String(cString: p).split(separator: "\n").first ?? "unknown error"))
    }

    /// Text from the server or the network, fit for a terminal and a log
    /// line: control characters (escape sequences, forged line breaks) become '?'.
    static func printable(_ s: String) -> String {
        String(String.UnicodeScalarView(s.unicodeScalars.map { $0.value < 0x20 || ($0.value >= 0x7F && $0.value < 0xA0) ? "?" : $0 }))
    }

    /// The error of a failed result: the primary message only (its DETAIL can
    /// quote a row's key), or `unavailable` when the connection is gone.
    func error(of result: OpaquePointer?, context: String) -> StoreError {
        if isBroken || result == nil {
            return .unavailable(target.displayName, Self.firstLine(conn.flatMap { pq.errorMessage($0) }))
        }
        let state = pq.resultErrorField(result, Int32(UInt8(ascii: "C"))).map { Self.printable(String(cString: $0)) } ?? "?????"
        let message = pq.resultErrorField(result, Int32(UInt8(ascii: "M"))).map { Self.printable(String(cString: $0)) } ?? "unknown error"
        return .postgres(sqlstate: state, message: message, context: context)
    }

    // MARK: DatabaseConnection

    func execute(_ sql: String, context: String) throws {
        // PQexec (several statements in one text) has no place in a
        // pipeline: what is owed is read first, then the pipeline resumes.
        if pipelined {
            try sync()
            try leavePipeline()
            try execute(sql, context: context)
            // Back in the pipeline, or the transaction fails: the rest of it
            // (its COMMIT included) is sent and read only in pipeline mode.
            try enterPipeline()
            return
        }
        let result = try withRetry { pq.exec($0, sql) }
        defer { pq.clear(result) }
        let status = pq.resultStatus(result)
        guard status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK else { throw error(of: result, context: context) }
    }

    func statement(_ sql: String) throws -> DatabaseStatement {
        if let s = cache[sql] {
            // A prefetched answer nobody read is read (and dropped) before
            // the statement is used again: it must not land on the new use.
            if s.awaitingAnswer { try sync() }
            s.reset()
            return s
        }
        nextStatementID += 1
        let s = PostgresStatement(connection: self, name: "secretfs_\(nextStatementID)", sql: Self.numberPlaceholders(sql))
        cache[sql] = s
        return s
    }

    /// Each statement is a round trip of its own either way; a read-only
    /// transaction around them would add two.
    func readSnapshot<T>(_ context: String, _ body: () throws -> T) throws -> T {
        try body()
    }

    func releaseCachedPages() {}

    func transaction<T>(_ context: String, _ body: () throws -> T) throws -> T {
        do {
            // One round trip, inside the error handling: a lock wait that
            // fails (a lock_timeout, a cancelled backend) is rolled back like
            // any other failure, so the session never stays in an aborted
            // transaction. Sent before `inTransaction` is set: a connection
            // lost while idle shows here, and the pair is sent again on a
            // new one (where no transaction was begun).
            try execute("BEGIN; \(Self.boundLockWait) SELECT pg_advisory_xact_lock(\(Self.writeLockKey))", context: context)
            inTransaction = true
            try enterPipeline()
            let result = try body()
            try beforeCommit?()
            // Never retried: a COMMIT lost with its connection may or may not
            // have committed, and a retry on a new session would "succeed"
            // with nothing to commit. Its failure is the writer's EIO, and
            // the mount's watcher finds out what the store holds. It travels
            // with whatever the body left unanswered, and its answer comes
            // after theirs: one round trip for all of them.
            try send(context: context, statement: nil) { pq.sendQueryParams($0, "COMMIT", 0, nil, nil, nil, nil, 1) }
            try sync()
            // Committed. A connection that cannot leave pipeline mode now is
            // of no further use, but the commit stands: dropped, and the next
            // statement connects afresh.
            if (try? leavePipeline()) == nil { dropConnection() }
            inTransaction = false
            afterTransaction?(true)
            return result
        } catch {
            abandonPipeline()
            inTransaction = false
            if let conn, pq.status(conn) == CONNECTION_OK { pq.clear(pq.exec(conn, "ROLLBACK")) }
            afterTransaction?(false)
            throw error
        }
    }

    // MARK: Pipeline mode

    /// A statement sent in the pipeline, waiting for its answer.
    private struct Pending {
        let context: String
        /// The statement that reads the answer's rows (`step`), if any.
        let reader: PostgresStatement?
        /// A PREPARE sent ahead of the statement's first use on this connection.
        let prepares: PostgresStatement?
        /// For `run(_:returning:)`: the first column of every row.
        let rows: (([Int64]) -> Void)?
    }

    private func enterPipeline() throws {
        guard let conn, pq.enterPipelineMode(conn) == 1 else {
            throw StoreError.unavailable(target.displayName, Self.firstLine(conn.flatMap { pq.errorMessage($0) }))
        }
        pipelined = true
    }

    private func dropConnection() {
        pipelined = false
        pending.forEach { $0.reader?.awaitingAnswer = false }
        pending.removeAll()
        if let conn { pq.finish(conn) }
        conn = nil
    }

    private func leavePipeline() throws {
        guard pipelined else { return }
        pipelined = false
        guard let conn, pq.exitPipelineMode(conn) == 1 else {
            throw StoreError.unavailable(target.displayName, Self.firstLine(conn.flatMap { pq.errorMessage($0) }))
        }
    }

    /// After a failure: reads what is still owed (ignoring it) and leaves
    /// pipeline mode, so that ROLLBACK can be sent the ordinary way.
    private func abandonPipeline() {
        guard pipelined else { return }
        if !pending.isEmpty { _ = try? sync() }
        pending.forEach { $0.reader?.awaitingAnswer = false }
        pending.removeAll()
        pipelined = false
        if let conn { _ = pq.exitPipelineMode(conn) }
    }

    /// Sends one message into the pipeline (a `PQsend...` call) and notes
    /// whose answer it is; past `pipelineDepth` unanswered, waits for them.
    fileprivate func send(context: String, statement reader: PostgresStatement?, prepares: PostgresStatement? = nil,
                          rows: (([Int64]) -> Void)? = nil, _ call: (OpaquePointer) -> Int32) throws {
        guard let conn, call(conn) == 1 else { throw error(of: nil, context: context) }
        pending.append(Pending(context: context, reader: reader, prepares: prepares, rows: rows))
        if pending.count >= Self.pipelineDepth && reader == nil { try sync() }
    }

    /// One round trip: asks for every answer owed and reads them in order.
    /// A `step`'s rows go to its statement; the first failure is thrown once
    /// all are read (the server skipped everything after it, and the
    /// transaction is then rolled back).
    fileprivate func sync() throws {
        guard pipelined, !pending.isEmpty, let conn else { return }
        let owed = pending
        pending.removeAll()
        var failure: StoreError?
        if pq.pipelineSync(conn) != 1 { failure = error(of: nil, context: owed.first?.context ?? "sending") }
        for entry in owed {
            // Each statement's answer is one result, then NULL.
            var answer: OpaquePointer?
            while let r = pq.getResult(conn) {
                if answer == nil { answer = r } else { pq.clear(r) }
            }
            let status = pq.resultStatus(answer)
            let ok = answer != nil && (status == PGRES_TUPLES_OK || status == PGRES_COMMAND_OK)
            if !ok {
                entry.prepares?.preparedGeneration = -1
                entry.reader?.awaitingAnswer = false
                if failure == nil && status != PGRES_PIPELINE_ABORTED { failure = error(of: answer, context: entry.context) }
                pq.clear(answer)
                continue
            }
            if let rows = entry.rows, failure == nil {
                rows((0..<pq.ntuples(answer)).map { PostgresStatement.int64(pq, answer, row: $0, column: 0) })
            }
            if let reader = entry.reader {
                reader.take(answer)
            } else {
                pq.clear(answer)
            }
        }
        // Then the sync point itself.
        while let r = pq.getResult(conn) {
            let status = pq.resultStatus(r)
            pq.clear(r)
            if status == PGRES_PIPELINE_SYNC { break }
        }
        if failure == nil && isBroken { failure = error(of: nil, context: owed.last?.context ?? "reading") }
        if let failure { throw failure }
    }

    /// Runs `call` on the live connection; when the server was lost under a
    /// statement outside a transaction that is safe to repeat (a read, a
    /// session setting, BEGIN), once more on a new connection. Inside a
    /// transaction the failure ends the transaction: the caller's write fails
    /// whole; and a write outside one is not repeated (it may have been done).
    func withRetry(idempotent: Bool = true, _ call: (OpaquePointer) -> OpaquePointer?) throws -> OpaquePointer? {
        let result = call(try live())
        let failed = result == nil || pq.resultStatus(result) == PGRES_FATAL_ERROR
        guard failed, isBroken, !inTransaction, idempotent else { return result }
        pq.clear(result)
        return call(try live())
    }

    /// `?` placeholders become PostgreSQL's `$1`, `$2`, ... (none occurs in
    /// the store's quoted literals, which are skipped anyway).
    static func numberPlaceholders(_ sql: String) -> String {
        var out = ""
        var n = 0
        var quoted = false
        for c in sql {
            if c == "'" { quoted.toggle() }
            if c == "?" && !quoted {
                n += 1
                out += "$\(n)"
            } else {
                out.append(c)
            }
        }
        return out
    }

    fileprivate func prepare(_ s: PostgresStatement, parameters: Int) throws {
        let result = try withRetry { pq.prepare($0, s.name, s.sql, Int32(parameters), nil) }
        defer { pq.clear(result) }
        guard pq.resultStatus(result) == PGRES_COMMAND_OK else { throw error(of: result, context: "preparing a statement") }
        s.preparedGeneration = generation
    }

    fileprivate func forgetPrepared() { cache.values.forEach { $0.preparedGeneration = -1 } }
}

/// A parameter of a PostgreSQL statement.
private enum PostgresValue {
    case null
    case integer(Int64)
    case text(String)
    case bytes([UInt8])
}

/// A prepared statement on a `PostgresConnection`. The first `step` runs it
/// (integers and text sent as text, blobs as binary; results come back
/// binary) and later steps walk its rows.
final class PostgresStatement: DatabaseStatement {
    unowned let connection: PostgresConnection
    let name: String
    let sql: String
    fileprivate var preparedGeneration = -1
    private var parameters: [PostgresValue] = []
    private var result: OpaquePointer?
    private var row: Int32 = -1
    private var rows: Int32 = 0
    /// Rows the last run inserted, updated or deleted.
    private var changes = 0
    /// Sent by `prefetch`; its answer comes with the next sync.
    fileprivate var awaitingAnswer = false

    /// Its own copy: the statement's deinit may run during the connection's.
    private let pq: LibPQ

    fileprivate init(connection: PostgresConnection, name: String, sql: String) {
        self.connection = connection
        self.pq = connection.pq
        self.name = name
        self.sql = sql
    }

    deinit { if let result { pq.clear(result) } }

    func reset() {
        if let result { pq.clear(result) }
        result = nil
        row = -1
        rows = 0
        parameters.removeAll(keepingCapacity: true)
    }

    private func set(_ index: Int32, _ value: PostgresValue) {
        let i = Int(index) - 1
        while parameters.count <= i { parameters.append(.null) }
        parameters[i] = value
    }

    @discardableResult func bind(_ index: Int32, _ value: Int64) -> Self { set(index, .integer(value)); return self }
    @discardableResult func bind(_ index: Int32, _ value: String?) -> Self { set(index, value.map { .text($0) } ?? .null); return self }
    @discardableResult func bind(_ index: Int32, blob: [UInt8]) -> Self { set(index, .bytes(blob)); return self }

    func step(_ context: String) throws -> Bool {
        if result == nil {
            if awaitingAnswer {
                try connection.sync()
            } else if connection.pipelined {
                try send(context: context, reader: self, rows: nil)
                try connection.sync()
            } else {
                try execute(context: context)
            }
        }
        row += 1
        return row < rows
    }

    func prefetch(_ context: String) throws {
        guard connection.pipelined, result == nil, !awaitingAnswer else { return }
        try send(context: context, reader: self, rows: nil)
        awaitingAnswer = true
    }

    func run(_ context: String) throws {
        if connection.pipelined { try send(context: context, reader: nil, rows: nil) } else { try runNow(context) }
    }

    func runCountingChanges(_ context: String) throws -> Int {
        _ = try step(context)
        return changes
    }

    func run(_ context: String, returning rows: @escaping ([Int64]) -> Void) throws {
        if connection.pipelined {
            try send(context: context, reader: nil, rows: rows)
        } else {
            rows(try firstColumnOfEveryRow(context))
        }
    }

    /// The answer of this statement, read by `PostgresConnection.sync`.
    fileprivate func take(_ answer: OpaquePointer?) {
        awaitingAnswer = false
        if let result { pq.clear(result) }
        result = answer
        row = -1
        rows = pq.ntuples(answer)
        changes = pq.cmdTuples(answer).flatMap { Int(String(cString: $0)) } ?? 0
    }

    /// The bound parameters as libpq takes them: integers and text as text,
    /// blobs as binary.
    private func withParameters<T>(_ body: (Int32, [UnsafePointer<CChar>?], [Int32], [Int32]) throws -> T) rethrows -> T {
        var owned: [UnsafeMutablePointer<CChar>?] = []
        defer { owned.forEach { free($0) } }
        var values: [UnsafePointer<CChar>?] = []
        var lengths: [Int32] = []
        var formats: [Int32] = []
        var blobs: [UnsafeMutableRawPointer] = []
        defer { blobs.forEach { free($0) } }
        for p in parameters {
            switch p {
            case .null:
                values.append(nil); lengths.append(0); formats.append(0)
            case .integer(let v):
                let c = strdup(String(v)); owned.append(c)
                values.append(UnsafePointer(c)); lengths.append(0); formats.append(0)
            case .text(let s):
                let c = strdup(s); owned.append(c)
                values.append(UnsafePointer(c)); lengths.append(0); formats.append(0)
            case .bytes(let b):
                let m = malloc(max(b.count, 1))!
                b.withUnsafeBytes { if let base = $0.baseAddress { m.copyMemory(from: base, byteCount: b.count) } }
                blobs.append(m)
                values.append(UnsafePointer(m.assumingMemoryBound(to: CChar.self))); lengths.append(Int32(b.count)); formats.append(1)
            }
        }
        return try body(Int32(parameters.count), values, lengths, formats)
    }

    /// Into the connection's pipeline: a PREPARE first if this connection has
    /// not seen the statement, then the statement with its parameters (libpq
    /// copies them into its buffer at once).
    private func send(context: String, reader: PostgresStatement?, rows: (([Int64]) -> Void)?) throws {
        if preparedGeneration != connection.generation {
            let count = Int32(parameters.count)
            try connection.send(context: "preparing a statement", statement: nil, prepares: self) {
                pq.sendPrepare($0, name, sql, count, nil)
            }
            preparedGeneration = connection.generation
        }
        try withParameters { count, values, lengths, formats in
            try connection.send(context: context, statement: reader, rows: rows) {
                pq.sendQueryPrepared($0, name, count, values, lengths, formats, 1)
            }
        }
    }

    /// Outside a pipeline: runs it and waits (a read may be retried once on
    /// a new connection, see `PostgresConnection.withRetry`).
    private func execute(context: String) throws {
        try withParameters { count, values, lengths, formats in
            for attempt in 0..<2 {
                if preparedGeneration != connection.generation { try connection.prepare(self, parameters: parameters.count) }
                // A write outside a transaction (an audit row) may have been
                // done before the connection broke: not sent twice.
                let r = try connection.withRetry(idempotent: sql.hasPrefix("SELECT")) { c in
                    pq.execPrepared(c, name, count, values, lengths, formats, 1)
                }
                let status = pq.resultStatus(r)
                if status == PGRES_TUPLES_OK || status == PGRES_COMMAND_OK {
                    take(r)
                    return
                }
                // A retry reconnected under us: prepare on the new connection and run again.
                if attempt == 0, preparedGeneration != connection.generation, !connection.isBroken {
                    pq.clear(r)
                    continue
                }
                let e = connection.error(of: r, context: context)
                pq.clear(r)
                throw e
            }
        }
    }

    private func bytes(_ column: Int32) -> UnsafeRawBufferPointer? {
        guard let result, row >= 0, row < rows, pq.getisnull(result, row, column) == 0,
              let p = pq.getvalue(result, row, column) else { return nil }
        return UnsafeRawBufferPointer(start: p, count: Int(pq.getlength(result, row, column)))
    }

    func int64(_ column: Int32) -> Int64 {
        guard let result, row >= 0, row < rows else { return 0 }
        return Self.int64(pq, result, row: row, column: column)
    }

    /// An integer column of a binary result (bool, int2, int4, int8; text
    /// digits otherwise); 0 for NULL.
    static func int64(_ pq: LibPQ, _ result: OpaquePointer?, row: Int32, column: Int32) -> Int64 {
        guard let result, pq.getisnull(result, row, column) == 0, let p = pq.getvalue(result, row, column) else { return 0 }
        let b = UnsafeRawBufferPointer(start: p, count: Int(pq.getlength(result, row, column)))
        switch pq.ftype(result, column) {
        case 16: return b.first.map { Int64($0) } ?? 0                    // bool
        case 21, 23, 20:                                                    // int2, int4, int8
            var v: Int64 = b.count > 0 && b[0] & 0x80 != 0 ? -1 : 0        // sign-extend
            for byte in b { v = (v << 8) | Int64(byte) }
            return v
        default:
            return Int64(String(decoding: b, as: UTF8.self)) ?? 0
        }
    }

    func isNull(_ column: Int32) -> Bool {
        guard let result, row >= 0, row < rows else { return true }
        return pq.getisnull(result, row, column) != 0
    }

    func string(_ column: Int32) -> String? { bytes(column).map { String(decoding: $0, as: UTF8.self) } }

    func blob(_ column: Int32) -> [UInt8] { bytes(column).map { Array($0) } ?? [] }
}

/// A PostgreSQL database named by a URL (`postgresql://USER@HOST:PORT/DB`) or
/// a libpq conninfo (`host=... dbname=...`). The text is kept as given for
/// libpq, and shown only as `displayName`, which never has a password.
public struct PostgresTarget: Sendable, Equatable {
    public let conninfo: String
    /// user@host:port/dbname as libpq reads them from the text (unset parts
    /// left out): what messages and logs show.
    public let displayName: String

    /// Whether `text` names a PostgreSQL database rather than a directory.
    public static func looksLikeDatabase(_ text: String) -> Bool {
        let lower = text.lowercased()
        return lower.hasPrefix("postgresql:") || lower.hasPrefix("postgres:")
            || (!text.hasPrefix("/") && !text.hasPrefix(".") && lower.contains("="))
    }

    public enum Problem: Error, Equatable, CustomStringConvertible {
        case malformed(String)
        case holdsPassword
        case libpqMissing(String)
        public var description: String {
            switch self {
            case .malformed(let m): return "the store's PostgreSQL connection string does not parse: \(m)"
            case .libpqMissing(let m): return m + " (a PostgreSQL store needs Debian's libpq5)"
            case .holdsPassword:
                return "the store's PostgreSQL connection string holds a password, which would show in process listings and shell history; "
                    + "keep it in ~/.pgpass or a PGPASSFILE (mode 0600) instead"
            }
        }
    }

    public init(_ text: String) throws(Problem) {
        let fields = try Self.fields(of: text)
        // The client key's passphrase would show as plainly as a password.
        if !Self.passwords(in: fields).isEmpty { throw .holdsPassword }
        conninfo = text
        var shown = fields["user"].map { $0 + "@" } ?? ""
        shown += fields["host"] ?? fields["hostaddr"] ?? "localhost"
        if let port = fields["port"] { shown += ":" + port }
        shown += "/" + (fields["dbname"] ?? fields["user"] ?? "")
        displayName = "postgresql://" + shown
    }

    /// The passwords (`password`, `sslpassword`) libpq reads in `text`, for
    /// a display that must not show them; nil when it does not parse.
    public static func passwords(in text: String) -> [String]? {
        (try? fields(of: text)).map { passwords(in: $0) }
    }

    private static func passwords(in fields: [String: String]) -> [String] {
        ["password", "sslpassword"].compactMap { fields[$0] }.filter { !$0.isEmpty }
    }

    /// The keywords and values libpq reads in a URL or conninfo.
    private static func fields(of text: String) throws(Problem) -> [String: String] {
        let pq: LibPQ
        do { pq = try LibPQ.get() } catch { throw .libpqMissing(error.description) }
        var message: UnsafeMutablePointer<CChar>?
        guard let options = pq.conninfoParse(text, &message) else {
            let m = message.map { String(cString: $0) } ?? "out of memory"
            if let message { pq.freemem(message) }
            // libpq's message quotes the offending part of the text, which may
            // be a password: only its first clause is kept.
            throw .malformed(String(m.split(separator: "\"").first ?? "invalid syntax").trimmingCharacters(in: " :\n"))
        }
        defer { pq.conninfoFree(options) }
        var fields: [String: String] = [:]
        var o = options
        while let k = o.pointee.keyword {
            if let v = o.pointee.val { fields[String(cString: k)] = String(cString: v) }
            o += 1
        }
        return fields
    }
}

private extension String {
    func trimmingCharacters(in set: String) -> String {
        var s = Substring(self)
        while let f = s.first, set.contains(f) { s.removeFirst() }
        while let l = s.last, set.contains(l) { s.removeLast() }
        return String(s)
    }
}
