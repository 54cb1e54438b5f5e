import Glibc
@testable import SecretfsProtocol
import SecretfsPOSIX
import SecureMemory
import Testing

/// `FrameReceiver`: a connection's one reused locked buffer for request
/// frames. What must hold: the same frames and results as
/// `SocketIO.readFrame`, no frame's bytes visible once the next frame is
/// asked for, growth for a large frame within the limit, and the buffer given
/// back after it.
struct FrameReceiverTests {
    /// A connected pair: `client` writes, the receiver reads `server`.
    final class Pair {
        let client: Int32
        let server: Int32
        init() {
            var fds: [Int32] = [0, 0]
            precondition(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
            client = fds[0]
            server = fds[1]
            // Room for the largest frame below, so a write never blocks.
            var size: Int32 = 4 << 20
            setsockopt(client, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(4))
            setsockopt(server, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(4))
        }
        deinit { close(client); close(server) }
        func send(_ bytes: [UInt8]) {
            var off = 0
            while off < bytes.count {
                let n = bytes[off...].withUnsafeBytes { write(client, $0.baseAddress!, $0.count) }
                precondition(n > 0)
                off += n
            }
        }
    }

    static func frame(_ type: UInt8, _ body: [UInt8]) -> [UInt8] {
        let n = UInt32(2 + body.count)
        return [UInt8(n >> 24), UInt8((n >> 16) & 0xff), UInt8((n >> 8) & 0xff), UInt8(n & 0xff), 1, type] + body
    }

    static func body(_ f: Frame) -> [UInt8] { f.storage.withUnsafeBytes { Array($0[Wire.headerSize...]) } }

    /// The whole buffer behind a frame, past its count too.
    static func capacityBytes(_ b: SecureBytes) -> [UInt8] { b.withUnsafeMutableCapacity { Array($0) } }

    static func next(_ r: FrameReceiver, max: Int = 1 << 20) -> SocketIO.ReadResult {
        r.next(maxLength: max, deadline: monotonicSeconds() + 5)
    }

    @Test func aSecondFrameCannotSeeTheFirstsBytes() throws {
        let p = Pair()
        let r = FrameReceiver(fd: p.server)
        let secret = Array("first-frame-secret-".utf8) + [UInt8](repeating: 0x53, count: 1500)
        p.send(Self.frame(0x16, secret))
        guard case .frame(let first) = Self.next(r) else { Issue.record("no first frame"); return }
        #expect(first.type == 0x16 && Self.body(first) == secret)

        p.send(Self.frame(0x17, Array("short".utf8)))
        guard case .frame(let second) = Self.next(r) else { Issue.record("no second frame"); return }
        #expect(second.type == 0x17 && Self.body(second) == Array("short".utf8))
        // The same locked buffer, reused: no byte of the first frame is left
        // in it, before or past the second frame's end.
        #expect(second.storage === first.storage)
        let all = Self.capacityBytes(second.storage)
        #expect(!contains(all, Array("first-frame-secret".utf8)))
        #expect(all[second.storage.count...].allSatisfy { $0 == 0 })

        // release() (before waiting for the client again) wipes the frame.
        r.release()
        #expect(Self.capacityBytes(second.storage).allSatisfy { $0 == 0 })
    }

    @Test func framesSentTogetherComeOutOneByOne() throws {
        let p = Pair()
        let r = FrameReceiver(fd: p.server)
        let bodies: [[UInt8]] = [Array("one".utf8), [], Array(repeating: 7, count: 3000), Array("four".utf8)]
        p.send(bodies.flatMap { Self.frame(0x11, $0) })
        for b in bodies {
            guard case .frame(let f) = Self.next(r) else { Issue.record("missing frame"); return }
            #expect(Self.body(f) == b)
            // Bytes read ahead are beyond the frame, not in it.
            #expect(f.storage.count == Wire.headerSize + b.count)
        }
        #expect(!r.hasBufferedInput)
        close(p.client)
        if case .closed = Self.next(r) {} else { Issue.record("expected the end of the stream") }
    }

    @Test func aLargeFrameGrowsTheBufferWithinTheLimitAndGivesItBack() throws {
        let p = Pair()
        let r = FrameReceiver(fd: p.server, retainedCapacity: 64 << 10)
        p.send(Self.frame(0x11, Array("small".utf8)))
        guard case .frame(let small) = Self.next(r) else { Issue.record("no small frame"); return }
        let smallBuffer = small.storage
        #expect(smallBuffer.capacity < 64 << 10)

        var big = [UInt8](repeating: 0x42, count: 300 << 10)
        big[0] = 0x01
        big[big.count - 1] = 0x02
        p.send(Self.frame(0x16, big))
        guard case .frame(let large) = Self.next(r, max: 1 << 20) else { Issue.record("no large frame"); return }
        #expect(Self.body(large) == big)
        #expect(large.storage.capacity >= big.count + Wire.headerSize)
        // The small buffer was wiped when it was replaced.
        #expect(Self.capacityBytes(smallBuffer).allSatisfy { $0 == 0 })

        // After the large frame, the large buffer is wiped and given back.
        let largeBuffer = large.storage
        p.send(Self.frame(0x11, Array("again".utf8)))
        guard case .frame(let after) = Self.next(r) else { Issue.record("no frame after the large one"); return }
        #expect(Self.body(after) == Array("again".utf8))
        #expect(after.storage !== largeBuffer)
        #expect(after.storage.capacity <= 64 << 10)
        #expect(Self.capacityBytes(largeBuffer).allSatisfy { $0 == 0 })
    }

    @Test func theSameResultsAsReadFrame() throws {
        // Over the limit: refused before any body byte is read.
        do {
            let p = Pair()
            let r = FrameReceiver(fd: p.server)
            p.send(Self.frame(0x11, [UInt8](repeating: 1, count: 100)))
            guard case .badLength(let n) = Self.next(r, max: 50) else { Issue.record("expected badLength"); return }
            #expect(n == 102)
        }
        // A length of 1 (no room for version and type).
        do {
            let p = Pair()
            let r = FrameReceiver(fd: p.server)
            p.send([0, 0, 0, 1, 1])
            guard case .badLength(1) = Self.next(r) else { Issue.record("expected badLength(1)"); return }
        }
        // Closed inside the length prefix, and inside the body: truncated.
        for cut in [[0, 0] as [UInt8], [0, 0, 0, 9, 1, 0x11, 1]] {
            let p = Pair()
            let r = FrameReceiver(fd: p.server)
            p.send(cut)
            shutdown(p.client, Int32(SHUT_WR))
            guard case .truncated = Self.next(r) else { Issue.record("expected truncated for \(cut)"); return }
        }
        // Nothing arrives before the deadline.
        do {
            let p = Pair()
            let r = FrameReceiver(fd: p.server)
            p.send([0, 0])
            guard case .timedOut = r.next(maxLength: 1 << 20, deadline: monotonicSeconds() + 0.05) else {
                Issue.record("expected timedOut"); return
            }
        }
    }

    @Test func waitsInTheReadStillEndAtTheDeadline() throws {
        // Deadlines long enough for the receiver to wait in read(2) with
        // SO_RCVTIMEO instead of poll(2): nothing arrives, each wait still
        // ends as timedOut (not as an error or the end), and a frame sent
        // afterwards is read whole.
        let p = Pair()
        let r = FrameReceiver(fd: p.server)
        for _ in 0..<2 {
            guard case .timedOut = r.next(maxLength: 1 << 20, deadline: monotonicSeconds() + 0.3) else {
                Issue.record("expected timedOut"); return
            }
        }
        var tv = timeval()
        var len = socklen_t(MemoryLayout<timeval>.size)
        #expect(getsockopt(p.server, SOL_SOCKET, SO_RCVTIMEO, &tv, &len) == 0)
        #expect(tv.tv_sec > 0 || tv.tv_usec > 0, "the receive timeout was set")
        p.send(Self.frame(0x11, Array("late".utf8)))
        guard case .frame(let f) = r.next(maxLength: 1 << 20, deadline: monotonicSeconds() + 0.3) else {
            Issue.record("no frame"); return
        }
        #expect(Self.body(f) == Array("late".utf8))
        // No deadline: waits in read with no timeout; the peer closing ends it.
        shutdown(p.client, Int32(SHUT_WR))
        if case .closed = r.next(maxLength: 1 << 20, deadline: nil) {} else { Issue.record("expected closed") }
    }
}

/// SecretfsUTF8.isValid takes ASCII eight bytes at a time before decoding:
/// the verdict must be the decoder's for every position of a non-ASCII or
/// invalid sequence (inside the first word, across a word boundary, in the tail).
@Test func utf8ValidationAgreesWithTheDecoderAtEveryOffset() {
    func decoderSays(_ bytes: [UInt8]) -> Bool {
        var it = bytes.makeIterator()
        var d = UTF8()
        while true {
            switch d.decode(&it) {
            case .scalarValue: continue
            case .emptyInput: return true
            case .error: return false
            }
        }
    }
    let inserts: [[UInt8]] = [[0xC3, 0xA9], [0xE2, 0x80, 0xA8], [0xF0, 0x9F, 0x98, 0x80], [0xC3], [0x80], [0xFF],
                              [0xED, 0xA0, 0x80], [0xE2, 0x80]]
    for length in [0, 1, 7, 8, 9, 16, 23] {
        let ascii = [UInt8](repeating: 0x61, count: length)
        #expect(ascii.withUnsafeBytes(SecretfsUTF8.isValid))
        for insert in inserts {
            for at in 0...length {
                let bytes = Array(ascii[..<at]) + insert + Array(ascii[at...])
                #expect(bytes.withUnsafeBytes(SecretfsUTF8.isValid) == decoderSays(bytes), "\(bytes)")
            }
        }
    }
}
