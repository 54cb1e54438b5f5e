import Glibc
import SecretfsPOSIX
import Testing

/// The store watcher's wait between polls (an unmount wakes it, instead of
/// waiting out the rest of a sleep). None of these measures time: a wait
/// that is not woken returns false, after the 30 s it was given.
struct WakeupTests {
    @Test func aWakeEndsTheWaitUnderWayAndEveryLaterOne() throws {
        let wakeup = try #require(Wakeup())
        var thread = pthread_t()
        let box = Unmanaged.passRetained(wakeup).toOpaque()
        #expect(pthread_create(&thread, nil, { p in
            let w = Unmanaged<Wakeup>.fromOpaque(p!).takeRetainedValue()
            usleep(50_000)   // very likely after the wait below began; either order must work
            w.wake()
            return nil
        }, box) == 0)
        #expect(wakeup.sleep(30))
        pthread_join(thread, nil)
        #expect(wakeup.sleep(30))   // still woken: a stop is for good
    }

    @Test func aWaitNotWokenEndsWhenItsTimeIsUp() throws {
        let wakeup = try #require(Wakeup())
        #expect(!wakeup.sleep(0.01))
        #expect(!wakeup.sleep(0))
    }

    @Test func theOtherDescriptorEndsTheWaitAndSaysWhy() throws {
        let wakeup = try #require(Wakeup())
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        defer { close(fds[0]); close(fds[1]) }
        var revents: Int16 = -1
        #expect(!wakeup.sleep(0.01, alsoReadable: fds[0], revents: &revents))
        #expect(revents == 0)
        #expect(write(fds[1], "x", 1) == 1)
        #expect(!wakeup.sleep(30, alsoReadable: fds[0], revents: &revents))
        #expect(revents & Int16(POLLIN) != 0)
        wakeup.wake()
        #expect(wakeup.sleep(30, alsoReadable: fds[0], revents: &revents))
    }
}
