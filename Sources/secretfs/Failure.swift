import ArgumentParser
import Glibc
import SecretfsStore

/// Fixed exit statuses, documented in the man page (EXIT STATUS).
enum Exit: Int32 {
    case success = 0
    case failure = 1           // anything not listed below
    case storeProblem = 10     // no store, store exists, damaged store
    case keyProblem = 11       // wrong key or passphrase, unreadable key file
    case projectProblem = 12   // no such project, exists, not empty
    case mountProblem = 13     // cannot mount, busy mountpoint, not mounted
    case resolveProblem = 14   // unresolvable references, missing secrets
    case socketProblem = 15    // project not mounted, socket refused or broken
    case usage = 64            // bad arguments (ArgumentParser's validation code)
    // `run`'s command could not be started, as env(1) and the shell report it.
    case commandNotExecutable = 126
    case commandNotFound = 127
}

/// The one error voice: `secretfs: error: ...` then `hint: ...`, on stderr.
struct Failure: Error {
    var message: String
    var hint: String?
    var exitCode: Exit

    init(_ message: String, hint: String? = nil, exit: Exit = .failure) {
        self.message = message
        self.hint = hint
        self.exitCode = exit
    }

    init(store error: StoreError) {
        let code: Exit
        switch error {
        case .storeExists, .storeMissing, .corrupt, .notABackup, .liveDatabaseNotBackup, .unsupportedSchema, .sqlite, .io, .storeUntrusted, .backupDirectoryUntrusted,
             .storeDirectoryOpenToOthers, .unavailable, .postgres, .notOnSharedStore, .libraryMissing, .outOfLockedMemory: code = .storeProblem
        case .keyFileUnreadable, .keyFileRequired, .keyFileInsecure, .keyFileMalformed, .keyFileUntrusted, .passphraseRequired,
             .passphraseNotExpected, .passphraseUnreadable, .passphraseFileInsecure, .passphraseFileUntrusted,
             .wrongKey, .keyNotLoaded, .keyDerivationFailed, .sharedStoreNeedsKey, .sharedStoreOtherKey: code = .keyProblem
        case .projectExists, .projectNotFound, .projectNotEmpty, .invalidProjectName: code = .projectProblem
        case .invalidSecretName, .secretNotFound, .secretExists, .secretNotDeleted, .versionNotFound, .versionIsCurrent: code = .failure
        case .invalidRetention: code = .usage
        }
        self.init(error.description, hint: error.hint, exit: code)
    }

    func report() {
        var text = "secretfs: error: \(message)\n"
        if let hint { text += "hint: \(hint)\n" }
        writeStderr(text)
    }
}

func writeStderr(_ text: String) { writeText(fd: 2, text) }

func writeStdout(_ text: String) { writeText(fd: 1, text) }

/// Messages only (never values): a failed write has nowhere to be reported.
private func writeText(fd: Int32, _ text: String) {
    Array(text.utf8).withUnsafeBytes { try? writeRaw(fd: fd, $0) }
}
