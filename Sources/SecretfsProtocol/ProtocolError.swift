import Glibc

/// Everything that can go wrong on the privileged socket, from either side.
/// Messages name paths, names and numbers; never a value.
public struct ProtocolError: Error, Sendable, CustomStringConvertible, Equatable {
    public enum Kind: Sendable, Equatable {
        /// No socket at the path: the project is not mounted.
        case notMounted
        /// A socket file exists but nothing answers (the mount process died).
        case connectionRefused
        /// The socket file's mode does not let this user connect.
        case permissionDenied
        /// The path does not fit in a Unix socket address.
        case pathTooLong
        /// The server answered with an ERROR frame.
        case server(WireErrorCode)
        /// The connection closed or broke before a complete reply.
        case connectionClosed
        /// No reply within the timeout.
        case timedOut
        /// The reply did not parse, or was not the expected type.
        case malformedReply
        /// The server (start): another process already serves the path.
        case addressInUse
        /// The server (start): something other than a socket is at the path.
        case notASocket
        /// Any other system call failure.
        case system(Int32)
    }

    public var kind: Kind
    public var message: String
    public var hint: String?

    public init(_ kind: Kind, _ message: String, hint: String? = nil) {
        self.kind = kind
        self.message = message
        self.hint = hint
    }

    public var description: String { message }

    /// The server's numeric code, when the error came in an ERROR frame.
    public var serverCode: WireErrorCode? {
        if case .server(let c) = kind { return c }
        return nil
    }

    static func connectFailure(_ path: String, errno code: Int32) -> ProtocolError {
        let failure = ConnectFailure(path: path, errno: code)
        switch failure.reason {
        case .absent:
            return ProtocolError(.notMounted, "project not mounted (tried \(path))",
                                 hint: "mount it with `secretfs mount PROJECT DIR`, or pass the right --runtime-dir")
        case .refused:
            return ProtocolError(.connectionRefused, failure.message,
                                 hint: "the mount process is gone; unmount and mount the project again")
        case .denied:
            return ProtocolError(.permissionDenied, failure.message,
                                 hint: "the mount allows only its owner by default; mount with --resolver-uid or --resolver-group")
        case .pathTooLong:
            return ProtocolError(.pathTooLong, failure.message, hint: "use a shorter --runtime-dir")
        case .other(let e):
            return ProtocolError(.system(e), failure.message)
        }
    }

    static func fromServer(_ code: UInt16, _ text: String, path: String) -> ProtocolError {
        guard let c = WireErrorCode(rawValue: code) else {
            return ProtocolError(.malformedReply, "\(path): server error \(code): \(text)")
        }
        var hint: String?
        switch c {
        case .notAllowed:
            hint = "the mount's allow-list does not include this user; mount with --resolver-uid or --resolver-group"
        case .busy: hint = "too many connections to the mount; retry shortly"
        case .unsupportedVersion: hint = "the client and the mount are different secretfs versions"
        case .internalError: hint = "see the mount's log (RUNTIME_DIR/PROJECT.log)"
        case .replyTooLarge: hint = "ask for fewer names at a time"
        default: break
        }
        return ProtocolError(.server(c), "\(path): \(text) (\(c))", hint: hint)
    }
}

/// Why connect(2) to a Unix socket failed, sorted the way both clients (the
/// mount's and the resolver daemon's) report it, with the message they
/// share. Each client names what is missing when nothing is at the path
/// (`absent`), and gives its own error kinds and hints.
package struct ConnectFailure {
    package enum Reason: Equatable {
        /// No socket at the path (ENOENT, ENOTDIR).
        case absent
        /// A socket file, but nothing answers (ECONNREFUSED).
        case refused
        /// The socket file's mode does not let this user connect (EACCES, EPERM).
        case denied
        /// The path does not fit in a Unix socket address (ENAMETOOLONG).
        case pathTooLong
        case other(Int32)
    }

    package let reason: Reason
    /// The message for every reason but `absent` (empty for `absent`).
    package let message: String

    package init(path: String, errno code: Int32) {
        switch code {
        case ENOENT, ENOTDIR:
            reason = .absent
            message = ""
        case ECONNREFUSED:
            reason = .refused
            message = "nothing answers on \(path) (stale socket)"
        case EACCES, EPERM:
            reason = .denied
            message = "permission denied connecting to \(path)"
        case ENAMETOOLONG:
            reason = .pathTooLong
            message = "socket path too long (at most \(SocketIO.maxPathLength) bytes): \(path)"
        default:
            reason = .other(code)
            message = "cannot connect to \(path): \(SocketIO.errorText(code))"
        }
    }
}
