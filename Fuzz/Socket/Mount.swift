// libFuzzer harness: bytes a peer sends on a mount's privileged socket, as
// the server reads them (`MountRequest.parse`), and bytes a server sends, as
// the client reads them (LIST_REPLY, GET_REPLY, CHANGED, ERROR). Checks,
// besides not crashing: every name a parser accepts is a valid name, and a
// GET request's names are distinct.

import SecretfsNames
import SecretfsProtocol

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzMountFrames(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let input = UnsafeRawBufferPointer(start: data, count: size)
    // As the server: requests.
    frames(input, maxLength: Wire.maxRequestFrame) { frame in
        if case .get(let names)? = try? MountRequest.parse(frame) {
            require(names.allSatisfy(Names.isValid), "GET accepted an invalid name")
            require(Set(names).count == names.count, "GET names are not distinct")
        }
    }
    // As the client: replies.
    frames(input, maxLength: SocketService.mount.maxReplyFrame) { frame in
        if let listing = try? PrivilegedClient.parseListing(frame) {
            require(listing.secrets.allSatisfy { Names.isValid($0.name) }, "LIST accepted an invalid name")
        }
        var values = SecretValues(projectVersion: .max, sequence: .max, values: [:], missing: [])
        let asked: Set<String> = ["A", "B", "API_TOKEN"]
        if (try? PrivilegedClient.parseValues(frame, asked: asked, into: &values)) != nil {
            require(Set(values.values.keys).isSubset(of: asked) && Set(values.missing).isSubset(of: asked),
                    "GET_REPLY accepted a name that was not asked for")
        }
        values.wipe()
        if let change = try? PrivilegedClient.changeEvent(frame) {
            require(change.names.allSatisfy(Names.isValid), "CHANGED accepted an invalid name")
        }
        _ = ProtocolError.fromFrame(frame, path: "/fuzz.sock", service: .mount)
    }
    return 0
}
