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
        switch code {
        case ENOENT, ENOTDIR:
            return ProtocolError(.notMounted, "project not mounted (tried \(path))",
                                 hint: "mount it with `secretfs mount PROJECT DIR`, or pass the right --runtime-dir")
        case ECONNREFUSED:
            return ProtocolError(.connectionRefused, "nothing answers on \(path) (stale socket)",
                                 hint: "the mount process is gone; unmount and mount the project again")
        case EACCES, EPERM:
            return ProtocolError(.permissionDenied, "permission denied connecting to \(path)",
                                 hint: "the mount allows only its owner by default; mount with --resolver-uid or --resolver-group")
        case ENAMETOOLONG:
            return ProtocolError(.pathTooLong, "socket path too long (at most \(SocketIO.maxPathLength) bytes): \(path)",
                                 hint: "use a shorter --runtime-dir")
        default:
            return ProtocolError(.system(code), "cannot connect to \(path): \(SocketIO.errorText(code))")
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
