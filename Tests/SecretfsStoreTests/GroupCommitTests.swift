import Foundation
import Glibc
import Synchronization
@testable import SecretfsStore
import Testing

/// Group commit's bookkeeping (the kill -9 test in DurabilityAndSecrecyTests
/// shows the durability of a real burst; this shows the sharing).
struct GroupCommitTests {
    /// A file to stand for the WAL (the group closes it): its directory is
    /// removed at once, the descriptor keeps the file (and fsync works on it).
    private func walFile() throws -> Int32 {
        let base = makeTempDirectory("secretfs-group-commit")
        let fd = open(base + "/wal", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        removeTree(base)   // the open descriptor keeps the file
        try #require(fd >= 0)
        return fd
    }

    @Test func oneSyncCoversEveryCommitMadeBeforeItStarted() throws {
        let fd = try walFile()
        let group = GroupCommit(walDescriptor: fd)
        // Three commits written, their writers not yet synced.
        group.committed.add(3, ordering: .releasing)
        // The first writer to sync covers all three: the other two, asking
        // after it, find theirs durable and run no sync of their own.
        #expect(group.waitDurable(through: 1) == 0)
        #expect(group.syncs == 1)
        #expect(group.waitDurable(through: 3) == 0)
        #expect(group.waitDurable(through: 2) == 0)
        #expect(group.syncs == 1)
        // A commit made after that sync needs another.
        group.committed.add(1, ordering: .releasing)
        #expect(group.waitDurable(through: 4) == 0)
        #expect(group.syncs == 2)
    }

    /// A commit counted while a sync runs may have written its frames after
    /// the fsync began: that sync must not mark it durable.
    @Test func aCommitMadeDuringASyncWaitsForTheNextOne() throws {
        let fd = try walFile()
        // weak: the group holds the closure that holds the holder.
        final class Holder: @unchecked Sendable { weak var group: GroupCommit?; var syncing = 0 }
        let holder = Holder()
        let group = GroupCommit(walDescriptor: fd) { wal in
            holder.syncing += 1
            // Another writer commits while this fsync is under way.
            if holder.syncing == 1 { holder.group?.committed.add(1, ordering: .releasing) }
            return fsync(wal)
        }
        holder.group = group
        group.committed.add(1, ordering: .releasing)
        #expect(group.waitDurable(through: 1) == 0)
        #expect(group.syncs == 1)
        // Commit 2 was counted during the first sync: it needs its own.
        #expect(group.waitDurable(through: 2) == 0)
        #expect(group.syncs == 2)
    }

    @Test func concurrentWritersShareSyncsAndEachReturnsDurable() throws {
        let fd = try walFile()
        let group = GroupCommit(walDescriptor: fd)
        let writers = 16
        let done = Mutex<[UInt64]>([])
        DispatchQueue.concurrentPerform(iterations: writers) { _ in
            let ticket = group.committed.add(1, ordering: .releasing).newValue
            #expect(group.waitDurable(through: ticket) == 0)
            done.withLock { $0.append(ticket) }
        }
        #expect(done.withLock { $0.sorted() } == (1...UInt64(writers)).map { $0 })
        #expect(group.syncs >= 1 && group.syncs <= writers)
        // Every commit made is durable now: asking again syncs nothing.
        let before = group.syncs
        #expect(group.waitDurable(through: UInt64(writers)) == 0)
        #expect(group.syncs == before)
    }
}
