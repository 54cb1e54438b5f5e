import Glibc
import SecretfsPOSIX
import SecureMemory

/// The new master key of a `rekey`.
public enum RekeyTarget: Sendable {
    /// A 32-byte key read from this file; it becomes STORE/master.key.
    case keyFile(String)
    /// A passphrase read from this file (Argon2id with fresh parameters);
    /// the store's key file is removed.
    case passphraseFile(String)
}

/// `rekey`: every project's data key re-wrapped under a new master key, in
/// one transaction, plus a crash-safe swap of the key file:
///
/// 1. (key file target) the new key is written to `master.key.new` (0400,
///    O_EXCL, fsync'd, directory fsync'd);
/// 2. one transaction re-wraps every data key, replaces the key check and
///    the key derivation rows;
/// 3. `master.key.new` is renamed over `master.key` (or, for a passphrase,
///    `master.key` is removed), and the directory fsync'd.
///
/// A crash before 2 commits leaves the old key working and a stray
/// `master.key.new` that does not open the store (the next open removes it);
/// a crash after 2 leaves `master.key.new` as the one key that opens it (the
/// next open renames it into place) or, for a passphrase, a stale
/// `master.key` that the next passphrase open names. Data keys do not
/// change, so mounts keep working throughout.
extension Store {

    public func rekey(to target: RekeyTarget, actor: Actor = .current) throws {
        guard masterKey.count == Envelope.keyBytes else { throw StoreError.keyNotLoaded }
        let (newKey, kdf) = try rekeyPrepare(target)
        try rekeyCommit(newKey: newKey, kdf: kdf, actor: actor)
        try rekeyFinish(toPassphrase: kdf != nil)
        lock.withLock { _ in
            masterKey.withUnsafeMutableBytes { dst in newKey.withUnsafeBytes { dst.copyMemory(from: $0) } }
        }
    }

    /// Step 1: the new key, written beside the old one for a key file target.
    func rekeyPrepare(_ target: RekeyTarget) throws -> (SecureBytes, KeyDerivation?) {
        let dir = try Self.keyDirectory(location)
        let newKeyFileName = location.keyFileName + ".new"
        switch target {
        case .passphraseFile(let path):
            let params = KeyDerivation.fresh()
            return (try params.deriveKey(from: try Self.readPassphrase(path: path)), params)
        case .keyFile(let path):
            let key = try Self.readKeyFile(at: AT_FDCWD, path, path: path)
            dir.remove(newKeyFileName)   // a stray one from an interrupted rekey: it opens nothing now
            let fd: Int32
            do { fd = try dir.create(newKeyFileName, O_WRONLY, mode: 0o400) } catch {
                throw StoreError.io(path: dir.path(of: newKeyFileName), errno: error.errno, action: "create")
            }
            defer { close(fd) }
            do { try Self.writeKey(key, to: fd, path: dir.path(of: newKeyFileName)) } catch {
                dir.remove(newKeyFileName)
                throw error
            }
            Self.syncDirectory(dir)
            return (key, nil)
        }
    }

    /// Step 2: one transaction.
    func rekeyCommit(newKey: SecureBytes, kdf: KeyDerivation?, actor: Actor) throws {
        try lock.withLock { _ in
            try db.transaction("re-wrapping the project keys") {
                let s = try db.statement("SELECT id, name, wrapped_key, wrap_nonce FROM projects")
                var rows: [(Int64, String, Envelope.Sealed)] = []
                while try s.step("reading the project keys") {
                    rows.append((s.int64(0), s.string(1) ?? "", Envelope.Sealed(ciphertext: s.blob(2), nonce: s.blob(3))))
                }
                for (id, name, wrapped) in rows {
                    let ad = Envelope.projectKeyAD(storeID: storeID, projectID: id, projectName: name)
                    guard let dataKey = Envelope.open(wrapped, key: masterKey, associatedData: ad) else {
                        throw StoreError.corrupt("the data key of project '\(name)' does not open with this master key")
                    }
                    let rewrapped = Envelope.seal(dataKey, key: newKey, associatedData: ad)
                    dataKey.wipe()
                    try db.statement("UPDATE projects SET wrapped_key = ?, wrap_nonce = ? WHERE id = ?")
                        .bind(1, blob: rewrapped.ciphertext).bind(2, blob: rewrapped.nonce).bind(3, id).run("storing a project key")
                    try insertAudit(project: name, actor: actor, action: "rekey", names: nil,
                                    detail: kdf != nil ? "now a passphrase" : "now a key file")
                }
                try Self.putKeyRecords(db, key: newKey, storeID: storeID, kdf: kdf)
            }
        }
    }

    /// Step 3: the key file swapped (or removed).
    func rekeyFinish(toPassphrase: Bool) throws {
        let dir = try Self.keyDirectory(location)
        if toPassphrase {
            dir.remove(location.keyFileName)
        } else if renameat(dir.descriptor, location.keyFileName + ".new", dir.descriptor, location.keyFileName) != 0 {
            throw StoreError.io(path: location.keyFilePath, errno: errno, action: "install the new key file")
        }
        Self.syncDirectory(dir)
    }

    static func syncDirectory(_ dir: TrustedDirectory) {
        let fd = openat(dir.descriptor, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if fd >= 0 { _ = fsync(fd); close(fd) }
    }

    /// Opening a key-file store: master.key, unless an interrupted rekey
    /// committed and left the new key in master.key.new (then that one is
    /// renamed into place); a master.key.new that opens nothing is removed.
    static func keyFileFinishingRekey(_ dir: TrustedDirectory, _ location: StoreLocation, storeID: [UInt8], check: [UInt8],
                                      notices: inout [String]) throws -> SecureBytes {
        let sealed = Envelope.Sealed(ciphertext: Array(check[Envelope.nonceBytes...]), nonce: Array(check[..<Envelope.nonceBytes]))
        func opens(_ key: SecureBytes) -> Bool {
            Envelope.open(sealed, key: key, associatedData: Envelope.keyCheckAD(storeID: storeID)) != nil
        }
        let keyFileName = location.keyFileName, newKeyFileName = keyFileName + ".new"
        let hasNew = ((try? dir.status(of: newKeyFileName)) ?? nil) != nil
        let current: Result<SecureBytes, Error> = Result { try readKeyFile(at: dir.descriptor, keyFileName, path: location.keyFilePath) }
        if case .success(let key) = current, opens(key) {
            if hasNew {
                dir.remove(newKeyFileName)
                syncDirectory(dir)
                notices.append("an interrupted rekey left \(dir.path(of: newKeyFileName)), which does not open this store; removed it (the old key still opens it)")
            }
            return key
        }
        if hasNew {
            let newKey = try readKeyFile(at: dir.descriptor, newKeyFileName, path: dir.path(of: newKeyFileName))
            if opens(newKey) {
                if renameat(dir.descriptor, newKeyFileName, dir.descriptor, keyFileName) != 0 {
                    throw StoreError.io(path: location.keyFilePath, errno: errno, action: "install the new key file")
                }
                syncDirectory(dir)
                notices.append("finished an interrupted rekey: the new key is now \(location.keyFilePath) and opens this store; the old key does not")
                return newKey
            }
        }
        return try current.get()
    }

    /// A passphrase store whose rekey was interrupted before its old key
    /// file was removed: that file opens nothing now. Said, not removed (it
    /// is not ours to delete if someone put it there).
    static func removeKeyFileLeftByRekey(_ dir: TrustedDirectory, _ location: StoreLocation, notices: inout [String]) {
        for name in [location.keyFileName, location.keyFileName + ".new"] where ((try? dir.status(of: name)) ?? nil) != nil {
            notices.append("\(dir.path(of: name)) does not open this store, which now opens with its passphrase only "
                           + "(left by an interrupted rekey?); remove it")
        }
    }
}
