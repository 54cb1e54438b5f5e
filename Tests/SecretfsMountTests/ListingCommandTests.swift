import Foundation
import Glibc
import SecretfsMountSupport
import Testing

/// `status` and `project list` for people and for tools: one line when
/// there is no store yet, and JSON lines with --json (names, counts, times
/// and mounts; never a value).
@Suite(.serialized)
struct ListingCommandTests {
    @Test func statusWithoutAStoreIsOneLineNotAnError() throws {
        let f = try MountFixture(initStore: false)
        defer { f.close() }
        let o = try f.secretfs(["status"])
        #expect(o.status == 0 && o.stdout == "no store at \(f.storeDir) (create one with 'secretfs init')\n", "\(o.stdout) \(o.stderr)")
        #expect(try f.secretfs(["status", "--json"]).stdout.isEmpty)
    }

    @Test func statusAndProjectListSpeakJSON() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.expectOK(f.secretfs(["project", "create", "other"]))
        try f.mount()
        try f.expectOK(f.sh("echo listing-value > $MNT/A"))
        let status = try f.expectOK(f.secretfs(["status", "--json"])).stdout
        let list = try f.expectOK(f.secretfs(["project", "list", "--json"])).stdout
        for text in [status, list] {
            #expect(!text.contains("listing-value"))
            let objects = text.split(separator: "\n").map {
                try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
            }
            #expect(objects.count == 2 && objects.allSatisfy { $0 != nil }, "\(text)")
            let demo = objects.compactMap { $0 }.first { $0["project"] as? String == "demo" }
            #expect(demo?["secrets"] as? Int == 1, "\(text)")
        }
        let demo = status.split(separator: "\n").first { $0.contains("\"demo\"") } ?? ""
        #expect(demo.contains("\"mountpoint\":\"\(f.mnt)\""), "\(demo)")
    }
}
