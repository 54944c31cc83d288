import Crypto
import Foundation

/// One entry of a token's `access` claim, and of a token request's `scope`: a resource
/// (`repository` `demo`, or `registry` `catalog`) and the actions allowed on it.
///
/// A scope is written `type:name:actions` (`repository:demo:pull,push`,
/// `registry:catalog:*`). The registry matches names exactly (no globs).
public struct ResourceAccess: Codable, Sendable, Equatable, Hashable, CustomStringConvertible {
    public var type: String
    public var name: String
    public var actions: [String]

    public init(type: String, name: String, actions: [String]) {
        self.type = type
        self.name = name
        self.actions = actions
    }

    /// Parses one `scope` value. The type is up to the first ':', the actions after the last
    /// one, the name in between (a name may hold a ':' in the spec's grammar). Nil when a part
    /// is empty or an action is not a word (letters or `*`).
    public init?(scope: String) {
        guard let first = scope.firstIndex(of: ":"), let last = scope.lastIndex(of: ":"), first < last else { return nil }
        let type = String(scope[..<first])
        let name = String(scope[scope.index(after: first)..<last])
        let actions = scope[scope.index(after: last)...].split(separator: ",", omittingEmptySubsequences: true).map(String.init)
        guard !type.isEmpty, !name.isEmpty, !actions.isEmpty,
              actions.allSatisfy({ $0 == "*" || (!$0.isEmpty && $0.allSatisfy { $0.isLetter && $0.isASCII }) }) else { return nil }
        self.init(type: type, name: name, actions: actions)
    }

    /// All the `scope` parameters of a request (each may also hold several scopes separated by
    /// spaces, as some clients send). Nil names the first one that does not parse.
    public static func parse(scopes: [String]) -> Result<[ResourceAccess], RegistryAuthError> {
        var out: [ResourceAccess] = []
        for value in scopes {
            for part in value.split(separator: " ", omittingEmptySubsequences: true) {
                guard let access = ResourceAccess(scope: String(part)) else {
                    return .failure(RegistryAuthError("the scope '\(part)' is not type:name:actions (for example repository:demo:pull,push)"))
                }
                out.append(access)
            }
        }
        return .success(out)
    }

    public var description: String { "\(type):\(name):\(actions.joined(separator: ","))" }
}

/// The claims of a registry token (Docker's token specification, as Distribution 2.8 checks
/// them): `iss` and `aud` must equal the registry's `auth.token.issuer` and `service` (`aud`
/// is a string, not an array), `exp` is required; Distribution allows 60 s of clock skew.
public struct RegistryTokenClaims: Codable, Sendable, Equatable {
    public var iss: String
    public var sub: String
    public var aud: String
    public var exp: Int64
    public var nbf: Int64
    public var iat: Int64
    public var jti: String
    public var access: [ResourceAccess]

    public init(issuer: String, subject: String, audience: String, access: [ResourceAccess], issuedAt: Date, lifetime: Int, id: String) {
        let now = Int64(issuedAt.timeIntervalSince1970)
        self.iss = issuer
        self.sub = subject
        self.aud = audience
        self.iat = now
        self.nbf = now
        self.exp = now + Int64(lifetime)
        self.jti = id
        self.access = access
    }
}

/// Signs and checks registry tokens: compact JWS with ES256.
public enum RegistryToken {
    struct Header: Codable, Equatable {
        var typ: String
        var alg: String
        var kid: String
    }

    /// `base64url(header).base64url(claims).base64url(r‖s)`: the signature is the raw 64 bytes
    /// of r and s (JWS's form), not DER, which Distribution refuses ("signature length is 72
    /// octets long, should be 64").
    public static func sign(_ claims: RegistryTokenClaims, with key: TokenSigningKey) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let header = try encoder.encode(Header(typ: "JWT", alg: "ES256", kid: key.keyID))
        let body = try encoder.encode(claims)
        let input = Base64URL.encode(header) + "." + Base64URL.encode(body)
        let signature = try key.privateKey.signature(for: Data(input.utf8))
        return input + "." + Base64URL.encode(signature.rawRepresentation)
    }

    /// The claims of a token signed by `publicKey` (whose key id must be the header's `kid`),
    /// after checking its signature. Does not look at the times or the audience: the caller does.
    public static func verify(_ token: String, publicKey: P256.Signing.PublicKey) throws -> RegistryTokenClaims {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, let headerData = Base64URL.decode(parts[0]), let bodyData = Base64URL.decode(parts[1]),
              let signatureData = Base64URL.decode(parts[2]) else {
            throw RegistryAuthError("not a compact JWS (three base64url parts)")
        }
        let header = try JSONDecoder().decode(Header.self, from: headerData)
        guard header.alg == "ES256" else { throw RegistryAuthError("the token is signed with \(header.alg), not ES256") }
        guard header.kid == TokenSigningKey.keyID(of: publicKey) else { throw RegistryAuthError("the token names key \(header.kid), not this key") }
        guard signatureData.count == 64, let signature = try? P256.Signing.ECDSASignature(rawRepresentation: signatureData),
              publicKey.isValidSignature(signature, for: Data("\(parts[0]).\(parts[1])".utf8)) else {
            throw RegistryAuthError("the token's signature does not verify")
        }
        return try JSONDecoder().decode(RegistryTokenClaims.self, from: bodyData)
    }
}

/// Base64 with the URL-safe alphabet and no padding (JWS, RFC 7515).
public enum Base64URL {
    public static func encode<D: DataProtocol>(_ data: D) -> String {
        Data(data).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    public static func decode<S: StringProtocol>(_ text: S) -> Data? {
        var s = text.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        guard !s.contains("=") else { return nil }
        while s.count % 4 != 0 { s += "=" }
        return Data(base64Encoded: s)
    }
}
