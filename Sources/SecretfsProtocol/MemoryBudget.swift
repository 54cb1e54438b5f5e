import Glibc
import Synchronization

/// The locked memory one server's connections may hold at once for the
/// frames they read and the replies they build.
///
/// Why: every connection's frames are bounded (a request by the server's
/// largest request frame, a reply by its largest reply frame), but a peer
/// the policy allows chooses how big they are, and a few dozen connections
/// each holding a 16 MiB request and a 64 MiB reply would lock gigabytes: a
/// service with CAP_IPC_LOCK locks them for real, and memory that cannot be
/// swapped is the machine's, not only the server's. The budget caps the sum;
/// a request that would pass it is refused with an ERROR `busy`, and nothing
/// else on the connection or the server changes.
///
/// Shares: when the policy admits several uids, one uid may hold at most
/// `SocketPolicy.share(of:)` of the budget, and so may all uids but the
/// owner together (`Holdings`), so a runaway client of one uid leaves the
/// others room and allowed uids leave the owner room (as with connection
/// slots).
///
/// What is counted: the capacity of every locked buffer a connection holds
/// for frames, from its allocation to its release. The values cached by the
/// daemon and the store's own buffers are not: their size follows what is
/// stored, not what a peer asks for.
public final class MemoryBudget: Sendable {
    /// Bytes all connections may hold together.
    public let limit: Int
    /// Bytes one uid's connections may hold together (and all uids but the
    /// owner's together).
    public let perUIDLimit: Int

    private let held: Mutex<Holdings>

    public init(limit: Int, policy: SocketPolicy) {
        self.limit = limit
        let holdings = Holdings(limit: limit, policy: policy)
        perUIDLimit = holdings.share
        held = Mutex(holdings)
    }

    /// Bytes held now by every connection (for tests and the log).
    public var total: Int { held.withLock { $0.total } }

    /// What one connection holds; give it back by releasing buffers, or all
    /// at once when the account goes.
    public func account(uid: uid_t) -> Account { Account(budget: self, uid: uid) }

    fileprivate func take(_ bytes: Int, uid: uid_t) -> Bool {
        held.withLock { $0.take(bytes, for: uid) == nil }
    }

    fileprivate func give(_ bytes: Int, uid: uid_t) {
        held.withLock { $0.give(bytes, for: uid) }
    }

    /// One connection's share of the budget. Used by the connection's own
    /// thread only.
    public final class Account {
        public let budget: MemoryBudget
        public let uid: uid_t
        /// Bytes this connection holds now.
        public private(set) var held = 0
        /// Whether the last `take` (or growing `resize`) was refused: how a
        /// server tells a reply refused by the budget from memory that could
        /// not be locked.
        public private(set) var lastTakeRefused = false

        fileprivate init(budget: MemoryBudget, uid: uid_t) {
            self.budget = budget
            self.uid = uid
        }

        deinit { if held > 0 { budget.give(held, uid: uid) } }

        /// Holds `bytes` more; false (nothing held) when that would pass the
        /// server's limit or the uid's share of it.
        public func take(_ bytes: Int) -> Bool {
            guard bytes > 0 else { return true }
            lastTakeRefused = !budget.take(bytes, uid: uid)
            if lastTakeRefused { return false }
            held += bytes
            return true
        }

        /// Gives back `bytes` of what this connection holds.
        public func give(_ bytes: Int) {
            let n = min(bytes, held)
            guard n > 0 else { return }
            held -= n
            budget.give(n, uid: uid)
        }

        /// Moves from holding `old` bytes to holding `new` (a buffer replaced
        /// by another): shrinking always succeeds; growing is `take`.
        public func resize(from old: Int, to new: Int) -> Bool {
            if new <= old {
                give(old - new)
                return true
            }
            return take(new - old)
        }

        /// Why `take` failed, for the ERROR sent to the peer.
        public var refusal: String {
            func mib(_ n: Int) -> String { "\(n >> 20) MiB" }
            let share = budget.perUIDLimit < budget.limit ? ", at most \(mib(budget.perUIDLimit)) for uid \(uid)" : ""
            return "the server holds its limit of locked memory for requests and replies (\(mib(budget.limit))\(share)); "
                + "try again when other requests are done"
        }
    }
}
