import AsyncHTTPClient
import Foundation

/// A user and password for a registry, as the engine and the registry's token service take
/// them. The engine (podman, dockerd) does the token dance itself: it sends these to the realm
/// the registry names and uses the token it gets. Never logged: `description` hides the password.
public struct RegistryCredentials: Sendable, Equatable, CustomStringConvertible {
    public let user: String
    public let password: String

    public init(user: String, password: String) {
        self.user = user
        self.password = password
    }

    /// The `X-Registry-Auth` header of a push or pull: `{"username":…,"password":…}` in
    /// URL-safe base64 WITH padding. podman 4.3 decodes it with Go's URL-safe decoder:
    /// standard base64 fails when the text holds `+` or `/`, unpadded base64 with
    /// "unexpected EOF".
    public var registryAuthHeader: String {
        struct Body: Encodable { let username: String; let password: String }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let data = (try? encoder.encode(Body(username: user, password: password))) ?? Data("{}".utf8)
        return Self.urlSafeBase64(data)
    }

    /// The header an anonymous push or pull sends.
    public static let anonymousHeader = urlSafeBase64(Data("{}".utf8))

    static func urlSafeBase64(_ data: Data) -> String {
        data.base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
    }

    /// HTTP Basic.
    var basicAuthorization: String { "Basic " + Data("\(user):\(password)".utf8).base64EncodedString() }

    public var description: String { "\(user):***" }
}

/// A registry's `Www-Authenticate: Bearer realm="…",service="…",scope="…"` challenge: where
/// to get a token and for what.
public struct BearerChallenge: Sendable, Equatable {
    public var realm: String
    public var service: String?
    public var scope: String?

    /// Nil unless the header is a Bearer challenge with a realm. Values are quoted strings
    /// (a scope holds commas and colons, so the split honours the quotes).
    public init?(header: String) {
        let trimmed = header.trimmingCharacters(in: .whitespaces)
        guard trimmed.lowercased().hasPrefix("bearer ") else { return nil }
        var params: [String: String] = [:]
        var rest = Substring(trimmed.dropFirst("bearer ".count))
        while !rest.isEmpty {
            rest = rest.drop { $0 == " " || $0 == "," }
            guard let eq = rest.firstIndex(of: "=") else { break }
            let key = rest[..<eq].trimmingCharacters(in: .whitespaces).lowercased()
            rest = rest[rest.index(after: eq)...]
            var value = ""
            if rest.first == "\"" {
                rest = rest.dropFirst()
                while let c = rest.first, c != "\"" {
                    if c == "\\", let next = rest.dropFirst().first { value.append(next); rest = rest.dropFirst(2); continue }
                    value.append(c)
                    rest = rest.dropFirst()
                }
                rest = rest.dropFirst()
            } else {
                let end = rest.firstIndex(of: ",") ?? rest.endIndex
                value = rest[..<end].trimmingCharacters(in: .whitespaces)
                rest = rest[end...]
            }
            params[key] = value
        }
        guard let realm = params["realm"], !realm.isEmpty else { return nil }
        self.realm = realm
        self.service = params["service"]
        self.scope = params["scope"]
    }

    /// The token request URL: the realm with `service` and `scope` in the query.
    public var tokenURL: String {
        var items: [String] = []
        if let service { items.append("service=\(DockerClient.escapeComponent(service))") }
        if let scope { items.append("scope=\(DockerClient.escapeComponent(scope))") }
        guard !items.isEmpty else { return realm }
        return realm + (realm.contains("?") ? "&" : "?") + items.joined(separator: "&")
    }

    /// Asks the realm for a token with HTTP Basic `credentials` (Docker's token specification).
    func token(credentials: RegistryCredentials, httpClient: HTTPClient, operation: String) async throws -> String {
        var request = HTTPClientRequest(url: tokenURL)
        request.headers.add(name: "Authorization", value: credentials.basicAuthorization)
        let response: HTTPClientResponse
        do {
            response = try await httpClient.execute(request, timeout: .seconds(30))
        } catch {
            throw DockerError(operation, nil, "the registry's token service at \(realm) does not answer: \(error)")
        }
        let body = try await response.body.collect(upTo: 1 << 20)
        guard response.status.code == 200 else {
            throw DockerError(operation, Int(response.status.code), "the registry's token service at \(realm) refused \(credentials.user): HTTP \(response.status.code)")
        }
        struct Answer: Decodable { let token: String?; let access_token: String? }
        guard let answer = try? JSONDecoder().decode(Answer.self, from: Data(body.readableBytesView)), let token = answer.token ?? answer.access_token else {
            throw DockerError(operation, 200, "the registry's token service at \(realm) gave no token")
        }
        return token
    }
}
