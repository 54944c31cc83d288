import AsyncHTTPClient
import Foundation
import NIOCore
import NIOSSL
import Synchronization

/// The extra trust root of Kiln's outgoing TLS connections: `--ca-file FILE` (env
/// `KILN_CA_FILE`), a PEM bundle of one or more CA certificates, trusted **in addition to**
/// the system's roots (Debian's /etc/ssl/certs). A farm whose scheduler and registry have
/// certificates of a private CA gives every process that reaches them this file; a
/// certificate from a public CA needs nothing. See docs/tls.md.
///
/// Who uses it: the CLI's API client (`kiln --api https://…`), the agent's secrets client
/// (`kiln agent --scheduler https://…`) and the scheduler's registry client
/// (`--registry-url https://…`). etcd keeps its own `--etcd-ca`, which replaces the system's
/// roots (etcd's CA is always a private one).
///
/// Read once, at start: a missing file, one that is not PEM or holds no certificate is an
/// error then, never at the first connection.
public struct TrustedCA: Sendable, Hashable, CustomStringConvertible {
    /// The file as given.
    public let file: String
    let certificates: [NIOSSLCertificate]

    /// Reads `file`. Throws `TLSTrustError` saying what is wrong and what to give instead.
    public init(file: String) throws {
        guard FileManager.default.isReadableFile(atPath: file) else {
            throw TLSTrustError("cannot read the CA file \(file) (--ca-file, env KILN_CA_FILE): give the PEM file of the CA that signed the servers' certificates")
        }
        let certificates: [NIOSSLCertificate]
        do {
            certificates = try NIOSSLCertificate.fromPEMFile(file)
        } catch {
            throw TLSTrustError("the CA file \(file) (--ca-file, env KILN_CA_FILE) is not a PEM bundle of certificates (\(error)): give the CA's certificate, -----BEGIN CERTIFICATE----- …")
        }
        guard !certificates.isEmpty else {
            throw TLSTrustError("the CA file \(file) (--ca-file, env KILN_CA_FILE) holds no certificate: give the CA's certificate in PEM")
        }
        self.file = file
        self.certificates = certificates
    }

    /// `--ca-file`'s value, else `KILN_CA_FILE`'s (an empty one counts as unset), read; nil if neither is given.
    public static func from(option: String?) throws -> TrustedCA? {
        guard let file = option.flatMap({ $0.isEmpty ? nil : $0 }) else { return nil }
        return try TrustedCA(file: file)
    }

    /// A client TLS configuration that verifies servers against the system's roots and these CAs.
    public var tlsConfiguration: TLSConfiguration {
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.additionalTrustRoots = [.certificates(certificates)]
        return configuration
    }

    public var description: String { "\(file) (\(certificates.count) certificate\(certificates.count == 1 ? "" : "s"))" }
}

/// A CA file that cannot be used.
public struct TLSTrustError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// The process-wide HTTP clients of Kiln's outgoing connections to its own parts (the
/// scheduler's API, the registry's), one per `Settings` and `TrustedCA`: made on first use,
/// never shut down, so callers make none of their own. Every such client of Kiln comes from
/// here, so a `--ca-file` reaches each of them the same way.
public enum OutgoingHTTP {
    /// How a client connects and waits.
    public struct Settings: Sendable, Hashable {
        /// Time to connect, TLS handshake included.
        public var connect: Duration
        /// Time to wait for each read; nil: none (a followed log may stay quiet for minutes).
        public var read: Duration?
        /// Try a failed connection again, with backoff, until the request's deadline. Off: the
        /// first failure (refused, a certificate not trusted) fails the request at once with
        /// its own error, which is what a person at a terminal needs.
        public var retryConnecting: Bool
        /// How long an idle connection is kept for the next request; nil: the HTTP client's
        /// default (60 s). Short for calls made seldom to one of several servers: a kept
        /// connection to a host cut off the network takes a request the whole read time to
        /// find dead, where a new one fails within the connect time.
        public var idle: Duration?

        public init(connect: Duration, read: Duration?, retryConnecting: Bool, idle: Duration? = nil) {
            self.connect = connect
            self.read = read
            self.retryConnecting = retryConnecting
            self.idle = idle
        }
    }

    private struct Key: Hashable {
        let settings: Settings
        let ca: TrustedCA?
    }

    private static let clients = Mutex<[Key: HTTPClient]>([:])

    /// The client with `settings` trusting `ca` besides the system's roots (nil: the system's only).
    public static func client(_ settings: Settings, trusting ca: TrustedCA?) -> HTTPClient {
        let key = Key(settings: settings, ca: ca)
        return clients.withLock { clients in
            if let client = clients[key] { return client }
            var configuration = HTTPClient.Configuration()
            configuration.timeout = .init(connect: TimeAmount(settings.connect), read: settings.read.map { TimeAmount($0) })
            configuration.connectionPool.retryConnectionEstablishment = settings.retryConnecting
            if let idle = settings.idle { configuration.connectionPool.idleTimeout = TimeAmount(idle) }
            if let ca { configuration.tlsConfiguration = ca.tlsConfiguration }
            let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
            clients[key] = client
            return client
        }
    }
}

/// What a connection that failed in TLS means, said so that the reader knows what to do.
public enum TLSFailure {
    /// A sentence for `error` if it is a TLS failure reaching `url` (the server's certificate
    /// not trusted, or not naming the host; the server not speaking TLS), else nil. `option`
    /// names where the CA goes for this process (`--ca-file` by default).
    public static func explain(_ error: any Error, url: String, option: String = "--ca-file (env KILN_CA_FILE)") -> String? {
        let text = String(reflecting: error)
        if text.contains("CERTIFICATE_VERIFY_FAILED") {
            return "the TLS certificate of \(url) is not signed by a CA this process trusts: give the PEM file of the CA that signed it with \(option), or use a certificate from a CA in the system's roots (docs/tls.md)"
        }
        if error as? NIOSSLExtraError == .failedToValidateHostname || text.contains("failedToValidateHostname") {
            return "the TLS certificate of \(url) does not name its host: make the server's certificate with that name or address in its subjectAltName, or use the name the certificate has (docs/tls.md)"
        }
        if text.contains("WRONG_VERSION_NUMBER") || text.contains("PACKET_LENGTH_TOO_LONG") || text.contains("HTTP_REQUEST") {
            return "\(url) does not speak TLS there: is it a plain http:// address, or the wrong port?"
        }
        if text.contains("NIOSSLError") || text.contains("BoringSSL") {
            return "the TLS handshake with \(url) failed (\(text.prefix(300)))"
        }
        return nil
    }
}
