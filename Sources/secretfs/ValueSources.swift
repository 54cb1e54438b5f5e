import Glibc
import SecretfsInject
import SecretfsProtocol
import SecretfsResolver
import SecureMemory

/// Values straight from a mounted project's privileged socket.
final class MountSocketSource: ValueSource {
    let client: PrivilegedClient

    init(socketPath: String) throws {
        do { client = try PrivilegedClient(socketPath: socketPath) } catch { throw Failure(socket: error) }
    }

    func values(_ names: [String]) throws -> [String: SecureBytes] {
        do { return try client.values(names).values } catch { throw Failure(socket: error) }
    }

    func names() throws -> [String] {
        do { return try client.list().secrets.map(\.name) } catch { throw Failure(socket: error) }
    }
}

extension Failure {
    init(socket error: ProtocolError) {
        self.init(error.message, hint: error.hint, exit: .socketProblem)
    }
}

func mountSocketPath(_ global: GlobalOptions, _ project: String) -> String {
    RuntimeState(directory: global.runtimeDirectory).socketPath(project)
}

/// The mount's socket, or (with --resolver) the resolver daemon's.
func openValueSource(global: GlobalOptions, project: String, resolver: String?) throws -> ValueSource {
    if let resolver {
        do { return try DaemonValueSource(socketPath: absolute(resolver), project: project) } catch { throw Failure(socket: error) }
    }
    return try MountSocketSource(socketPath: mountSocketPath(global, project))
}

/// The change feed of the project, from its mount's socket or through the
/// resolver daemon: it reconnects by itself, and `handler` sees `.lost` and
/// `.restored` around every outage. The returned feed keeps it running.
func startChangeFeed(global: GlobalOptions, project: String, resolver: String?,
                     handler: @escaping @Sendable (ChangeFeed.Event) -> Bool) throws -> ChangeFeed {
    do {
        if let resolver {
            return try DaemonClient.changeFeed(socketPath: absolute(resolver), project: project, handler: handler)
        }
        return try PrivilegedClient.changeFeed(socketPath: mountSocketPath(global, project), handler: handler)
    } catch { throw Failure(socket: error) }
}

/// One document through the mount's socket (resolved here) or through the
/// resolver daemon (resolved there).
func resolveDocument(_ document: [UInt8], format: InjectionFormat, output: ResolveOutput,
                     global: GlobalOptions, project: String, resolver: String?) throws -> SecureBytes {
    if let resolver {
        return try DaemonClient.resolve(socketPath: absolute(resolver), project: project, document: document,
                                        format: format, output: output)
    }
    return try Resolver.resolve(document, format: format, output: output,
                                source: MountSocketSource(socketPath: mountSocketPath(global, project)))
}
