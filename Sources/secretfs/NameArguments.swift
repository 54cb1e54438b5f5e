import ArgumentParser
import SecretfsNames
import SecretfsProtocol

// The one check of a project or secret name given on the command line. A
// bad one is a usage error (exit 64) before anything is opened: a project
// name becomes part of paths (its socket, pid file and log in the runtime
// directory), so `--project ../other/demo` must never reach one.

func validateProjectName(_ name: String) throws {
    guard Names.isValid(name) else {
        throw ValidationError("'\(Wire.printable(name))' is not a valid project name: names match [A-Za-z_][A-Za-z0-9_]* and are at most 255 bytes")
    }
}

func validateSecretName(_ name: String) throws {
    guard Names.isValid(name) else {
        throw ValidationError("'\(Wire.printable(name))' is not a valid secret name: names match [A-Za-z_][A-Za-z0-9_]* and are at most 255 bytes")
    }
}
