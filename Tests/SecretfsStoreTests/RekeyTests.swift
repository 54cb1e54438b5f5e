import Foundation
import Glibc
@testable import SecretfsStore
import SecureMemory
import Testing

/// rekey re-wraps every data key under a new master key; after a stop at any
/// step exactly one of the two keys opens the store, and the open says so.
struct RekeyTests {
    func bytes(_ s: String) -> SecureBytes { Array(s.utf8).withUnsafeBytes { SecureBytes(copying: $0) } }
    func string(_ b: SecureBytes?) -> String? { b.map { $0.withUnsafeBytes { String(decoding: $0, as: UTF8.self) } } }

    func makeStore() throws -> (String, String, StoreLocation) {
        let base = makeTempDirectory("secretfs-rekey")
        let location = StoreLocation(directory: base + "/store")
        let store = try Store.create(at: location, keySource: .keyFile)
        for p in ["alpha", "beta"] {
            try store.createProject(p)
            try store.openProject(p).put("A", value: bytes("value-of-\(p)"), actor: .current)
        }
        // A new key, 0400, and a copy of the old one.
        let newKey = base + "/new.key"
        FileManager.default.createFile(atPath: newKey, contents: Data((0..<32).map { UInt8($0) }))
        chmod(newKey, 0o400)
        let old = base + "/old.key"
        try FileManager.default.copyItem(atPath: location.keyFilePath, toPath: old)
        return (base, newKey, location)
    }

    func values(_ location: StoreLocation, _ source: MasterKeySource = .keyFile) throws -> [String?] {
        let s = try Store.open(at: location, keySource: source)
        return try ["alpha", "beta"].map { try string(s.openProject($0).value("A")) }
    }

    func putBack(_ base: String, _ location: StoreLocation) {
        unlink(location.keyFilePath)
        try? FileManager.default.copyItem(atPath: base + "/old.key", toPath: location.keyFilePath)
    }

    @Test func aNewKeyFileReplacesTheOldOne() throws {
        let (base, newKey, location) = try makeStore()
        defer { removeTree(base) }
        let mounted = try Store.open(at: location, keySource: .keyFile).openProject("alpha")
        try Store.open(at: location, keySource: .keyFile).rekey(to: .keyFile(newKey))
        #expect(try values(location) == ["value-of-alpha", "value-of-beta"])
        #expect(FileManager.default.contents(atPath: location.keyFilePath) == FileManager.default.contents(atPath: newKey))
        #expect(access(location.directory + "/master.key.new", F_OK) != 0)
        // A vault opened before (a mount) keeps its data key and keeps working.
        try mounted.put("B", value: bytes("after-rekey"), actor: .current)
        #expect(string(try mounted.value("B")) == "after-rekey")
        #expect(try Store.open(at: location, keySource: .keyFile).auditEvents(project: "beta").last?.action == "rekey")
        putBack(base, location)
        #expect(throws: StoreError.wrongKey(tried: "key file \(location.keyFilePath)", backup: false)) { _ = try Store.open(at: location, keySource: .keyFile) }
    }

    @Test func aStopBeforeTheCommitLeavesTheOldKey() throws {
        let (base, newKey, location) = try makeStore()
        defer { removeTree(base) }
        let store = try Store.open(at: location, keySource: .keyFile)
        _ = try store.rekeyPrepare(.keyFile(newKey))
        #expect(access(location.directory + "/master.key.new", F_OK) == 0)
        let reopened = try Store.open(at: location, keySource: .keyFile)
        #expect(reopened.notices.count == 1 && reopened.notices[0].contains("does not open this store; removed it"))
        #expect(access(location.directory + "/master.key.new", F_OK) != 0)
        #expect(try values(location) == ["value-of-alpha", "value-of-beta"])
    }

    @Test func aStopAfterTheCommitLeavesOnlyTheNewKey() throws {
        let (base, newKey, location) = try makeStore()
        defer { removeTree(base) }
        let store = try Store.open(at: location, keySource: .keyFile)
        let (key, kdf) = try store.rekeyPrepare(.keyFile(newKey))
        try store.rekeyCommit(newKey: key, kdf: kdf, actor: .current)
        // The old master.key is still in place and no longer opens the store;
        // the next open finishes the swap and says so.
        let reopened = try Store.open(at: location, keySource: .keyFile)
        #expect(reopened.notices.count == 1 && reopened.notices[0].hasPrefix("finished an interrupted rekey"), "\(reopened.notices)")
        #expect(try values(location) == ["value-of-alpha", "value-of-beta"])
        #expect(FileManager.default.contents(atPath: location.keyFilePath) == FileManager.default.contents(atPath: newKey))
        putBack(base, location)
        #expect(throws: StoreError.wrongKey(tried: "key file \(location.keyFilePath)", backup: false)) { _ = try Store.open(at: location, keySource: .keyFile) }
    }

    @Test func toAPassphraseAndBack() throws {
        let (base, newKey, location) = try makeStore()
        defer { removeTree(base) }
        let pass = base + "/pass"
        FileManager.default.createFile(atPath: pass, contents: Data("correct horse\n".utf8))
        chmod(pass, 0o600)
        try Store.open(at: location, keySource: .keyFile).rekey(to: .passphraseFile(pass))
        #expect(access(location.keyFilePath, F_OK) != 0)
        #expect(try values(location, .passphraseFile(pass)) == ["value-of-alpha", "value-of-beta"])
        #expect(throws: StoreError.passphraseRequired) { _ = try Store.open(at: location, keySource: .keyFile) }
        try Store.open(at: location, keySource: .passphraseFile(pass)).rekey(to: .keyFile(newKey))
        #expect(try values(location) == ["value-of-alpha", "value-of-beta"])
        #expect(throws: StoreError.passphraseNotExpected) { _ = try Store.open(at: location, keySource: .passphraseFile(pass)) }
    }
}
