import Crypto
import Foundation
import SwiftASN1
import X509

/// The P-256 key the token service signs registry tokens with, and its self-signed certificate.
///
/// Docker Distribution trusts a token when the key named by the JWT's `kid` is in the
/// certificates of its `auth.token.rootcertbundle`: give the registry `certificatePEM` and keep
/// `privateKeyPEM` in a file of mode 0600 that only the token service (the scheduler) reads.
/// ES256 because an Ed25519 certificate in the bundle makes Distribution 2.8 panic at start.
public struct TokenSigningKey: Sendable {
    public let privateKey: P256.Signing.PrivateKey

    public init(privateKey: P256.Signing.PrivateKey) {
        self.privateKey = privateKey
    }

    /// A new random key.
    public static func generate() -> TokenSigningKey {
        TokenSigningKey(privateKey: P256.Signing.PrivateKey())
    }

    /// Reads a P-256 private key in PEM, PKCS#8 or SEC1 (the "EC" form openssl writes).
    public init(pem: String) throws {
        do {
            self.privateKey = try P256.Signing.PrivateKey(pemRepresentation: pem)
        } catch {
            throw RegistryAuthError("the signing key is not a PEM-encoded P-256 (ES256) private key: \(error); make one with `kiln up`, or `openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt`")
        }
    }

    /// PKCS#8 PEM: for the key file (mode 0600).
    public var privateKeyPEM: String { privateKey.pemRepresentation }

    public var publicKey: P256.Signing.PublicKey { privateKey.publicKey }

    /// The key id the registry looks the key up by (the JWT header's `kid`).
    public var keyID: String { Self.keyID(of: publicKey) }

    /// libtrust's key id, which Docker Distribution computes for every key in its bundle:
    /// SHA-256 of the DER SubjectPublicKeyInfo, its first 30 bytes in RFC 4648 base32
    /// (upper case, no padding: 48 characters), in 12 groups of 4 joined by ':'.
    public static func keyID(of publicKey: P256.Signing.PublicKey) -> String {
        keyID(subjectPublicKeyInfoDER: Array(publicKey.derRepresentation))
    }

    static func keyID(subjectPublicKeyInfoDER der: [UInt8]) -> String {
        let digest = Array(SHA256.hash(data: der)).prefix(30)
        let encoded = Base32.encode(Array(digest))
        var groups: [Substring] = []
        var rest = Substring(encoded)
        while !rest.isEmpty {
            groups.append(rest.prefix(4))
            rest = rest.dropFirst(4)
        }
        return groups.joined(separator: ":")
    }

    /// A self-signed certificate of this key (valid from an hour ago for `years`), PEM: the
    /// registry's rootcertbundle. It is public: it lets a registry check tokens, not make them.
    public func certificatePEM(commonName: String = "kiln registry token service", years: Int = 10, now: Date = Date()) throws -> String {
        let key = Certificate.PrivateKey(privateKey)
        let name = try DistinguishedName { CommonName(commonName) }
        let certificate = try Certificate(
            version: .v3, serialNumber: .init(), publicKey: key.publicKey,
            notValidBefore: now.addingTimeInterval(-3600), notValidAfter: now.addingTimeInterval(Double(years) * 365 * 86400),
            issuer: name, subject: name, signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true))
            },
            issuerPrivateKey: key)
        return try certificate.serializeAsPEM().pemString + "\n"
    }

    /// The public key of the first certificate in a PEM bundle (for checks and tests).
    public static func publicKey(ofCertificatePEM pem: String) throws -> P256.Signing.PublicKey {
        let certificate = try Certificate(pemEncoded: pem)
        guard let key = P256.Signing.PublicKey(certificate.publicKey) else {
            throw RegistryAuthError("the certificate's key is not a P-256 key")
        }
        return key
    }
}

/// An error of the token code, with a message that says what to do.
public struct RegistryAuthError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// RFC 4648 base32 (A–Z, 2–7), without padding: what libtrust's key ids are written in.
enum Base32 {
    static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")

    static func encode(_ bytes: [UInt8]) -> String {
        var out = ""
        var buffer = 0, bits = 0
        for byte in bytes {
            buffer = (buffer << 8) | Int(byte)
            bits += 8
            while bits >= 5 {
                out.append(alphabet[(buffer >> (bits - 5)) & 31])
                bits -= 5
            }
        }
        if bits > 0 { out.append(alphabet[(buffer << (5 - bits)) & 31]) }
        return out
    }
}

/// What etcd keeps of a machine's token: its SHA-256, so reading etcd gives no token away.
public enum MachineToken {
    /// Lower-case hex SHA-256 of the token's UTF-8 bytes.
    public static func sha256Hex(_ token: String) -> String {
        SHA256.hash(data: Data(token.utf8)).map { String(format: "%02x", $0) }.joined()
    }
}
