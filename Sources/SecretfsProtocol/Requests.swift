/// A request read from a mount's privileged socket: what the server acts on,
/// parsed apart from the acting, so that every byte a peer can send goes
/// through this one function (and its fuzz harness, Fuzz/Socket).
public enum MountRequest: Equatable, Sendable {
    case list
    /// Distinct valid names, in the order asked.
    case get([String])
    case watch

    /// Why a frame is not a request the server serves: the ERROR to send, and
    /// whether the connection ends after it.
    public struct Refusal: Error, Equatable, Sendable {
        public var code: WireErrorCode
        public var message: String
        public var closes: Bool
    }

    public static func parse(_ frame: Frame, maxNamesPerGet: Int = Wire.maxNamesPerGet) throws(Refusal) -> MountRequest {
        guard frame.version == Wire.version else {
            throw Refusal(code: .unsupportedVersion,
                          message: "protocol version \(frame.version) is not supported (this mount speaks \(Wire.version))",
                          closes: true)
        }
        switch Wire.MessageType(rawValue: frame.type) {
        case .list:
            guard frame.bodyCount == 0 else {
                throw Refusal(code: .malformed, message: "LIST has no body (\(frame.bodyCount) bytes sent)", closes: false)
            }
            return .list
        case .watch:
            guard frame.bodyCount == 0 else {
                throw Refusal(code: .malformed, message: "WATCH has no body (\(frame.bodyCount) bytes sent)", closes: true)
            }
            return .watch
        case .get:
            var r = FrameReader(frame)
            var names: [String] = []
            func field<T>(_ read: (inout FrameReader) throws(ParseError) -> T) throws(Refusal) -> T {
                do throws(ParseError) { return try read(&r) } catch {
                    throw Refusal(code: .malformed, message: "GET: \(error.reason)", closes: false)
                }
            }
            let count = Int(try field { r throws(ParseError) in try r.u16() })
            guard count <= maxNamesPerGet else {
                throw Refusal(code: .tooManyNames, message: "GET asks for \(count) names (limit \(maxNamesPerGet))", closes: false)
            }
            let (distinct, invalid) = try field { r throws(ParseError) in try r.distinctNames(count) }
            names = distinct
            try field { r throws(ParseError) in try r.expectEnd() }
            if let invalid {
                throw Refusal(code: .invalidName, message: "name #\(invalid) is not a valid secret name", closes: false)
            }
            return .get(names)
        default:
            throw Refusal(code: .unknownType, message: "message type 0x\(String(frame.type, radix: 16)) is not a request", closes: false)
        }
    }
}
