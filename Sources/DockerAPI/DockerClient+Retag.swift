import AsyncHTTPClient
import Crypto
import Foundation
import NIOCore

extension DockerClient {
    /// The media types of manifests and indexes a retag accepts (Docker v2 schema 2 and OCI).
    static let manifestTypes = [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    ]

    /// Points `repository:tag` at the manifest `digest` of the same repository, through the
    /// registry's HTTP API (Docker registry v2), without the container engine and without moving
    /// a layer: `GET /v2/<repository>/manifests/<digest>` with the manifest types accepted,
    /// then `PUT /v2/<repository>/manifests/<tag>` with the same bytes and `Content-Type`. A
    /// manifest is addressed by the SHA-256 of its bytes, so the same bytes under a new tag are
    /// the same digest; the registry's answer to the PUT and a `HEAD` of the tag afterwards must
    /// both name `digest`, or this throws.
    ///
    /// Token authentication as `registryDigest` does it, but with one token asked for `pull,push`
    /// on the repository up front (the first challenge names `pull` only) and used for all three
    /// requests. Throws `DockerError` with status 404 when the registry no longer has the
    /// manifest (its tag deleted and garbage-collected, or never pushed here).
    ///
    /// - Parameters:
    ///   - registry: "host:port", or a base URL whose scheme wins.
    ///   - insecure: plain HTTP instead of HTTPS when `registry` has no scheme.
    public static func retag(
        registry: String, repository: String, digest: String, tag: String, insecure: Bool = false,
        credentials: RegistryCredentials? = nil, httpClient: HTTPClient = .shared
    ) async throws {
        let operation = "tag \(registry)/\(repository)@\(digest) as \(tag)"
        let base = registry.contains("://") ? registry : (insecure ? "http://" : "https://") + registry
        let root = (base.hasSuffix("/") ? String(base.dropLast()) : base) + "/v2/\(repository)/manifests/"
        var authorization: String?

        enum Verb { case get, put, head }
        func send(_ verb: Verb, _ reference: String, body: ByteBuffer? = nil, contentType: String? = nil) async throws -> (HTTPClientResponse, ByteBuffer) {
            var request = HTTPClientRequest(url: root + DockerClient.escapeComponent(reference))
            switch verb {
            case .get: request.method = .GET
            case .put: request.method = .PUT
            case .head: request.method = .HEAD
            }
            request.headers.add(name: "Accept", value: manifestTypes.joined(separator: ", "))
            if let contentType { request.headers.add(name: "Content-Type", value: contentType) }
            if let body { request.body = .bytes(body) }
            if let authorization { request.headers.add(name: "Authorization", value: authorization) }
            do {
                let response = try await httpClient.execute(request, timeout: .seconds(30))
                let bytes = try await response.body.collect(upTo: 4 << 20)
                return (response, bytes)
            } catch {
                throw DockerError(operation, nil, "the registry does not answer: \(error)")
            }
        }

        // Answers a 401's challenge with a token for pull and push (a registry that lets anyone
        // pull answers the GET without one and asks only at the PUT); false: no way to answer.
        func authorize(after response: HTTPClientResponse) async throws -> Bool {
            guard response.status.code == 401, authorization == nil, let credentials else { return false }
            let header = response.headers.first(name: "Www-Authenticate") ?? ""
            if var bearer = BearerChallenge(header: header) {
                bearer.scope = "repository:\(repository):pull,push"
                authorization = "Bearer " + (try await bearer.token(credentials: credentials, httpClient: httpClient, operation: operation))
            } else if header.lowercased().hasPrefix("basic") {
                authorization = credentials.basicAuthorization
            }
            return authorization != nil
        }

        var (got, manifest) = try await send(.get, digest)
        if try await authorize(after: got) { (got, manifest) = try await send(.get, digest) }
        switch got.status.code {
        case 200: break
        case 404: throw DockerError(operation, 404, "the registry has no manifest \(digest) in \(repository)")
        case 401, 403: throw DockerError(operation, Int(got.status.code), credentials == nil ? "the registry asks for credentials" : "the registry refused \(credentials!.user) reading \(repository)")
        default: throw DockerError(operation, Int(got.status.code), "the registry answered \(got.status) to the manifest's GET")
        }
        guard let contentType = got.headers.first(name: "Content-Type").map({ String($0.prefix { $0 != ";" }).trimmingCharacters(in: .whitespaces) }),
              manifestTypes.contains(contentType) else {
            throw DockerError(operation, 200, "the manifest's type '\(got.headers.first(name: "Content-Type") ?? "")' is not one a retag keeps")
        }
        if let served = got.headers.first(name: "Docker-Content-Digest"), served != digest {
            throw DockerError(operation, 200, "the registry served \(served) for \(digest)")
        }
        // The bytes themselves must be the manifest the digest names.
        let hashed = "sha256:" + SHA256.hash(data: Array(manifest.readableBytesView)).map { String(format: "%02x", $0) }.joined()
        guard hashed == digest else {
            throw DockerError(operation, 200, "the manifest served for \(digest) hashes to \(hashed)")
        }

        var (put, putBody) = try await send(.put, tag, body: manifest, contentType: contentType)
        if try await authorize(after: put) { (put, putBody) = try await send(.put, tag, body: manifest, contentType: contentType) }
        guard put.status.code == 201 || put.status.code == 200 else {
            let text = String(buffer: putBody).prefix(300)
            throw DockerError(operation, Int(put.status.code), put.status.code == 401 || put.status.code == 403
                ? "the registry refused the push of tag \(tag) (\(text))" : "the registry answered \(put.status) to the manifest's PUT: \(text)")
        }
        let stored = put.headers.first(name: "Docker-Content-Digest")
        guard stored == nil || stored == digest else {
            throw DockerError(operation, Int(put.status.code), "the registry stored \(stored!) under \(tag), not \(digest)")
        }
        let (head, _) = try await send(.head, tag)
        guard head.status.code == 200, let now = head.headers.first(name: "Docker-Content-Digest") else {
            throw DockerError(operation, Int(head.status.code), "the tag \(tag) could not be read back after the PUT (\(head.status))")
        }
        guard now == digest else {
            throw DockerError(operation, 200, "the tag \(tag) names \(now) after the PUT, not \(digest)")
        }
    }
}
