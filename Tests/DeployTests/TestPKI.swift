import Crypto
import Foundation
import SwiftASN1
import X509

/// A certificate authority the tests make, as a cluster has one: it signs the fake API
/// server's certificate and the client certificates Kiln presents. P-256 keys, PEM out.
struct TestCA: Sendable {
    let name: String
    let key: P256.Signing.PrivateKey
    let certificate: Certificate

    /// The CA's certificate, as a kubeconfig's certificate-authority-data holds it.
    var pem: String { (try? certificate.serializeAsPEM().pemString) ?? "" }

    init(name: String) throws {
        self.name = name
        let key = P256.Signing.PrivateKey()
        self.key = key
        let dn = try DistinguishedName { CommonName(name) }
        let now = Date()
        certificate = try Certificate(
            version: .v3, serialNumber: .init(), publicKey: .init(key.publicKey),
            notValidBefore: now.addingTimeInterval(-3600), notValidAfter: now.addingTimeInterval(86400),
            issuer: dn, subject: dn, signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                Critical(KeyUsage(keyCertSign: true, cRLSign: true))
                SubjectKeyIdentifier(hash: .init(key.publicKey))
            },
            issuerPrivateKey: .init(key))
    }

    /// A leaf certificate and its key (PEM): a server's for 127.0.0.1 and localhost, or a
    /// client's whose common name is the user Kubernetes would see.
    func issue(commonName: String, server: Bool) throws -> (certificate: String, key: String) {
        let leafKey = P256.Signing.PrivateKey()
        let now = Date()
        let leaf = try Certificate(
            version: .v3, serialNumber: .init(), publicKey: .init(leafKey.publicKey),
            notValidBefore: now.addingTimeInterval(-3600), notValidAfter: now.addingTimeInterval(86400),
            issuer: certificate.subject, subject: try DistinguishedName { CommonName(commonName) },
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true))
                try ExtendedKeyUsage([server ? .serverAuth : .clientAuth])
                AuthorityKeyIdentifier(keyIdentifier: SubjectKeyIdentifier(hash: .init(key.publicKey)).keyIdentifier)
                if server {
                    SubjectAlternativeNames([.ipAddress(ASN1OctetString(contentBytes: [127, 0, 0, 1])), .dnsName("localhost")])
                }
            },
            issuerPrivateKey: .init(key))
        return (try leaf.serializeAsPEM().pemString + "\n", leafKey.pemRepresentation + "\n")
    }
}
