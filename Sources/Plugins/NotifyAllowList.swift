import Foundation
import KilnCore

/// The URLs the notify plugin may call: the prefixes an admin gave the scheduler
/// (`kiln scheduler --notify-allow PREFIX`, env `KILN_NOTIFY_ALLOW`). Empty allows nothing.
///
/// A pipeline is written by a project's masters, but the POST goes out from the scheduler's
/// host, where etcd, the registry and cloud metadata answer; so the admin decides where it may
/// go. The rules, in order (pure, no DNS: the URL's text is judged, then rebuilt from what
/// was judged, so the client cannot read it another way):
///
/// 1. Both the prefix and the URL are parsed strictly (`URLText.parse`): `http` or `https`,
///    ASCII only (an IDN host in its punycode form), no user information (`https://a@b/`), no
///    fragment, well-formed percent escapes, no encoded `/`, `\` or NUL in the path, no `.`
///    or `..` segment (escaped or not). A URL that fails this is never allowed.
/// 2. Scheme and host compare without case; the port compares as a number, the scheme's
///    default when none is written (`https://h` = `https://h:443`).
/// 3. The path matches on a segment boundary: `/a` allows `/a` and `/a/…`, not `/ab`; a
///    prefix ending in `/` allows what starts with it. Escapes of unreserved characters
///    are decoded first (`%7E` = `~`), other escapes compare in upper case.
/// 4. A prefix has no query; the URL's query is kept as it is.
public struct NotifyAllowList: Sendable, Equatable {
    public let prefixes: [URLText]

    public static let none = NotifyAllowList(checked: [])

    private init(checked: [URLText]) { prefixes = checked }

    /// Parses each prefix; throws `KilnError.invalid` naming the bad one and what to give.
    public init(_ texts: [String]) throws {
        var out: [URLText] = []
        for (i, text) in texts.enumerated() where !text.isEmpty {
            // Shown back unless it may hold a credential (user information).
            let shown = text.contains("@") ? "\(i + 1)" : "'\(Validation.printable(text))'"
            do {
                let p = try URLText.parse(text)
                guard p.query == nil else { throw KilnError.invalid("a prefix has no query (?…)") }
                out.append(p)
            } catch let e as KilnError {
                throw KilnError.invalid("notify allow-list entry \(shown): \(e.message); give a URL prefix such as https://hooks.example.com/services/")
            }
        }
        prefixes = out
    }

    /// The URL, rebuilt from its parsed parts, when a prefix allows it; nil otherwise.
    public func allowed(_ url: String) -> URLText? {
        guard let target = try? URLText.parse(url) else { return nil }
        return prefixes.contains { $0.covers(target) } ? target : nil
    }
}

/// An http(s) URL as the notify allow-list reads it: parsed strictly, normalised, and
/// printable again (`url`) exactly as it was judged.
public struct URLText: Sendable, Equatable {
    /// `http` or `https`.
    public let scheme: String
    /// Lower case; an IPv6 address with its brackets.
    public let host: String
    public let port: Int
    /// Percent-encoded, normalised, starting with `/`.
    public let path: String
    public let query: String?

    /// Where it goes, without path or query (which may hold a token): for messages.
    public var origin: String { "\(scheme)://\(host)\(port == Self.defaultPort(scheme) ? "" : ":\(port)")" }
    /// The URL to send the request to.
    public var url: String { origin + path + (query.map { "?\($0)" } ?? "") }

    static func defaultPort(_ scheme: String) -> Int { scheme == "https" ? 443 : 80 }
    static func isLetter(_ b: UInt8) -> Bool { (65...90).contains(b) || (97...122).contains(b) }
    static func isDigit(_ b: UInt8) -> Bool { (48...57).contains(b) }

    /// Whether this prefix allows `target` (rules 2 and 3 of `NotifyAllowList`).
    func covers(_ target: URLText) -> Bool {
        guard scheme == target.scheme, host == target.host, port == target.port else { return false }
        if path.hasSuffix("/") { return target.path.hasPrefix(path) }
        return target.path == path || target.path.hasPrefix(path + "/")
    }

    /// Throws `KilnError.invalid` saying what is wrong (never echoing the text: it may hold a token).
    public static func parse(_ text: String) throws -> URLText {
        func bad(_ why: String) -> KilnError { KilnError.invalid(why) }
        // RFC 3986's characters only: no spaces, backslashes, quotes or non-ASCII, which
        // parsers read in different ways.
        let allowed = Set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~:/?#[]@!$&'()*+,;=%".utf8)
        guard text.utf8.allSatisfy({ allowed.contains($0) }) else {
            throw bad("it holds a character a URL may not hold (a space, a backslash, a quote, or a non-ASCII letter: give an international host name in its xn-- form)")
        }
        guard let sep = text.range(of: "://") else { throw bad("it is not an http:// or https:// URL") }
        let scheme = text[..<sep.lowerBound].lowercased()
        guard scheme == "http" || scheme == "https" else { throw bad("it is not an http:// or https:// URL") }
        var rest = Substring(text[sep.upperBound...])
        if rest.contains("#") { throw bad("it has a fragment (#…), which is never sent to a server: leave it out") }
        var query: String?
        if let q = rest.firstIndex(of: "?") {
            query = String(rest[rest.index(after: q)...])
            rest = rest[..<q]
        }
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        let authority = rest[..<slash]
        let rawPath = rest[slash...]
        if authority.contains("@") { throw bad("it has user information (user@host): put credentials in a secret URL's path or query, never before the host") }
        if authority.contains("%") { throw bad("its host is percent-encoded") }

        var host: Substring
        var portText: Substring?
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { throw bad("its IPv6 address has no closing ]") }
            host = authority[...close]
            let after = authority[authority.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw bad("its host is not host[:port]") }
                portText = after.dropFirst()
            }
            guard host.dropFirst().dropLast().allSatisfy({ $0.isHexDigit || $0 == ":" || $0 == "." }), host.count > 2 else {
                throw bad("its IPv6 address is not one")
            }
        } else {
            let parts = authority.split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count <= 2 else { throw bad("its host is not host[:port]") }
            host = parts[0]
            portText = parts.count == 2 ? parts[1] : nil
            guard !host.isEmpty, host.utf8.allSatisfy({ isLetter($0) || isDigit($0) || $0 == 45 || $0 == 46 }) else {
                throw bad("its host is not a host name or address")
            }
        }
        var port = defaultPort(scheme)
        if let portText {
            guard let p = Int(portText), (1...65535).contains(p), portText.utf8.allSatisfy(isDigit) else { throw bad("its port is not a number from 1 to 65535") }
            port = p
        }
        let path = try normalisedPath(rawPath.isEmpty ? "/" : String(rawPath))
        if let query { _ = try decodeEscapes(query) }
        return URLText(scheme: scheme, host: host.lowercased(), port: port, path: path, query: query)
    }

    /// Decodes escapes of unreserved characters, upper-cases the others; refuses what would
    /// let a path mean another one (encoded `/`, `\`, NUL; dot segments).
    static func normalisedPath(_ raw: String) throws -> String {
        let unreserved = Set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~".utf8)
        var out: [UInt8] = []
        for unit in try decodeEscapes(raw) {
            switch unit {
            case .plain(let b): out.append(b)
            case .escaped(let b) where unreserved.contains(b): out.append(b)
            case .escaped(let b):
                if b == UInt8(ascii: "/") || b == UInt8(ascii: "\\") || b == 0 {
                    throw KilnError.invalid("its path holds an encoded '/', '\\' or NUL, which servers read in different ways")
                }
                out += Array(String(format: "%%%02X", b).utf8)
            }
        }
        let path = String(decoding: out, as: UTF8.self)
        let segments = path.split(separator: "/", omittingEmptySubsequences: false)
        if segments.contains(where: { $0 == "." || $0 == ".." }) {
            throw KilnError.invalid("its path has a '.' or '..' segment: give the path as the server names it")
        }
        return path
    }

    enum Unit: Equatable { case plain(UInt8), escaped(UInt8) }

    static func decodeEscapes(_ s: String) throws -> [Unit] {
        let b = Array(s.utf8)
        var out: [Unit] = []
        var i = 0
        while i < b.count {
            if b[i] == UInt8(ascii: "%") {
                guard i + 2 < b.count, Character(UnicodeScalar(b[i + 1])).isHexDigit, Character(UnicodeScalar(b[i + 2])).isHexDigit,
                      let v = UInt8(String(decoding: b[(i + 1)...(i + 2)], as: UTF8.self), radix: 16) else {
                    throw KilnError.invalid("it holds a '%' that is not an escape (%XX)")
                }
                out.append(.escaped(v))
                i += 3
            } else {
                out.append(.plain(b[i]))
                i += 1
            }
        }
        return out
    }
}
