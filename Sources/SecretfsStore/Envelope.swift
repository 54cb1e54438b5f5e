import CSodium
import SecureMemory

/// Envelope encryption: a master key wraps one data key per project, and each
/// data key seals that project's values. Both layers use
/// XChaCha20-Poly1305-IETF (`crypto_aead_xchacha20poly1305_ietf_*`) with a
/// random 24-byte nonce per seal (random nonces are safe at this size) and
/// associated data that names exactly where the ciphertext belongs, so a
/// ciphertext copied to another row, project, version or store fails to open.
/// The byte layouts are written down in docs/store-format.md.
enum Envelope {
    static let keyBytes = Int(crypto_aead_xchacha20poly1305_ietf_KEYBYTES)      // 32
    static let nonceBytes = Int(crypto_aead_xchacha20poly1305_ietf_NPUBBYTES)   // 24
    static let tagBytes = Int(crypto_aead_xchacha20poly1305_ietf_ABYTES)        // 16

    /// A sealed box: the ciphertext (message + tag) and its nonce.
    struct Sealed {
        var ciphertext: [UInt8]
        var nonce: [UInt8]
    }

    static func seal(_ plaintext: SecureBytes, key: SecureBytes, associatedData: [UInt8]) -> Sealed {
        plaintext.withUnsafeBytes { seal($0, key: key, associatedData: associatedData) }
    }

    /// Seals bytes that live in the caller's locked memory (no copy).
    static func seal(_ msg: UnsafeRawBufferPointer, key: SecureBytes, associatedData: [UInt8]) -> Sealed {
        precondition(key.count == keyBytes)
        var nonce = [UInt8](repeating: 0, count: nonceBytes)
        randombytes_buf(&nonce, nonceBytes)
        var out = [UInt8](repeating: 0, count: msg.count + tagBytes)
        var outLen: UInt64 = 0
        key.withUnsafeBytes { k in
            _ = crypto_aead_xchacha20poly1305_ietf_encrypt(
                &out, &outLen,
                msg.baseAddress?.assumingMemoryBound(to: UInt8.self), UInt64(msg.count),
                associatedData, UInt64(associatedData.count),
                nil, nonce, k.baseAddress!.assumingMemoryBound(to: UInt8.self))
        }
        return Sealed(ciphertext: out, nonce: nonce)
    }

    /// Opens a sealed box into locked memory; nil when the tag does not verify
    /// (wrong key, wrong associated data, or tampering).
    /// The size of what `sealed` opens to (0 for a malformed one, which then fails to open).
    static func plaintextSize(_ sealed: Sealed) -> Int { max(0, sealed.ciphertext.count - tagBytes) }

    /// Opens `sealed` into `out`, whose count must be `plaintextSize(sealed)`:
    /// false (and `out` zeroed) if it does not open.
    static func open(_ sealed: Sealed, key: SecureBytes, associatedData: [UInt8], into out: SecureBytes) -> Bool {
        guard sealed.nonce.count == nonceBytes, sealed.ciphertext.count >= tagBytes, key.count == keyBytes,
              out.count == plaintextSize(sealed) else { return false }
        var plainLen: UInt64 = 0
        let rc = out.withUnsafeMutableCapacity { o in
            key.withUnsafeBytes { k in
                crypto_aead_xchacha20poly1305_ietf_decrypt(
                    o.baseAddress!.assumingMemoryBound(to: UInt8.self), &plainLen, nil,
                    sealed.ciphertext, UInt64(sealed.ciphertext.count),
                    associatedData, UInt64(associatedData.count),
                    sealed.nonce, k.baseAddress!.assumingMemoryBound(to: UInt8.self))
            }
        }
        guard rc == 0, Int(plainLen) == out.count else {
            out.wipe()
            return false
        }
        return true
    }

    /// Opens `sealed` into a new buffer of its own.
    static func open(_ sealed: Sealed, key: SecureBytes, associatedData: [UInt8]) -> SecureBytes? {
        guard sealed.ciphertext.count >= tagBytes else { return nil }
        let size = plaintextSize(sealed)
        let plain = SecureBytes(capacity: size, count: size)
        return open(sealed, key: key, associatedData: associatedData, into: plain) ? plain : nil
    }

    // MARK: Associated data (length-prefixed so no two tuples encode alike)

    static func keyCheckAD(storeID: [UInt8]) -> [UInt8] {
        var ad = Array("secretfs/v1/key-check".utf8)
        appendField(&ad, storeID)
        return ad
    }

    static func projectKeyAD(storeID: [UInt8], projectID: Int64, projectName: String) -> [UInt8] {
        var ad = Array("secretfs/v1/project-key".utf8)
        appendField(&ad, storeID)
        appendUInt64(&ad, UInt64(bitPattern: projectID))
        appendField(&ad, Array(projectName.utf8))
        return ad
    }

    /// A data key sealed under the key of the next (forward) or previous
    /// (backward) generation during a rotation.
    static func keyLinkAD(projectID: Int64, generation: Int64, forward: Bool) -> [UInt8] {
        var ad = Array((forward ? "secretfs/v1/key-link-forward" : "secretfs/v1/key-link-backward").utf8)
        appendUInt64(&ad, UInt64(bitPattern: projectID))
        appendUInt64(&ad, UInt64(bitPattern: generation))
        return ad
    }

    static func valueAD(projectID: Int64, version: Int64, name: String) -> [UInt8] {
        var ad = Array("secretfs/v1/value".utf8)
        appendUInt64(&ad, UInt64(bitPattern: projectID))
        appendUInt64(&ad, UInt64(bitPattern: version))
        appendField(&ad, Array(name.utf8))
        return ad
    }

    private static func appendUInt64(_ out: inout [UInt8], _ v: UInt64) {
        for i in 0..<8 { out.append(UInt8(truncatingIfNeeded: v >> (8 * UInt64(i)))) }
    }

    private static func appendField(_ out: inout [UInt8], _ bytes: [UInt8]) {
        let n = UInt32(bytes.count)
        for i in 0..<4 { out.append(UInt8(truncatingIfNeeded: n >> (8 * UInt32(i)))) }
        out.append(contentsOf: bytes)
    }
}

/// Argon2id key derivation for passphrase-protected stores.
public struct KeyDerivation: Sendable, Equatable {
    public var opsLimit: UInt64
    public var memLimit: UInt64
    public var salt: [UInt8]

    public static let saltBytes = Int(crypto_pwhash_SALTBYTES)

    /// 3 passes over 64 MiB: about 0.1 s on the reference machine (PLATFORM-NOTES),
    /// interactive enough for a mount and still far costlier than a hash to guess.
    public static func fresh(opsLimit: UInt64 = 3, memLimit: UInt64 = 64 << 20) -> KeyDerivation {
        Sodium.ensureInitialised()
        var salt = [UInt8](repeating: 0, count: saltBytes)
        randombytes_buf(&salt, saltBytes)
        return KeyDerivation(opsLimit: opsLimit, memLimit: memLimit, salt: salt)
    }

    /// What a store's parameters may be: from libsodium's minimums to
    /// libsodium's own "sensitive" level (4 passes) with room to spare, and
    /// 1 GiB, its sensitive memory. The parameters come from the database (or
    /// a backup), so a value outside these is a damaged store, not a reason
    /// to trap, nor to let whoever wrote the row make every open take hours
    /// or allocate terabytes (libsodium itself takes up to 2^32-1 passes and
    /// 4 TiB). `fresh()` makes 3 passes over 64 MiB.
    static let maxOpsLimit: UInt64 = 16
    static let maxMemLimit: UInt64 = 1 << 30
    static var opsLimitRange: ClosedRange<UInt64> {
        UInt64(crypto_pwhash_argon2id_opslimit_min())...min(UInt64(crypto_pwhash_argon2id_opslimit_max()), maxOpsLimit)
    }
    static var memLimitRange: ClosedRange<UInt64> {
        UInt64(crypto_pwhash_argon2id_memlimit_min())...min(UInt64(crypto_pwhash_argon2id_memlimit_max()), maxMemLimit)
    }

    /// Throws "store damaged" for parameters libsodium cannot take.
    func validate() throws(StoreError) {
        guard salt.count == Self.saltBytes else {
            throw .corrupt("the key derivation salt is \(salt.count) bytes, not \(Self.saltBytes)")
        }
        guard Self.opsLimitRange.contains(opsLimit) else {
            throw .corrupt("the key derivation pass count \(opsLimit) is outside \(Self.opsLimitRange.lowerBound)...\(Self.opsLimitRange.upperBound)")
        }
        guard Self.memLimitRange.contains(memLimit) else {
            throw .corrupt("the key derivation memory limit \(memLimit) is outside \(Self.memLimitRange.lowerBound)...\(Self.memLimitRange.upperBound) bytes")
        }
    }

    func deriveKey(from passphrase: SecureBytes) throws -> SecureBytes {
        try validate()
        let key = SecureBytes(capacity: Envelope.keyBytes, count: Envelope.keyBytes)
        let rc = key.withUnsafeMutableBytes { out in
            passphrase.withUnsafeBytes { pw in
                crypto_pwhash(out.baseAddress!.assumingMemoryBound(to: UInt8.self), UInt64(out.count),
                              pw.baseAddress!.assumingMemoryBound(to: CChar.self),
                              UInt64(pw.count), salt, opsLimit, Int(memLimit),
                              crypto_pwhash_ALG_ARGON2ID13)
            }
        }
        guard rc == 0 else { throw StoreError.keyDerivationFailed }
        return key
    }
}
