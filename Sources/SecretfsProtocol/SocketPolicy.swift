import Glibc

/// Who may use a secretfs socket (a mount's privileged socket or the
/// resolver daemon's): the owner (this process's uid) always, plus an
/// allow-list of uids and of groups. A peer matches a group by its primary
/// gid or any supplementary group, as the kernel recorded them at connect time.
///
/// The same list decides twice: the kernel refuses everyone else at
/// connect(2) through the socket file's mode, group and POSIX ACL
/// (`fileAccess`), and the server checks SO_PEERCRED before it reads a byte.
public struct SocketPolicy: Sendable, Equatable {
    /// Uids allowed besides the owner.
    public var uids: [uid_t]
    public var gids: [gid_t]
    /// The group the socket file is given. Default: the first of `gids`.
    public var socketGroup: gid_t?

    /// `uids` and `gids` add to the owner; they never replace it.
    public init(uids: [uid_t] = [], gids: [gid_t] = [], socketGroup: gid_t? = nil) {
        self.uids = uids
        self.gids = gids
        self.socketGroup = socketGroup
    }

    /// The owner first, then the other uids allowed.
    public var effectiveUIDs: [uid_t] {
        var out = [getuid()]
        for u in uids where !out.contains(u) { out.append(u) }
        return out
    }

    public var fileGroup: gid_t? { socketGroup ?? gids.first }

    /// Whether more than one uid may connect (then no one uid may take every
    /// connection slot; see UnixSocketListener).
    public var admitsSeveralUIDs: Bool { effectiveUIDs.count > 1 || !gids.isEmpty }

    /// How much of a server-wide resource (connection slots, frame memory)
    /// one uid may hold, and the uids other than the owner together: three
    /// quarters of it when several uids may connect, so one allowed uid (a
    /// runaway client, or a careless one) never takes all of it from the
    /// others, and allowed uids together never take the owner's last
    /// quarter; all of it otherwise. `Holdings` applies it.
    public func share(of total: Int) -> Int {
        admitsSeveralUIDs ? max(1, total * 3 / 4) : total
    }

    public func allows(_ peer: PeerCredentials) -> Bool {
        if effectiveUIDs.contains(peer.uid) { return true }
        if gids.contains(peer.gid) { return true }
        return peer.groups.contains { gids.contains($0) }
    }

    /// The socket file's permissions that admit exactly this list: mode 0600
    /// (0660 with the file group), and ACL entries for every other uid and group.
    public var fileAccess: SocketFileAccess {
        let group = fileGroup
        let owner = getuid()
        return SocketFileAccess(mode: group == nil ? 0o600 : 0o660, group: group,
                                aclUsers: effectiveUIDs.filter { $0 != owner && $0 != 0 },
                                aclGroups: gids.filter { $0 != group })
    }
}

/// A socket file's mode, group and extra ACL entries (read+write: connect(2)
/// needs write permission on the socket file).
public struct SocketFileAccess: Sendable, Equatable {
    public var mode: mode_t
    public var group: gid_t?
    public var aclUsers: [uid_t]
    public var aclGroups: [gid_t]

    public var needsACL: Bool { !aclUsers.isEmpty || !aclGroups.isEmpty }

    /// The `system.posix_acl_access` xattr value (linux/posix_acl_xattr.h):
    /// version 2, then entries sorted by tag and id: owner rw, each user rw,
    /// the owning group (rw with a file group, else none), each group rw,
    /// the mask rw, others none.
    public var aclXattr: [UInt8] {
        func le16(_ v: UInt16) -> [UInt8] { [UInt8(v & 0xff), UInt8(v >> 8)] }
        func le32(_ v: UInt32) -> [UInt8] { [UInt8(v & 0xff), UInt8((v >> 8) & 0xff), UInt8((v >> 16) & 0xff), UInt8(v >> 24)] }
        let rw: UInt16 = 6, none: UInt16 = 0, undefined = UInt32.max
        func entry(_ tag: UInt16, _ perm: UInt16, _ id: UInt32) -> [UInt8] { le16(tag) + le16(perm) + le32(id) }
        var out = le32(2)
        out += entry(0x01, rw, undefined)                                   // ACL_USER_OBJ
        for u in Set(aclUsers).sorted() { out += entry(0x02, rw, u) }      // ACL_USER
        out += entry(0x04, group == nil ? none : rw, undefined)             // ACL_GROUP_OBJ
        for g in Set(aclGroups).sorted() { out += entry(0x08, rw, g) }     // ACL_GROUP
        out += entry(0x10, rw, undefined)                                   // ACL_MASK
        out += entry(0x20, none, undefined)                                 // ACL_OTHER
        return out
    }
}

/// What the holders of a server-wide resource (connection slots, bytes of
/// frame memory) hold: in all, per uid, and by every uid but the owner
/// together. The one place the shares of `SocketPolicy.share(of:)` are kept.
/// Not thread-safe: kept under its server's lock.
public struct Holdings: Sendable {
    public let limit: Int
    /// What one uid may hold, and all uids but the owner together.
    public let share: Int
    public let owner: uid_t
    public private(set) var total = 0
    public private(set) var byUID: [uid_t: Int] = [:]
    public private(set) var heldByOthers = 0

    public init(limit: Int, policy: SocketPolicy, owner: uid_t = getuid()) {
        self.limit = limit
        share = policy.share(of: limit)
        self.owner = owner
    }

    /// Which bound taking `amount` more for `uid` would pass, if any.
    public enum Bound: Sendable { case total, uid, othersTogether }

    public func bound(taking amount: Int, for uid: uid_t) -> Bound? {
        if total + amount > limit { return .total }
        if byUID[uid, default: 0] + amount > share { return .uid }
        if uid != owner && heldByOthers + amount > share { return .othersTogether }
        return nil
    }

    /// Takes `amount` for `uid` unless a bound says no.
    public mutating func take(_ amount: Int, for uid: uid_t) -> Bound? {
        if let b = bound(taking: amount, for: uid) { return b }
        total += amount
        byUID[uid, default: 0] += amount
        if uid != owner { heldByOthers += amount }
        return nil
    }

    public mutating func give(_ amount: Int, for uid: uid_t) {
        total -= amount
        let left = byUID[uid, default: amount] - amount
        byUID[uid] = left > 0 ? left : nil
        if uid != owner { heldByOthers -= amount }
    }
}
