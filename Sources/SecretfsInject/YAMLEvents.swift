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
/// to `maxBatch` events or `maxBatchBytes` of event data, whichever comes
/// first. Each event's strings are copied into its batch as it is parsed and
/// libyaml's event deleted at once (Batch says why). Handled batches go back
/// to the parser's thread to be freed: they were allocated in that thread's
/// malloc arena, and freeing them from the handler's thread took that arena's
/// lock against the parser's own allocations (200 futex waits in one
/// 500-block resolve, and no gain from the second core). The parser never
/// runs further ahead than `maxQueuedBatches` batches, nor than
/// `maxOutstandingBytes` of events parsed and not yet freed: an event's size
/// is not bounded by its text (libyaml expands each `!h!x` tag with its `%TAG`
/// prefix, so a 7-byte node can carry a 128 KiB tag), and one thread holds
/// one event at a time, so the second must not hold thousands (a 411 KB
/// document reached 1 GB).
enum YAMLEvents {
    static let secondThreadMinimum = 128 * 1024
    static let firstBatch = 64
    static let maxBatch = 4096
    static let maxQueuedBatches = 4
    static let maxBatchBytes = 64 << 10
    static let maxOutstandingBytes = 1 << 20

    /// The memory an event holds: the struct and the strings libyaml made
    /// for it.
    static func bytes(of event: yaml_event_t) -> Int {
        func length(_ p: UnsafeMutablePointer<yaml_char_t>?) -> Int {
            p.map { strlen(UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self)) } ?? 0
        }
        var n = MemoryLayout<yaml_event_t>.stride
        switch event.type {
        case YAML_SCALAR_EVENT:
            n += Int(event.data.scalar.length) + length(event.data.scalar.tag) + length(event.data.scalar.anchor)
        case YAML_SEQUENCE_START_EVENT:
            n += length(event.data.sequence_start.tag) + length(event.data.sequence_start.anchor)
        case YAML_MAPPING_START_EVENT:
            n += length(event.data.mapping_start.tag) + length(event.data.mapping_start.anchor)
        case YAML_ALIAS_EVENT:
            n += length(event.data.alias.anchor)
        case YAML_DOCUMENT_START_EVENT:
            var d = event.data.document_start.tag_directives.start
            while let p = d, p != event.data.document_start.tag_directives.end {
                n += MemoryLayout<yaml_tag_directive_t>.stride + length(p.pointee.handle) + length(p.pointee.prefix)
                d = p + 1
            }
        default:
            break
        }
        return n
    }

    /// How many events one `read` parsed and deleted (tests: the two agree).
    struct Tally {
        var parsed = 0
        var deleted = 0
        /// The most bytes of events handed over and not yet deleted at once
        /// (second thread only).
        var peakOutstandingBytes = 0
    }

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

        private init(line: Int, column: Int, message: String) {
            self.line = line
            self.column = column
            self.message = message
        }

        static let cannotInitialise = Failure(line: 1, column: 1, message: "cannot initialise the YAML parser")
    }

    /// Parses `input` (UTF-8) and calls `handle` with each event in order
    /// until it returns false or the stream ends (its STREAM_END is handed
    /// too). Each event is deleted after `handle` returns. Returns libyaml's
    /// failure, if it failed before `handle` asked to stop.
    /// `secondThread`: nil decides by the input's size.
    static func read(_ input: UnsafeBufferPointer<UInt8>, secondThread: Bool? = nil,
                     _ handle: (inout yaml_event_t) -> Bool) -> Failure? {
        var tally = Tally()
        return read(input, secondThread: secondThread, tally: &tally, handle)
    }

    /// `read`, counting the events parsed and deleted in `tally`.
    /// `startThread: false` makes the second thread fail to start (tests).
    static func read(_ input: UnsafeBufferPointer<UInt8>, secondThread: Bool?, startThread: Bool = true,
                     tally: inout Tally, _ handle: (inout yaml_event_t) -> Bool) -> Failure? {
        if secondThread ?? (input.count >= secondThreadMinimum),
           let pipe = EventPipe(input, startThread: startThread) {
            return pipe.read(tally: &tally, handle)
        }
        return readHere(input, tally: &tally, handle)
    }

    /// The parser on the calling thread.
    static func readHere(_ input: UnsafeBufferPointer<UInt8>, tally: inout Tally,
                         _ handle: (inout yaml_event_t) -> Bool) -> Failure? {
        var parser = yaml_parser_t()
        guard open(&parser, input) else { return .cannotInitialise }
        defer { yaml_parser_delete(&parser) }
        var event = yaml_event_t()
        while true {
            guard yaml_parser_parse(&parser, &event) != 0 else { return Failure(parser) }
            tally.parsed += 1
            let end = event.type == YAML_STREAM_END_EVENT
            let more = handle(&event)
            yaml_event_delete(&event)
            tally.deleted += 1
            if end || !more { return nil }
        }
    }

    /// Initialises `parser` to read `input` as UTF-8; false if libyaml
    /// cannot (then there is nothing to delete).
    static func open(_ parser: inout yaml_parser_t, _ input: UnsafeBufferPointer<UInt8>) -> Bool {
        guard yaml_parser_initialize(&parser) != 0 else { return false }
        // libyaml wants an address even for no bytes (an empty array may
        // have none); it reads none of them.
        yaml_parser_set_input_string(&parser, input.baseAddress ?? emptyInput, input.count)
        yaml_parser_set_encoding(&parser, YAML_UTF8_ENCODING)
        return true
    }

    // nonisolated(unsafe): never written, and libyaml reads none of it.
    nonisolated(unsafe) private static let emptyInput: UnsafePointer<UInt8> = {
        let p = UnsafeMutablePointer<UInt8>.allocate(capacity: 1)
        p.initialize(to: 0)
        return UnsafePointer(p)
    }()
}

/// Events parsed on the second thread, with the memory they hold.
///
/// An event's strings (a scalar's value, tags and anchors) are copied into
/// the batch's own block as it is added, and libyaml's event is deleted
/// there and then, on the parser's thread: libyaml's next allocations of the
/// same sizes come straight back from that thread's malloc cache. Keeping
/// every event of a batch alive until the handler was done with it made
/// malloc and free (fast bins, consolidation) about a quarter of the
/// parser's thread, the scan's critical path; copied, a 5,000-block flow
/// resolves about 8% sooner (BENCHMARKS.md, "Resolver").
/// An event whose strings do not fit what is left of the block, and a
/// DOCUMENT-START (its directives are a list of structs), stay libyaml's,
/// listed in `libyamlOwned`, and are deleted with the batch.
private struct Batch {
    var events: [yaml_event_t] = []
    var bytes = 0
    private var strings: UnsafeMutablePointer<UInt8>?
    private var used = 0
    private var libyamlOwned: [Int] = []

    /// The block's size: a batch closes at `maxBatchBytes` of event data.
    static let stringCapacity = YAMLEvents.maxBatchBytes

    /// Adds `event`, whose memory the batch now answers for.
    mutating func add(_ event: inout yaml_event_t) {
        // The strings to keep: a scalar's value (its length may count NUL
        // bytes of an escape), then tag and anchor, each kept NUL-terminated.
        var value: UnsafeMutablePointer<yaml_char_t>?
        var valueLength = 0
        var tag: UnsafeMutablePointer<yaml_char_t>?
        var anchor: UnsafeMutablePointer<yaml_char_t>?
        switch event.type {
        case YAML_SCALAR_EVENT:
            value = event.data.scalar.value
            valueLength = Int(event.data.scalar.length)
            tag = event.data.scalar.tag
            anchor = event.data.scalar.anchor
        case YAML_SEQUENCE_START_EVENT:
            tag = event.data.sequence_start.tag
            anchor = event.data.sequence_start.anchor
        case YAML_MAPPING_START_EVENT:
            tag = event.data.mapping_start.tag
            anchor = event.data.mapping_start.anchor
        case YAML_ALIAS_EVENT:
            anchor = event.data.alias.anchor
        case YAML_DOCUMENT_START_EVENT:
            bytes += YAMLEvents.bytes(of: event)
            libyamlOwned.append(events.count)
            events.append(event)
            return
        default:
            break   // no strings
        }
        let tagLength = tag.map { strlen(UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self)) } ?? 0
        let anchorLength = anchor.map { strlen(UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self)) } ?? 0
        // What YAMLEvents.bytes(of:) counts, without measuring again.
        bytes += MemoryLayout<yaml_event_t>.stride + valueLength + tagLength + anchorLength
        let need = (value == nil ? 0 : valueLength + 1) + (tag == nil ? 0 : tagLength + 1)
            + (anchor == nil ? 0 : anchorLength + 1)
        var original = event
        if need > 0 {
            if strings == nil && need <= Batch.stringCapacity {
                strings = .allocate(capacity: Batch.stringCapacity)
            }
            guard let block = strings, need <= Batch.stringCapacity - used else {
                libyamlOwned.append(events.count)
                events.append(event)
                return
            }
            // Each string into the block, NUL-terminated; the event then
            // points at the copies, field for field as they were read above.
            var at = block + used
            func keep(_ p: UnsafeMutablePointer<yaml_char_t>?, _ n: Int) -> UnsafeMutablePointer<yaml_char_t>? {
                guard let p else { return nil }
                let copy = at
                copy.update(from: p, count: n)
                copy[n] = 0
                at += n + 1
                return copy
            }
            let keptValue = keep(value, valueLength), keptTag = keep(tag, tagLength), keptAnchor = keep(anchor, anchorLength)
            switch event.type {
            case YAML_SCALAR_EVENT:
                event.data.scalar.value = keptValue
                event.data.scalar.tag = keptTag
                event.data.scalar.anchor = keptAnchor
            case YAML_SEQUENCE_START_EVENT:
                event.data.sequence_start.tag = keptTag
                event.data.sequence_start.anchor = keptAnchor
            case YAML_MAPPING_START_EVENT:
                event.data.mapping_start.tag = keptTag
                event.data.mapping_start.anchor = keptAnchor
            default:
                event.data.alias.anchor = keptAnchor
            }
            used += need
        }
        events.append(event)
        yaml_event_delete(&original)
    }

    /// Frees what the batch holds: its block and the events still libyaml's.
    func delete() {
        for i in libyamlOwned {
            var e = events[i]
            yaml_event_delete(&e)
        }
        strings?.deallocate()
    }
}

/// The parser on a second thread and a bounded queue of batches of its events
/// (YAMLEvents says why and how far it may run ahead). The input is
/// borrowed: `read` returns only after the thread has ended.
private final class EventPipe: @unchecked Sendable {
    // @unchecked: `ready`, `handled`, `outstandingBytes`, `finished` and
    // `failure` are guarded by `mutex`; `input` is read by the parser's
    // thread only, while `read` waits; `deleted` is atomic.
    private let input: UnsafeBufferPointer<UInt8>
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let changed = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    /// Parsed, not yet handled.
    private var ready: [Batch] = []
    /// Handled, for the parser's thread to delete.
    private var handled: [Batch] = []
    /// Bytes of the batches handed over and not yet deleted (queued, being
    /// handled or handled).
    private var outstandingBytes = 0
    private var peakOutstandingBytes = 0
    private var finished = false
    private var failure: YAMLEvents.Failure?
    /// Set by the reader when it stops early: the parser stops too.
    private let cancelled = Atomic<Bool>(false)
    /// Events parsed (by the parser's thread, read after the join) and
    /// deleted (by either thread).
    private var parsed = 0
    private let deleted = Atomic<Int>(0)
    private var thread = pthread_t()

    /// Starts the parser's thread; nil if it cannot be started (the caller
    /// then parses on its own thread). `startThread: false` is a start that
    /// fails (tests).
    init?(_ input: UnsafeBufferPointer<UInt8>, startThread: Bool) {
        self.input = input
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(changed, nil)
        guard startThread else { return nil }
        let context = Unmanaged.passRetained(self).toOpaque()
        let rc = pthread_create(&thread, nil, { context in
            guard let context else { return nil }   // never: it is the pipe passed below
            let pipe = Unmanaged<EventPipe>.fromOpaque(context).takeRetainedValue()
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
        guard YAMLEvents.open(&parser, input) else {
            finish(with: Batch(), failure: .cannotInitialise)
            return
        }
        defer { yaml_parser_delete(&parser) }
        var batch = Batch()
        var batchSize = YAMLEvents.firstBatch
        batch.events.reserveCapacity(batchSize)
        while !cancelled.load(ordering: .relaxed) {
            var event = yaml_event_t()
            guard yaml_parser_parse(&parser, &event) != 0 else {
                finish(with: batch, failure: .init(parser))
                return
            }
            parsed += 1
            let end = event.type == YAML_STREAM_END_EVENT
            batch.add(&event)
            if end { break }
            if batch.events.count == batchSize || batch.bytes >= YAMLEvents.maxBatchBytes {
                guard hand(batch) else { return }
                batchSize = min(batchSize * 2, YAMLEvents.maxBatch)
                batch = Batch()
                batch.events.reserveCapacity(batchSize)
            }
        }
        finish(with: batch, failure: nil)
    }

    /// Queues a batch once there is room (deleting the handled batches while
    /// it waits); false (the batch deleted) once the reader has stopped. A
    /// batch always fits when nothing is outstanding: one event bigger than
    /// the limit goes alone, as it would on one thread.
    private func hand(_ batch: Batch) -> Bool {
        pthread_mutex_lock(mutex)
        while true {
            if !handled.isEmpty {
                let done = handled
                handled.removeAll()
                pthread_mutex_unlock(mutex)
                for b in done { delete(b) }
                pthread_mutex_lock(mutex)
                for b in done { outstandingBytes -= b.bytes }
                continue
            }
            if cancelled.load(ordering: .relaxed) { break }
            let room = ready.count < YAMLEvents.maxQueuedBatches
                && outstandingBytes + batch.bytes <= YAMLEvents.maxOutstandingBytes
            if room || outstandingBytes == 0 { break }
            pthread_cond_wait(changed, mutex)
        }
        let open = !cancelled.load(ordering: .relaxed)
        if open {
            ready.append(batch)
            outstandingBytes += batch.bytes
            peakOutstandingBytes = max(peakOutstandingBytes, outstandingBytes)
        }
        pthread_cond_broadcast(changed)
        pthread_mutex_unlock(mutex)
        if !open { delete(batch) }
        return open
    }

    private func finish(with batch: Batch, failure: YAMLEvents.Failure?) {
        pthread_mutex_lock(mutex)
        if !batch.events.isEmpty {
            ready.append(batch)
            outstandingBytes += batch.bytes
            peakOutstandingBytes = max(peakOutstandingBytes, outstandingBytes)
        }
        self.failure = failure
        finished = true
        pthread_cond_broadcast(changed)
        pthread_mutex_unlock(mutex)
    }

    private func delete(_ batch: Batch) {
        batch.delete()
        deleted.add(batch.events.count, ordering: .relaxed)
    }

    /// The calling thread: hands each event to `handle` in order, then
    /// stops the parser if need be, waits for its thread and deletes what
    /// was parsed and not handled.
    func read(tally: inout YAMLEvents.Tally, _ handle: (inout yaml_event_t) -> Bool) -> YAMLEvents.Failure? {
        var stopped = false
        var result: YAMLEvents.Failure?
        var last: Batch?
        reading: while true {
            pthread_mutex_lock(mutex)
            if let last {
                // Back to the parser's thread, which may be waiting for
                // the room it leaves.
                handled.append(last)
                pthread_cond_broadcast(changed)
            }
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
            for i in batch.events.indices {
                let end = batch.events[i].type == YAML_STREAM_END_EVENT
                if !handle(&batch.events[i]) || end {
                    stopped = true
                    last = batch
                    break reading
                }
            }
            last = batch
        }
        // Every event of `last` and of the queues is deleted below, once.
        if let last { delete(last) }
        if stopped {
            pthread_mutex_lock(mutex)
            cancelled.store(true, ordering: .relaxed)
            pthread_cond_broadcast(changed)
            pthread_mutex_unlock(mutex)
        }
        pthread_join(thread, nil)
        // The thread has ended: what it queued and nobody handled, and what
        // was handled since it last took the handled batches.
        for batch in ready + handled { delete(batch) }
        ready.removeAll()
        handled.removeAll()
        tally.parsed += parsed
        tally.deleted += deleted.load(ordering: .relaxed)
        tally.peakOutstandingBytes = max(tally.peakOutstandingBytes, peakOutstandingBytes)
        return stopped ? nil : result
    }
}
