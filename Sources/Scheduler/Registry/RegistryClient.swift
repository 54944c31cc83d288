import AsyncHTTPClient
import Foundation
import KilnCore
import NIOCore
import NIOHTTP1
import RegistryAuth
import TLSTrust

/// The farm's registry as the scheduler reads and changes it, over the Docker Registry HTTP
/// API v2: the catalog, a repository's tags, a manifest (its digest and size), and deleting a
/// manifest by digest. For the console's image pages and `DELETE /api/v1/groups/{g}/images/…`.
///
/// With the token service's key (`kiln scheduler --registry-signing-key`) the scheduler signs
/// each request's token itself, for exactly the scopes that request needs, lasting 60 s, with
/// the person it acts for as the token's subject (so the registry's delete event names them);
/// the registry takes any token its `rootcertbundle` key signed. Without the key the registry
/// is asked without credentials (a registry without authentication, as in tests of the Docker
/// API only). Nothing here is cached: every page reads the registry as it is.
public struct RegistryClient: Sendable {
    /// `kiln scheduler --registry-url`: where the scheduler reaches the registry's API.
    public struct Configuration: Sendable, Equatable {
        /// `http://127.0.0.1:5000`, no trailing slash.
        public var url: String
        /// A CA trusted besides the system's roots for an `https://` registry (`--ca-file`).
        public var ca: TrustedCA?
        public init(url: String, ca: TrustedCA? = nil) {
            var url = url
            while url.hasSuffix("/") { url.removeLast() }
            self.url = url
            self.ca = ca
        }
    }

    /// A registry that is down or untrusted fails the page at once, with why, rather than
    /// after the request's whole time.
    static let http = OutgoingHTTP.Settings(connect: .seconds(5), read: .seconds(10), retryConnecting: false)

    let configuration: Configuration
    /// The token service's key and names; nil: no credentials.
    let tokens: RegistryTokenService.Configuration?
    let timeout: TimeAmount = .seconds(10)

    public init(configuration: Configuration, tokens: RegistryTokenService.Configuration?) {
        self.configuration = configuration
        self.tokens = tokens
    }

    /// What a manifest says, as the image pages show it.
    struct Manifest: Sendable, Equatable {
        /// `sha256:…`, from `Docker-Content-Digest`.
        var digest: String
        var mediaType: String
        /// Bytes of the config and every layer (of every platform's manifest for an index,
        /// each distinct blob once): what the image takes in the registry.
        var size: Int64
        /// For an index, the digests of the platforms' manifests it lists; empty otherwise.
        var children: [String] = []
    }

    static let manifestTypes = [
        "application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json",
    ]

    /// The repositories whose names start with `prefix` (`GROUP/`). The catalog is sorted, so
    /// the listing starts right after the prefix itself (`last=GROUP/`) and stops at the first
    /// name past it: a group's page does not read the whole registry's catalog.
    func catalog(prefix: String) async throws -> [String] {
        struct Page: Decodable { var repositories: [String]? }
        var out: [String] = []
        var last = prefix
        for _ in 0..<1000 {
            let (status, body, _) = try await send(.GET, "/v2/_catalog?n=\(Self.catalogPage)&last=\(Self.escape(last))",
                                                   scopes: [ResourceAccess(type: "registry", name: "catalog", actions: ["*"])])
            guard status == 200 else { throw answerError(status, body, doing: "list its repositories") }
            let page = try JSONDecoder().decode(Page.self, from: body).repositories ?? []
            out += page.prefix { $0.hasPrefix(prefix) }
            guard page.count == Self.catalogPage, let next = page.last, next.hasPrefix(prefix) else { break }
            last = next
        }
        return out
    }

    static let catalogPage = 100

    /// A repository's tags; none for a repository the registry does not know.
    func tags(_ repository: String) async throws -> [String] {
        struct List: Decodable { var tags: [String]? }
        let (status, body, _) = try await send(.GET, "/v2/\(repository)/tags/list", scopes: [pull(repository)])
        if status == 404 { return [] }
        guard status == 200 else { throw answerError(status, body, doing: "list the tags of \(repository)") }
        return (try JSONDecoder().decode(List.self, from: body).tags ?? []).sorted()
    }

    /// The manifest `reference` (a tag or a digest) names: its digest and size.
    func manifest(_ repository: String, _ reference: String) async throws -> Manifest {
        let (status, body, headers) = try await send(.GET, "/v2/\(repository)/manifests/\(reference)", scopes: [pull(repository)], accept: Self.manifestTypes)
        if status == 404 { throw KilnError.notFound("the registry has no \(repository):\(reference)") }
        guard status == 200 else { throw answerError(status, body, doing: "read the manifest \(repository):\(reference)") }
        let parsed = try JSONDecoder().decode(ManifestBody.self, from: body)
        let mediaType = parsed.mediaType ?? headers.first(name: "Content-Type") ?? "?"
        guard let digest = headers.first(name: "Docker-Content-Digest") else {
            throw KilnError.unavailable("the registry answered the manifest \(repository):\(reference) without its digest (Docker-Content-Digest)")
        }
        var blobs: [String: Int64] = [:]
        parsed.blobs.forEach { blobs[$0.digest] = $0.size }
        // An index: each platform's manifest (a handful at most), every distinct blob once.
        for child in (parsed.manifests ?? []).prefix(16) {
            let (s, b, _) = try await send(.GET, "/v2/\(repository)/manifests/\(child.digest)", scopes: [pull(repository)], accept: Self.manifestTypes)
            guard s == 200 else { continue }
            try JSONDecoder().decode(ManifestBody.self, from: b).blobs.forEach { blobs[$0.digest] = $0.size }
        }
        return Manifest(digest: digest, mediaType: mediaType, size: blobs.values.reduce(0, +), children: (parsed.manifests ?? []).map(\.digest))
    }

    /// The digest of the manifest `reference` names (a HEAD request), nil if there is none.
    func digest(_ repository: String, _ reference: String) async throws -> String? {
        let (status, body, headers) = try await send(.HEAD, "/v2/\(repository)/manifests/\(reference)", scopes: [pull(repository)], accept: Self.manifestTypes)
        if status == 404 { return nil }
        guard status == 200 else { throw answerError(status, body, doing: "read the digest of \(repository):\(reference)") }
        return headers.first(name: "Docker-Content-Digest")
    }

    /// The digest of the manifest `reference` names and, for an index, the digests of the
    /// manifests it lists (empty for an image's own manifest); nil if there is none.
    func entries(_ repository: String, _ reference: String) async throws -> (digest: String, children: [String])? {
        let (status, body, headers) = try await send(.GET, "/v2/\(repository)/manifests/\(reference)", scopes: [pull(repository)], accept: Self.manifestTypes)
        if status == 404 { return nil }
        guard status == 200, let digest = headers.first(name: "Docker-Content-Digest") else {
            throw answerError(status, body, doing: "read the manifest \(repository):\(reference)")
        }
        return (digest, ((try? JSONDecoder().decode(ManifestBody.self, from: body))?.manifests ?? []).map(\.digest))
    }

    /// Deletes the manifest `digest` of `repository`, and so every tag that names it, for
    /// `user` (the token's subject). The registry refuses when deletes are off in its
    /// configuration; that refusal says how to turn them on.
    func deleteManifest(_ repository: String, digest: String, for user: String) async throws {
        let (status, body, _) = try await send(.DELETE, "/v2/\(repository)/manifests/\(digest)",
                                               scopes: [ResourceAccess(type: "repository", name: repository, actions: ["delete"])], subject: user)
        switch status {
        case 202, 200: return
        case 404: throw KilnError.notFound("the registry has no manifest \(digest) in \(repository) (deleted meanwhile?)")
        case 405: throw KilnError.conflict("the registry does not allow deletes: set storage.delete.enabled: true in its configuration (REGISTRY_STORAGE_DELETE_ENABLED=true) and restart it")
        default: throw answerError(status, body, doing: "delete \(repository)@\(digest)")
        }
    }

    // MARK: the wire

    struct ManifestBody: Decodable {
        struct Descriptor: Decodable {
            var digest: String
            var size: Int64
        }
        var mediaType: String?
        var config: Descriptor?
        var layers: [Descriptor]?
        var manifests: [Descriptor]?
        var blobs: [Descriptor] { (config.map { [$0] } ?? []) + (layers ?? []) }
    }

    func pull(_ repository: String) -> ResourceAccess { ResourceAccess(type: "repository", name: repository, actions: ["pull"]) }

    /// One request with a token for exactly `scopes`; the answer's body is at most `limit`
    /// bytes (4 MiB: a manifest, a tags list, a catalog page; the log archive's blobs more).
    func send(_ method: HTTPMethod, _ path: String, scopes: [ResourceAccess], subject: String = "kiln-scheduler",
              accept: [String] = [], body: (bytes: [UInt8], contentType: String)? = nil, limit: Int = 4 << 20,
              timeout: TimeAmount? = nil) async throws -> (Int, Data, HTTPHeaders) {
        var request = HTTPClientRequest(url: configuration.url + path)
        request.method = method
        if let body {
            request.headers.add(name: "Content-Type", value: body.contentType)
            request.body = .bytes(ByteBuffer(bytes: body.bytes))
        }
        if let tokens {
            let claims = RegistryTokenClaims(issuer: tokens.issuer, subject: subject, audience: tokens.service, access: scopes,
                                             issuedAt: Date(), lifetime: 60, id: Secret.random(bytes: 16))
            request.headers.add(name: "Authorization", value: "Bearer " + (try RegistryToken.sign(claims, with: tokens.signingKey)))
        }
        if !accept.isEmpty { request.headers.add(name: "Accept", value: accept.joined(separator: ", ")) }
        do {
            let response = try await OutgoingHTTP.client(Self.http, trusting: configuration.ca).execute(request, timeout: timeout ?? self.timeout)
            let body = try await response.body.collect(upTo: limit)
            return (Int(response.status.code), Data(buffer: body), response.headers)
        } catch {
            if let tls = TLSFailure.explain(error, url: configuration.url, option: "the scheduler's --ca-file (env KILN_CA_FILE)") {
                throw KilnError.unavailable("the registry's API: \(tls)")
            }
            throw KilnError.unavailable("the registry at \(configuration.url) did not answer (\(error)): is it running, and is --registry-url right?")
        }
    }

    func answerError(_ status: Int, _ body: Data, doing what: String) -> KilnError {
        let text = String(decoding: body.prefix(300), as: UTF8.self)
        if status == 401 || status == 403 {
            return KilnError.unavailable("the registry refused the scheduler's credentials to \(what) (\(status)): start the scheduler with the registry's token signing key (--registry-signing-key), whose certificate the registry trusts. \(Validation.printable(text))")
        }
        return KilnError.unavailable("the registry answered \(status) when asked to \(what): \(Validation.printable(text))")
    }

    static func escape(_ text: String) -> String {
        var allowed = CharacterSet.alphanumerics
        allowed.insert(charactersIn: "-._~/")
        return text.addingPercentEncoding(withAllowedCharacters: allowed) ?? text
    }
}
