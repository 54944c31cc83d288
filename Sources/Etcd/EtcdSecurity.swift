import AsyncHTTPClient
import NIOCore
import NIOSSL
import Synchronization

/// An etcd user's name and password, what the client authenticates with
/// (`POST /v3/auth/authenticate`). Its description never shows the password.
public struct EtcdCredentials: Sendable, Equatable, CustomStringConvertible, CustomDebugStringConvertible {
    public let user: String
    public let password: String

    public init(user: String, password: String) {
        self.user = user
        self.password = password
    }

    public var description: String { "\(user):***" }
    public var debugDescription: String { description }
}

/// The files of a TLS connection to etcd, in PEM: the CA that signed etcd's server
/// certificate (nil: the system's trust roots), and optionally a client certificate and its
/// key (both or neither) for an etcd started with `--client-cert-auth`.
public struct EtcdTLS: Sendable, Hashable {
    public var caFile: String?
    public var certificateFile: String?
    public var keyFile: String?

    public init(caFile: String? = nil, certificateFile: String? = nil, keyFile: String? = nil) {
        self.caFile = caFile
        self.certificateFile = certificateFile
        self.keyFile = keyFile
    }
}

extension EtcdClient {
    /// Checks that `endpoint` may be used with `tls`, without I/O. The rule: credentials and
    /// data cross the network only inside TLS, so `http://` is for etcd on this machine's
    /// loopback (127.0.0.0/8, `localhost`, `[::1]`) only; anywhere else needs `https://`.
    /// TLS files need an `https://` endpoint; a client certificate needs its key and back.
    /// Throws `.misconfigured` with what to change.
    public static func checkEndpoint(_ endpoint: String, tls: EtcdTLS?) throws {
        guard let (scheme, host) = schemeAndHost(endpoint) else {
            throw EtcdError.misconfigured(endpoint, "'\(endpoint)' is not an etcd URL: use http://127.0.0.1:2379 or https://HOST:2379")
        }
        if let tls {
            if scheme == "http" {
                throw EtcdError.misconfigured(endpoint, "the TLS files (--etcd-ca, --etcd-cert, --etcd-key) need an https:// endpoint, not \(endpoint)")
            }
            if (tls.certificateFile == nil) != (tls.keyFile == nil) {
                throw EtcdError.misconfigured(endpoint, "a client certificate needs its key and a key its certificate: pass both --etcd-cert and --etcd-key, or neither")
            }
        }
        if scheme == "http" && !isLoopback(host) {
            throw EtcdError.misconfigured(endpoint, """
                \(endpoint) is not on this machine's loopback: plain HTTP would carry etcd's data and \
                credentials across the network in clear. Use https:// with --etcd-ca (the CA of \
                etcd's server certificate; see docs/etcd-auth.md)
                """)
        }
    }

    /// `("http" | "https", host)` of an etcd URL, or nil if it is not one.
    static func schemeAndHost(_ endpoint: String) -> (String, String)? {
        let scheme: String
        if endpoint.hasPrefix("http://") { scheme = "http" } else if endpoint.hasPrefix("https://") { scheme = "https" } else { return nil }
        var rest = endpoint.dropFirst(scheme.count + 3)
        if let slash = rest.firstIndex(of: "/") { rest = rest[..<slash] }
        if rest.contains("@") { return nil }  // user:password@ in a URL: never
        let host: Substring
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { return nil }
            host = rest[rest.index(after: rest.startIndex)..<close]
        } else {
            host = rest.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
        }
        return host.isEmpty ? nil : (scheme, String(host))
    }

    static func isLoopback(_ host: String) -> Bool {
        if host == "localhost" || host == "::1" { return true }
        let parts = host.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count == 4 && parts[0] == "127" && parts.allSatisfy { !$0.isEmpty && $0.count <= 3 && $0.allSatisfy(\.isASCIIDigit) && UInt8($0) != nil }
    }

    private static let tlsClients = Mutex<[EtcdTLS: HTTPClient]>([:])

    /// The process-wide HTTP client for etcd over TLS with these files: the settings of
    /// ``defaultHTTPClient`` plus the TLS configuration. One per distinct `tls`, made on first
    /// use and never shut down. Reads the files at once, so a wrong path or a file that is not
    /// PEM fails here (with `.misconfigured`) rather than at the first connection.
    public static func tlsHTTPClient(for tls: EtcdTLS) throws -> HTTPClient {
        if let client = tlsClients.withLock({ $0[tls] }) { return client }
        var configuration = defaultHTTPClientConfiguration()
        configuration.tlsConfiguration = try tlsConfiguration(tls)
        let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
        return tlsClients.withLock { clients in
            if let existing = clients[tls] {
                try? client.syncShutdown()
                return existing
            }
            clients[tls] = client
            return client
        }
    }

    static func tlsConfiguration(_ tls: EtcdTLS) throws -> TLSConfiguration {
        var configuration = TLSConfiguration.makeClientConfiguration()
        if let caFile = tls.caFile {
            do {
                configuration.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(caFile))
            } catch {
                throw EtcdError.misconfigured("", "cannot read the etcd CA certificate \(caFile) (--etcd-ca, PEM): \(error)")
            }
        }
        if let certificateFile = tls.certificateFile, let keyFile = tls.keyFile {
            do {
                configuration.certificateChain = try NIOSSLCertificate.fromPEMFile(certificateFile).map { .certificate($0) }
            } catch {
                throw EtcdError.misconfigured("", "cannot read the etcd client certificate \(certificateFile) (--etcd-cert, PEM): \(error)")
            }
            do {
                configuration.privateKey = .privateKey(try NIOSSLPrivateKey(file: keyFile, format: .pem))
            } catch {
                throw EtcdError.misconfigured("", "cannot read the etcd client key \(keyFile) (--etcd-key, PEM): \(error)")
            }
        }
        return configuration
    }
}

/// The token of one set of credentials, shared by every copy of an ``EtcdClient`` made with
/// them, so a process authenticates once and again only when etcd refuses the token (simple
/// tokens lapse after `--auth-token-ttl` without use).
///
/// Rule for callers: ask for `token(replacing: nil)` before a call; when etcd refuses the
/// token that call sent, ask for `token(replacing: thatToken)`. Calls that find the same
/// stale token at once share one authentication (``TokenState``).
final class EtcdSession: Sendable {
    let credentials: EtcdCredentials
    private let state = Mutex<(TokenState, Task<String, any Error>?)>((TokenState(), nil))

    init(credentials: EtcdCredentials) {
        self.credentials = credentials
    }

    /// How many authentications this session started (for tests and debugging).
    var authentications: Int { state.withLock { $0.0.authentications } }

    /// A token that is not `stale`: the current one, or a new one from `authenticate`
    /// (started by the first caller, awaited by the others). `""` means etcd has
    /// authentication off: send no header.
    func token(replacing stale: String?, authenticate: @escaping @Sendable () async throws -> String) async throws -> String {
        let (action, task): (TokenState.Acquire, Task<String, any Error>?) = state.withLock { s in
            let action = s.0.acquire(replacing: stale)
            if action == .authenticate {
                s.0.authentications += 1
                s.1 = Task { try await authenticate() }
            }
            return (action, s.1)
        }
        switch action {
        case .use(let token):
            return token
        case .join:
            return try await task!.value
        case .authenticate:
            do {
                let token = try await task!.value
                state.withLock { $0.0.finished(token); $0.1 = nil }
                return token
            } catch {
                state.withLock { $0.0.finished(nil); $0.1 = nil }
                throw error
            }
        }
    }
}

/// When a token must be fetched, without I/O. ``EtcdSession`` keeps one behind a lock.
struct TokenState: Equatable {
    enum Acquire: Equatable {
        /// Send this token (`""`: no header).
        case use(String)
        /// An authentication is under way: wait for its token.
        case join
        /// Authenticate now; the others join.
        case authenticate
    }

    private(set) var token: String?
    private(set) var authenticating = false
    var authentications = 0

    /// The caller has `stale` (nil: none yet) and needs a token that differs from it.
    mutating func acquire(replacing stale: String?) -> Acquire {
        if let token, token != stale { return .use(token) }
        if authenticating { return .join }
        authenticating = true
        return .authenticate
    }

    /// The authentication ended with `token`, or failed (nil: the old token stays, and the
    /// next caller that finds it stale authenticates again).
    mutating func finished(_ token: String?) {
        authenticating = false
        if let token { self.token = token }
    }
}

extension Character {
    /// `0` to `9` only (not other scripts' digits, not signs): an IPv4 octet as inet_aton reads it.
    fileprivate var isASCIIDigit: Bool { ("0"..."9").contains(self) }
}
