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
        #expect(o.status == 0 && o.stdout == "no store at \(f.storeDisplayName) (create one with 'secretfs init')\n", "\(o.stdout) \(o.stderr)")
        #expect(try f.secretfs(["status", "--json"]).stdout.isEmpty)
    }

    @Test func aDatabaseURLWithAPasswordIsAClearUsageErrorThatDoesNotEchoIt() throws {
        let f = try MountFixture(initStore: false)
        defer { f.close() }
        for store in ["postgresql://app:s3cret-pw@db.example/secrets", "host=db password=s3cret-pw dbname=secrets"] {
            let o = try f.secretfs(["status", "--store", store])
            #expect(o.status == 64 && o.stderr.contains("holds a password") && o.stderr.contains("~/.pgpass"), "\(o.stderr)")
            #expect(!o.stderr.contains("s3cret-pw"))
        }
    }

    @Test func anUnreachableDatabaseIsAClearStoreError() throws {
        let f = try MountFixture(initStore: false)
        defer { f.close() }
        // Port 1 on loopback: refused at once.
        let o = try f.secretfs(["project", "list", "--store", "postgresql://nobody@127.0.0.1:1/secrets"])
        #expect(o.status == 10 && o.stderr.contains("store unavailable: cannot reach postgresql://nobody@127.0.0.1:1/secrets"), "\(o.stderr)")
        #expect(o.stderr.contains("hint:"))
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

        // A delete is a change too: LAST CHANGE moves with it.
        func lastChange() throws -> String {
            let line = try f.expectOK(f.secretfs(["project", "list", "--json"])).stdout.split(separator: "\n")
                .first { $0.contains("\"demo\"") } ?? ""
            let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            return object?["lastChange"] as? String ?? ""
        }
        let written = try lastChange()
        try f.expectOK(f.sh("sleep 1.1 && rm $MNT/A"))
        let deleted = try lastChange()
        #expect(!written.isEmpty && deleted > written, "\(written) -> \(deleted)")
    }

    @Test func lsListsNamesWithoutAMountAndWithoutValues() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount()
        try f.expectOK(f.sh("echo ls-value-1 > $MNT/B_NAME && echo ls-value-2 > $MNT/A_NAME && echo gone > $MNT/C && rm $MNT/C"))
        try f.unmount()
        let text = try f.expectOK(f.secretfs(["ls", "demo", "--json"])).stdout
        let objects = text.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        #expect(objects.map { $0["name"] as? String } == ["A_NAME", "B_NAME"], "\(text)")
        #expect(objects.allSatisfy { ($0["updated"] as? String)?.hasSuffix("Z") == true && $0["uid"] as? Int == Int(getuid()) })
        let table = try f.expectOK(f.secretfs(["ls", "demo"])).stdout
        #expect(table.split(separator: "\n").map { $0.split(separator: " ").first.map(String.init) } == ["A_NAME", "B_NAME"])
        #expect(!(text + table).contains("ls-value") && !(text + table).contains("\"size\""))
        #expect(try f.secretfs(["ls", "nope"]).status == 12)
    }
}
