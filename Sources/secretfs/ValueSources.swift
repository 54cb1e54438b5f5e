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
        return try DaemonValueSource(socketPath: absolute(resolver), project: project)
    }
    return try MountSocketSource(socketPath: mountSocketPath(global, project))
}

/// Calls `onChange` whenever a secret of the project changes. The watch runs
/// on its own thread; the returned object keeps it alive.
@discardableResult
func startWatching(global: GlobalOptions, project: String, resolver: String?,
                   onChange: @escaping @Sendable () -> Void) throws -> AnyObject {
    if let resolver {
        return try DaemonWatch(socketPath: absolute(resolver), project: project, onChange: onChange)
    }
    do {
        return try SecretWatch.start(socketPath: mountSocketPath(global, project)) { event in
            if case .changed = event { onChange() }
        }
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
