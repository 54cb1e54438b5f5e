import Foundation
import Glibc
import SecretfsFS
import SecretfsMountSupport
import Testing

/// `resolve`, `redact` and `run` end to end: values set through a real mount,
/// read back over its privileged socket by the real binary.
@Suite(.serialized)
struct ResolveAndRedactTests {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures").path

    func mountedDemo() throws -> MountFixture {
        let f = try MountFixture()
        try f.mount()
        try f.expectOK(f.sh("""
            printf 'xoxb-bot-token-1234' > $MNT/DEMO_BOT_SLACK_BOT_TOKEN
            printf 'signing "secret" \\\\ with quotes' > $MNT/DEMO_BOT_SLACK_SIGNING_SECRET
            printf 'sk-ant-api-key-5678' > $MNT/ANTHROPIC_API_KEY
            printf 'api-token-`${x}`' > $MNT/API_TOKEN
            printf 'never-referenced-value' > $MNT/UNUSED
            """))
        return f
    }

    @Test func resolvesTheFlowFixtureFetchingOnlyReferencedNames() throws {
        let f = try mountedDemo()
        defer { f.close() }
        let o = try f.expectOK(f.secretfs(["resolve", "--project", "demo", Self.fixtures + "/demo-bot.flow.yaml"]))
        #expect(o.stdout.contains(#"botToken: !expr "\"xoxb-bot-token-1234\"""#), "\(o.stdout)")
        #expect(o.stdout.contains("sk-ant-api-key-5678"))
        #expect(o.stdout.contains("defaultChannel: \"#alerts\""), "literals are unchanged")
        #expect(o.stdout.contains("Secrets are referenced as secrets.NAME; this note is plain text"))
        #expect(!o.stdout.contains("never-referenced-value"))
        let input = try String(contentsOfFile: Self.fixtures + "/demo-bot.flow.yaml", encoding: .utf8)
        #expect(o.stdout.components(separatedBy: "!expr").count == input.components(separatedBy: "!expr").count,
                "every tag is kept")
        let audit = try f.expectOK(f.secretfs(["audit", "demo"]))
        let gets = audit.stdout.split(separator: "\n").filter { $0.contains("  get  ") }
        #expect(gets.count == 1, "\(audit.stdout)")
        #expect(gets.first?.contains("API_TOKEN") == true)
        #expect(gets.first?.contains("UNUSED") == false, "only referenced secrets are fetched")
    }

    @Test func configAndExpressionAndBindings() throws {
        let f = try mountedDemo()
        defer { f.close() }
        let config = try f.expectOK(f.secretfs(["resolve", "--project", "demo", Self.fixtures + "/demo-bot.installation.json"]))
        let json = try JSONSerialization.jsonObject(with: Data(config.stdout.utf8)) as? [String: String]
        #expect(json?["botToken"] == #""xoxb-bot-token-1234""#)
        #expect(json?["team"] == #""T0123ABCD""#)
        let expr = try f.expectOK(f.secretfs(["resolve", "--project", "demo", "--format", "expr", "-"],
                                             stdin: "`Bearer ${secrets.ANTHROPIC_API_KEY}` + secrets['API_TOKEN']"))
        let node = try f.sh("node -e 'process.stdout.write(String(eval(process.argv[1])))' '\(expr.stdout)'")
        #expect(node.stdout == "Bearer sk-ant-api-key-5678api-token-`${x}`", "\(expr.stdout) -> \(node.stdout) \(node.stderr)")
        let bindings = try f.expectOK(f.secretfs(["resolve", "--project", "demo", "--bindings", "--format", "expr", "-"],
                                                 stdin: "secrets.API_TOKEN + secrets.DEMO_BOT_SLACK_SIGNING_SECRET"))
        let b = try JSONSerialization.jsonObject(with: Data(bindings.stdout.utf8)) as? [String: String]
        #expect(b == ["API_TOKEN": "api-token-`${x}`", "DEMO_BOT_SLACK_SIGNING_SECRET": #"signing "secret" \ with quotes"#])
        #expect(config.stderr.isEmpty && expr.stderr.isEmpty && bindings.stderr.isEmpty, "\(config.stderr)\(expr.stderr)\(bindings.stderr)")
        // The config read as a flow (or as one expression) is valid and
        // injects nothing: exit 0, with a warning that names the format.
        for (format, meaning) in [("flow", "only scalars tagged !expr"), ("expr", "one JavaScript expression")] {
            for extra in [[], ["--bindings"]] {
                let o = try f.expectOK(f.secretfs(["resolve", "--project", "demo", "--format", format] + extra
                                                  + [Self.fixtures + "/demo-bot.installation.json"]))
                #expect(o.stderr.contains("warning: ") && o.stderr.contains("nothing was injected") && o.stderr.contains(meaning),
                        "\(format) \(extra): \(o.stderr)")
            }
        }
    }

    @Test func problemsAreAllReportedWithLocationsAndNothingOnStdout() throws {
        let f = try mountedDemo()
        defer { f.close() }
        try f.expectOK(f.sh("printf 'bad-\\377-utf8' > $MNT/NOT_UTF8"))
        let doc = """
            blocks:
              - name: First
                config:
                  a: !expr secrets.MISSING_ONE
                  b: !expr 'secrets[key] + secrets.NOT_UTF8'
                  c: not an expression secrets.ALSO_MISSING
            """
        let o = try f.secretfs(["resolve", "--project", "demo", "--format", "flow", "-"], stdin: doc)
        #expect(o.status == 14)
        #expect(o.stdout.isEmpty)
        #expect(o.stderr.contains("MISSING_ONE") && o.stderr.contains("blocks[0]") && o.stderr.contains("4:"), "\(o.stderr)")
        #expect(o.stderr.contains("secrets[key]") || o.stderr.contains("statically"), "\(o.stderr)")
        #expect(!o.stderr.contains("ALSO_MISSING"), "literals are not expressions")
        #expect(!o.stderr.contains("bad-"), "no value in errors")
        let utf = try f.secretfs(["resolve", "--project", "demo", "--format", "expr", "-"], stdin: "secrets.NOT_UTF8")
        #expect(utf.status == 14)
        #expect(utf.stderr.contains("NOT_UTF8") && !utf.stderr.contains("bad-"), "\(utf.stderr)")
    }

    @Test func anUnmountedProjectNamesTheSocketTried() throws {
        let f = try MountFixture()
        defer { f.close() }
        let o = try f.secretfs(["resolve", "--project", "demo", "--format", "expr", "-"], stdin: "secrets.A")
        #expect(o.status == 15)
        #expect(o.stderr.contains(f.runtimeDir + "/demo.sock"), "\(o.stderr)")
        #expect(o.stderr.contains("hint: "))
        // The hint says what is mounted there, so a misspelt project shows.
        try f.mount()
        let typo = try f.secretfs(["resolve", "--project", "dmeo", "--format", "expr", "-"], stdin: "secrets.A")
        #expect(typo.status == 15 && typo.stderr.contains("(mounted with this runtime directory: demo)"), "\(typo.stderr)")
    }

    @Test func aProjectNameThatIsNotOneIsAUsageErrorNeverAPath() throws {
        let f = try mountedDemo()
        defer { f.close() }
        // `../run/demo` would name demo's socket by path; it is refused
        // before anything is opened, as by every command that takes a project.
        let traversal = "../" + URL(fileURLWithPath: f.runtimeDir).lastPathComponent + "/demo"
        for args in [["resolve", "--project", traversal, "--format", "expr", "-"], ["redact", "--project", traversal],
                     ["run", "--project", traversal, "--env", "API_TOKEN", "--", "true"], ["audit", "bad-p"]] {
            let o = try f.secretfs(args, stdin: "secrets.API_TOKEN")
            #expect(o.status == 64 && o.stderr.contains("is not a valid project name") && o.stdout.isEmpty, "\(args): \(o.status) \(o.stdout) \(o.stderr)")
        }
        // run's variables: names a shell can use, each once.
        for (env, message) in [(["--env", "bad-var=API_TOKEN"], "the variable name must match"),
                               (["--env", "=API_TOKEN"], "the variable name must match"),
                               (["--env", "X=API_TOKEN", "--env", "X=ANTHROPIC_API_KEY"], "sets X twice")] {
            let o = try f.secretfs(["run", "--project", "demo"] + env + ["--", "env"])
            #expect(o.status == 64 && o.stderr.contains(message) && o.stdout.isEmpty, "\(env): \(o.status) \(o.stderr)")
        }
    }

    @Test func redactMasksValuesAndEncodingsAndReportsShortOnes() throws {
        let f = try mountedDemo()
        defer { f.close() }
        try f.expectOK(f.sh("printf 'abc' > $MNT/TOO_SHORT"))
        let input = """
            plain line stays
            token=sk-ant-api-key-5678 and again sk-ant-api-key-5678
            basic \(Data("user:sk-ant-api-key-5678".utf8).base64EncodedString())
            json {"k":"signing \\"secret\\" \\\\ with quotes"}
            short abc stays

            """
        let o = try f.expectOK(f.secretfs(["redact", "--project", "demo"], stdin: input))
        #expect(o.stdout.hasPrefix("plain line stays\ntoken=[REDACTED] and again [REDACTED]\n"), "\(o.stdout)")
        #expect(!o.stdout.contains("sk-ant"))
        #expect(!o.stdout.contains(String(Data("user:sk-ant-api-key-5678".utf8).base64EncodedString().dropFirst(8).prefix(12))))
        #expect(!o.stdout.contains("with quotes"), "\(o.stdout)")
        #expect(o.stdout.contains("short abc stays"))
        #expect(o.stderr.contains("TOO_SHORT"), "the short value is reported, not silently skipped: \(o.stderr)")
        #expect(!o.stderr.contains("abc"))
        // --quiet silences that report only; --mask chooses the mask.
        let quiet = try f.expectOK(f.secretfs(["redact", "--project", "demo", "-q", "--mask", "***"], stdin: input))
        #expect(quiet.stderr.isEmpty, "\(quiet.stderr)")
        #expect(quiet.stdout.hasPrefix("plain line stays\ntoken=*** and again ***\n") && quiet.stdout.contains("short abc stays"), "\(quiet.stdout)")
    }

    @Test func runNamesAShortValueItWasGivenOnceAndQuietSilencesIt() throws {
        let f = try mountedDemo()
        defer { f.close() }
        try f.expectOK(f.sh("printf 'abc' > $MNT/TOO_SHORT"))
        // The value handed to the command is the project's value: one
        // warning, under the secret's name.
        let o = try f.expectOK(f.secretfs(["run", "--project", "demo", "--env", "S=TOO_SHORT", "--", "sh", "-c", "echo \"$S\""]))
        #expect(o.stdout == "abc\n")
        #expect(o.stderr.components(separatedBy: "not masking").count == 2 && o.stderr.contains("not masking TOO_SHORT:"), "\(o.stderr)")
        let gets = { try f.expectOK(f.secretfs(["audit", "demo"])).stdout.components(separatedBy: "  get  ").count }
        let before = try gets()
        let quiet = try f.expectOK(f.secretfs(["run", "--project", "demo", "--quiet", "--mask", "<hidden>", "--env", "T=API_TOKEN", "--",
                                               "sh", "-c", "echo \"$T\""]))
        #expect(quiet.stderr.isEmpty && quiet.stdout == "<hidden>\n", "\(quiet.stdout) \(quiet.stderr)")
        // One fetch for the redactor and the environment: one audit row.
        #expect(try gets() == before + 1)
        // The value the command was given stays masked after the project
        // replaces it (and the new one is masked too).
        let changed = try f.expectOK(f.secretfs(["run", "--project", "demo", "--env", "T=API_TOKEN", "--", "sh", "-c",
                                                 "printf 'replaced-during-run' > \(f.mnt)/API_TOKEN; sleep 1; echo \"old $T\"; echo new replaced-during-run"]))
        #expect(changed.stdout == "old [REDACTED]\nnew [REDACTED]\n", "\(changed.stdout)")
    }

    @Test func runInjectsAndRedactsAndPassesTheExitStatus() throws {
        let f = try mountedDemo()
        defer { f.close() }
        let o = try f.secretfs(["run", "--project", "demo", "--env", "TOKEN=ANTHROPIC_API_KEY", "--env", "API_TOKEN", "--",
                                "sh", "-c", #"echo "out $TOKEN"; printf '%s' "$TOKEN" | base64; echo "err $API_TOKEN" >&2; [ -n "$API_TOKEN" ] && exit 3"#])
        #expect(o.status == 3)
        #expect(o.stdout.hasPrefix("out [REDACTED]\n"), "\(o.stdout)")
        #expect(!o.stdout.contains("sk-ant") && !o.stdout.contains(Data("sk-ant-api-key-5678".utf8).base64EncodedString().prefix(12)))
        #expect(o.stderr.contains("err [REDACTED]"), "\(o.stderr)")
        // The same value in several encodings, all masked.
        let encoded = try f.secretfs(["run", "--project", "demo", "--env", "SIGNING=DEMO_BOT_SLACK_SIGNING_SECRET", "--",
                                      "python3", "-c", """
            import os, json, base64, urllib.parse, html
            v = os.environ["SIGNING"]
            print("plain", v)
            print("json", json.dumps({"s": v}))
            print("url", urllib.parse.quote(v), urllib.parse.quote_plus(v))
            print("b64", base64.b64encode(("user:" + v).encode()).decode(), base64.urlsafe_b64encode(v.encode()).decode())
            print("html", html.escape(v))
            """])
        #expect(encoded.status == 0, "\(encoded.stderr)")
        let lines = encoded.stdout.split(separator: "\n")
        #expect(lines.count == 5)
        for line in lines {
            #expect(!line.contains("quotes") && !line.contains("signing"), "\(line)")
            #expect(line.contains("[REDACTED]"), "\(line)")
        }
        // SIGTERM to secretfs reaches the child; secretfs reports how it ended.
        let term = try f.secretfs(["run", "--project", "demo", "--", "sh", "-c", "kill -TERM $PPID; exec sleep 5"])
        #expect(term.status == 143, "\(term.status) \(term.stdout)")
        let missing = try f.secretfs(["run", "--project", "demo", "--env", "X=NOPE", "--", "true"])
        #expect(missing.status == 14)
        #expect(missing.stderr.contains("NOPE"))
        // A value with a NUL byte cannot be an environment variable: the
        // command would see it cut short, so run refuses it by name.
        try f.expectOK(f.sh("printf 'before\\000after' > $MNT/WITH_NUL"))
        let nul = try f.secretfs(["run", "--project", "demo", "--env", "X=WITH_NUL", "--", "sh", "-c", "echo started"])
        #expect(nul.status == 14, "\(nul.status) \(nul.stderr)")
        #expect(nul.stderr.contains("'WITH_NUL'") && nul.stderr.contains("NUL byte"), "\(nul.stderr)")
        #expect(!nul.stdout.contains("started") && !nul.stderr.contains("before") && !nul.stderr.contains("after"), "\(nul.stdout) \(nul.stderr)")
        // A descriptor the caller left open does not reach the command: it
        // would be a way around the redaction of its output.
        let fd7 = try f.sh("exec 7>\(f.root)/fd7.txt; \(MountFixture.binary) run --project demo --env T=API_TOKEN -- sh -c 'echo \"$T\" >&7'; echo \"exit $?\"")
        #expect(fd7.stdout.contains("exit 2") && fd7.stderr.contains("Bad file descriptor"), "\(fd7.stdout) \(fd7.stderr)")
        #expect(try String(contentsOfFile: f.root + "/fd7.txt", encoding: .utf8).isEmpty)
        // A command that cannot start exits as env(1) says.
        let notFound = try f.secretfs(["run", "--project", "demo", "--", "/nonexistent/command"])
        #expect(notFound.status == 127 && notFound.stderr.contains("No such file"), "\(notFound.status) \(notFound.stderr)")
        let notExecutable = try f.secretfs(["run", "--project", "demo", "--", "/etc/passwd"])
        #expect(notExecutable.status == 126 && notExecutable.stderr.contains("Permission denied"), "\(notExecutable.status) \(notExecutable.stderr)")
    }

    @Test func redactPicksUpChangedValuesWhileRunning() throws {
        let f = try mountedDemo()
        defer { f.close() }
        // The redactor reads from a FIFO; a value set after it started is masked too.
        let script = """
            mkfifo feed
            "$SECRETFS" redact --project demo < feed > redacted.txt 2>redact.err &
            exec 3> feed
            echo 'before sk-ant-api-key-5678' >&3
            sleep 0.5
            printf 'brand-new-secret-value' > $MNT/NEW_ONE
            sleep 1.5
            echo 'after brand-new-secret-value' >&3
            exec 3>&-
            wait
            cat redacted.txt
            """
        let o = try f.expectOK(f.sh("SECRETFS='\(MountFixture.binary)'; " + script))
        #expect(o.stdout == "before [REDACTED]\nafter [REDACTED]\n", "\(o.stdout)")
    }

    @Test func throughTheResolverDaemon() throws {
        let f = try mountedDemo()
        defer { f.close() }
        let sock = f.root + "/resolver.sock"
        // The daemon runs in the background for the length of the script; its
        // log goes to a file that is checked for values afterwards.
        let script = """
            "$SECRETFS" resolver --listen \(sock) > resolver.log 2>&1 &
            daemon=$!
            for i in $(seq 50); do [ -S \(sock) ] && break; sleep 0.1; done
            "$SECRETFS" resolve --project demo --resolver \(sock) --format expr - <<'EOF2' > out1.txt
            `Bearer ${secrets.ANTHROPIC_API_KEY}`
            EOF2
            printf 'rotated-key-0000' > $MNT/ANTHROPIC_API_KEY
            # The change reaches the daemon asynchronously (milliseconds);
            # allow a loaded machine up to 5 s before calling it stale.
            for i in $(seq 50); do
              echo '`Bearer ${secrets.ANTHROPIC_API_KEY}`' |
                "$SECRETFS" resolve --project demo --resolver \(sock) --format expr - > out2.txt
              grep -q rotated-key out2.txt && break
              sleep 0.1
            done
            echo 'log rotated-key-0000 line' | "$SECRETFS" redact --project demo --resolver \(sock) > out3.txt
            "$SECRETFS" resolve --project demo --resolver \(sock) --format expr - <<'EOF2' > out4.txt 2> err4.txt
            secrets.NOPE
            EOF2
            echo "missing=$?"
            kill $daemon; wait $daemon
            """
        let o = try f.expectOK(f.sh("SECRETFS='\(MountFixture.binary)'; " + script))
        func read(_ name: String) -> String { (try? String(contentsOfFile: f.root + "/" + name, encoding: .utf8)) ?? "" }
        #expect(read("out1.txt").contains("sk-ant-api-key-5678"), "\(read("out1.txt")) \(read("resolver.log"))")
        #expect(read("out2.txt").contains("rotated-key-0000"), "the daemon dropped its cached value on change")
        #expect(read("out3.txt") == "log [REDACTED] line\n")
        #expect(o.stdout.contains("missing=14"))
        #expect(read("err4.txt").contains("NOPE"))
        let log = read("resolver.log")
        #expect(!log.contains("sk-ant") && !log.contains("rotated-key"), "no value in the daemon's log")
        // Another uid is refused on the daemon's socket.
        let sock2 = f.root + "/resolver2.sock"
        let other = try f.sh("chmod 755 \(f.root); '\(MountFixture.binary)' resolver --listen \(sock2) > r2.log 2>&1 & d2=$!; " +
                             "for i in $(seq 50); do [ -S \(sock2) ] && break; sleep 0.1; done; " +
                             "echo secrets.API_TOKEN | setpriv --reuid=65534 --regid=65534 --clear-groups '\(MountFixture.binaryForAnyUser)' " +
                             "resolve --project demo --resolver \(sock2) --format expr -; echo rc=$?; kill $d2; wait $d2")
        #expect(other.stdout == "rc=15\n", "\(other.stdout) \(other.stderr)")
        #expect(other.stderr.contains("permission denied") && !other.stderr.contains("api-token"), "\(other.stderr)")
    }
}
