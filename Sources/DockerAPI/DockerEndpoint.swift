import AsyncHTTPClient
import Foundation
import NIOCore
import NIOSSL

/// Where a Docker Engine API listens: a unix socket on this machine, plain HTTP on this
/// machine's loopback, or HTTPS anywhere (podman 4.3 serves no TLS itself: on another host it
/// listens on that host's loopback behind a TLS proxy that asks for a client certificate,
/// docs/cells.md).
///
/// The rule (the same as etcd's, `EtcdClient.checkEndpoint`): whoever reaches the API runs
/// containers as the engine's user, so plain HTTP is for this machine's loopback only
/// (127.0.0.0/8, `localhost`, `[::1]`); anything else takes `https://`, checked against a
/// CA of its own, with a client certificate (`DockerTLS`).
public struct DockerEndpoint: Sendable, Hashable, CustomStringConvertible {
    public enum Kind: Sendable, Hashable {
        case unixSocket(path: String)
        case http(host: String, port: Int)
        case https(host: String, port: Int)
    }

    public let kind: Kind

    public init(kind: Kind) { self.kind = kind }

    /// A unix socket at `path`.
    public static func unixSocket(_ path: String) -> DockerEndpoint { DockerEndpoint(kind: .unixSocket(path: path)) }

    /// Parses `unix:///path`, `http://host:port` (loopback hosts only) or `https://host:port`.
    /// The port may be left out (2375 for http, 2376 for https, Docker's own). Throws a
    /// `DockerError` (operation `endpoint`) that says what to write instead; nothing is sent.
    public init(_ text: String) throws {
        func refuse(_ why: String) -> DockerError { DockerError("endpoint", nil, why) }
        let shown = Self.shown(text)
        if text.hasPrefix("unix://") {
            let path = String(text.dropFirst("unix://".count))
            guard path.hasPrefix("/"), !path.contains("\0") else {
                throw refuse("'\(shown)' is not a unix socket address: use unix:///absolute/path/to/docker.sock")
            }
            kind = .unixSocket(path: path)
            return
        }
        let secure: Bool
        if text.hasPrefix("https://") { secure = true } else if text.hasPrefix("http://") { secure = false } else {
            throw refuse("'\(shown)' is not a Docker Engine API address: use unix:///path/to/docker.sock, http://127.0.0.1:PORT (this machine's loopback) or https://HOST:PORT (with a CA and a client certificate)")
        }
        var rest = Substring(text.dropFirst(secure ? 8 : 7))
        if rest.hasSuffix("/") { rest = rest.dropLast() }
        guard !rest.contains("/"), !rest.contains("?"), !rest.contains("#") else {
            throw refuse("'\(shown)' has a path: give the API's address only, \(secure ? "https" : "http")://HOST:PORT")
        }
        guard !rest.contains("@") else {
            throw refuse("'\(shown)' holds user information (user@host): an endpoint carries no credential; use \(secure ? "https" : "http")://HOST:PORT")
        }
        let host: Substring, portText: Substring?
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { throw refuse("'\(shown)': an IPv6 address needs its closing ']'") }
            host = rest[rest.index(after: rest.startIndex)..<close]
            let after = rest[rest.index(after: close)...]
            guard after.isEmpty || after.hasPrefix(":") else { throw refuse("'\(shown)': after ']' only :PORT may follow") }
            portText = after.isEmpty ? nil : after.dropFirst()
        } else {
            let parts = rest.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
            host = parts[0]
            portText = parts.count == 2 ? parts[1] : nil
        }
        guard !host.isEmpty, host.allSatisfy({ $0.isLetter || $0.isNumber || "-._:".contains($0) }) else {
            throw refuse("'\(shown)' names no host: use \(secure ? "https" : "http")://HOST:PORT")
        }
        var port = secure ? 2376 : 2375
        if let portText {
            guard portText.allSatisfy({ $0.isASCII && $0.isNumber }), let p = Int(portText), (1...65535).contains(p) else {
                throw refuse("'\(shown)': the port must be a number from 1 to 65535")
            }
            port = p
        }
        let name = String(host).lowercased()
        if secure {
            kind = .https(host: name, port: port)
        } else {
            guard Self.isLoopback(name) else {
                throw refuse("""
                    \(shown) is not on this machine's loopback: plain HTTP would let anyone on the way \
                    (or anyone who reaches the port) run containers on that engine. Use https://\(host):PORT \
                    with a TLS proxy that asks for a client certificate in front of the engine, and the \
                    CA, certificate and key (docs/cells.md)
                    """)
            }
            kind = .http(host: name, port: port)
        }
    }

    /// The socket's path, nil for a TCP endpoint.
    public var socketPath: String? {
        if case .unixSocket(let path) = kind { return path }
        return nil
    }

    /// Whether this endpoint takes TLS material (`https://`).
    public var isTLS: Bool {
        if case .https = kind { return true }
        return false
    }

    /// The URL that request paths are appended to (TCP endpoints): `http(s)://host:port`.
    var baseURL: String? {
        switch kind {
        case .unixSocket: return nil
        case .http(let host, let port): return "http://\(Self.bracketed(host)):\(port)"
        case .https(let host, let port): return "https://\(Self.bracketed(host)):\(port)"
        }
    }

    public var description: String {
        switch kind {
        case .unixSocket(let path): return "unix://\(path)"
        default: return baseURL ?? ""
        }
    }

    /// 127.0.0.0/8, `localhost` and `::1`.
    public static func isLoopback(_ host: String) -> Bool {
        let host = host.lowercased()
        if host == "localhost" || host == "::1" { return true }
        let parts = host.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count == 4 && parts[0] == "127" && parts.allSatisfy { UInt8($0) != nil }
    }

    private static func bracketed(_ host: String) -> String { host.contains(":") ? "[\(host)]" : host }

    /// `text` as an error message may show it: printable, short, and without the user
    /// information of a `scheme://user:password@host` (a password must not reach a log).
    static func shown(_ text: String) -> String {
        var text = text
        if let scheme = text.range(of: "://"), let at = text[scheme.upperBound...].firstIndex(of: "@") {
            text.replaceSubrange(scheme.upperBound...at, with: "***@")
        }
        return String(text.unicodeScalars.map { $0.properties.isWhitespace || $0.value < 0x20 ? "?" : Character($0) }.prefix(200))
    }

    /// What a failed TLS handshake means, in words (BoringSSL's reason without its source
    /// paths), or nil when `error` is not a TLS failure.
    static func tlsFailure(_ error: any Error) -> String? {
        guard error is NIOSSLError || error is BoringSSLError else { return nil }
        let text = "\(error)"
        let reason = text.range(of: "OPENSSL_internal:").map { r in String(text[r.upperBound...].prefix { $0.isLetter || $0.isNumber || $0 == "_" }) } ?? text
        if reason.contains("CERTIFICATE_VERIFY_FAILED") {
            return "the TLS handshake failed (\(reason)): the server's certificate is not signed by the CA given for it, or does not name the endpoint's host"
        }
        if reason.contains("ALERT") {
            return "the TLS handshake failed (\(reason)): the server refused the client certificate"
        }
        return "the TLS handshake failed (\(reason))"
    }
}

/// The TLS material for an `https://` Docker Engine API endpoint, in PEM: the CA that signed
/// the TLS proxy's server certificate (the only trust root: the system's store is not
/// consulted, so no public CA can vouch for a server pretending to be the cell), and the
/// client certificate and key the proxy asks for. Its description never shows the key.
public struct DockerTLS: Sendable, Hashable, CustomStringConvertible, CustomDebugStringConvertible {
    public var certificateAuthority: String
    public var clientCertificate: String
    public var clientKey: String

    public init(certificateAuthority: String, clientCertificate: String, clientKey: String) {
        self.certificateAuthority = certificateAuthority
        self.clientCertificate = clientCertificate
        self.clientKey = clientKey
    }

    public var description: String { "DockerTLS(CA and client certificate, key ***)" }
    public var debugDescription: String { description }

    /// A new HTTP client with this material and `DockerClient.httpClient`'s settings (no read
    /// timeout, 5 s to connect, 64 connections), which follows no redirect. The caller owns it
    /// and shuts it down. Throws a `DockerError` (operation `tls`) naming the PEM that cannot
    /// be read, without its content.
    public func makeHTTPClient() throws -> HTTPClient {
        func unreadable(_ what: String, _ error: any Error) -> DockerError {
            DockerError("tls", nil, "the \(what) cannot be read as PEM (\(type(of: error)))")
        }
        var tls = TLSConfiguration.makeClientConfiguration()
        let authorities: [NIOSSLCertificate]
        do { authorities = try NIOSSLCertificate.fromPEMBytes(Array(certificateAuthority.utf8)) } catch { throw unreadable("CA certificate", error) }
        guard !authorities.isEmpty else { throw DockerError("tls", nil, "the CA certificate holds no certificate") }
        tls.trustRoots = .certificates(authorities)
        tls.certificateVerification = .fullVerification
        do {
            let chain = try NIOSSLCertificate.fromPEMBytes(Array(clientCertificate.utf8))
            guard !chain.isEmpty else { throw DockerError("tls", nil, "the client certificate holds no certificate") }
            tls.certificateChain = chain.map { .certificate($0) }
        } catch let e as DockerError { throw e } catch { throw unreadable("client certificate", error) }
        do {
            tls.privateKey = .privateKey(try NIOSSLPrivateKey(bytes: Array(clientKey.utf8), format: .pem))
        } catch { throw unreadable("client key", error) }
        var configuration = DockerClient.httpClientConfiguration()
        configuration.tlsConfiguration = tls
        configuration.redirectConfiguration = .disallow
        return HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: configuration)
    }
}
