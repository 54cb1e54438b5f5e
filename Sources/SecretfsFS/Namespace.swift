import Glibc
import SecretfsNames
import SecretfsPOSIX
import SecretfsStore

/// One name in the mounted directory, as the kernel knows it (an inode).
///
/// A node outlives its name: after `rm` or being renamed over, the kernel may
/// still hold the inode (an open file, a cached dentry) until it sends FORGET,
/// and writes through an open file whose name is gone are discarded at close,
/// as on any POSIX filesystem.
final class Node {
    let ino: UInt64
    /// Current name; nil once unlinked or replaced by a rename.
    var name: String?
    /// Metadata of the committed value; nil while the file has been created
    /// but not yet closed for the first time (it has no value in the store yet).
    var info: SecretInfo?
    /// Times for a node that is not committed yet.
    let createdAt: Timestamp
    /// Kernel lookup count (LOOKUP, CREATE, READDIRPLUS add; FORGET subtracts).
    var lookups: UInt64 = 0
    /// Open file handles on this node.
    var openHandles = 0
    /// A staging file (a `.` name): the uid that created it, the only one
    /// that can see it. Never listed, never stored as such.
    var stagedBy: uid_t?
    /// A staging file's bytes as of its last flush, in locked memory.
    var staged: WriteBuffer?
    /// Monotonic time since which no handle has been open on the node (its
    /// creation, then each last close): how long a staging file has lain idle.
    var idleSince = monotonicSeconds()

    init(ino: UInt64, name: String, info: SecretInfo?, stagedBy: uid_t? = nil) {
        self.ino = ino
        self.name = name
        self.info = info
        self.stagedBy = stagedBy
        self.createdAt = Timestamp.now()
    }

    var isStaging: Bool { stagedBy != nil }

    var isCommitted: Bool { info != nil }
    var updatedAt: Timestamp { info?.updatedAt ?? createdAt }
}

/// The name <-> inode tables of the one flat directory. Inode numbers of
/// secrets are never reused within a mount, so a stale kernel reference can
/// never reach another secret (staging files' are random, 63 bits: see
/// `takeStagingIno`). Not thread-safe: used under the filesystem's lock.
///
/// Staging names are per uid: each uid has its own, so another uid's staging
/// file neither shows (ENOENT) nor collides (no EEXIST that would tell it is
/// there, no name another uid can take first). Secret names are shared.
struct Namespace {
    static let rootIno: UInt64 = 1
    /// Secrets, and files being created under a secret name.
    private var byName: [String: Node] = [:]
    /// Staging files, by the uid that made them.
    private var staging: [uid_t: [String: Node]] = [:]
    private var byIno: [UInt64: Node] = [:]
    /// Named nodes in byte order of their names, kept sorted as names come
    /// and go (a binary search and a memmove of pointers per change), so a
    /// listing never sorts: `opendir` of 10k names costs nothing extra.
    private var sorted: [Node] = []
    private var nextIno: UInt64 = 2
    /// Last change of the directory (for the directory's mtime).
    var lastChange = Timestamp.now()

    init(secrets: [SecretInfo]) {
        byName.reserveCapacity(secrets.count)
        byIno.reserveCapacity(secrets.count)
        var newest = Timestamp(nanoseconds: 0)
        for s in secrets {
            _ = add(name: s.name, info: s)
            if s.updatedAt > newest { newest = s.updatedAt }
        }
        // The directory changed when its newest secret did (or now, if empty).
        if !secrets.isEmpty { lastChange = newest }
    }

    /// Secrets in view (staging files are not counted: they are not secrets).
    var count: Int { sorted.count }

    func node(ino: UInt64) -> Node? { byIno[ino] }

    /// The node `uid` reaches by `name`: a secret, or one of its own staging files.
    func node(named name: String, seenBy uid: uid_t) -> Node? {
        Names.isStaging(name) ? staging[uid]?[name] : byName[name]
    }

    /// A secret's node (never a staging file).
    func secret(named name: String) -> Node? { byName[name] }

    mutating func add(name: String, info: SecretInfo?, stagedBy: uid_t? = nil) -> Node {
        let n = Node(ino: stagedBy == nil ? takeSequentialIno() : takeStagingIno(), name: name, info: info, stagedBy: stagedBy)
        byIno[n.ino] = n
        attach(n, as: name)
        return n
    }

    private mutating func takeSequentialIno() -> UInt64 {
        defer { nextIno += 1 }
        return nextIno
    }

    /// A staging file's inode number: random, with the top bit set (never a
    /// sequential one), so that the numbers a uid sees on its own files do
    /// not count other uids' staging files, which it must not learn of.
    private func takeStagingIno() -> UInt64 {
        while true {
            let ino = UInt64.random(in: 0...UInt64.max) | (1 << 63)
            if byIno[ino] == nil { return ino }
        }
    }

    /// Staging files of `uid` (they are bounded per uid like write handles).
    func stagingCount(of uid: uid_t) -> Int {
        staging[uid]?.count ?? 0
    }

    /// Locked bytes held by `uid`'s staging files.
    func stagedBytes(of uid: uid_t) -> Int {
        staging[uid]?.values.reduce(0) { $0 + ($1.staged?.capacity ?? 0) } ?? 0
    }

    /// Discards the staging files that no process has open and that have lain
    /// idle for `idleLimit` seconds or more (one left by a killed rsync or
    /// editor, which nobody can list, so nobody would remove it): their
    /// bytes are wiped and their uid's slots free. Returns (uid, name, idle
    /// seconds) of each, for the log.
    mutating func expireStaging(idleLimit: Double, now: Double = monotonicSeconds()) -> [(uid: uid_t, name: String, idle: Double)] {
        var expired: [(uid: uid_t, name: String, idle: Double)] = []
        for (uid, files) in staging {
            for (name, node) in files where node.openHandles == 0 && now - node.idleSince >= idleLimit {
                expired.append((uid, name, now - node.idleSince))
                unlink(node)
            }
        }
        return expired
    }

    /// Gives the node `name` in the table it belongs to (its `stagedBy` says
    /// which), in view when it is not a staging file.
    private mutating func attach(_ node: Node, as name: String) {
        node.name = name
        if let uid = node.stagedBy {
            staging[uid, default: [:]][name] = node
            return
        }
        byName[name] = node
        sorted.insert(node, at: position(of: name))
        touch()
    }

    /// Takes the node's name away from its table, if it still holds it.
    private mutating func detach(_ node: Node) {
        guard let name = node.name else { return }
        if let uid = node.stagedBy {
            guard staging[uid]?[name] === node else { return }
            staging[uid]![name] = nil
            if staging[uid]!.isEmpty { staging[uid] = nil }
            return
        }
        guard byName[name] === node else { return }
        byName[name] = nil
        let i = position(of: name)
        if i < sorted.count && sorted[i] === node { sorted.remove(at: i) }
    }

    /// Index of `name` in `sorted`, or where it would be inserted.
    private func position(of name: String) -> Int {
        var lo = 0, hi = sorted.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if Self.precedes(sorted[mid].name ?? "", name) { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }

    /// Byte order (names are ASCII, so this is `ls`'s order in the C locale),
    /// compared with memcmp rather than String's Unicode-aware ordering.
    static func precedes(_ a: String, _ b: String) -> Bool {
        var a = a, b = b
        return a.withUTF8 { pa in
            b.withUTF8 { pb in
                let n = min(pa.count, pb.count)
                let c = n == 0 ? 0 : memcmp(pa.baseAddress!, pb.baseAddress!, n)
                return c < 0 || (c == 0 && pa.count < pb.count)
            }
        }
    }

    /// Detaches the node from its name; it stays reachable by inode until
    /// the kernel forgets it and no file is open on it.
    mutating func unlink(_ node: Node) {
        detach(node)
        let wasStaging = node.isStaging
        node.name = nil
        node.staged?.wipe()
        node.staged = nil
        collect(node)
        if !wasStaging { touch() }
    }

    /// Moves `node` to `newName`, detaching whatever held that name (in the
    /// table the node lands in). With `stagedBy` nil a staging node becomes a
    /// secret (in view from now on).
    mutating func move(_ node: Node, to newName: String, stagedBy: uid_t?? = .none) {
        detach(node)
        if case .some(let s) = stagedBy { node.stagedBy = s }
        let holder = node.stagedBy.flatMap { staging[$0]?[newName] } ?? (node.isStaging ? nil : byName[newName])
        if let holder, holder !== node { unlink(holder) }
        attach(node, as: newName)
    }

    /// Swaps the names of two nodes (RENAME_EXCHANGE).
    mutating func exchange(_ a: Node, _ b: Node) {
        guard let an = a.name, let bn = b.name else { return }
        let ia = position(of: an), ib = position(of: bn)
        a.name = bn; b.name = an
        byName[bn] = a; byName[an] = b
        sorted.swapAt(ia, ib)
        touch()
    }

    /// Drops a nameless node once nothing refers to it any more.
    mutating func collect(_ node: Node) {
        if node.name == nil && node.lookups == 0 && node.openHandles == 0 {
            byIno[node.ino] = nil
        }
    }

    mutating func forget(ino: UInt64, count: UInt64) {
        guard let n = byIno[ino] else { return }
        n.lookups = n.lookups >= count ? n.lookups - count : 0
        collect(n)
    }

    /// Named nodes in byte order of their names, for a directory listing.
    func sortedNodes() -> [Node] { sorted }

    private mutating func touch() {
        lastChange = Timestamp.now()
    }
}
