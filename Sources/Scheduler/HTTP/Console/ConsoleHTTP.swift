import Crypto
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore

/// The console's cookies: the session (`kiln-session`) and the login form's token
/// (`kiln-login`), both `HttpOnly; SameSite=Strict; Path=/`, plus `Secure` on a secure
/// connection, where they are named with the `__Host-` prefix (which makes the browser refuse
/// one set by another host, a sibling subdomain, or without `Secure`).
///
/// Secure means: the scheduler serves TLS itself (`--tls-cert`) or was started with
/// `--console-secure-cookies` (both give `forced`), or the request came through a TLS proxy
/// that says so (`X-Forwarded-Proto: https` or `Forwarded: proto=https`). The request itself
/// cannot tell (Hummingbird's HTTP/1 codec calls even a TLS request `http`). Trusting the proxy's header from anyone is harmless: it can only make the
/// cookie stricter, which a client that lies breaks for itself alone.
struct ConsoleCookies: Sendable {
    let secure: Bool

    init(forced: Bool, request: Request) {
        secure = forced || Self.cameOverTLS(forwardedProto: request.headers[HTTPField.Name("X-Forwarded-Proto")!],
                                             forwarded: request.headers[HTTPField.Name("Forwarded")!])
    }

    init(secure: Bool) {
        self.secure = secure
    }

    var session: String { secure ? "__Host-kiln-session" : "kiln-session" }
    var login: String { secure ? "__Host-kiln-login" : "kiln-login" }

    /// A `Set-Cookie` value; `maxAge` 0 removes the cookie.
    func setCookie(_ name: String, _ value: String, maxAge: Int) -> String {
        "\(name)=\(value); Path=/; Max-Age=\(maxAge); HttpOnly; SameSite=Strict" + (secure ? "; Secure" : "")
    }

    /// Whether a proxy says the browser's connection was TLS: the first (the browser's own)
    /// entry of `X-Forwarded-Proto` or `Forwarded` (RFC 7239) is https.
    static func cameOverTLS(forwardedProto: String?, forwarded: String?) -> Bool {
        if let proto = forwardedProto?.split(separator: ",").first, proto.trimmingCharacters(in: .whitespaces).lowercased() == "https" {
            return true
        }
        guard let first = forwarded?.split(separator: ",").first else { return false }
        return first.split(separator: ";").contains { $0.trimmingCharacters(in: .whitespaces).lowercased() == "proto=https" }
    }

    /// The values of every cookie called `name` in the request's `Cookie` headers.
    static func values(_ name: String, in headers: [String]) -> [String] {
        headers.flatMap { $0.split(separator: ";") }.compactMap { pair -> String? in
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard parts.count == 2, parts[0].trimmingCharacters(in: .whitespaces) == name else { return nil }
            return parts[1].trimmingCharacters(in: .whitespaces)
        }
    }

    /// The one value of cookie `name`, or nil if there is none or more than one: two session
    /// cookies mean one was planted (by another host under the same domain); use neither.
    static func value(_ name: String, in request: Request) -> String? {
        let found = values(name, in: request.headers[values: .cookie])
        return found.count == 1 ? found[0] : nil
    }
}

/// Redirects, the login page's `next`, and the headers of every console answer.
enum ConsoleHTTP {
    /// `Content-Security-Policy` of every console page: nothing but the console's own inline
    /// style and script (by their SHA-256; the pages use no style attributes, so none needs
    /// `unsafe-inline`), fetches to this origin (the log and the summary), forms to this
    /// origin, no framing anywhere.
    static let contentSecurityPolicy = [
        "default-src 'none'",
        "style-src '\(sha256(ConsoleAssets.style.rendered))'",
        "script-src '\(sha256(ConsoleAssets.followScript.rendered))'",
        "connect-src 'self'", "img-src 'self'", "form-action 'self'", "frame-ancestors 'none'", "base-uri 'none'",
    ].joined(separator: "; ")

    static func sha256(_ text: String) -> String {
        "sha256-" + Data(SHA256.hash(data: Array(text.utf8))).base64EncodedString()
    }

    /// The headers every console answer carries: pages, fragments, redirects and the log.
    static func secure(_ headers: inout HTTPFields) {
        headers[.contentSecurityPolicy] = contentSecurityPolicy
        headers[HTTPField.Name("X-Frame-Options")!] = "DENY"
        headers[HTTPField.Name("Referrer-Policy")!] = "same-origin"
        headers[HTTPField.Name("X-Content-Type-Options")!] = "nosniff"
        headers[.cacheControl] = "no-store"
    }

    static func html(_ body: HTML, status: Int = 200, cookies: [String] = []) -> Response {
        var headers = HTTPFields()
        headers[.contentType] = "text/html; charset=utf-8"
        secure(&headers)
        for cookie in cookies { headers.append(HTTPField(name: .setCookie, value: cookie)) }
        return Response(status: .init(code: status), headers: headers, body: .init(byteBuffer: ByteBuffer(string: body.rendered)))
    }

    static func text(_ message: String, status: Int) -> Response {
        var headers = HTTPFields()
        headers[.contentType] = "text/plain; charset=utf-8"
        secure(&headers)
        return Response(status: .init(code: status), headers: headers, body: .init(byteBuffer: ByteBuffer(string: message + "\n")))
    }

    /// 303 See Other to `location` (a path of this console: see ``safeNext(_:)``).
    static func redirect(_ location: String, cookies: [String] = []) -> Response {
        var headers = HTTPFields()
        headers[.location] = location
        secure(&headers)
        for cookie in cookies { headers.append(HTTPField(name: .setCookie, value: cookie)) }
        return Response(status: .seeOther, headers: headers)
    }

    /// To the login page, which sends the browser back to `request`'s page once logged in.
    static func toLogin(from request: Request) -> Response {
        var target = request.uri.path
        if let query = request.uri.query { target += "?" + query }
        let next = safeNext(target)
        return redirect(next == "/" ? "/ui/login" : "/ui/login?next=" + encodeQueryValue(next))
    }

    /// `next` if it is a path on this server, else "/": the login page must not send anyone
    /// to another site (an open redirect lends this host's name to a phishing link).
    ///
    /// Browsers read `//host`, `/\host` and `/<tab>/host` as another host, and percent-decode
    /// nothing in the authority, so: a `/` first, no `/` or `\` second, and only printable
    /// ASCII without `\` in the rest.
    static func safeNext(_ next: String?) -> String {
        guard let next, next.utf8.count <= 2048, next.hasPrefix("/") else { return "/" }
        let bytes = Array(next.utf8)
        if bytes.count > 1, bytes[1] == UInt8(ascii: "/") || bytes[1] == UInt8(ascii: "\\") { return "/" }
        guard bytes.allSatisfy({ $0 > 0x20 && $0 < 0x7f && $0 != UInt8(ascii: "\\") }) else { return "/" }
        return next
    }

    /// Percent-encodes everything but unreserved characters and `/`.
    static func encodeQueryValue(_ value: String) -> String {
        value.addingPercentEncoding(withAllowedCharacters: unreserved) ?? "/"
    }

    private static let unreserved = CharacterSet(charactersIn: "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~/")
}
