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
    /// Rows changed by the last INSERT, UPDATE or DELETE.
    var changes: Int { get }
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
    /// Steps once; true when a row is available.
    func step(_ context: String) throws -> Bool
    func int64(_ column: Int32) -> Int64
    func isNull(_ column: Int32) -> Bool
    func string(_ column: Int32) -> String?
    func blob(_ column: Int32) -> [UInt8]
}

extension DatabaseStatement {
    /// Steps to completion, for statements that return no rows.
    func run(_ context: String) throws {
        while try step(context) {}
    }
}
