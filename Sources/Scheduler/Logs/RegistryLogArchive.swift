import Crypto
import Foundation
import KilnCore
import Logging
import NIOCore
import RegistryAuth

/// The log archive in the farm's registry (`kiln scheduler --log-archive registry`;
/// docs/logs.md): no folder shared between scheduler hosts, every scheduler that reaches the
/// registry reads every archived log.
///
/// Each build's archive (a `LogArchiveFile`, the same gzip as the local archive's files) is a
/// blob in one repository reserved for Kiln (`kiln_logs/archive` unless told otherwise), named
/// by an OCI image manifest whose single layer is that blob, tagged with the build's id:
/// - `store`: the blob (`POST` an upload, `PUT` it whole with its digest), the manifest's empty
///   config blob if the repository lacks it, then the manifest under the build's tag. It
///   returns once the registry has acknowledged the manifest's `PUT` (201): the registry
///   writes a blob and a manifest to its storage before it answers. A second store of the
///   build pushes a new manifest under the same tag (the registry moves the tag in one write).
/// - `read`: the manifest by tag (none: nil), then its blob, checked against the manifest's
///   digest and size before it is inflated; anything else is an error, never part of a log.
/// - `delete`: the manifest by digest (the tag goes with it).
/// Blobs no manifest names any more (a deleted or replaced archive's) stay in the registry's
/// storage until its garbage collection (`docker-registry garbage-collect --delete-untagged
/// CONFIG`, registry stopped or read-only).
///
/// Every request carries a token the scheduler signs itself for exactly that request's scope
/// (`RegistryClient`): the token service never grants any scope on a reserved repository to
/// anyone, admins included (`RegistryAccessPolicy`), so logs of private projects cannot be read
/// through the registry by people, agents or anonymous pulls.
public struct RegistryLogArchive: LogArchive, CustomStringConvertible {
    /// The repository `--log-archive registry` uses.
    public static let defaultRepository = "kiln_logs/archive"

    /// The registry repository the archives are tagged in (under `kiln_`, Kiln's own namespace).
    public let repository: String
    let client: RegistryClient

    public var description: String { "the log archive in the registry at \(client.configuration.url) (repository \(repository))" }

    /// `repository` must be one of Kiln's own (``RegistryAccessPolicy/isKilnOwn(_:)``); `tokens`
    /// is the token service's key, which the registry trusts: without it the scheduler cannot
    /// reach the archive, and a registry that needs no token would show every log to anyone.
    public init(registry: RegistryClient.Configuration, tokens: RegistryTokenService.Configuration,
                repository: String = RegistryLogArchive.defaultRepository) throws {
        try Self.checkRepository(repository)
        self.repository = repository
        self.client = RegistryClient(configuration: registry, tokens: tokens)
    }

    // MARK: names

    /// The tag of `build`'s archive: its id, which is a valid tag unless it starts with '-'
    /// (a build id may; a tag may not), then `_` and the id. Build ids hold no '_', so the
    /// mapping goes both ways. A string that is not a build id is refused (no archive is kept under it).
    static func tag(of build: String) throws -> String {
        guard BuildID.isValid(build) else {
            throw KilnError.invalid("'\(Validation.printable(String(build.prefix(80))))' is not a build id (lower-case letters, digits and '-', at most 64): no archive is kept under it")
        }
        return build.hasPrefix("-") ? "_" + build : build
    }

    /// The build whose archive `tag` names; nil for a tag this archive does not make.
    static func build(ofTag tag: String) -> String? {
        let id = tag.hasPrefix("_") ? String(tag.dropFirst()) : tag
        guard BuildID.isValid(id), (try? Self.tag(of: id)) == tag else { return nil }
        return id
    }

    /// A repository name the registry takes (its grammar: path components of lower-case
    /// letters and digits joined by '.', '_', '__' or '-'s, at most 255 characters) and one of
    /// Kiln's own.
    public static func checkRepository(_ name: String) throws {
        let component = "[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
        let grammar = try Regex("^\(component)(?:/\(component))*$")
        guard name.utf8.count <= 255, (try? grammar.wholeMatch(in: name)) != nil else {
            throw KilnError.invalid("'\(Validation.printable(name))' is not a registry repository name: lower-case letters and digits in parts joined by '/', each part joined inside by '.', '_', '__' or '-'")
        }
        guard RegistryAccessPolicy.isKilnOwn(name) else {
            throw KilnError.invalid("the log archive's repository '\(name)' must begin with '\(RegistryAccessPolicy.kilnOwnPrefix)' (such as \(defaultRepository)): only those are kept from every login to the registry, admins' included, and no group or project can be named so")
        }
    }

    // MARK: the manifest

    static let manifestType = "application/vnd.oci.image.manifest.v1+json"
    /// What the manifest holds (OCI 1.1's `artifactType`; older registries keep it as it is).
    static let artifactType = "application/vnd.kiln.log.v1"
    /// The layer: a `LogArchiveFile`.
    static let layerType = "application/vnd.kiln.log.v1.json+gzip"
    /// OCI's empty descriptor (`{}`) as the config: Distribution 2.8 wants a config blob
    /// that exists in the repository.
    static let emptyConfig: [UInt8] = Array("{}".utf8)
    static let emptyConfigType = "application/vnd.oci.empty.v1+json"
    /// The most a blob may be: above any `LogArchiveFile` (its JSON is at most
    /// `maxInflatedBytes`, and gzip adds little even to data it cannot compress).
    static let maxBlobBytes = LogArchiveFile.maxInflatedBytes + (1 << 20)
    /// Blobs up to a few tens of MiB go over the wire: more time than a manifest.
    static let blobTimeout: TimeAmount = .seconds(120)

    struct Descriptor: Codable, Equatable {
        var mediaType: String
        var digest: String
        var size: Int
    }

    struct Manifest: Codable {
        var schemaVersion: Int
        var mediaType: String?
        var artifactType: String?
        var config: Descriptor
        var layers: [Descriptor]
    }

    static func digest(_ bytes: [UInt8]) -> String {
        "sha256:" + SHA256.hash(data: bytes).map { String(format: "%02x", $0) }.joined()
    }

    /// The manifest naming `blob` (deterministic: the same log gives the same manifest digest).
    static func manifest(blob: [UInt8]) throws -> [UInt8] {
        let manifest = Manifest(schemaVersion: 2, mediaType: manifestType, artifactType: artifactType,
                                config: Descriptor(mediaType: emptyConfigType, digest: digest(emptyConfig), size: emptyConfig.count),
                                layers: [Descriptor(mediaType: layerType, digest: digest(blob), size: blob.count)])
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return Array(try encoder.encode(manifest))
    }

    private var pull: [ResourceAccess] { [ResourceAccess(type: "repository", name: repository, actions: ["pull"])] }
    private var push: [ResourceAccess] { [ResourceAccess(type: "repository", name: repository, actions: ["pull", "push"])] }

    // MARK: LogArchive

    @discardableResult
    public func store(build: String, lines: [String]) async throws -> String? {
        let tag = try Self.tag(of: build)
        let blob = try LogArchiveFile.encode(build: build, lines: lines)
        let manifest = try Self.manifest(blob: blob)
        try await upload(blob, what: "build \(build)'s log")
        let hasConfig = try await hasBlob(Self.digest(Self.emptyConfig))
        if !hasConfig {
            try await upload(Self.emptyConfig, what: "the archive's empty config")
        }
        let (status, body, headers) = try await client.send(.PUT, "/v2/\(repository)/manifests/\(tag)", scopes: push,
                                                            body: (manifest, Self.manifestType))
        guard status == 201 else { throw client.answerError(status, body, doing: "store build \(build)'s log as \(repository):\(tag)") }
        let stored = headers.first(name: "Docker-Content-Digest")
        guard stored == Self.digest(manifest) else {
            throw KilnError.unavailable("the registry stored build \(build)'s log manifest under digest \(Validation.printable(stored ?? "(none)")), not \(Self.digest(manifest)): it changed what it was sent; the log stays in etcd")
        }
        return Self.digest(manifest)
    }

    public func read(build: String) async throws -> [String]? {
        try await read(build: build, reference: try Self.tag(of: build))
    }

    /// The copy whose manifest digest is `version` (what `store` returned), checked against
    /// that digest: a tag moved since (a deposed leader's late store) does not matter.
    public func read(build: String, version: String) async throws -> [String]? {
        guard Self.isDigest(version) else {
            throw KilnError.internalError("build \(build)'s record names the archived copy '\(Validation.printable(version))', which is not a sha256 digest: the record was changed by hand (docs/logs.md)")
        }
        return try await read(build: build, reference: version)
    }

    public func delete(build: String, version: String) async throws {
        guard Self.isDigest(version) else { return }
        do {
            try await client.deleteManifest(repository, digest: version, for: "kiln-scheduler")
        } catch let error as KilnError where error.isNotFound {}
    }

    /// The log under a manifest `reference`: a tag or a digest (then the manifest's bytes
    /// must hash to it).
    func read(build: String, reference: String) async throws -> [String]? {
        _ = try Self.tag(of: build)
        let tag = reference
        let (status, body, _) = try await client.send(.GET, "/v2/\(repository)/manifests/\(tag)", scopes: pull, accept: [Self.manifestType])
        // MANIFEST_UNKNOWN, or NAME_UNKNOWN before the first archive.
        if status == 404 { return nil }
        guard status == 200 else { throw client.answerError(status, body, doing: "read build \(build)'s log manifest \(repository):\(tag)") }
        let place = "\(repository)\(tag.hasPrefix("sha256:") ? "@" : ":")\(tag) in the registry at \(client.configuration.url)"
        if tag.hasPrefix("sha256:"), Self.digest([UInt8](body)) != tag {
            throw KilnError.internalError("\(place) answered a manifest whose digest is \(Self.digest([UInt8](body))): the registry's storage is damaged; restore it from a backup (docs/logs.md)")
        }
        guard let manifest = try? JSONDecoder().decode(Manifest.self, from: body), manifest.layers.count == 1,
              let layer = manifest.layers.first, layer.mediaType == Self.layerType, Self.isDigest(layer.digest),
              (0...Self.maxBlobBytes).contains(layer.size) else {
            throw KilnError.internalError("\(place) is not a Kiln log archive (one layer of \(Self.layerType) expected): was something else pushed under it? Delete that tag and the build's log is lost; its record keeps saying it was archived (docs/logs.md)")
        }
        let (blobStatus, blobBody, _) = try await client.send(.GET, "/v2/\(repository)/blobs/\(layer.digest)", scopes: pull,
                                                              limit: layer.size + (1 << 20), timeout: Self.blobTimeout)
        if blobStatus == 404 {
            throw KilnError.internalError("\(place) names the blob \(layer.digest), which the registry no longer has (its storage lost it, or a garbage collection ran while this archive was written): the log is lost (docs/logs.md)")
        }
        guard blobStatus == 200 else { throw client.answerError(blobStatus, blobBody, doing: "read the blob of build \(build)'s log") }
        let bytes = [UInt8](blobBody)
        guard bytes.count == layer.size, Self.digest(bytes) == layer.digest else {
            throw KilnError.internalError("the blob \(layer.digest) of \(place) is corrupt (\(bytes.count) bytes whose digest is \(Self.digest(bytes)), the manifest says \(layer.size)): the registry's storage is damaged; restore it from a backup (docs/logs.md)")
        }
        do {
            return try LogArchiveFile.decode(bytes, build: build)
        } catch LogArchiveFile.Refusal.corrupt(let why) {
            throw KilnError.internalError("the blob \(layer.digest) of \(place) is not a log archive (\(why)): was something else pushed under it? (docs/logs.md)")
        } catch LogArchiveFile.Refusal.foreign(let what) {
            throw KilnError.internalError("\(place) holds \(what), not build \(build)'s: was it pushed under another tag? (docs/logs.md)")
        }
    }

    public func delete(build: String) async throws {
        let tag = try Self.tag(of: build)
        guard let digest = try await client.digest(repository, tag) else { return }
        do {
            try await client.deleteManifest(repository, digest: digest, for: "kiln-scheduler")
        } catch let error as KilnError where error.isNotFound {
            // Deleted meanwhile (another scheduler's retention pass): gone is what was asked.
        }
    }

    // MARK: blobs

    static func isDigest(_ text: String) -> Bool {
        text.hasPrefix("sha256:") && text.utf8.count == 71 && text.utf8.dropFirst(7).allSatisfy { (48...57).contains($0) || (97...102).contains($0) }
    }

    func hasBlob(_ digest: String) async throws -> Bool {
        let (status, body, _) = try await client.send(.HEAD, "/v2/\(repository)/blobs/\(digest)", scopes: pull)
        if status == 404 { return false }
        guard status == 200 else { throw client.answerError(status, body, doing: "look for the blob \(digest) in \(repository)") }
        return true
    }

    /// Uploads `bytes` whole: `POST` opens an upload, `PUT` to where it says with the digest
    /// closes it. The registry checks the digest before it answers 201.
    func upload(_ bytes: [UInt8], what: String) async throws {
        let (status, body, headers) = try await client.send(.POST, "/v2/\(repository)/blobs/uploads/", scopes: push)
        guard status == 202 else { throw client.answerError(status, body, doing: "start the upload of \(what)") }
        guard let location = headers.first(name: "Location"), let next = Self.uploadPath(location) else {
            throw KilnError.unavailable("the registry at \(client.configuration.url) opened an upload without a usable Location (\(Validation.printable(headers.first(name: "Location") ?? "none"))): is --registry-url the registry's API?")
        }
        let digest = Self.digest(bytes)
        let (put, putBody, putHeaders) = try await client.send(.PUT, next + (next.contains("?") ? "&" : "?") + "digest=" + digest, scopes: push,
                                                               body: (bytes, "application/octet-stream"), timeout: Self.blobTimeout)
        guard put == 201 else { throw client.answerError(put, putBody, doing: "upload \(what) (\(bytes.count) bytes)") }
        if let stored = putHeaders.first(name: "Docker-Content-Digest"), stored != digest {
            throw KilnError.unavailable("the registry stored \(what) under digest \(Validation.printable(stored)), not \(digest)")
        }
    }

    /// The path and query of an upload's `Location` (absolute or not): always sent to
    /// `--registry-url`, so a token never goes to a host the registry names.
    static func uploadPath(_ location: String) -> String? {
        guard let parts = URLComponents(string: location), parts.percentEncodedPath.hasPrefix("/v2/") else { return nil }
        return parts.percentEncodedPath + (parts.percentEncodedQuery.map { "?" + $0 } ?? "")
    }

    // MARK: at start

    /// What a scheduler checks before it serves: the registry wants a token (else every
    /// archived log would be readable by anyone who reaches it), takes this scheduler's, and
    /// deletes manifests (else retention could never remove a log). Throws when the registry
    /// answers wrongly; returns a warning when it does not answer at all (logs then stay in
    /// etcd until it does, as with any archive that is down); nil when all is well.
    public func checkAtStart() async throws -> String? {
        let anonymous = RegistryClient(configuration: client.configuration, tokens: nil)
        let challenge: Int
        do {
            challenge = try await anonymous.send(.GET, "/v2/", scopes: []).0
        } catch {
            return "\(description) does not answer now (\(error)): ended builds' logs stay in etcd until it does (docs/logs.md)"
        }
        guard challenge == 401 else {
            throw KilnError.unavailable("\(description): the registry answers \(challenge) without credentials, so every archived log would be readable by anyone who reaches it. Turn on its token authentication with this scheduler's key (docs/registry-auth.md), or keep the local archive (--log-archive DIR)")
        }
        // A manifest no one has: found to be missing (404) only by a registry that deletes
        // and takes this scheduler's token; nothing is deleted.
        let none = "sha256:" + String(repeating: "0", count: 64)
        // The same call with a token signed by a key made just now must be refused: a registry
        // (or a proxy in front of it) that takes any bearer token would give the archive to anyone.
        if let tokens = client.tokens {
            var stranger = tokens
            stranger.signingKey = TokenSigningKey.generate()
            let forged = RegistryClient(configuration: client.configuration, tokens: stranger)
            let refused = try await forged.send(.DELETE, "/v2/\(repository)/manifests/\(none)",
                                                scopes: [ResourceAccess(type: "repository", name: repository, actions: ["delete"])]).0
            guard refused == 401 else {
                throw KilnError.unavailable("\(description): the registry answered \(refused) to a token signed by a key it cannot know, so it does not check who signed a token and every archived log would be open to anyone who sends one. Point its auth.token.rootcertbundle at this scheduler's key's certificate only (docs/registry-auth.md), or keep the local archive (--log-archive DIR)")
            }
        }
        let (status, body, _) = try await client.send(.DELETE, "/v2/\(repository)/manifests/\(none)",
                                                      scopes: [ResourceAccess(type: "repository", name: repository, actions: ["delete"])])
        switch status {
        case 404: return nil
        case 405:
            throw KilnError.conflict("\(description): the registry does not delete manifests, so retention could never remove an archived log. Set storage.delete.enabled: true in its configuration (REGISTRY_STORAGE_DELETE_ENABLED=true) and restart it (docs/logs.md)")
        default:
            throw client.answerError(status, body, doing: "check that it takes this scheduler's tokens (a delete of a manifest that does not exist)")
        }
    }
}
