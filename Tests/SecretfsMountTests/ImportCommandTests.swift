import Foundation
import Glibc
import SecretfsMountSupport
import Testing

/// `secretfs import` on a mounted project: every dotenv syntax, one
/// transaction (a bad line imports nothing), --dry-run that changes nothing,
/// JSON, and no value in any output.
@Suite(.serialized)
struct ImportCommandTests {
    func write(_ f: MountFixture, _ name: String, _ text: String) -> String {
        let path = f.root + "/" + name
        _ = FileManager.default.createFile(atPath: path, contents: Data(text.utf8))
        return path
    }

    static let tricky = "# exported by hand\r\n"
        + "export API_TOKEN=tok-value-0001\r\n"
        + "DB_URL=postgres://u:p@h/db?a=b==\n"
        + "SINGLE='lit \\n value-0002 # kept'\n"
        + "DOUBLE=\"multi\\nline value-0003\"   # comment\n"
        + "REAL_MULTI=\"first value-0004\nsecond\"\n"
        + "SPACED = value-0005   \n"

    @Test func aTrickyEnvFileImportsInOneTransaction() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.mount()
        try f.expectOK(f.sh("echo keep-this-value-0006 > $MNT/DB_URL && echo untouched > $MNT/OTHER"))
        let path = write(f, "tricky.env", Self.tricky)
        // A dry run lists and changes nothing.
        let dry = try f.expectOK(f.secretfs(["import", "demo", path, "--dry-run"]))
        #expect(dry.stdout.contains("new       API_TOKEN\n") && dry.stdout.contains("changed   DB_URL\n"), "\(dry.stdout)")
        #expect(dry.stdout.hasSuffix("dry run: 5 new, 1 changed, 0 unchanged; nothing was written\n"), "\(dry.stdout)")
        #expect(try f.storedNames() == ["DB_URL", "OTHER"])
        #expect(try f.storedValue("DB_URL") == "keep-this-value-0006")

        let o = try f.expectOK(f.secretfs(["import", "demo", path]))
        #expect(o.stdout == "imported into demo: 5 new, 1 changed, 0 unchanged\n", "\(o.stdout)")
        let expected = ["API_TOKEN": "tok-value-0001", "DB_URL": "postgres://u:p@h/db?a=b==", "SINGLE": "lit \\n value-0002 # kept",
                        "DOUBLE": "multi\nline value-0003", "REAL_MULTI": "first value-0004\nsecond", "SPACED": "value-0005",
                        "OTHER": "untouched"]
        for (name, value) in expected { #expect(try f.storedValue(name) == value, "\(name)") }
        let history = try f.expectOK(f.secretfs(["history", "demo", "DB_URL", "--json"])).stdout
        #expect(history.contains("\"action\":\"import\",\"current\":true"), "\(history)")
        // Again: everything unchanged, nothing written.
        let again = try f.expectOK(f.secretfs(["import", "demo", path]))
        #expect(again.stdout == "imported into demo: 0 new, 0 changed, 6 unchanged\n")
        // The mount lists the new names (within a second, see OutsideChangeTests).
        #expect(f.eventually { (try? f.sh("ls $MNT").stdout) == "API_TOKEN\nDB_URL\nDOUBLE\nOTHER\nREAL_MULTI\nSINGLE\nSPACED\n" })
        let outputs = dry.stdout + dry.stderr + o.stdout + o.stderr + again.stdout + history
            + (try f.secretfs(["audit", "demo"]).stdout) + f.logText
        #expect(!outputs.contains("value-000") && !outputs.contains("postgres"), "\(outputs)")
    }

    @Test func aFailingLineRollsBackTheWholeImport() throws {
        let f = try MountFixture()
        defer { f.close() }
        try f.expectOK(f.secretfs(["import", "demo", write(f, "a.env", "A=original-a\n")]))
        let bad = write(f, "bad.env", "A=changed-a\nB=new-b\nC=\"unterminated-secret-value\nD=d\n")
        let o = try f.secretfs(["import", "demo", bad])
        #expect(o.status == 1, "\(o.stderr)")
        #expect(o.stderr == "secretfs: error: \(bad): line 3 (C): unterminated double quote\n"
                + "hint: nothing was imported; fix that line and run the import again\n", "\(o.stderr)")
        #expect(try f.storedNames() == ["A"])
        #expect(try f.storedValue("A") == "original-a")
        // Several bad lines: each is listed, in the one voice.
        let worse = write(f, "worse.env", "A=x\nsk-live-pasted-value\nB=1\nB=2\n")
        let w = try f.secretfs(["import", "demo", worse])
        #expect(w.status == 1 && w.stderr == "secretfs: error: \(worse): line 2: not a valid name before '=' (names match [A-Za-z_][A-Za-z0-9_]*)\n"
                + "secretfs: error: \(worse): line 4 (B): given twice (first on line 3)\n"
                + "hint: nothing was imported; fix those lines and run the import again\n", "\(w.stderr)")
        #expect(try f.storedValue("A") == "original-a")
        let json = write(f, "v.json", "{\"A\": \"json-a\", \"B\": \"line\\nbreak\"}")
        try f.expectOK(f.secretfs(["import", "demo", json]))
        #expect(try f.storedValue("A") == "json-a" && f.storedValue("B") == "line\nbreak")
        let stdin = try f.expectOK(f.secretfs(["import", "demo", "-", "--format", "json"], stdin: "{\"C\": \"from-stdin\"}"))
        #expect(stdin.stdout.contains("1 new"))
        #expect(try f.storedValue("C") == "from-stdin")
        #expect(try f.secretfs(["import", "demo", json, "--format", "yaml"]).status == 64)
        let badJSON = try f.secretfs(["import", "demo", write(f, "b.json", "{\"A\": 1}")])
        #expect(badJSON.status == 1 && badJSON.stderr.contains("line 1 (A): the value is not a string"))
    }
}
