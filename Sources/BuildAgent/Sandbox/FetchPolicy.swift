import Foundation

/// Which git servers an agent may fetch a project's repository from.
///
/// The agent fetches on its host's network, where etcd, the scheduler, the registry, cloud
/// metadata and anything bound to loopback answer: a project naming
/// `http://127.0.0.1:2379/v3/kv/range` or `http://169.254.169.254/…` would make the agent send
/// them a request (blind, but a GET can still act). So every connection of a fetch is decided
/// here, on the addresses the resolver gave (never on the URL's text), in this order:
/// 1. a host and port the operator allowed (`kiln agent --allow-fetch-from HOST[:PORT]`,
///    matched exactly on the host as the URL names it and on the port) may be fetched from,
///    whatever it resolves to;
/// 2. a host that resolves to no address is refused;
/// 3. the host is refused if any of its addresses is loopback, unspecified, link-local, a
///    cloud metadata service, multicast or reserved, or one of this machine's own addresses;
/// 4. and, with `denyPrivate` (`--deny-private-fetch`), if any is in a private range;
/// 5. otherwise it may be fetched from.
///
/// Pure: the caller resolves (`FetchGuard`) and lists this machine's addresses.
public struct FetchPolicy: Sendable, Equatable {
    /// Servers the operator allowed, whatever their addresses.
    public var allowed: [FetchAllowance]
    /// Refuse private ranges too (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7), for an
    /// agent whose git servers are all on the internet. Off by default: a company's GitLab
    /// usually lives in one of them.
    public var denyPrivate: Bool

    public init(allowed: [FetchAllowance] = [], denyPrivate: Bool = false) {
        self.allowed = allowed
        self.denyPrivate = denyPrivate
    }

    /// The policy of the options `--allow-fetch-from` (each `HOST[:PORT]`) and
    /// `--deny-private-fetch`; throws `FetchAllowanceError` saying what to write instead.
    public init(parsing allowed: [String], denyPrivate: Bool) throws {
        self.init(allowed: try allowed.map(FetchAllowance.init(parsing:)), denyPrivate: denyPrivate)
    }

    /// The option of `kiln agent` and `kiln git-fetch` that allows a server.
    public static let allowOption = "--allow-fetch-from"
    /// The option that refuses private ranges.
    public static let denyPrivateOption = "--deny-private-fetch"

    /// Whether the operator allowed `host` (as the URL names it, without brackets) on `port`.
    public func allows(host: String, port: Int) -> Bool {
        allowed.contains { $0.matches(host: host, port: port) }
    }

    /// Nil when a fetch may connect to `host`:`port`, which resolved to `addresses`, on a
    /// machine whose own addresses are `own`; else the reason, with the option that allows it.
    public func refusal(host: String, port: Int, addresses: [IPAddress], own: Set<IPAddress>) -> String? {
        if allows(host: host, port: port) { return nil }
        let server = FetchAllowance.text(host: host, port: port)
        guard !addresses.isEmpty else { return "\(server) resolves to no address" }
        for address in addresses {
            let kind = address.kind
            let why: String
            if IPAddress.refusedKinds.contains(kind) {
                why = "\(address), \(kind.phrase)"
            } else if own.contains(address) || address.embeddedIPv4.map(own.contains) == true {
                why = "\(address), an address of this agent's own machine"
            } else if denyPrivate && kind == .privateNetwork {
                return "the repository's server \(server) is refused: it resolves to \(address), \(kind.phrase), and this agent was started with \(FetchPolicy.denyPrivateOption). If this git server is meant, allow it with kiln agent \(FetchPolicy.allowOption) \(server) (env KILN_ALLOW_FETCH_FROM)"
            } else {
                continue
            }
            return "the repository's server \(server) is refused: it resolves to \(why). The agent fetches on its own network, where etcd, the scheduler, the registry and cloud metadata answer, so it never fetches from loopback, link-local, metadata, multicast or its own addresses. If this git server is meant, allow it with kiln agent \(FetchPolicy.allowOption) \(server) (env KILN_ALLOW_FETCH_FROM)"
        }
        return nil
    }

    /// The arguments that hand this policy to `kiln git-fetch`.
    public var arguments: [String] {
        allowed.flatMap { [FetchPolicy.allowOption, $0.description] } + (denyPrivate ? [FetchPolicy.denyPrivateOption] : [])
    }

    /// One line for the agent's start: what it fetches from.
    public var summary: String {
        let from = allowed.isEmpty ? "" : "; also from \(allowed.map(\.description).joined(separator: ", "))"
        return "fetch: no loopback, link-local, metadata or own addresses\(denyPrivate ? ", no private ranges" : "")\(from)"
    }
}

extension IPAddress {
    /// Kinds refused whatever `denyPrivate` says, unless the operator allowed the server.
    static let refusedKinds: Set<Kind> = [.loopback, .unspecified, .linkLocal, .metadata, .multicast, .reserved]
}

extension IPAddress.Kind {
    /// How a refusal names it.
    var phrase: String {
        switch self {
        case .loopback: "a loopback address (this machine)"
        case .unspecified: "the unspecified address (it reaches this machine)"
        case .linkLocal: "a link-local address (169.254/16, fe80::/10: cloud metadata answers there)"
        case .metadata: "a cloud metadata service"
        case .multicast: "a multicast address"
        case .reserved: "a reserved or broadcast address"
        case .privateNetwork: "a private address (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7)"
        case .global: "a public address"
        }
    }
}

/// A git server the operator allowed an agent to fetch from whatever it resolves to:
/// `HOST:PORT`, `[IPv6]:PORT`, or `HOST` alone for git's standard ports (22, 80, 443, 9418).
/// The host is matched exactly (case aside) against the host the URL names, so allowing
/// `127.0.0.1:3000` allows neither `localhost:3000` nor `127.1:3000`.
public struct FetchAllowance: Hashable, Sendable, CustomStringConvertible {
    /// Lower case, without the brackets of an IPv6 literal.
    public let host: String
    /// Nil: the standard ports of git's transports.
    public let port: Int?

    /// The ports `HOST` alone allows: ssh, http, https, git.
    public static let standardPorts: Set<Int> = [22, 80, 443, 9418]

    public init(host: String, port: Int?) {
        self.host = host.lowercased()
        self.port = port
    }

    /// Parses `HOST`, `HOST:PORT`, `[IPv6]` or `[IPv6]:PORT`; throws what to write instead.
    public init(parsing text: String) throws {
        func bad(_ why: String) -> FetchAllowanceError {
            FetchAllowanceError(message: "\(FetchPolicy.allowOption) '\(text)': \(why); give HOST:PORT as the repository URL names them, such as git.example.com:443, 127.0.0.1:3000 or [::1]:3000")
        }
        if text.contains("://") || text.contains("/") { throw bad("a server, not a URL") }
        if text.contains("@") { throw bad("no user") }
        if text.unicodeScalars.contains(where: { $0.value <= 0x20 || $0.value == 0x7f }) { throw bad("no spaces or control characters") }
        var host = Substring(text)
        var portText: Substring?
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { throw bad("an IPv6 address needs its closing ']'") }
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            if !rest.isEmpty {
                guard rest.hasPrefix(":") else { throw bad("only ':PORT' may follow ']'") }
                portText = rest.dropFirst()
            }
        } else if text.filter({ $0 == ":" }).count == 1, let colon = text.firstIndex(of: ":") {
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
        }
        if host.isEmpty { throw bad("the host is empty") }
        var port: Int?
        if let portText {
            guard portText.allSatisfy(\.isASCII), let n = Int(portText), (1...65535).contains(n) else { throw bad("the port must be a number from 1 to 65535") }
            port = n
        }
        self.init(host: String(host), port: port)
    }

    public func matches(host: String, port: Int) -> Bool {
        self.host == host.lowercased() && (self.port.map { $0 == port } ?? FetchAllowance.standardPorts.contains(port))
    }

    /// `host:port`, with an IPv6 host in brackets: the form the option takes.
    static func text(host: String, port: Int?) -> String {
        let h = host.contains(":") ? "[\(host)]" : host
        return port.map { "\(h):\($0)" } ?? h
    }

    public var description: String { FetchAllowance.text(host: host, port: port) }
}

/// A `--allow-fetch-from` value that is not `HOST[:PORT]`.
public struct FetchAllowanceError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public var description: String { message }
}
