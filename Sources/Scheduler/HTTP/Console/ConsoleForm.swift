import Foundation
import KilnCore

/// The console's forms that change something (log out, cancel a build; issue 15 adds the
/// rest): how one is rendered, and the check every console POST makes before it acts.
///
/// A form is rendered with ``render(action:button:csrf:id:fields:)``, which puts the session's
/// CSRF token in a hidden field. A POST route is added with `Console.form(_:to:_:)`, which
/// refuses the request (nothing changed) unless, in this order:
/// 1. it comes from a page of this console (``isSameOrigin(origin:referer:hosts:)``): its
///    `Origin`, or without one its `Referer`, names the host the request was sent to. Browsers
///    send `Origin` on every POST, so a request with neither is refused too (403);
/// 2. the body is `application/x-www-form-urlencoded`, at most ``maxBody``, each field once
///    (``parse(_:)``; else 400);
/// 3. its `csrf` field equals the session's token, compared in constant time
///    (``checkToken(_:expected:)``; else 403).
/// The session cookie is also `SameSite=Strict`, so a browser does not send it with a
/// request another site starts: each of the three defences holds on its own. The login form,
/// before any session, carries the login cookie's value instead (`Console+Login.swift`).
enum ConsoleForm {
    static let tokenField = "csrf"
    static let maxBody = 1 << 16

    /// A form that POSTs `fields` (hidden) and the CSRF token to `action`, shown as one button.
    static func render(action: String, button: String, csrf: String, id: String? = nil, fields: [(String, String)] = []) -> HTML {
        let idAttribute: HTML = id.map { i -> HTML in " id=\"\(i)\"" } ?? ""
        let hidden = fields.map { f -> HTML in "<input type=\"hidden\" name=\"\(f.0)\" value=\"\(f.1)\">" }.joined()
        return "<form method=\"post\" action=\"\(action)\" class=\"inline\"\(idAttribute)>\(hiddenToken(csrf))\(hidden)<button type=\"submit\">\(button)</button></form>"
    }

    /// The hidden field that carries the token.
    static func hiddenToken(_ csrf: String) -> HTML {
        "<input type=\"hidden\" name=\"\(tokenField)\" value=\"\(csrf)\">"
    }

    /// The fields of an `application/x-www-form-urlencoded` body, or nil if it is malformed or
    /// names a field twice (which of two tokens would count is not a question worth having).
    static func parse(_ body: String) -> [String: String]? {
        var fields: [String: String] = [:]
        for pair in body.split(separator: "&", omittingEmptySubsequences: true) {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard let name = decode(parts[0]), let value = parts.count == 2 ? decode(parts[1]) : "",
                  !name.isEmpty, fields[name] == nil else { return nil }
            fields[name] = value
        }
        return fields
    }

    private static func decode(_ text: Substring) -> String? {
        text.replacingOccurrences(of: "+", with: " ").removingPercentEncoding
    }

    /// Whether a POST comes from a page served by this host. `hosts`: the authorities the
    /// request was sent to (its `Host`, and a proxy's `X-Forwarded-Host`); a page of another
    /// site cannot set either, since a form sends no headers of its choosing. Compared
    /// without the scheme, so a TLS proxy in front changes nothing.
    static func isSameOrigin(origin: String?, referer: String?, hosts: [String]) -> Bool {
        let expected = Set(hosts.map { $0.lowercased() }.filter { !$0.isEmpty })
        // `Origin: null` (a sandboxed frame, a data: URL) has no authority and so fails.
        guard let source = origin ?? referer, let authority = authority(of: source) else { return false }
        return expected.contains(authority.lowercased())
    }

    /// The `host[:port]` of an absolute http(s) URL, or nil.
    static func authority(of url: String) -> String? {
        let lower = url.lowercased()
        guard let scheme = ["http://", "https://"].first(where: lower.hasPrefix) else { return nil }
        let rest = url.dropFirst(scheme.count)
        let authority = rest.prefix { $0 != "/" && $0 != "?" && $0 != "#" }
        // A user part (`user@host`) is never in an Origin; in a Referer it would be a trick.
        guard !authority.isEmpty, !authority.contains("@") else { return nil }
        return String(authority)
    }

    /// 403 unless the form's token is the session's.
    static func checkToken(_ fields: [String: String], expected: String) throws {
        guard let sent = fields[tokenField], Secret.equal(sent, expected) else {
            throw KilnError.forbidden("this form's security token is missing or belongs to another session: reload the page and try again")
        }
    }
}
