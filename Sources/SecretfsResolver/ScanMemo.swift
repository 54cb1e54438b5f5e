import SecretfsInject

/// One connection's recent scans, by format and document bytes.
///
/// Why: a flow runtime resolves the same few documents (its installations'
/// configs, its flows) again and again over one connection (the Node
/// client shares one per socket), and the scan is the largest part of a
/// small RESOLVE that is otherwise answered from the cache (ConfigReader and
/// the expression analysis were about 30% of the daemon's CPU for a
/// 10-reference config). A scan depends only on the document, the format
/// and the limits; it holds no value (references, not values), so keeping
/// it is no secrecy question. Per connection, so no lock is shared between
/// connections, and bounded: documents up to `maxBytes` in all, at most
/// `maxEntries`; the least recently used goes first.
final class ScanMemo {
    let maxEntries: Int
    let maxBytes: Int
    /// A scan, and its referenced names as the audit line writes them.
    struct Scanned {
        let scan: InjectionScan
        let namesText: String
        init(_ scan: InjectionScan) {
            self.scan = scan
            namesText = scan.referencedNames.joined(separator: ",")
        }
    }
    private var entries: [(format: InjectionFormat, document: [UInt8], scanned: Scanned)] = []
    private var bytes = 0

    init(maxEntries: Int = 8, maxBytes: Int = 64 << 10) {
        self.maxEntries = maxEntries
        self.maxBytes = maxBytes
    }

    /// The scan of `document` in `format`: the one made for the same bytes
    /// earlier on this connection, or a new one (kept if it fits).
    func scan(_ document: [UInt8], format: InjectionFormat) -> Scanned {
        if let i = entries.firstIndex(where: { $0.format == format && $0.document == document }) {
            if i != entries.count - 1 { entries.append(entries.remove(at: i)) }   // most recently used last
            return entries[entries.count - 1].scanned
        }
        let scanned = Scanned(Injector.scan(document, format: format,
                                                 // a server: the other clients need the second core
                                                 yamlOnSecondThread: false))
        guard document.count <= maxBytes, maxEntries > 0 else { return scanned }
        while !entries.isEmpty && (entries.count >= maxEntries || bytes + document.count > maxBytes) {
            bytes -= entries.removeFirst().document.count
        }
        entries.append((format, document, scanned))
        bytes += document.count
        return scanned
    }

    var count: Int { entries.count }
}
