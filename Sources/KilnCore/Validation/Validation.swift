import Foundation

/// Checks for everything that reaches Kiln from outside: names, refs, tags, image
/// references, repository URLs, paths. Each throws `KilnError.invalid` with the reason.
///
/// These values end up in etcd keys, file paths, git and container API calls, so the
/// rules are strict: what passes here can be used without quoting.
public enum Validation {
    /// Project names: `[a-z0-9-]`, 1 to 63 characters, starting and ending with a letter or digit.
    public static func projectName(_ name: String, what: String = "project name") throws {
        guard !name.isEmpty else { throw KilnError.invalid("\(what) is empty: use lowercase letters, digits and '-'") }
        guard name.utf8.count <= 63 else { throw KilnError.invalid("\(what) '\(name.prefix(70))' is longer than 63 characters") }
        for b in name.utf8 where !(isLower(b) || isDigit(b) || b == UInt8(ascii: "-")) {
            throw KilnError.invalid("\(what) '\(printable(name))' has '\(printable(String(decoding: [b], as: UTF8.self)))': use only lowercase letters, digits and '-'")
        }
        if name.hasPrefix("-") || name.hasSuffix("-") {
            throw KilnError.invalid("\(what) '\(name)' must start and end with a letter or digit")
        }
    }

    /// Git ref names, after `git check-ref-format` (one-level names such as `main` allowed),
    /// plus: no leading '-', so a ref can never be read as an option.
    public static func ref(_ ref: String, field: String = "ref") throws {
        func bad(_ why: String) -> KilnError { KilnError.invalid("\(field) '\(printable(ref))' is not a valid git ref: \(why)") }
        if ref.isEmpty { throw KilnError.invalid("\(field) is empty: give a branch, a tag or refs/heads/NAME") }
        if ref.utf8.count > 255 { throw bad("longer than 255 characters") }
        if ref.hasPrefix("-") { throw bad("it starts with '-'") }
        if ref == "@" { throw bad("'@' alone is not a ref") }
        if ref.contains("..") { throw bad("it contains '..'") }
        if ref.contains("@{") { throw bad("it contains '@{'") }
        if ref.contains("//") { throw bad("it contains '//'") }
        if ref.hasPrefix("/") || ref.hasSuffix("/") { throw bad("it starts or ends with '/'") }
        if ref.hasSuffix(".") { throw bad("it ends with '.'") }
        for b in ref.utf8 {
            if b < 0x20 || b == 0x7f { throw bad("it contains a control character") }
            if b == UInt8(ascii: " ") { throw bad("it contains a space") }
            if "~^:?*[\\".utf8.contains(b) { throw bad("it contains '\(Character(Unicode.Scalar(b)))'") }
        }
        for component in ref.split(separator: "/", omittingEmptySubsequences: false) {
            if component.hasPrefix(".") { throw bad("a component starts with '.'") }
            if component.hasSuffix(".lock") { throw bad("a component ends with '.lock'") }
        }
    }

    /// A commit id: 7 to 40 hexadecimal digits.
    public static func commit(_ sha: String) throws {
        guard (7...40).contains(sha.utf8.count), sha.utf8.allSatisfy({ isDigit($0) || (97...102).contains($0) || (65...70).contains($0) }) else {
            throw KilnError.invalid("commit '\(printable(sha))' is not a commit id: give 7 to 40 hexadecimal digits")
        }
    }

    /// An image tag, after Docker's reference grammar: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
    public static func tag(_ tag: String) throws {
        func bad(_ why: String) -> KilnError { KilnError.invalid("tag '\(printable(tag))' is not a valid image tag: \(why); use letters, digits, '_', '.' and '-', at most 128, not starting with '.' or '-'") }
        guard let first = tag.utf8.first else { throw bad("it is empty") }
        if tag.utf8.count > 128 { throw bad("it is longer than 128 characters") }
        if !(isWord(first)) { throw bad("it starts with '\(printable(String(tag.prefix(1))))'") }
        for b in tag.utf8 where !(isWord(b) || b == UInt8(ascii: ".") || b == UInt8(ascii: "-")) {
            throw bad("it contains '\(printable(String(decoding: [b], as: UTF8.self)))'")
        }
    }

    /// A full image reference: `[host[:port]/]path[:tag][@digest]`, after Docker's grammar.
    public static func imageReference(_ ref: String, field: String = "image") throws {
        func bad(_ why: String) -> KilnError { KilnError.invalid("\(field) '\(printable(ref))' is not a valid image reference: \(why)") }
        if ref.isEmpty { throw bad("it is empty") }
        if ref.utf8.count > 255 { throw bad("it is longer than 255 characters") }
        var rest = Substring(ref)
        if let at = rest.firstIndex(of: "@") {
            let digest = rest[rest.index(after: at)...]
            let parts = digest.split(separator: ":", maxSplits: 1)
            guard parts.count == 2, parts[0].utf8.allSatisfy({ isLower($0) || isDigit($0) }), parts[1].count >= 32,
                  parts[1].utf8.allSatisfy({ isDigit($0) || (97...102).contains($0) }) else { throw bad("its digest is malformed") }
            rest = rest[..<at]
        }
        var components = rest.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        if var last = components.last, let colon = last.lastIndex(of: ":") {
            let tagPart = String(last[last.index(after: colon)...])
            do { try tag(tagPart) } catch { throw bad("its tag '\(tagPart)' is invalid") }
            last = String(last[..<colon])
            components[components.count - 1] = last
        }
        if components.count > 1, let host = components.first, host.contains(".") || host.contains(":") || host == "localhost" {
            components.removeFirst()
            let hp = host.split(separator: ":", omittingEmptySubsequences: false)
            guard hp.count <= 2, !hp[0].isEmpty, hp[0].utf8.allSatisfy({ isLower($0) || isUpper($0) || isDigit($0) || $0 == 45 || $0 == 46 }),
                  !hp[0].hasPrefix("-") else { throw bad("its registry host '\(printable(host))' is malformed") }
            if hp.count == 2 { guard let port = Int(hp[1]), (1...65535).contains(port) else { throw bad("its registry port is malformed") } }
        }
        for c in components {
            guard isPathComponent(c) else { throw bad("path component '\(printable(c))' must be lowercase letters and digits separated by '.', '_', '__' or '-'") }
        }
    }

    /// Repository URLs: http, https, ssh, git and file transports, or scp-like `user@host:path`.
    /// The one rule for them: the API checks a project with it, and the agent's `GitMirror`
    /// checks again before any network use, so an URL that reached etcd some other way is
    /// still refused.
    ///
    /// Refuses, thinking of what git (or ssh under it) would make of the text:
    /// - anything starting with `-`, and a user, host or path that does (`ssh://-oProxyCommand=…`,
    ///   `host:-path`, `https://h/-x`): read as an option by some program on the way;
    /// - `::` anywhere but inside an IPv6 host literal (`ssh://git@[::1]:22/…`): git's
    ///   `transport::address` syntax (`ext::`, `fd::`) runs commands;
    /// - whitespace and control characters, more than 2048 bytes;
    /// - other schemes, plain paths (use `file://`), a file URL without an absolute path;
    /// - an empty host; for the scp-like form also a host of other than letters, digits,
    ///   `.-_[]`, more than one `@`, an empty path.
    public static func repositoryURL(_ url: String) throws {
        func bad(_ why: String) -> KilnError { KilnError.invalid("repository '\(printable(url))' is refused: \(why); use http(s)://, ssh://, git://, file:// or user@host:path") }
        if url.isEmpty { throw KilnError.invalid("repository is empty: give the git URL of the project") }
        if url.utf8.count > 2048 { throw bad("it is longer than 2048 characters") }
        if url.hasPrefix("-") { throw bad("it starts with '-' and would be read as an option") }
        for b in url.utf8 where b <= 0x20 || b == 0x7f {
            throw bad(b == 0x20 ? "it contains a space" : "it contains a control character")
        }
        if withoutIPv6Host(url).contains("::") { throw bad("git's '::' transport syntax (ext::, fd::) runs commands") }
        if let schemeEnd = url.range(of: "://") {
            let scheme = url[..<schemeEnd.lowerBound].lowercased()
            guard ["http", "https", "ssh", "git", "file"].contains(scheme) else { throw bad("the transport '\(scheme)' is not allowed") }
            let rest = url[schemeEnd.upperBound...]
            if scheme == "file" {
                guard rest.hasPrefix("/") else { throw bad("a file URL needs an absolute path (file:///path)") }
                return
            }
            let authority = rest.prefix { $0 != "/" }
            if authority.isEmpty { throw bad("it has no host") }
            let hostPart = authority.split(separator: "@", omittingEmptySubsequences: false).last.map(String.init) ?? ""
            if let user = authority.split(separator: "@").dropLast().first, user.hasPrefix("-") { throw bad("its user starts with '-'") }
            if hostPart.hasPrefix("-") || hostPart.isEmpty { throw bad("its host is empty or starts with '-'") }
            if rest.dropFirst(authority.count).hasPrefix("/-") { throw bad("its path starts with '-'") }
            return
        }
        // scp-like: [user@]host:path, host without '/'
        if let colon = url.firstIndex(of: ":"), !url[..<colon].contains("/") {
            let userHost = url[..<colon].split(separator: "@", omittingEmptySubsequences: false)
            let host = userHost.last ?? ""
            if userHost.count > 2 { throw bad("it has more than one '@' before the ':'") }
            if userHost.count == 2, userHost[0].hasPrefix("-") { throw bad("its user starts with '-'") }
            if host.isEmpty || host.hasPrefix("-") { throw bad("its host is empty or starts with '-'") }
            if !host.unicodeScalars.allSatisfy(scpHostCharacters.contains) { throw bad("its host may hold only letters, digits and '.-_[]'") }
            let path = url[url.index(after: colon)...]
            if path.isEmpty { throw bad("it has no path after the ':'") }
            if path.hasPrefix("-") { throw bad("its path starts with '-'") }
            return
        }
        throw bad("it has no transport")
    }

    /// A project's repository URL may hold no password (`https://user:token@host/…`, also
    /// `%3A`-encoded, and `user:token@host:path`): a credential in the URL would show in the
    /// API, the console and logs. The message does not repeat it, and names
    /// `kiln credential set git`. A user name alone (`ssh://git@host/…`, `git@host:path`) is
    /// fine. `Project.validate` applies it on top of ``repositoryURL(_:)``; the agent does not
    /// (its refusal would quote the URL), so a record saved before this rule still fetches.
    public static func repositoryURLHasNoPassword(_ url: String) throws {
        if let redacted = withoutPassword(url) {
            throw KilnError.invalid("repository '\(printable(redacted))' holds a password or token in the URL, where the API, the console and build logs would show it: give the URL without it and set the credential with `kiln credential set git --project NAME --username USER` (the token from standard input; docs/secrets.md)")
        }
    }

    /// `url` with the password of its user information replaced by `***`, or nil when it has
    /// none: `scheme://user:password@host…`, `user:password@host:path` (scp-like).
    public static func withoutPassword(_ url: String) -> String? {
        if let schemeEnd = url.range(of: "://") {
            let rest = url[schemeEnd.upperBound...]
            let authority = rest.prefix { $0 != "/" }
            guard let at = authority.lastIndex(of: "@") else { return nil }
            let userInfo = authority[..<at]
            let colon = userInfo.firstIndex(of: ":") ?? userInfo.range(of: "%3a", options: .caseInsensitive)?.lowerBound
            guard let colon else { return nil }
            return String(url[..<schemeEnd.upperBound]) + userInfo[..<colon] + ":***" + String(url[at...])
        }
        // scp-like: the first ':' ends the host, so `user:password@host:path` reads as host
        // `user` and a path holding `@` and another ':'.
        guard let colon = url.firstIndex(of: ":"), !url[..<colon].contains("/"), !url[..<colon].contains("@") else { return nil }
        let after = url[url.index(after: colon)...]
        guard let at = after.firstIndex(of: "@"), after[at...].contains(":"), !after[..<at].contains("/") else { return nil }
        return String(url[..<colon]) + ":***" + String(after[at...])
    }

    /// An `http(s)://user:password@host/…` URL taken apart: the URL without its user
    /// information, and the user and password percent-decoded. Nil for any other URL (no
    /// password, another scheme, or user information that does not decode). For moving a
    /// token written into a repository URL (before URLs were refused with one) into the
    /// sealed git credential.
    public static func splitHTTPPassword(_ url: String) -> (url: String, username: String, password: String)? {
        guard let schemeEnd = url.range(of: "://") else { return nil }
        let scheme = url[..<schemeEnd.lowerBound].lowercased()
        guard scheme == "http" || scheme == "https" else { return nil }
        let rest = url[schemeEnd.upperBound...]
        let authority = rest.prefix { $0 != "/" }
        guard let at = authority.lastIndex(of: "@") else { return nil }
        let userInfo = authority[..<at]
        guard let colon = userInfo.firstIndex(of: ":") else { return nil }
        guard let user = String(userInfo[..<colon]).removingPercentEncoding,
              let password = String(userInfo[userInfo.index(after: colon)...]).removingPercentEncoding,
              !password.isEmpty else { return nil }
        return (String(url[..<schemeEnd.upperBound]) + String(url[url.index(after: at)...]), user, password)
    }

    /// The host of an scp-like address: letters and digits (any script), `.`, `-`, `_` and the
    /// brackets of an IPv6 literal.
    private static let scpHostCharacters = CharacterSet.alphanumerics.union(CharacterSet(charactersIn: ".-_[]"))

    /// `url` with the inside of its IPv6 host literal (`ssh://git@[::1]:22/…` → `ssh://git@[]:22/…`)
    /// left out: the one place where `::` is part of an address rather than git's transport
    /// syntax. Only hex digits, ':' and '.' count as such a literal, so `[ext::…]` stays.
    private static func withoutIPv6Host(_ url: String) -> String {
        guard let schemeEnd = url.range(of: "://") else { return url }
        let authority = url[schemeEnd.upperBound...].prefix { $0 != "/" }
        let hostStart = authority.lastIndex(of: "@").map { authority.index(after: $0) } ?? authority.startIndex
        let host = authority[hostStart...]
        guard host.hasPrefix("["), let close = host.firstIndex(of: "]") else { return url }
        let literal = host[host.index(after: host.startIndex)..<close]
        guard literal.unicodeScalars.allSatisfy({ $0.properties.isASCIIHexDigit || $0 == ":" || $0 == "." }) else { return url }
        return String(url[...host.startIndex]) + String(url[close...])
    }

    /// A path inside the checkout: relative, no '..' component, no NUL, no leading '-'.
    public static func relativePath(_ path: String, field: String) throws {
        func bad(_ why: String) -> KilnError { KilnError.invalid("\(field) '\(printable(path))' is refused: \(why); give a path inside the repository, such as 'Dockerfile' or 'docker/Dockerfile'") }
        if path.isEmpty { throw bad("it is empty") }
        if path.hasPrefix("/") { throw bad("it is absolute") }
        if path.hasPrefix("-") { throw bad("it starts with '-'") }
        if path.utf8.contains(where: { $0 < 0x20 || $0 == 0x7f }) { throw bad("it contains a control character") }
        if path.split(separator: "/").contains("..") { throw bad("it leaves the repository with '..'") }
    }

    /// Agent ids: letters, digits, '-', '_' and '.', 1 to 63 characters, not starting with '.' or '-'.
    public static func agentID(_ id: String) throws {
        guard !id.isEmpty, id.utf8.count <= 63,
              id.utf8.allSatisfy({ isLower($0) || isUpper($0) || isDigit($0) || $0 == 45 || $0 == 95 || $0 == 46 }),
              !id.hasPrefix("."), !id.hasPrefix("-") else {
            throw KilnError.invalid("agent id '\(printable(id))' is invalid: use letters, digits, '-', '_' and '.', at most 63")
        }
    }

    /// Labels: same alphabet as agent ids.
    public static func label(_ l: String) throws {
        do { try agentID(l) } catch { throw KilnError.invalid("label '\(printable(l))' is invalid: use letters, digits, '-', '_' and '.'") }
    }

    // MARK: helpers

    static func isLower(_ b: UInt8) -> Bool { b >= 97 && b <= 122 }
    static func isUpper(_ b: UInt8) -> Bool { b >= 65 && b <= 90 }
    static func isDigit(_ b: UInt8) -> Bool { b >= 48 && b <= 57 }
    static func isWord(_ b: UInt8) -> Bool { isLower(b) || isUpper(b) || isDigit(b) || b == 95 }

    /// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
    static func isPathComponent(_ c: String) -> Bool {
        let bytes = Array(c.utf8)
        guard let f = bytes.first, let l = bytes.last, isLower(f) || isDigit(f), isLower(l) || isDigit(l) else { return false }
        var i = 0
        while i < bytes.count {
            let b = bytes[i]
            if isLower(b) || isDigit(b) { i += 1; continue }
            // a separator run
            var j = i
            while j < bytes.count, !(isLower(bytes[j]) || isDigit(bytes[j])) { j += 1 }
            let sep = String(decoding: bytes[i..<j], as: UTF8.self)
            let ok = sep == "." || sep == "_" || sep == "__" || (!sep.isEmpty && sep.allSatisfy { $0 == "-" })
            if !ok { return false }
            i = j
        }
        return true
    }

    /// A value safe to echo in an error: control characters escaped, at most 80 characters.
    public static func printable(_ s: String) -> String {
        var out = ""
        for scalar in s.unicodeScalars.prefix(80) {
            if scalar.value < 0x20 || scalar.value == 0x7f { out += "\\u{\(String(scalar.value, radix: 16))}" } else { out.unicodeScalars.append(scalar) }
        }
        if s.unicodeScalars.count > 80 { out += "…" }
        return out
    }
}

