import CYAML
import Glibc
import Synchronization

/// libyaml's events of one input, in order, for the flow reader.
///
/// libyaml's parser is about 55% of a flow's scan and the reader's handling
/// of its events most of the rest (callgrind, BENCHMARKS.md "Resolver"). For a
/// large input the parser runs on a second thread, a few batches of events
/// ahead of the handler on the calling one, so a one-shot `resolve` of a big
/// flow uses both cores of the machine instead of one. The events are the same
/// and arrive in the same order either way; only a document of at least
/// `secondThreadMinimum` bytes is worth a thread's start (about 50 us) and the
/// hand-offs. Batches start small, so the handler starts early, and double up
/// to `maxBatch` events. Handled events go back to the parser's thread to be
/// deleted: libyaml allocated them in that thread's malloc arena, and freeing
/// them from the handler's thread took that arena's lock against the parser's
/// own allocations (200 futex waits in one 500-block resolve, and no gain
/// from the second core). At most
/// `maxQueuedBatches` batches are parsed and not yet handled: the parser
/// never runs further ahead than that.
enum YAMLEvents {
    static let secondThreadMinimum = 128 * 1024
    static let firstBatch = 64
    static let maxBatch = 4096
    static let maxQueuedBatches = 4

    /// Why libyaml stopped: its problem, context and where.
    struct Failure: Sendable {
        var line: Int
        var column: Int
        var message: String

        init(_ parser: yaml_parser_t) {
            line = Int(parser.problem_mark.line) + 1
            column = Int(parser.problem_mark.column) + 1
            message = parser.problem.map { String(cString: $0) } ?? "YAML error"
            if let ctx = parser.context.map({ String(cString: $0) }) { message += " " + ctx }
        }

        init(line: Int, column: Int, message: String) {
            self.line = line
            self.column = column
            self.message = message
        }
    }

    /// Parses `input` (UTF-8) and calls `handle` with each event in order
    /// until it returns false or the stream ends (its STREAM_END is handed
    /// too). Each event is deleted after `handle` returns. Returns libyaml's
    /// failure, if it failed before `handle` asked to stop.
    /// `secondThread`: nil decides by the input's size.
    static func read(_ input: UnsafeBufferPointer<UInt8>, secondThread: Bool? = nil,
                     _ handle: (inout yaml_event_t) -> Bool) -> Failure? {
        if secondThread ?? (input.count >= secondThreadMinimum),
           let pipe = EventPipe(input) {
            return pipe.read(handle)
        }
        return readHere(input, handle)
    }

    /// The parser on the calling thread.
    static func readHere(_ input: UnsafeBufferPointer<UInt8>, _ handle: (inout yaml_event_t) -> Bool) -> Failure? {
        var parser = yaml_parser_t()
        guard yaml_parser_initialize(&parser) != 0 else {
            return Failure(line: 1, column: 1, message: "cannot initialise the YAML parser")
        }
        defer { yaml_parser_delete(&parser) }
        start(&parser, input)
        var event = yaml_event_t()
        while true {
            guard yaml_parser_parse(&parser, &event) != 0 else { return Failure(parser) }
            let end = event.type == YAML_STREAM_END_EVENT
            let more = handle(&event)
            yaml_event_delete(&event)
            if end || !more { return nil }
        }
    }

    /// `input` must have an address even when empty (libyaml asserts one).
    static func start(_ parser: inout yaml_parser_t, _ input: UnsafeBufferPointer<UInt8>) {
        precondition(input.baseAddress != nil, "libyaml needs an input address")
        yaml_parser_set_input_string(&parser, input.baseAddress, input.count)
        yaml_parser_set_encoding(&parser, YAML_UTF8_ENCODING)
    }
}

/// The parser on a second thread and a bounded queue of batches of its events
/// (YAMLEvents says why). The input is borrowed: `read` returns only after the
/// thread has ended.
private final class EventPipe: @unchecked Sendable {
    // @unchecked: `ready`, `finished` and `failure` are guarded by `mutex`;
    // `input` is read by the parser's thread only, while `read` waits.
    private let input: UnsafeBufferPointer<UInt8>
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let changed = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var ready: [[yaml_event_t]] = []
    /// Batches handled, for the parser's thread to delete.
    private var handled: [[yaml_event_t]] = []
    private var finished = false
    private var failure: YAMLEvents.Failure?
    /// Set by the reader when it stops early: the parser stops too.
    private let cancelled = Atomic<Bool>(false)
    private var thread = pthread_t()

    /// Starts the parser's thread; nil if it cannot be started (the caller
    /// then parses on its own thread).
    init?(_ input: UnsafeBufferPointer<UInt8>) {
        self.input = input
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(changed, nil)
        let context = Unmanaged.passRetained(self).toOpaque()
        let rc = pthread_create(&thread, nil, { context in
            let pipe = Unmanaged<EventPipe>.fromOpaque(context!).takeRetainedValue()
            pipe.parse()
            return nil
        }, context)
        if rc != 0 {
            Unmanaged<EventPipe>.fromOpaque(context).release()
            return nil
        }
    }

    deinit {
        pthread_cond_destroy(changed)
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
        changed.deallocate()
    }

    /// The parser's thread: parse, hand over full batches, wait while the
    /// queue is full.
    private func parse() {
        var parser = yaml_parser_t()
        guard yaml_parser_initialize(&parser) != 0 else {
            finish(with: [], failure: .init(line: 1, column: 1, message: "cannot initialise the YAML parser"))
            return
        }
        defer { yaml_parser_delete(&parser) }
        YAMLEvents.start(&parser, input)
        var batch: [yaml_event_t] = []
        var batchSize = YAMLEvents.firstBatch
        batch.reserveCapacity(batchSize)
        while !cancelled.load(ordering: .relaxed) {
            var event = yaml_event_t()
            guard yaml_parser_parse(&parser, &event) != 0 else {
                finish(with: batch, failure: .init(parser))
                return
            }
            batch.append(event)
            if event.type == YAML_STREAM_END_EVENT { break }
            if batch.count == batchSize {
                guard hand(batch) else { return }
                batchSize = min(batchSize * 2, YAMLEvents.maxBatch)
                batch = []
                batch.reserveCapacity(batchSize)
            }
        }
        finish(with: batch, failure: nil)
    }

    /// Queues a batch, waiting for room; false (the batch deleted) once the
    /// reader has stopped.
    private func hand(_ batch: [yaml_event_t]) -> Bool {
        pthread_mutex_lock(mutex)
        while ready.count >= YAMLEvents.maxQueuedBatches && !cancelled.load(ordering: .relaxed) {
            pthread_cond_wait(changed, mutex)
        }
        let open = !cancelled.load(ordering: .relaxed)
        if open { ready.append(batch) }
        let toDelete = handled
        handled.removeAll()
        pthread_cond_broadcast(changed)
        pthread_mutex_unlock(mutex)
        if !open { Self.delete(batch) }
        for b in toDelete { Self.delete(b) }
        return open
    }

    private func finish(with batch: [yaml_event_t], failure: YAMLEvents.Failure?) {
        pthread_mutex_lock(mutex)
        if !batch.isEmpty { ready.append(batch) }
        self.failure = failure
        finished = true
        pthread_cond_broadcast(changed)
        pthread_mutex_unlock(mutex)
    }

    private static func delete(_ batch: [yaml_event_t]) {
        for var e in batch { yaml_event_delete(&e) }
    }

    /// The calling thread: hands each event to `handle` in order, then
    /// stops the parser if need be, waits for its thread and deletes what
    /// was parsed and not handled.
    func read(_ handle: (inout yaml_event_t) -> Bool) -> YAMLEvents.Failure? {
        var stopped = false
        var result: YAMLEvents.Failure?
        var last: [yaml_event_t]?
        reading: while true {
            pthread_mutex_lock(mutex)
            if let last { handled.append(last) }
            last = nil
            while ready.isEmpty && !finished { pthread_cond_wait(changed, mutex) }
            if ready.isEmpty {
                result = failure
                pthread_mutex_unlock(mutex)
                break
            }
            var batch = ready.removeFirst()
            pthread_cond_broadcast(changed)
            pthread_mutex_unlock(mutex)
            for i in batch.indices {
                let end = batch[i].type == YAML_STREAM_END_EVENT
                if !handle(&batch[i]) || end {
                    stopped = true
                    last = batch
                    break reading
                }
            }
            last = batch
        }
        // Every event of `last` and of the queues is deleted below, once.
        if let last { Self.delete(last) }
        if stopped {
            pthread_mutex_lock(mutex)
            cancelled.store(true, ordering: .relaxed)
            pthread_cond_broadcast(changed)
            pthread_mutex_unlock(mutex)
        }
        pthread_join(thread, nil)
        // The thread has ended: what it queued and nobody handled, and what
        // was handled since it last took the handled batches.
        for batch in ready + handled { Self.delete(batch) }
        ready.removeAll()
        handled.removeAll()
        return stopped ? nil : result
    }
}
