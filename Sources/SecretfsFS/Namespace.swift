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

    init(ino: UInt64, name: String, info: SecretInfo?) {
        self.ino = ino
        self.name = name
        self.info = info
        self.createdAt = Timestamp.now()
    }

    var isCommitted: Bool { info != nil }
    var updatedAt: Timestamp { info?.updatedAt ?? createdAt }
}

/// The name <-> inode tables of the one flat directory. Inode numbers are
/// never reused within a mount, so a stale kernel reference can never reach
/// another secret. Not thread-safe: used under the filesystem's lock.
struct Namespace {
    static let rootIno: UInt64 = 1
    private(set) var byName: [String: Node] = [:]
    private var byIno: [UInt64: Node] = [:]
    private var nextIno: UInt64 = 2
    /// Bumped on every change of the listing; lets `readdir` offsets stay stable.
    private(set) var generation: UInt64 = 0
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

    var count: Int { byName.count }

    func node(ino: UInt64) -> Node? { byIno[ino] }
    func node(named name: String) -> Node? { byName[name] }

    mutating func add(name: String, info: SecretInfo?) -> Node {
        let n = Node(ino: nextIno, name: name, info: info)
        nextIno += 1
        byName[name] = n
        byIno[n.ino] = n
        touch()
        return n
    }

    /// Detaches the node from its name; it stays reachable by inode until
    /// the kernel forgets it and no file is open on it.
    mutating func unlink(_ node: Node) {
        if let name = node.name, byName[name] === node { byName[name] = nil }
        node.name = nil
        collect(node)
        touch()
    }

    /// Moves `node` to `newName`, detaching whatever held that name.
    mutating func move(_ node: Node, to newName: String) {
        if let old = byName[newName], old !== node { unlink(old) }
        if let name = node.name, byName[name] === node { byName[name] = nil }
        node.name = newName
        byName[newName] = node
        touch()
    }

    /// Swaps the names of two nodes (RENAME_EXCHANGE).
    mutating func exchange(_ a: Node, _ b: Node) {
        guard let an = a.name, let bn = b.name else { return }
        a.name = bn; b.name = an
        byName[bn] = a; byName[an] = b
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

    /// Names in a stable (sorted) order, for a directory listing.
    func sortedNodes() -> [Node] {
        // Names are ASCII: byte order is the order `ls` shows in the C
        // locale, and comparing bytes is far cheaper than String's Unicode order.
        byName.map { ($0.key, $0.value) }
            .sorted { $0.0.utf8.lexicographicallyPrecedes($1.0.utf8) }
            .map(\.1)
    }

    private mutating func touch() {
        generation &+= 1
        lastChange = Timestamp.now()
    }
}
