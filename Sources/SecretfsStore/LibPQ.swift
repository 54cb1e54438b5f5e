import CPostgres
import Glibc

/// libpq, loaded when a process first uses a shared store (dlopen), not
/// linked. libpq pulls in OpenSSL, GnuTLS, GSSAPI/Kerberos and LDAP, some
/// twenty libraries in all, and mapping and relocating them was most of a
/// process start: every `secretfs` command and every mount of an embedded
/// store paid it without ever talking to PostgreSQL (issue 11, goal 3). The
/// header (CPostgres) still gives the types; the functions come from here,
/// one pointer each, named as in libpq without the `PQ` prefix.
struct LibPQ: @unchecked Sendable {
    // @unchecked: immutable function pointers, set once.
    typealias Conn = OpaquePointer
    typealias Result = OpaquePointer
    typealias CString = UnsafePointer<CChar>
    typealias Options = UnsafeMutablePointer<PQconninfoOption>

    let connectdbParams: @convention(c) (UnsafePointer<CString?>?, UnsafePointer<CString?>?, Int32) -> Conn?
    let status: @convention(c) (Conn?) -> ConnStatusType
    let errorMessage: @convention(c) (Conn?) -> UnsafeMutablePointer<CChar>?
    let finish: @convention(c) (Conn?) -> Void
    let setNoticeProcessor: @convention(c) (Conn?, PQnoticeProcessor?, UnsafeMutableRawPointer?) -> PQnoticeProcessor?
    let exec: @convention(c) (Conn?, CString?) -> Result?
    let resultStatus: @convention(c) (Result?) -> ExecStatusType
    let clear: @convention(c) (Result?) -> Void
    let resultErrorField: @convention(c) (Result?, Int32) -> UnsafeMutablePointer<CChar>?
    let prepare: @convention(c) (Conn?, CString?, CString?, Int32, UnsafePointer<Oid>?) -> Result?
    let execPrepared: @convention(c) (Conn?, CString?, Int32, UnsafePointer<CString?>?, UnsafePointer<Int32>?,
                                      UnsafePointer<Int32>?, Int32) -> Result?
    let ntuples: @convention(c) (Result?) -> Int32
    let cmdTuples: @convention(c) (Result?) -> UnsafeMutablePointer<CChar>?
    let getisnull: @convention(c) (Result?, Int32, Int32) -> Int32
    let getvalue: @convention(c) (Result?, Int32, Int32) -> UnsafeMutablePointer<CChar>?
    let getlength: @convention(c) (Result?, Int32, Int32) -> Int32
    let ftype: @convention(c) (Result?, Int32) -> Oid
    let sslInUse: @convention(c) (Conn?) -> Int32
    let host: @convention(c) (Conn?) -> UnsafeMutablePointer<CChar>?
    let conninfo: @convention(c) (Conn?) -> Options?
    let conninfoParse: @convention(c) (CString?, UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Options?
    let conninfoFree: @convention(c) (Options?) -> Void
    let freemem: @convention(c) (UnsafeMutableRawPointer?) -> Void
    let socket: @convention(c) (Conn?) -> Int32
    let consumeInput: @convention(c) (Conn?) -> Int32
    let notifies: @convention(c) (Conn?) -> UnsafeMutablePointer<PGnotify>?
    // Pipeline mode (libpq 14+): a write transaction's statements go out
    // without waiting for each one's answer (PostgresConnection.sync).
    let enterPipelineMode: @convention(c) (Conn?) -> Int32
    let exitPipelineMode: @convention(c) (Conn?) -> Int32
    let pipelineSync: @convention(c) (Conn?) -> Int32
    let sendPrepare: @convention(c) (Conn?, CString?, CString?, Int32, UnsafePointer<Oid>?) -> Int32
    let sendQueryPrepared: @convention(c) (Conn?, CString?, Int32, UnsafePointer<CString?>?, UnsafePointer<Int32>?,
                                           UnsafePointer<Int32>?, Int32) -> Int32
    let sendQueryParams: @convention(c) (Conn?, CString?, Int32, UnsafePointer<Oid>?, UnsafePointer<CString?>?,
                                         UnsafePointer<Int32>?, UnsafePointer<Int32>?, Int32) -> Int32
    let getResult: @convention(c) (Conn?) -> Result?

    /// The library's soname in Debian's libpq5 (what libpq-dev links against).
    static let soname = "libpq.so.5"

    private static let loaded: Swift.Result<LibPQ, StoreError> = {
        guard let handle = dlopen(soname, RTLD_NOW | RTLD_LOCAL) else {
            let why = dlerror().map { String(cString: $0) } ?? "not found"
            return .failure(.libraryMissing(soname, why))
        }
        func symbol<T>(_ name: String) throws(StoreError) -> T {
            guard let p = dlsym(handle, name) else { throw .libraryMissing(soname, "it has no \(name)") }
            return unsafeBitCast(p, to: T.self)
        }
        do throws(StoreError) {
            return .success(LibPQ(
                connectdbParams: try symbol("PQconnectdbParams"), status: try symbol("PQstatus"),
                errorMessage: try symbol("PQerrorMessage"), finish: try symbol("PQfinish"),
                setNoticeProcessor: try symbol("PQsetNoticeProcessor"), exec: try symbol("PQexec"),
                resultStatus: try symbol("PQresultStatus"), clear: try symbol("PQclear"),
                resultErrorField: try symbol("PQresultErrorField"), prepare: try symbol("PQprepare"),
                execPrepared: try symbol("PQexecPrepared"), ntuples: try symbol("PQntuples"),
                cmdTuples: try symbol("PQcmdTuples"), getisnull: try symbol("PQgetisnull"),
                getvalue: try symbol("PQgetvalue"), getlength: try symbol("PQgetlength"), ftype: try symbol("PQftype"),
                sslInUse: try symbol("PQsslInUse"), host: try symbol("PQhost"), conninfo: try symbol("PQconninfo"),
                conninfoParse: try symbol("PQconninfoParse"), conninfoFree: try symbol("PQconninfoFree"),
                freemem: try symbol("PQfreemem"), socket: try symbol("PQsocket"),
                consumeInput: try symbol("PQconsumeInput"), notifies: try symbol("PQnotifies"),
                enterPipelineMode: try symbol("PQenterPipelineMode"), exitPipelineMode: try symbol("PQexitPipelineMode"),
                pipelineSync: try symbol("PQpipelineSync"), sendPrepare: try symbol("PQsendPrepare"),
                sendQueryPrepared: try symbol("PQsendQueryPrepared"), sendQueryParams: try symbol("PQsendQueryParams"),
                getResult: try symbol("PQgetResult")))
        } catch {
            return .failure(error)
        }
    }()

    /// libpq, loaded on the first call; a clear error when it is not installed.
    static func get() throws(StoreError) -> LibPQ { try loaded.get() }
}
