/// "1 project", "2 projects": a count and its noun, in the one place that
/// knows English plurals (every noun secretfs counts takes an "s").
func counted(_ n: Int, _ noun: String) -> String {
    "\(n) \(noun)\(n == 1 ? "" : "s")"
}
