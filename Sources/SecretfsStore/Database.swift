/// The one interface between the store's logic and the engine that keeps its
/// rows: the embedded SQLite file (`SQLiteConnection`) or a PostgreSQL
/// database shared by many hosts (`PostgresConnection`). Everything above
/// (`Store`, `ProjectVault`, the lifecycle, the filesystem, the socket, the
/// resolver, the CLI) talks to a store through this and never learns which
/// engine it is.
///
/// The SQL the store writes is the subset both engines read the same way:
/// `?` placeholders, `INSERT ... ON CONFLICT DO UPDATE`, `RETURNING`, integer
/// nanosecond times, BLOB (BYTEA) for ciphertexts. What differs (the DDL's
/// column types, how the schema version is recorded, how writers are
/// serialised, how other processes' changes are noticed) lives in the two
/// implementations and in `StoreBackend`.
///
/// Not thread-safe by itself: the `Store` serialises every use under its lock.
/// Only ciphertexts, wrapped keys, names and metadata are ever bound;
/// plaintext values never reach a database.
protocol DatabaseConnection: AnyObject {
    /// A prepared statement for `sql`, cached by its text and reset before reuse.
    func statement(_ sql: String) throws -> DatabaseStatement
    /// Runs SQL text that takes no parameters and returns no rows.
    func execute(_ sql: String, context: String) throws
    /// Runs `body` in a transaction that holds the store's write lock from its
    /// first statement (SQLite: BEGIN IMMEDIATE; PostgreSQL: an advisory
    /// lock), so that writers of every process and host run one at a time:
    /// committed when `body` returns, rolled back when it throws.
    func transaction<T>(_ context: String, _ body: () throws -> T) throws -> T
    /// Runs `body`, whose statements only read, on one snapshot of the
    /// database. SQLite: one deferred read transaction around them instead of
    /// one per statement (each of which takes and drops the WAL read lock, a
    /// pair of fcntl calls, and looks at the WAL index again): a GET of 500
    /// names spent most of its time there. PostgreSQL: `body` as is (a
    /// transaction would not save a round trip). Commits nothing, so the
    /// `beforeCommit`/`afterTransaction` hooks are not called.
    func readSnapshot<T>(_ context: String, _ body: () throws -> T) throws -> T
    /// Gives back the memory of cached pages no statement holds. Called after
    /// a read that passed over a whole table (a mount's listing): its pages
    /// would otherwise stay cached for nothing, the names being in memory.
    /// SQLite: `sqlite3_db_release_memory`; PostgreSQL caches no pages here.
    func releaseCachedPages()
    /// Called inside every write transaction just before its COMMIT (the
    /// PostgreSQL backend writes the change log and its NOTIFY there).
    var beforeCommit: (() throws -> Void)? { get set }
    /// Called with the transaction's outcome once it is known: true after
    /// COMMIT returned, false after a rollback or a COMMIT whose outcome is
    /// unknown (the connection broke under it).
    var afterTransaction: ((Bool) -> Void)? { get set }
}

protocol DatabaseStatement: AnyObject {
    func reset()
    @discardableResult func bind(_ index: Int32, _ value: Int64) -> Self
    @discardableResult func bind(_ index: Int32, _ value: String?) -> Self
    @discardableResult func bind(_ index: Int32, blob: [UInt8]) -> Self
    /// Steps once; true when a row is available. Always waits for the
    /// statement's outcome (and for that of every statement sent before it).
    func step(_ context: String) throws -> Bool
    /// Sends the statement now; the next `step` on it reads its answer. Inside
    /// a write transaction on a shared store, reads that do not depend on
    /// each other so share one round trip (the second's `step` waits for
    /// both). Elsewhere it does nothing and `step` runs the statement.
    func prefetch(_ context: String) throws
    /// Runs a statement whose rows, if any, nobody reads. Inside a write
    /// transaction on a shared store it is sent without waiting for its
    /// outcome (libpq's pipeline mode): a round trip to the server costs more
    /// than most of the store's statements take to run there. Its failure is
    /// then thrown by the transaction's next `step`, `runCountingChanges` or
    /// COMMIT, which fail the whole transaction as it would have. So nothing
    /// may catch an error of `run` inside a transaction and go on.
    func run(_ context: String) throws
    /// Runs a statement that returns no rows and returns how many rows it
    /// inserted, updated or deleted. Always waits for the outcome.
    func runCountingChanges(_ context: String) throws -> Int
    /// As `run`, then hands the first column of every row it returned (a
    /// `RETURNING` list) to `rows`: at once on SQLite, when the transaction
    /// next waits on a shared store (at the latest at its COMMIT, before
    /// `afterTransaction`). Not called if the statement fails.
    func run(_ context: String, returning rows: @escaping ([Int64]) -> Void) throws
    func int64(_ column: Int32) -> Int64
    func isNull(_ column: Int32) -> Bool
    func string(_ column: Int32) -> String?
    func blob(_ column: Int32) -> [UInt8]
}

extension DatabaseStatement {
    /// Steps to completion (what `run` is for an engine that never defers).
    func runNow(_ context: String) throws {
        while try step(context) {}
    }

    /// The first column of every row, stepped to completion.
    func firstColumnOfEveryRow(_ context: String) throws -> [Int64] {
        var out: [Int64] = []
        while try step(context) { out.append(int64(0)) }
        return out
    }
}
