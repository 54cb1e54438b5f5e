import Glibc
import SecretfsPOSIX

/// Which kind of secretfs server a socket belongs to. Both speak the same
/// framing; this decides the words of messages and hints, and how large a
/// reply a client accepts.
public enum SocketService: Sendable, Equatable {
    /// A mounted project's privileged socket (`RUNTIME_DIR/PROJECT.sock`).
    case mount
    /// The resolver daemon's socket (`secretfs resolver --listen PATH`).
    case daemon

    /// "the mount" / "the resolver daemon", for messages.
    public var noun: String { self == .mount ? "the mount" : "the resolver daemon" }

    /// Largest reply frame a client accepts from this kind of server.
    public var maxReplyFrame: Int { self == .mount ? Wire.maxResponseFrame : Wire.maxDaemonReplyFrame }
}

/// Everything that can go wrong on a secretfs socket, from either side and
/// for either service: the one error type of the socket layer. Messages name
/// paths, projects, names and numbers; never a value.
public struct ProtocolError: Error, Sendable, CustomStringConvertible, Equatable {
    public enum Kind: Sendable, Equatable {
        /// No socket at the path: the project is not mounted, or no daemon runs there.
        case notListening
        /// A socket file exists but nothing answers (the server died).
        case connectionRefused
        /// The socket file's mode does not let this user connect.
        case permissionDenied
        /// The path does not fit in a Unix socket address.
        case pathTooLong
        /// The process serving the socket runs as a uid this client does not
        /// trust (not root, not ourselves, not the owner of the socket's directory).
        case untrustedServer
        /// The server answered with an ERROR frame.
        case server(WireErrorCode)
        /// The connection closed or broke before a complete reply.
        case connectionClosed
        /// No reply (or no connection) within the timeout.
        case timedOut
        /// The reply did not parse, or was not the expected type.
        case malformedReply
        /// Starting a server: another process already serves the path.
        case addressInUse
        /// Starting a server: something other than a socket is at the path.
        case notASocket
        /// Out of (locked) memory for a frame.
        case outOfMemory
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

    /// The server's code, when the error came in an ERROR frame.
    public var serverCode: WireErrorCode? {
        if case .server(let c) = kind { return c }
        return nil
    }

    /// Whether a fresh connection may succeed where this one failed: the
    /// server closed an idle connection, restarted, or went away for a moment.
    /// Every request but a REDACT stream is idempotent, so clients retry these.
    public var isConnectionLoss: Bool {
        switch kind {
        case .connectionClosed, .notListening, .connectionRefused: return true
        case .server(.timeout): return true   // our idle connection was closed by the server
        default: return false
        }
    }

    /// Why connect(2) to `path` failed, in `service`'s words.
    public static func connectFailure(_ path: String, errno code: Int32, service: SocketService) -> ProtocolError {
        switch code {
        case ENOENT, ENOTDIR:
            if service == .mount {
                // Named, so that a typo in the project is plain to see.
                let project = MountSocket.project(at: path)
                let mounted = MountSocket.projects(in: TrustedDirectory.split(path).directory).map { names in
                    names.isEmpty ? "none is mounted with this runtime directory"
                                  : "mounted with this runtime directory: " + names.map { Wire.printable($0) }.joined(separator: ", ")
                } ?? "`secretfs status` lists the mounted projects"
                return ProtocolError(.notListening, "\(project.map { "project \($0) is" } ?? "the project is") not mounted (no socket at \(path))",
                                     hint: "mount it with `secretfs mount \(project ?? "PROJECT") DIR` (\(mounted)), "
                                         + "or pass the --runtime-dir it was mounted with")
            }
            return ProtocolError(.notListening, "no resolver daemon listens on \(path)",
                                hint: "start one with `secretfs resolver --listen \(path)`, or drop --resolver")
        case ECONNREFUSED:
            return ProtocolError(.connectionRefused, "nothing answers on \(path) (stale socket)",
                                 hint: service == .mount ? "the mount process is gone; unmount and mount the project again"
                                                         : "the resolver daemon is gone; start it again")
        case EACCES, EPERM:
            return ProtocolError(.permissionDenied, "permission denied connecting to \(path)",
                                 hint: service == .mount
                                    ? "the mount allows only its owner by default; mount with --resolver-uid or --resolver-group"
                                    : "the daemon allows only its owner by default; start it with --allow-uid or --allow-group")
        case ENAMETOOLONG:
            return ProtocolError(.pathTooLong, "socket path too long (at most \(SocketIO.maxPathLength) bytes): \(path)",
                                 hint: "use a shorter --runtime-dir")
        case ETIMEDOUT, EAGAIN:
            return ProtocolError(.timedOut, "\(path): \(service.noun) did not accept the connection in time",
                                 hint: "it may be overloaded; retry shortly")
        default:
            return ProtocolError(.system(code), "cannot connect to \(path): \(SocketIO.errorText(code))")
        }
    }

    /// An ERROR frame (`u16 code, text message`) as an error, in `service`'s words.
    public static func fromFrame(_ frame: Frame, path: String, service: SocketService) -> ProtocolError {
        var r = FrameReader(frame)
        guard let code = try? r.u16(), let text = try? r.text() else {
            return ProtocolError(.malformedReply, "\(path): malformed ERROR frame")
        }
        return fromServer(code, text, path: path, service: service)
    }

    /// An ERROR frame's code and text, in `service`'s words.
    static func fromServer(_ code: UInt16, _ text: String, path: String, service: SocketService) -> ProtocolError {
        guard let c = WireErrorCode(rawValue: code) else {
            return ProtocolError(.malformedReply, "\(path): server error \(code): \(Wire.printable(text))")
        }
        let text = Wire.printable(text)
        var hint: String?
        switch (c, service) {
        case (.notAllowed, .mount):
            hint = "the mount's allow-list does not include this user; mount with --resolver-uid or --resolver-group"
        case (.notAllowed, .daemon):
            hint = "the daemon's allow-list does not include this user; start it with --allow-uid or --allow-group"
        case (.busy, _): hint = "too many connections to \(service.noun); retry shortly"
        case (.unsupportedVersion, _): hint = "the client and \(service.noun) are different secretfs versions"
        case (.internalError, .mount): hint = "see the mount's log (RUNTIME_DIR/PROJECT.log)"
        case (.internalError, .daemon), (.mountFailed, _): hint = "see the resolver daemon's log"
        case (.replyTooLarge, _): hint = "ask for fewer names at a time"
        case (.storeUnavailable, _): hint = "the shared store's database is down or unreachable; retry once it is back"
        case (.notMounted, _): hint = "mount the project (secretfs mount PROJECT DIR) with the daemon's --runtime-dir"
        case (.mountRefused, _): hint = "mount the project with --resolver-uid or --resolver-group for the daemon's user"
        default: break
        }
        let prefix = service == .mount ? "\(path): " : "resolver daemon: "
        return ProtocolError(.server(c), "\(prefix)\(text) (\(c))", hint: hint)
    }
}
