import ArgumentParser

extension CompletionKind {
    /// Project names, for the shell completions that scripts/install generates
    /// (`secretfs --generate-completion-script bash|zsh|fish`): the first
    /// column of `secretfs project list` after its header, read from the store
    /// that SECRETFS_STORE names (or the default). Names match
    /// [A-Za-z_][A-Za-z0-9_]*, so a column of words needs no quoting; with no
    /// store, or none readable, there is simply nothing to offer.
    static var projectNames: CompletionKind {
        .shellCommand("secretfs project list 2>/dev/null | awk 'NR > 1 { print $1 }'")
    }
}
