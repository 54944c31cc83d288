/// Which addresses another host can reach, for the start-up warnings of processes that
/// advertise an address (docs/hosts.md): an agent's registry, an lb-agent's listen address, a
/// scheduler's registry name. A farm whose etcd is on loopback lives on one machine, where
/// loopback is right; once etcd is elsewhere, a loopback address handed to another host
/// silently means that other host itself.
public enum HostReach {
    /// True for `localhost`, `::1` (also as `[::1]`) and 127.0.0.0/8 written as a dotted
    /// quad: where plain HTTP never leaves the machine. Names under `.localhost` are not
    /// counted (a resolver may send them anywhere). The one copy for every module that has
    /// KilnCore; Etcd and DockerAPI, which do not, keep their own.
    public static func isLoopback(_ host: String) -> Bool {
        var h = host.lowercased()
        if h.hasPrefix("["), h.hasSuffix("]") { h = String(h.dropFirst().dropLast()) }
        if h == "localhost" || h == "::1" { return true }
        let parts = h.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count == 4 && parts[0] == "127" && parts.allSatisfy { !$0.isEmpty && $0.count <= 3 && $0.allSatisfy(\.isASCIIDigit) && UInt8($0) != nil }
    }

    /// True for the unspecified addresses (`0.0.0.0`, `::`): a listen address meaning every
    /// interface, which no other host can be handed as a place to connect to.
    public static func isUnspecified(_ host: String) -> Bool { host == "0.0.0.0" || host == "::" || host == "*" }

    /// The host of `host:port`, `[v6]:port`, a bare host, or a URL (`scheme://host:port/…`,
    /// user information dropped); nil when there is none.
    public static func host(of text: String) -> String? {
        var rest = Substring(text.trimmingCharacters(in: .whitespaces))
        if let scheme = rest.range(of: "://") { rest = rest[scheme.upperBound...] }
        rest = rest.prefix { $0 != "/" && $0 != "?" && $0 != "#" }
        if let at = rest.lastIndex(of: "@") { rest = rest[rest.index(after: at)...] }
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { return nil }
            let inner = rest[rest.index(after: rest.startIndex)..<close]
            return inner.isEmpty ? nil : String(inner)
        }
        // A bare IPv6 address (more than one colon) has no port.
        if rest.filter({ $0 == ":" }).count > 1 { return String(rest) }
        let host = rest.prefix { $0 != ":" }
        return host.isEmpty ? nil : String(host)
    }

    /// True when every endpoint in a comma-separated etcd list is on loopback: the farm is on
    /// one machine.
    public static func etcdIsLocal(_ endpoints: String) -> Bool {
        let hosts = endpoints.split(separator: ",").map { host(of: String($0)) }
        return !hosts.isEmpty && hosts.allSatisfy { $0.map(isLoopback) ?? false }
    }

    /// The warning for `address` (what `option` advertises to `readers`) when etcd is not on
    /// loopback but the address is: other hosts would reach themselves. `listening`: the
    /// address is one to listen on, where every interface (`0.0.0.0`) is right; otherwise an
    /// unspecified address is warned about too. Nil when it is fine.
    public static func warning(option: String, address: String, readers: String, etcd: String, fix: String, listening: Bool = false) -> String? {
        guard !etcdIsLocal(etcd), let host = host(of: address) else { return nil }
        if isLoopback(host) {
            return "\(option) \(address) is this machine's loopback, but etcd (\(etcd)) is not: \(readers) on other hosts would reach themselves there, not this host. \(fix)"
        }
        if !listening, isUnspecified(host) {
            return "\(option) \(address) listens on every interface but is advertised as \(host), which other hosts cannot connect to. \(fix)"
        }
        return nil
    }

    /// The warning for a scheduler whose log archive is the folder `path` while etcd is not on
    /// loopback: schedulers on other hosts cannot read what this one archives there (they
    /// answer 503 for those logs) unless every one of them mounts that same folder. Nil when
    /// etcd is on this machine.
    public static func logArchiveFolderWarning(path: String, etcd: String) -> String? {
        guard !etcdIsLocal(etcd) else { return nil }
        return "the log archive is the folder \(path) of this host, but etcd (\(etcd)) is not on this machine: a scheduler on another host answers 503 for every log this one archives, and this one for theirs, unless all of them mount this same folder (NFS). Use --log-archive registry, which keeps the archive in the farm's registry (docs/logs.md), or ignore this if the folder is shared."
    }
}

extension Character {
    /// `0` to `9` only (not other scripts' digits, not signs): an IPv4 octet as inet_aton reads it.
    fileprivate var isASCIIDigit: Bool { ("0"..."9").contains(self) }
}
