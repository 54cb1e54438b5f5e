// Shared by the socket harnesses: the input is what a peer writes on the
// connection. It goes through a pipe into the same `SocketIO.readFrame`
// the servers and clients use, and every frame that comes out is handed to
// `each`. Checks, besides not crashing: a frame never exceeds the limit it
// was read with, and the reader ends (closed or refused), never loops.

import Glibc
import SecretfsPOSIX
import SecretfsProtocol

func require(_ condition: Bool, _ message: @autoclosure () -> String) {
    if !condition {
        fputs("invariant broken: \(message())\n", stderr)
        abort()
    }
}

/// Feeds `bytes` through a pipe to readFrame, calling `each` per frame.
func frames(_ bytes: UnsafeRawBufferPointer, maxLength: Int, _ each: (Frame) -> Void) {
    var fds: [Int32] = [0, 0]
    require(pipe(&fds) == 0, "pipe")
    defer { close(fds[0]) }
    // F_SETPIPE_SZ (1031): room for the largest input, so the write never blocks.
    _ = fcntl(fds[1], 1031, 1 << 20)
    var off = 0
    while off < bytes.count {
        let n = write(fds[1], bytes.baseAddress! + off, bytes.count - off)
        require(n > 0, "pipe write")
        off += n
    }
    close(fds[1])
    var count = 0
    while true {
        switch SocketIO.readFrame(fds[0], maxLength: maxLength, deadline: monotonicSeconds() + 5) {
        case .frame(let f):
            require(f.storage.count <= maxLength, "a frame of \(f.storage.count) bytes over the limit \(maxLength)")
            count += 1
            require(count <= bytes.count, "more frames than input bytes")
            each(f)
        case .closed, .truncated, .badLength:
            return
        case .timedOut:
            require(false, "readFrame timed out on a closed pipe")
        case .failed(let e):
            require(false, "readFrame failed with errno \(e)")
        }
    }
}
