import Foundation
import Glibc
import SecretfsMountSupport
import SecretfsTestSupport
import Testing

/// The installed completions, run by the real shells: what each offers for a
/// command line, with project names read from `secretfs project list` of
/// the store in SECRETFS_STORE when the user presses tab.
@Suite(.serialized)
struct CompletionTests {
    /// Lines and what must be offered at their end (every project of the store, or a prefix's).
    static let cases: [(line: String, offered: [String])] = [
        ("secretfs mo", ["mount"]),
        ("secretfs mount ", ["demo", "other_project"]),
        ("secretfs mount o", ["other_project"]),
        ("secretfs project delete d", ["demo"]),
        ("secretfs audit ", ["demo", "other_project"]),
        ("secretfs resolve --project ", ["demo", "other_project"]),
        ("secretfs redact --project o", ["other_project"]),
        ("secretfs run --project ", ["demo", "other_project"]),
    ]

    struct Shells {
        let f: MountFixture
        let installed: Installation
        var environment: [String: String]

        init() throws {
            f = try MountFixture()
            try f.expectOK(f.secretfs(["project", "create", "other_project"]))
            installed = try Installation(under: f.root)
            environment = f.environment
            environment["PATH"] = installed.binDirectory + ":" + (environment["PATH"] ?? "/usr/bin:/bin")
        }

        /// What bash offers: the completion function called as `complete -F` calls it.
        func bash(_ line: String) throws -> [String] {
            let script = """
                source "$1"
                COMP_LINE="$2"; COMP_POINT=${#COMP_LINE}
                read -ra COMP_WORDS <<< "$2"; [[ "$2" == *" " ]] && COMP_WORDS+=("")
                COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
                _secretfs "${COMP_WORDS[0]}" "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}"
                printf '%s\\n' "${COMPREPLY[@]}"
                """
            return try offered(Processes.run("/bin/bash", ["-c", script, "bash",
                                                           installed.prefix + "/share/bash-completion/completions/secretfs", line],
                                             environment: environment))
        }

        /// What fish offers (`complete -C`), without the descriptions.
        func fish(_ line: String) throws -> [String] {
            let o = try Processes.run("/usr/bin/fish", ["--no-config", "-c", "source $argv[1]; complete -C$argv[2]",
                                                        installed.prefix + "/share/fish/vendor_completions.d/secretfs.fish", line],
                                      environment: environment)
            return try offered(o).map { String($0.split(separator: "\t").first ?? "") }
        }

        /// What zsh's completion system offers, from an interactive zsh in a
        /// pseudo-terminal (completion only runs inside the line editor).
        func zsh(_ line: String) throws -> [String] {
            let capture = f.root + "/capture.zsh"
            try CompletionTests.zshCapture.write(toFile: capture, atomically: true, encoding: .utf8)
            return try offered(Processes.run("/usr/bin/timeout", ["20", "/usr/bin/zsh", "-f", capture,
                                                                  installed.prefix + "/share/zsh/site-functions", line],
                                             environment: environment))
        }

        private func offered(_ o: ProcessOutput) throws -> [String] {
            guard o.status == 0, o.stderr.isEmpty else { throw CommandFailedHere("exit \(o.status): \(o.stderr)") }
            return o.stdout.split(separator: "\n").map(String.init).filter { !$0.isEmpty }.sorted()
        }
    }

    @Test(arguments: ["bash", "zsh", "fish"])
    func eachShellCompletesCommandsAndProjectNames(_ shell: String) throws {
        let s = try Shells()
        defer { s.f.close() }
        func complete(_ line: String) throws -> [String] {
            switch shell {
            case "bash": try s.bash(line)
            case "zsh": try s.zsh(line)
            default: try s.fish(line)
            }
        }
        for c in Self.cases {
            #expect(try complete(c.line) == c.offered, "\(shell): '\(c.line)'")
        }
        // Read when tab is pressed, not when the script was generated.
        try s.f.expectOK(s.f.secretfs(["project", "create", "late"]))
        #expect(try complete("secretfs mount ") == ["demo", "late", "other_project"], "\(shell)")
    }

    @Test func withoutAStoreThereIsNothingToOfferAndNoNoise() throws {
        var s = try Shells()
        defer { s.f.close() }
        s.environment["SECRETFS_STORE"] = s.f.root + "/no-store-here"
        #expect(try s.bash("secretfs mount ") == [])
        #expect(try s.fish("secretfs mount ") == [])
    }

    /// `zsh -f capture.zsh FPATH_DIR LINE`: the matches zsh offers at the end
    /// of LINE, one a line. Every candidate passes through compadd, which is
    /// wrapped to print the ones that match before adding them.
    static let zshCapture = #"""
    zmodload zsh/zpty || exit 2
    zpty z zsh -f -i
    zpty -w z "PROMPT=''; fpath=($1 \$fpath); autoload -U compinit; compinit -u -D"
    zpty -w z 'bindkey "^I" complete-word; comppostfuncs=(_capture_done)'
    # The markers are written split, so that the terminal's echo of these lines holds none.
    zpty -w z '_capture_done() { print -r -- "<<""done>>"; exit }'
    zpty -w z 'compadd() { local -a __m; if [[ ${@[1,(i)(-|--)]} != *-(O|A|D)\ * ]]; then builtin compadd -A __m "$@"; (( $#__m )) && print -rl -- "<<""match>>"${^__m}; fi; builtin compadd "$@" }'
    zpty -w z "$2"$'\t'
    while zpty -r z line; do
      [[ $line == *'<<match>>'* ]] && print -r -- "${${line#*<<match>>}%%$'\r'*}"
      [[ $line == *'<<done>>'* ]] && break
    done
    zpty -d z
    """#
}
