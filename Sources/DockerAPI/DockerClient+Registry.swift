import AsyncHTTPClient
import Foundation

extension DockerClient {
    /// The digest ("sha256:…") the registry gives `repository:tag`'s manifest:
    /// `HEAD /v2/<repository>/manifests/<tag>` accepting Docker v2 and OCI manifests and
    /// indexes, read from `Docker-Content-Digest`.
    ///
    /// A registry with token authentication answers 401 with a Bearer challenge: with
    /// `credentials` the token is asked from the challenge's realm (HTTP Basic) and the request
    /// made again with it; one with a Basic challenge (htpasswd) gets `credentials` as HTTP
    /// Basic; without credentials, either is an error that says credentials are needed.
    ///
    /// - Parameters:
    ///   - registry: "host:port", or a base URL ("http://host:port") whose scheme wins.
    ///   - insecure: plain HTTP instead of HTTPS when `registry` has no scheme.
    public static func registryDigest(
        registry: String, repository: String, tag: String, insecure: Bool = false,
        credentials: RegistryCredentials? = nil, httpClient: HTTPClient = .shared
    ) async throws -> String {
        let operation = "read the digest of \(registry)/\(repository):\(tag)"
        let base = registry.contains("://") ? registry : (insecure ? "http://" : "https://") + registry
        let trimmed = base.hasSuffix("/") ? String(base.dropLast()) : base
        var request = HTTPClientRequest(url: "\(trimmed)/v2/\(repository)/manifests/\(escapeComponent(tag))")
        request.method = .HEAD
        request.headers.add(name: "Accept", value: [
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.distribution.manifest.list.v2+json",
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.oci.image.index.v1+json",
        ].joined(separator: ", "))
        var response: HTTPClientResponse
        do {
            response = try await httpClient.execute(request, timeout: .seconds(30))
        } catch {
            throw DockerError(operation, nil, "the registry does not answer: \(error)")
        }
        _ = try? await response.body.collect(upTo: 1 << 20)
        let challengeHeader = response.headers.first(name: "Www-Authenticate") ?? ""
        if response.status.code == 401, let credentials,
           let authorization = try await authorization(challengeHeader, credentials: credentials, httpClient: httpClient, operation: operation) {
            request.headers.replaceOrAdd(name: "Authorization", value: authorization)
            do {
                response = try await httpClient.execute(request, timeout: .seconds(30))
            } catch {
                throw DockerError(operation, nil, "the registry does not answer: \(error)")
            }
            _ = try? await response.body.collect(upTo: 1 << 20)
        }
        switch response.status.code {
        case 200:
            guard let digest = response.headers.first(name: "Docker-Content-Digest"), digest.hasPrefix("sha256:") else {
                throw DockerError(operation, 200, "the registry gave no Docker-Content-Digest header")
            }
            return digest
        case 404:
            throw DockerError(operation, 404, "the registry has no manifest for \(repository):\(tag)")
        case 401, 403:
            throw DockerError(operation, Int(response.status.code), credentials == nil
                ? "the registry asks for credentials"
                : "the registry refused \(credentials!.user): \(challengeHeader.lowercased().hasPrefix("basic") ? "wrong user or password" : "its token does not allow pulling \(repository)")")
        default:
            throw DockerError(operation, Int(response.status.code), "the registry answered \(response.status)")
        }
    }

    /// The `Authorization` of a request answered with `challenge`: a Bearer token from the
    /// challenge's realm, or HTTP Basic; nil for a challenge of another kind.
    private static func authorization(_ challenge: String, credentials: RegistryCredentials, httpClient: HTTPClient, operation: String) async throws -> String? {
        if let bearer = BearerChallenge(header: challenge) {
            return "Bearer " + (try await bearer.token(credentials: credentials, httpClient: httpClient, operation: operation))
        }
        return challenge.lowercased().hasPrefix("basic") ? credentials.basicAuthorization : nil
    }

    /// A "sha256:<64 hex>" found after "digest: " in a status line.
    static func digest(in line: String) -> String? {
        guard let range = line.range(of: "digest: sha256:") else { return nil }
        let hex = line[range.upperBound...].prefix { $0.isHexDigit }
        return hex.count == 64 ? "sha256:" + hex : nil
    }
}
