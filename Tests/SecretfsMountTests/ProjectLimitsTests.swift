import Foundation
import Glibc
import SecretfsMountSupport
import Testing

/// `project create --keep-versions/--keep-deleted` and `project set`: the
/// limits reach the store, show in `project list --json`, and bad values are
/// usage errors in the one voice.
@Suite(.serialized)
struct ProjectLimitsTests {
    func limits(_ f: MountFixture, _ project: String) throws -> (Int?, Int?) {
        let text = try f.expectOK(f.secretfs(["project", "list", "--json"])).stdout
        for line in text.split(separator: "\n") {
            guard let o = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                  o["project"] as? String == project else { continue }
            return (o["keepVersions"] as? Int, o["keepDeletedDays"] as? Int)
        }
        return (nil, nil)
    }

    @Test func createAndSetChangeTheLimits() throws {
        let f = try MountFixture(project: "small", createProject: false)
        defer { f.close() }
        try f.expectOK(f.secretfs(["project", "create", "demo"]))
        #expect(try limits(f, "demo") == (10, 30))
        let created = try f.expectOK(f.secretfs(["project", "create", "small", "--keep-versions", "2", "--keep-deleted", "5"]))
        #expect(created.stdout == "created project small (keeps 2 versions per name, deleted names 5 days)\n")
        #expect(try limits(f, "small") == (2, 5))
        try f.expectOK(f.secretfs(["project", "set", "small", "--keep-versions", "0"]))
        #expect(try limits(f, "small") == (0, 5))
        let both = try f.expectOK(f.secretfs(["project", "set", "small", "--keep-versions", "3", "--keep-deleted", "1"]))
        #expect(both.stdout == "project small keeps 3 versions per name, deleted names 1 day\n")
        #expect(try limits(f, "small") == (3, 1))
        // The limit holds for values written through a mount.
        try f.mount()
        for i in 0..<5 { try f.expectOK(f.sh("echo limit-\(i) > $MNT/A")) }
        let history = try f.expectOK(f.secretfs(["history", "small", "A", "--json"])).stdout
        #expect(history.split(separator: "\n").count == 3, "\(history)")
    }

    @Test func badLimitsAreUsageErrorsInTheOneVoice() throws {
        let f = try MountFixture()
        defer { f.close() }
        for args in [["project", "create", "x", "--keep-versions", "-1"], ["project", "create", "x", "--keep-deleted", "99999"],
                     ["project", "set", "demo"], ["project", "set", "demo", "--keep-versions", "1001"]] {
            let o = try f.secretfs(args)
            #expect(o.status == 64, "\(args): \(o.stderr)")
            #expect(o.stderr.hasPrefix("secretfs: error: ") && o.stderr.contains("\nhint: see 'secretfs project "), "\(o.stderr)")
        }
        let missing = try f.secretfs(["project", "set", "nope", "--keep-versions", "3"])
        #expect(missing.status == 12 && missing.stderr.hasPrefix("secretfs: error: no project named 'nope'"), "\(missing.stderr)")
        #expect(try f.secretfs(["project", "set", "--help"]).stdout.contains("--keep-versions"))
        // A misspelt option is named as such, not hidden behind "give --keep-versions N".
        let typo = try f.secretfs(["project", "set", "demo", "--keep-version", "3"])
        #expect(typo.status == 64 && typo.stderr.contains("Unknown option '--keep-version'. Did you mean '--keep-versions'?"), "\(typo.stderr)")
        // The hint names the subcommand the arguments reached, and `help` of
        // a command there is not is an error, not the top-level help.
        #expect(try f.secretfs(["store", "copy", "--bogus"]).stderr.contains("hint: see 'secretfs store copy --help'"))
        for (args, hint) in [(["help", "nosuch"], "see 'secretfs --help'"), (["help", "project", "nosuch"], "see 'secretfs project --help'")] {
            let o = try f.secretfs(args)
            #expect(o.status == 64 && o.stdout.isEmpty && o.stderr.contains("no command 'secretfs \(args.dropFirst().joined(separator: " "))'")
                    && o.stderr.contains(hint), "\(args): \(o.status) \(o.stderr)")
        }
        #expect(try f.expectOK(f.secretfs(["help", "project", "set"])).stdout.contains("--keep-versions"))
        // Ages and dates past what a timestamp holds are unreadable, not a trap.
        for since in ["99999999999d", "9223372036854775807s", "2300-01-01"] {
            let o = try f.secretfs(["audit", "demo", "--since", since])
            #expect(o.status == 64 && o.stderr.contains("--since: cannot read"), "\(since): \(o.status) \(o.stderr)")
        }
    }
}
