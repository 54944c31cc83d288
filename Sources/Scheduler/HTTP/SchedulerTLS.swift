import Foundation
import Hummingbird
import HummingbirdCore
import HummingbirdTLS
import KilnCore
import NIOSSL

/// The scheduler's own TLS (`kiln scheduler --tls-cert FILE --tls-key FILE`): the API, the
/// console, the webhooks and the registry's token service and events are all served over
/// HTTPS on `--listen`, with the certificate chain of `certificateFile` (PEM, the server's
/// certificate first, then any intermediates) and the private key of `keyFile` (PEM, RSA or
/// EC; a credential file: mode 0600 in a folder only its owner writes, `CredentialFile`).
///
/// Everything is checked here, when the scheduler starts: a file that cannot be read, a key
/// readable by others, a certificate that has expired, a key that is not the certificate's.
/// See docs/tls.md for making the files.
public struct SchedulerTLS: Sendable {
    public let certificateFile: String
    public let keyFile: String
    /// The server's certificate's subjectAltName, to say at start what clients may call it.
    public let names: [String]
    /// The HTTP/1.1 server wrapped in TLS, for Hummingbird's `Application`.
    let server: HTTPServerBuilder

    public init(certificateFile: String, keyFile: String, now: Date = Date()) throws {
        let chain: [NIOSSLCertificate]
        do {
            chain = try NIOSSLCertificate.fromPEMFile(certificateFile)
        } catch {
            throw KilnError.invalid("--tls-cert \(certificateFile): not a PEM certificate chain (\(error)); give the server's certificate (then any intermediate CAs) in PEM")
        }
        guard let leaf = chain.first else {
            throw KilnError.invalid("--tls-cert \(certificateFile) holds no certificate: give the server's certificate in PEM")
        }
        let notAfter = Date(timeIntervalSince1970: TimeInterval(leaf.notValidAfter))
        guard notAfter > now else {
            throw KilnError.invalid("--tls-cert \(certificateFile) expired on \(notAfter): make a new certificate (docs/tls.md)")
        }
        let pem: String
        do {
            pem = try CredentialFile.read(keyFile)
        } catch let error as KilnError {
            throw KilnError.invalid("--tls-key: \(error.message)")
        }
        let key: NIOSSLPrivateKey
        do {
            key = try NIOSSLPrivateKey(bytes: Array(pem.utf8), format: .pem)
        } catch {
            throw KilnError.invalid("--tls-key \(keyFile): not a PEM private key (\(error)); give the unencrypted PEM private key of --tls-cert")
        }
        var configuration = TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
        configuration.minimumTLSVersion = .tlsv12
        // BoringSSL checks here that the key is the certificate's.
        do {
            _ = try NIOSSLContext(configuration: configuration)
        } catch {
            throw KilnError.invalid("--tls-key \(keyFile) does not go with --tls-cert \(certificateFile) (\(error)): give the key the certificate was made for")
        }
        self.certificateFile = certificateFile
        self.keyFile = keyFile
        // `_subjectAlternativeNames` is NIOSSL's public (underscored) reader of the names.
        self.names = leaf._subjectAlternativeNames().compactMap { name -> String? in
            let bytes = Array(name.contents)
            if name.nameType == .dnsName { return String(decoding: bytes, as: UTF8.self) }
            guard name.nameType == .ipAddress else { return nil }
            if bytes.count == 4 { return bytes.map(String.init).joined(separator: ".") }
            if bytes.count == 16 {
                return stride(from: 0, to: 16, by: 2).map { String(UInt16(bytes[$0]) << 8 | UInt16(bytes[$0 + 1]), radix: 16) }.joined(separator: ":")
            }
            return nil
        }
        self.server = try HTTPServerBuilder.tls(.http1(), tlsConfiguration: configuration)
    }

    /// The warning a scheduler serving plain HTTP logs at start when `host` (of `--listen`) is
    /// not loopback; nil when it is (or when it serves TLS, where the caller does not ask).
    public static func plainHTTPWarning(listen host: String) -> String? {
        guard !HostReach.isLoopback(host) else { return nil }
        return """
            serving plain HTTP on \(host), which is not this machine's loopback: agents (--scheduler) and \
            the CLI (--api) refuse an http:// scheduler anywhere but on loopback, since API tokens, the \
            agents' machine credentials and the builds' secrets would cross the network in clear. Serve \
            TLS with --tls-cert and --tls-key (docs/tls.md), or put a TLS proxy in front and listen on \
            127.0.0.1 only
            """
    }

}
