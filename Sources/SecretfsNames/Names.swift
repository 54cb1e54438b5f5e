/// The naming rule for secrets and projects, in one place for every layer:
/// a JavaScript identifier that `secrets.NAME` can reach, ASCII only,
/// 1...255 bytes (`[A-Za-z_][A-Za-z0-9_]*`).
///
/// Names are bytes. Swift's `String ==` is Unicode canonical equivalence
/// (U+212A KELVIN SIGN equals `K`), while the store compares bytes; a name
/// that passes this check is pure ASCII, where the two agree. So every place
/// where a name enters (a FUSE request, a socket frame, a CLI argument, a
/// document's reference) checks the bytes here first, before any lookup,
/// and nothing that fails the check is ever compared with a stored name.
public enum Names {
    public static let maximumLength = 255

    public static func isValid(_ name: String) -> Bool {
        isValid(utf8: name.utf8)
    }

    public static func isValid<C: Collection>(utf8 bytes: C) -> Bool where C.Element == UInt8 {
        guard !bytes.isEmpty, bytes.count <= maximumLength else { return false }
        var first = true
        for b in bytes {
            let letter = (b >= 65 && b <= 90) || (b >= 97 && b <= 122) || b == 95
            let digit = b >= 48 && b <= 57
            if !(letter || (!first && digit)) { return false }
            first = false
        }
        return true
    }
}

extension Names {
    /// A staging name: one that begins with `.` (rsync's `.NAME.XXXXXX`,
    /// `mktemp DIR/.XXXXXX`, editors' swap files), not `.` or `..`, at most
    /// 255 bytes, any bytes but `/` and NUL. A staging file lives only in the
    /// mount's locked memory until it is renamed onto a valid name.
    public static func isStaging(_ name: String) -> Bool {
        let u = name.utf8
        guard let first = u.first, first == 0x2E, u.count <= maximumLength, name != ".", name != ".." else { return false }
        return !u.contains(0x2F) && !u.contains(0)
    }
}
