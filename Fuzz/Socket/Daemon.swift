// libFuzzer harness: bytes a client sends on the resolver daemon's socket,
// as the daemon reads them (`DaemonRequest.parse`), and the daemon's
// PROBLEMS and ERROR replies as a client reads them. Checks, besides not
// crashing: every project and name a parser accepts is a valid name, and a
// RESOLVE's document is exactly the bytes the frame carried after its fields.

import SecretfsNames
import SecretfsProtocol
import SecretfsResolver

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzDaemonFrames(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let input = UnsafeRawBufferPointer(start: data, count: size)
    frames(input, maxLength: DaemonWire.maxRequestFrame) { frame in
        guard let request = try? DaemonRequest.parse(frame) else { return }
        switch request {
        case .resolve(let project, _, _, let document):
            require(Names.isValid(project), "RESOLVE accepted an invalid project")
            require(document.count <= frame.bodyCount, "RESOLVE's document is longer than its frame")
        case .values(let project, let names):
            require(Names.isValid(project) && names.allSatisfy(Names.isValid), "VALUES accepted an invalid name")
            require(Set(names).count == names.count, "VALUES names are not distinct")
        case .names(let project), .watch(let project):
            require(Names.isValid(project), "accepted an invalid project")
        case .redact(let project, let minimum, let mask):
            require(Names.isValid(project) && minimum >= 1 && !mask.isEmpty && mask.utf8.count <= DaemonWire.maxMask,
                    "REDACT accepted an invalid request")
        case .data, .end:
            break
        }
    }
    frames(input, maxLength: SocketService.daemon.maxReplyFrame) { frame in
        _ = try? DaemonWire.parseProblems(frame)
        _ = ProtocolError.fromFrame(frame, path: "/fuzz.sock", service: .daemon)
    }
    return 0
}
