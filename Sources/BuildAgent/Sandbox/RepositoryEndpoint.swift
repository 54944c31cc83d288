import Foundation

/// The server a repository URL names, read the way libgit2 1.5 reads it (`git_net_url_parse`,
/// `git_net_url_parse_scp`): the scheme, the host (percent-escapes decoded, without the
/// brackets of an IPv6 literal) and the port (the transport's default when the URL has none).
///
/// Used for the fetch policy's first check, before any connection, and for messages. The
/// check that counts is made again on the host and port libgit2 itself connects to
/// (`GuardedStream`), so a URL read differently here can be refused wrongly but never let
/// through wrongly.
public struct RepositoryEndpoint: Equatable, Sendable {
    public let scheme: String
    public let host: String
    public let port: Int

    /// The default port of each network transport a project may use.
    static let defaultPorts = ["http": 80, "https": 443, "git": 9418, "ssh": 22]

    /// The server of `url`; nil for `file://` (no network) and for what cannot be read as one
    /// of `http(s)://`, `git://`, `ssh://` or scp-like `[user@]host:path`.
    public init?(url: String) {
        if let schemeEnd = url.range(of: "://") {
            let scheme = url[..<schemeEnd.lowerBound].lowercased()
            guard let defaultPort = RepositoryEndpoint.defaultPorts[scheme] else { return nil }
            let authority = url[schemeEnd.upperBound...].prefix { !"/?#".contains($0) }
            let hostPort = authority.lastIndex(of: "@").map { authority[authority.index(after: $0)...] } ?? authority
            guard let (host, port) = RepositoryEndpoint.split(hostPort) else { return nil }
            self.init(scheme: scheme, host: host, port: port ?? defaultPort)
        } else {
            // scp-like: [user@]host:path, or [user@][host:port]:path as libgit2 allows.
            guard let colon = url.firstIndex(of: ":"), !url[..<colon].contains("/") || url.hasPrefix("[") else { return nil }
            var rest = Substring(url)
            if let at = url.firstIndex(of: "@"), at < colon { rest = url[url.index(after: at)...] }
            if rest.hasPrefix("["), let close = rest.firstIndex(of: "]") {
                let inside = rest[rest.index(after: rest.startIndex)..<close]
                if inside.filter({ $0 == ":" }).count == 1, let c = inside.firstIndex(of: ":"), let port = Int(inside[inside.index(after: c)...]) {
                    self.init(scheme: "ssh", host: String(inside[..<c]), port: port)
                } else {
                    self.init(scheme: "ssh", host: String(inside), port: 22)
                }
            } else {
                guard let c = rest.firstIndex(of: ":"), c > rest.startIndex else { return nil }
                self.init(scheme: "ssh", host: String(rest[..<c]), port: 22)
            }
        }
    }

    init(scheme: String, host: String, port: Int) {
        self.scheme = scheme
        self.host = host.removingPercentEncoding ?? host
        self.port = port
    }

    /// `host[:port]` or `[v6][:port]` → host without brackets and the port, if it is a number.
    private static func split(_ hostPort: Substring) -> (String, Int?)? {
        var host = hostPort
        var portText: Substring?
        if hostPort.hasPrefix("[") {
            guard let close = hostPort.firstIndex(of: "]") else { return nil }
            host = hostPort[hostPort.index(after: hostPort.startIndex)..<close]
            let after = hostPort[hostPort.index(after: close)...]
            if after.hasPrefix(":") { portText = after.dropFirst() } else if !after.isEmpty { return nil }
        } else if let colon = hostPort.lastIndex(of: ":") {
            host = hostPort[..<colon]
            portText = hostPort[hostPort.index(after: colon)...]
        }
        guard !host.isEmpty else { return nil }
        guard let portText, !portText.isEmpty else { return (String(host), nil) }
        guard let port = Int(portText), (1...65535).contains(port) else { return nil }
        return (String(host), port)
    }

    /// `url` without its user information (`https://user:token@host/x` → `https://host/x`,
    /// `git@host:x` → `host:x`): what messages and logs show, so a credential a project put
    /// into its URL never reaches a build's log.
    public static func redacted(_ url: String) -> String {
        guard let range = userInfoRange(url) else { return url }
        return String(url[..<range.lowerBound]) + String(url[range.upperBound...])
    }

    /// `text` without the user information of `url` (`user:password@` and the password
    /// alone): for messages written by others, such as libgit2 quoting a URL it cannot parse.
    static func scrub(_ text: String, of url: String) -> String {
        guard let range = userInfoRange(url) else { return text }
        let userInfo = url[range].dropLast()
        var scrubbed = text.replacingOccurrences(of: url[range], with: "")
        if let colon = userInfo.firstIndex(of: ":"), userInfo.index(after: colon) < userInfo.endIndex {
            scrubbed = scrubbed.replacingOccurrences(of: userInfo[userInfo.index(after: colon)...], with: "…")
        }
        return scrubbed
    }

    /// Where the user information and its '@' are in `url`.
    private static func userInfoRange(_ url: String) -> Range<String.Index>? {
        if let schemeEnd = url.range(of: "://") {
            let authority = url[schemeEnd.upperBound...].prefix { !"/?#".contains($0) }
            return authority.lastIndex(of: "@").map { schemeEnd.upperBound..<url.index(after: $0) }
        }
        guard let colon = url.firstIndex(of: ":"), let at = url[..<colon].lastIndex(of: "@") else { return nil }
        return url.startIndex..<url.index(after: at)
    }
}
