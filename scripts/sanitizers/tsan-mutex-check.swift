// Checks tsan-mutex.c before `scripts/sanitize thread` relies on it.
// Built with -sanitize=thread and run with the shim preloaded:
//   tsan-mutex-check locked     two threads increment a counter under a
//                               contended Mutex: must give no report
//   tsan-mutex-check unlocked   one of them increments outside the lock:
//                               must still be reported (the shim hides nothing)
// Without the shim, `locked` is reported too: that is the false positive the
// shim exists for (scripts/sanitize says so if it ever stops happening).
import Glibc
import Synchronization

final class Counter: @unchecked Sendable {
    let lock = Mutex(())
    var value = 0
}

let counter = Counter()
let unlocked = CommandLine.arguments.dropFirst().first == "unlocked"
let rounds = 200

func body(_ index: Int) {
    for _ in 0..<rounds {
        if unlocked && index == 1 {
            counter.lock.withLock { _ in usleep(50) }
            counter.value += 1
        } else {
            // The sleep holds the lock long enough that the other thread
            // contends for it, which is the path TSan cannot see by itself.
            counter.lock.withLock { _ in let v = counter.value; usleep(50); counter.value = v + 1 }
        }
    }
}

var threads: [pthread_t] = []
for index in 0..<2 {
    var thread = pthread_t()
    let box = Unmanaged.passRetained(Box(index)).toOpaque()
    guard pthread_create(&thread, nil, { raw in
        let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
        body(box.index)
        return nil
    }, box) == 0 else { fatalError("pthread_create") }
    threads.append(thread)
}
for thread in threads { pthread_join(thread, nil) }
if !unlocked && counter.value != 2 * rounds {
    print("tsan-mutex-check: the counter is \(counter.value), not \(2 * rounds): the lock did not exclude")
    exit(1)
}

final class Box { let index: Int; init(_ index: Int) { self.index = index } }
