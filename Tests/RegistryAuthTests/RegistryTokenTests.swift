import Crypto
import Foundation
import Testing
@testable import RegistryAuth

@Suite("Registry tokens: key id, claims, scopes, ES256")
struct RegistryTokenTests {
    /// A fixed key and the kid libtrust gives it (computed apart from Kiln, with Python's
    /// cryptography: SHA-256 of the DER SubjectPublicKeyInfo, 30 bytes, base32, groups of 4).
    static let pem = """
        -----BEGIN PRIVATE KEY-----
        MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgAdLDtKWWh3hpWks8
        LR4PDh0sO0pZaHeGlaSzwtHg8OGhRANCAAS4mpJkGgQ5sde6OBDCj3y4j45ej2wQ
        4VbMYOZbudQXY6qhJcQph7VSNRwTkfJKmCKKoDzImcA/C0MJQG4m0MDx
        -----END PRIVATE KEY-----
        """
    static let kid = "RTV3:W3HI:E3P3:RPRP:VP3K:KIIV:KM3B:IMKT:BYIC:RV4N:QJ67:5JUZ"

    @Test("the kid is libtrust's: 12 groups of 4 base32 characters of the SPKI's SHA-256")
    func keyID() throws {
        let key = try TokenSigningKey(pem: Self.pem)
        #expect(key.keyID == Self.kid)
        let other = TokenSigningKey.generate()
        #expect(other.keyID != Self.kid)
        let groups = other.keyID.split(separator: ":")
        #expect(groups.count == 12 && groups.allSatisfy { $0.count == 4 && $0.allSatisfy { Base32.alphabet.contains($0) } })
    }

    @Test("base32 follows RFC 4648's test vectors (without padding)")
    func base32() {
        let vectors = ["": "", "f": "MY", "fo": "MZXQ", "foo": "MZXW6", "foob": "MZXW6YQ", "fooba": "MZXW6YTB", "foobar": "MZXW6YTBOI"]
        for (plain, encoded) in vectors { #expect(Base32.encode(Array(plain.utf8)) == encoded, "\(plain)") }
    }

    @Test("the PEM key round-trips; a wrong PEM is refused with what to do")
    func pemRoundTrip() throws {
        let key = TokenSigningKey.generate()
        #expect(try TokenSigningKey(pem: key.privateKeyPEM).keyID == key.keyID)
        let error = #expect(throws: RegistryAuthError.self) { _ = try TokenSigningKey(pem: "not a key") }
        #expect(error?.message.contains("P-256") == true)
    }

    @Test("the certificate holds the signing key (what the registry's rootcertbundle needs)")
    func certificate() throws {
        let key = TokenSigningKey.generate()
        let pem = try key.certificatePEM()
        #expect(pem.hasPrefix("-----BEGIN CERTIFICATE-----"))
        #expect(try TokenSigningKey.publicKey(ofCertificatePEM: pem).derRepresentation == key.publicKey.derRepresentation)
    }

    @Test("a signed token: ES256 header with the kid, raw 64-byte signature, aud a string, claims as given")
    func signAndVerify() throws {
        let key = try TokenSigningKey(pem: Self.pem)
        let issued = Date(timeIntervalSince1970: 1_800_000_000)
        let claims = RegistryTokenClaims(issuer: "kiln", subject: "agent-1", audience: "kiln-registry",
                                         access: [ResourceAccess(type: "repository", name: "demo", actions: ["pull", "push"])],
                                         issuedAt: issued, lifetime: 300, id: "j1")
        let token = try RegistryToken.sign(claims, with: key)
        let parts = token.split(separator: ".")
        #expect(parts.count == 3)
        let header = try JSONSerialization.jsonObject(with: Base64URL.decode(parts[0])!) as! [String: String]
        #expect(header == ["typ": "JWT", "alg": "ES256", "kid": Self.kid])
        #expect(Base64URL.decode(parts[2])?.count == 64, "JWS wants r‖s, not DER")
        let body = try JSONSerialization.jsonObject(with: Base64URL.decode(parts[1])!) as! [String: Any]
        #expect(body["aud"] as? String == "kiln-registry", "aud must be a string for Distribution 2.8")
        #expect(body["exp"] as? Int == 1_800_000_300 && body["nbf"] as? Int == 1_800_000_000 && body["iat"] as? Int == 1_800_000_000)
        #expect(body["iss"] as? String == "kiln" && body["sub"] as? String == "agent-1" && body["jti"] as? String == "j1")
        #expect(!token.contains("+") && !token.contains("/") && !token.contains("="))

        #expect(try RegistryToken.verify(token, publicKey: key.publicKey) == claims)
    }

    @Test("verification refuses another key, a changed claim, a DER signature")
    func verifyRefuses() throws {
        let key = TokenSigningKey.generate()
        let claims = RegistryTokenClaims(issuer: "kiln", subject: "admin", audience: "kiln-registry", access: [], issuedAt: Date(), lifetime: 60, id: "x")
        let token = try RegistryToken.sign(claims, with: key)
        #expect(throws: RegistryAuthError.self) { _ = try RegistryToken.verify(token, publicKey: TokenSigningKey.generate().publicKey) }

        var parts = token.split(separator: ".").map(String.init)
        var forged = claims
        forged.access = [ResourceAccess(type: "repository", name: "demo", actions: ["push"])]
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        parts[1] = Base64URL.encode(try encoder.encode(forged))
        #expect(throws: RegistryAuthError.self) { _ = try RegistryToken.verify(parts.joined(separator: "."), publicKey: key.publicKey) }

        parts = token.split(separator: ".").map(String.init)
        let der = try key.privateKey.signature(for: Data("\(parts[0]).\(parts[1])".utf8)).derRepresentation
        parts[2] = Base64URL.encode(der)
        #expect(throws: RegistryAuthError.self) { _ = try RegistryToken.verify(parts.joined(separator: "."), publicKey: key.publicKey) }
    }

    @Test("scopes parse as type:name:actions; bad ones are named")
    func scopes() throws {
        #expect(ResourceAccess(scope: "repository:demo:pull,push") == ResourceAccess(type: "repository", name: "demo", actions: ["pull", "push"]))
        #expect(ResourceAccess(scope: "registry:catalog:*") == ResourceAccess(type: "registry", name: "catalog", actions: ["*"]))
        #expect(ResourceAccess(scope: "repository:group/img:pull")?.name == "group/img")
        #expect(ResourceAccess(scope: "repository:host:5000/img:pull")?.name == "host:5000/img", "the name lies between the first and the last ':'")
        for bad in ["", "repository", "repository:demo", "repository::pull", ":demo:pull", "repository:demo:", "repository:demo:pu-ll", "repository:demo:pull;rm"] {
            #expect(ResourceAccess(scope: bad) == nil, "\(bad)")
        }
        let many = try ResourceAccess.parse(scopes: ["repository:a:pull repository:b:push", "registry:catalog:*"]).get()
        #expect(many.map(\.description) == ["repository:a:pull", "repository:b:push", "registry:catalog:*"])
        guard case .failure(let error) = ResourceAccess.parse(scopes: ["repository:a:pull", "nonsense"]) else {
            Issue.record("a bad scope was accepted")
            return
        }
        #expect(error.message.contains("'nonsense'"))
    }

    @Test("a machine token's hash is SHA-256 in hex")
    func machineTokenHash() {
        #expect(MachineToken.sha256Hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    }
}
