import AsyncHTTPClient
import Etcd
import Foundation
import KilnCore
import KilnTestSupport
@testable import LocalFarm
import NIOCore
import NIOHTTP1
import Processes
import RegistryAuth
@testable import Scheduler
import Testing

/// What every `LogArchive` must do (LogArchive.swift's rules), run against each implementation.
enum LogArchiveContract {
    static let awkward = LocalLogArchiveTests.awkward

    /// Missing, store, read, replace, empty, idempotent store, delete, hostile ids, a build id
    /// that is not a valid image tag as it is, a log of a few MiB.
    static func check(_ archive: some LogArchive) async throws {
        let id = BuildID.generate(), other = BuildID.generate()
        #expect(try await archive.read(build: id) == nil, "a build never archived reads nil")
        try await archive.delete(build: id)  // none: not an error
        try await archive.store(build: id, lines: awkward)
        try await archive.store(build: other, lines: ["another build's line"])
        #expect(try await archive.read(build: id) == awkward, "every line exactly")
        #expect(try await archive.read(build: other) == ["another build's line"])
        // Replaced whole (a later pipeline run), emptied, and the same log stored twice.
        try await archive.store(build: id, lines: awkward + ["after the pipeline run"])
        #expect(try await archive.read(build: id) == awkward + ["after the pipeline run"])
        try await archive.store(build: id, lines: [])
        #expect(try await archive.read(build: id) == [])
        try await archive.store(build: id, lines: awkward)
        try await archive.store(build: id, lines: awkward)
        #expect(try await archive.read(build: id) == awkward)
        // Deleted: gone, the other build's stays, a second delete is not an error.
        try await archive.delete(build: id)
        #expect(try await archive.read(build: id) == nil)
        #expect(try await archive.read(build: other) == ["another build's line"])
        try await archive.delete(build: id)
        try await archive.delete(build: other)
        #expect(try await archive.read(build: other) == nil)

        // A build id may begin with '-' (an image tag may not).
        let dash = "-" + BuildID.generate()
        try await archive.store(build: dash, lines: ["dash"])
        #expect(try await archive.read(build: dash) == ["dash"])
        try await archive.delete(build: dash)
        #expect(try await archive.read(build: dash) == nil)

        // What is not a build id never becomes a name.
        for bad in ["", "../../etc/passwd", "a/b", "B0ABC", "b 0", "b0%2e%2e", "b0:latest", "_b0", String(repeating: "b", count: 65)] {
            await #expect(throws: KilnError.self, "\(bad)") { try await archive.store(build: bad, lines: ["x"]) }
            await #expect(throws: KilnError.self, "\(bad)") { try await archive.read(build: bad) }
            await #expect(throws: KilnError.self, "\(bad)") { try await archive.delete(build: bad) }
        }

        // A large log (about 4 MiB of text, 40,000 lines) round trips.
        let big = (0..<40_000).map { "[INFO] line \($0) " + String(repeating: "maven says something ", count: 4) }
        try await archive.store(build: id, lines: big)
        #expect(try await archive.read(build: id) == big)
        try await archive.delete(build: id)
    }
}

/// A Docker Distribution 2.8 registry with token authentication that trusts `key`, as a farm
/// runs it, and the archive in it.
struct ArchiveRegistry: Sendable {
    let dir: TempDir
    let key: TokenSigningKey
    let server: RegistryServer
    var auth: RegistryServer.TokenAuth

    static func start(deletes: Bool = true) async throws -> ArchiveRegistry {
        let dir = try TempDir("registry-log-archive")
        let key = TokenSigningKey.generate()
        let bundle = dir.url.appendingPathComponent("cert.pem")
        try CredentialFile.write(try key.certificatePEM(), to: bundle.path)
        // The realm is for clients that ask for tokens; the scheduler signs its own.
        let auth = RegistryServer.TokenAuth(realm: "http://127.0.0.1:9/auth/token", rootCertBundle: bundle)
        let server = try await RegistryServer.start(root: dir.url.appendingPathComponent("registry"), auth: auth, deletes: deletes)
        return ArchiveRegistry(dir: dir, key: key, server: server, auth: auth)
    }

    var tokens: RegistryTokenService.Configuration { .init(signingKey: key) }

    func archive(repository: String = RegistryLogArchive.defaultRepository) throws -> RegistryLogArchive {
        try RegistryLogArchive(registry: .init(url: server.url), tokens: tokens, repository: repository)
    }

    /// The file of blob `digest` in the registry's filesystem storage.
    func blobFile(_ digest: String) -> URL {
        let hex = String(digest.dropFirst("sha256:".count))
        return server.root.appendingPathComponent("data/docker/registry/v2/blobs/sha256/\(hex.prefix(2))/\(hex)/data")
    }

    /// A request to the registry with a token `key` signs for `access`.
    func send(_ method: HTTPMethod, _ path: String, access: [ResourceAccess], signedBy signer: TokenSigningKey? = nil,
              body: String? = nil, contentType: String? = nil, accept: String? = nil) async throws -> HTTPReply {
        let token = try RegistryToken.sign(RegistryTokenClaims(issuer: "kiln", subject: "test", audience: "kiln-registry", access: access,
                                                               issuedAt: Date(), lifetime: 300, id: Secret.random(bytes: 8)), with: signer ?? key)
        // Not httpRequest: it would send the body as application/json besides contentType.
        var request = HTTPClientRequest(url: server.url + path)
        request.method = method
        request.headers.add(name: "Authorization", value: "Bearer \(token)")
        if let contentType { request.headers.add(name: "Content-Type", value: contentType) }
        if let accept { request.headers.add(name: "Accept", value: accept) }
        if let body { request.body = .bytes(ByteBuffer(string: body)) }
        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(60))
        return HTTPReply(status: Int(response.status.code), body: String(buffer: try await response.body.collect(upTo: 32 << 20)),
                         headers: response.headers.map { ($0.name, $0.value) })
    }

    func stop() { server.stop() }
}

@Suite("Registry log archive", .serialized)
struct RegistryLogArchiveTests {
    static let repository = RegistryLogArchive.defaultRepository
    static let all = [ResourceAccess(type: "repository", name: repository, actions: ["pull", "push", "delete"])]

    @Test("the LogArchive contract: the folder archive")
    func localContract() async throws {
        let dir = try TempDir("log-archive")
        try await LogArchiveContract.check(LocalLogArchive(directory: dir.path("archive")))
    }

    @Test("the LogArchive contract: the registry archive, against a registry with token authentication")
    func registryContract() async throws {
        let registry = try await ArchiveRegistry.start()
        defer { registry.stop() }
        try await LogArchiveContract.check(try registry.archive())
        // Another repository of Kiln's own is another archive.
        let a = try registry.archive(), b = try registry.archive(repository: "kiln_logs/farm-2")
        let id = BuildID.generate()
        try await a.store(build: id, lines: ["in a"])
        #expect(try await b.read(build: id) == nil)
        #expect(try await a.read(build: id) == ["in a"])
    }

    @Test("what the registry holds: an OCI manifest tagged with the build id, one layer that is the log's gzip, readable with zcat; no token, another key's or another repository's reads nothing")
    func whatTheRegistryHolds() async throws {
        let registry = try await ArchiveRegistry.start()
        defer { registry.stop() }
        let archive = try registry.archive()
        let id = BuildID.generate()
        try await archive.store(build: id, lines: ["hello", "world"])
        let manifest = try await registry.send(.GET, "/v2/\(Self.repository)/manifests/\(id)", access: Self.all,
                                               accept: RegistryLogArchive.manifestType)
        #expect(manifest.status == 200, "\(manifest.body)")
        let parsed = try JSONDecoder().decode(RegistryLogArchive.Manifest.self, from: Data(manifest.body.utf8))
        #expect(parsed.mediaType == RegistryLogArchive.manifestType && parsed.artifactType == "application/vnd.kiln.log.v1")
        #expect(parsed.config.mediaType == "application/vnd.oci.empty.v1+json" && parsed.config.size == 2)
        let layer = try #require(parsed.layers.first)
        #expect(parsed.layers.count == 1 && layer.mediaType == "application/vnd.kiln.log.v1.json+gzip")
        // The blob is the same gzip file as the folder archive's: zcat and jq read it.
        let blobFile = registry.blobFile(layer.digest)
        let zcat = try run("/bin/sh", ["-c", "zcat '\(blobFile.path)'"])
        #expect(zcat.contains(#""build":"\#(id)""#) && zcat.contains(#""lines":["hello","world"]"#), "\(zcat)")
        // Tags: the build ids; a build id starting with '-' is tagged '_' and the id.
        let dash = "-" + BuildID.generate()
        try await archive.store(build: dash, lines: ["x"])
        let tags = try await registry.send(.GET, "/v2/\(Self.repository)/tags/list", access: Self.all)
        #expect(tags.body.contains("\"\(id)\"") && tags.body.contains("\"_\(dash)\""), "\(tags.body)")
        #expect(RegistryLogArchive.build(ofTag: "_\(dash)") == dash && RegistryLogArchive.build(ofTag: id) == id)
        #expect(RegistryLogArchive.build(ofTag: "_\(id)") == nil && RegistryLogArchive.build(ofTag: "latest_") == nil)

        // The registry itself refuses everyone else: no token, a token of another key, a token
        // for another repository.
        let anonymous = try await httpRequest(.GET, registry.server.url + "/v2/\(Self.repository)/manifests/\(id)")
        #expect(anonymous.status == 401)
        let stranger = try await registry.send(.GET, "/v2/\(Self.repository)/manifests/\(id)", access: Self.all, signedBy: TokenSigningKey.generate())
        #expect(stranger.status == 401)
        let elsewhere = try await registry.send(.GET, "/v2/\(Self.repository)/blobs/\(layer.digest)",
                                                access: [ResourceAccess(type: "repository", name: "team/shop", actions: ["pull", "push"])])
        #expect(elsewhere.status == 401)
        // A blob is linked into its repository: another repository does not serve it.
        let mounted = try await registry.send(.HEAD, "/v2/team/shop/blobs/\(layer.digest)",
                                              access: [ResourceAccess(type: "repository", name: "team/shop", actions: ["pull", "push"])])
        #expect(mounted.status == 404)
    }

    @Test("a corrupt, cut, missing or foreign blob, or something else under the tag, is an error saying so, never part of a log")
    func corruptBlobs() async throws {
        let registry = try await ArchiveRegistry.start()
        defer { registry.stop() }
        let archive = try registry.archive()
        let id = BuildID.generate(), other = BuildID.generate()
        try await archive.store(build: id, lines: LogArchiveContract.awkward)
        try await archive.store(build: other, lines: ["another build's line"])
        let manifest = try await registry.send(.GET, "/v2/\(Self.repository)/manifests/\(id)", access: Self.all, accept: RegistryLogArchive.manifestType)
        let layer = try #require(try JSONDecoder().decode(RegistryLogArchive.Manifest.self, from: Data(manifest.body.utf8)).layers.first)
        let file = registry.blobFile(layer.digest)
        let good = try Data(contentsOf: file)

        func expectRefused(saying words: [String], _ what: String) async {
            do {
                let lines = try await archive.read(build: id)
                Issue.record("\(what): read \(lines?.count ?? -1) lines instead of refusing")
            } catch let error as KilnError {
                #expect(error.httpStatus == 500, "\(what): \(error)")
                for w in words { #expect(error.message.contains(w), "\(what): \(error.message)") }
            } catch {
                Issue.record("\(what): \(error)")
            }
        }
        var flipped = good
        flipped[flipped.count / 2] ^= 0x55
        try flipped.write(to: file)
        await expectRefused(saying: ["corrupt", layer.digest, "backup"], "a flipped byte")
        try good.prefix(good.count / 2).write(to: file)
        await expectRefused(saying: ["corrupt"], "a blob cut in half")
        try FileManager.default.removeItem(at: file)
        await expectRefused(saying: ["no longer has", "garbage collection"], "a blob gone from the storage")
        try good.write(to: file)
        #expect(try await archive.read(build: id) == LogArchiveContract.awkward, "the blob restored reads whole again")

        // Another build's manifest pushed under this build's tag.
        let foreign = try await registry.send(.GET, "/v2/\(Self.repository)/manifests/\(other)", access: Self.all, accept: RegistryLogArchive.manifestType)
        let put = try await registry.send(.PUT, "/v2/\(Self.repository)/manifests/\(id)", access: Self.all, body: foreign.body,
                                          contentType: RegistryLogArchive.manifestType)
        #expect(put.status == 201, "\(put.body)")
        await expectRefused(saying: ["build \(other)'s log", "another tag"], "another build's archive under the tag")

        // An image manifest (not a log archive) under the tag: its layer is not read at all.
        let config = try await registry.send(.GET, "/v2/\(Self.repository)/manifests/\(other)", access: Self.all, accept: RegistryLogArchive.manifestType)
        let notALog = config.body.replacingOccurrences(of: "application/vnd.kiln.log.v1.json+gzip", with: "application/vnd.oci.image.layer.v1.tar+gzip")
        #expect(try await registry.send(.PUT, "/v2/\(Self.repository)/manifests/\(id)", access: Self.all, body: notALog,
                                        contentType: RegistryLogArchive.manifestType).status == 201)
        await expectRefused(saying: ["not a Kiln log archive"], "an image's manifest under the tag")
    }

    @Test("the registry down: store, read and delete throw 503 naming it; once it is back on the same storage they work and nothing stored before is lost")
    func registryDown() async throws {
        let registry = try await ArchiveRegistry.start()
        let archive = try registry.archive()
        let kept = BuildID.generate(), id = BuildID.generate()
        try await archive.store(build: kept, lines: ["stored before"])
        registry.stop()
        for (what, call) in [("store", { try await archive.store(build: id, lines: ["x"]) }),
                             ("read", { _ = try await archive.read(build: kept) }),
                             ("delete", { try await archive.delete(build: kept) })] as [(String, () async throws -> Void)] {
            do {
                try await call()
                Issue.record("\(what) worked with the registry down")
            } catch let error as KilnError {
                #expect(error.httpStatus == 503 && error.message.contains(registry.server.url) && error.message.contains("--registry-url"), "\(what): \(error)")
            }
        }
        let back = try await RegistryServer.start(root: registry.server.root, port: registry.server.port, auth: registry.auth)
        defer { back.stop() }
        #expect(try await archive.read(build: kept) == ["stored before"])
        try await archive.store(build: id, lines: ["x"])
        #expect(try await archive.read(build: id) == ["x"])
    }

    @Test("the archiver with the registry down keeps every chunk in etcd and serves the log from there; once it is back the log moves into the registry and reads the same")
    func archiverWithTheRegistryDown() async throws {
        let registry = try await ArchiveRegistry.start()
        try await withEtcd { _, etcd in
            let s = try LogArchiverTests.Setup(etcd, archive: try registry.archive())
            registry.stop()
            let b = LogArchiverTests.build(.succeeded)
            try await s.write(b, chunks: LogArchiverTests.attempt(5), end: true)
            let before = try await s.store.log(of: b.id)
            await #expect(throws: LogArchiver.StoreFailure.self) { try await s.archiver.pass(b.id, fence: []) }
            #expect(try await s.chunkNames(b.id).count == 5)
            #expect(try await s.record(b.id).logArchive == nil)
            #expect(try await s.store.log(of: b.id) == before)

            let back = try await RegistryServer.start(root: registry.server.root, port: registry.server.port, auth: registry.auth)
            defer { back.stop() }
            #expect(try await s.archiver.pass(b.id, fence: []) == .archived(lines: 15, deleted: 5))
            #expect(try await s.chunkNames(b.id).isEmpty)
            #expect(try await s.store.log(of: b.id) == before)
            // Another scheduler (another host: no folder in common) reads it from the registry.
            let elsewhere = SchedulerStore(etcd: etcd, logArchive: try registry.archive())
            #expect(try await elsewhere.log(of: b.id) == before)
            // Retention's delete removes it from the registry.
            try await registry.archive().delete(build: b.id)
            #expect(try await registry.archive().read(build: b.id) == nil)
        }
    }

    @Test("the record names the archived copy by digest: a later store under the build's tag (a deposed leader's, or a forger's with push) changes nothing a reader gets; a replaced copy is deleted by its digest")
    func readersTakeTheCopyTheRecordNames() async throws {
        let registry = try await ArchiveRegistry.start()
        defer { registry.stop() }
        try await withEtcd { _, etcd in
            let s = try LogArchiverTests.Setup(etcd, archive: try registry.archive())
            let b = LogArchiverTests.build(.succeeded)
            try await s.write(b, chunks: LogArchiverTests.attempt(3), end: true)
            let before = try await s.store.log(of: b.id)
            #expect(try await s.archiver.pass(b.id, fence: []) == .archived(lines: 9, deleted: 3))
            let version = try #require(try await s.record(b.id).logArchive?.version)
            #expect(RegistryLogArchive.isDigest(version))
            // A late store moves the tag; the record's digest still names the archived copy.
            let late = try await registry.archive().store(build: b.id, lines: ["forged line"])
            #expect(late != version)
            #expect(try await registry.archive().read(build: b.id) == ["forged line"])
            #expect(try await s.store.log(of: b.id) == before)
            let elsewhere = SchedulerStore(etcd: etcd, logArchive: try registry.archive())
            #expect(try await elsewhere.log(of: b.id) == before)
            // A copy deleted by its digest is gone; the other stays.
            try await registry.archive().delete(build: b.id, version: try #require(late))
            #expect(try await registry.archive().read(build: b.id, version: try #require(late)) == nil)
            #expect(try await s.store.log(of: b.id) == before)
            // A record changed by hand to name something that is not a digest is refused, not read.
            await #expect(throws: KilnError.self) { _ = try await registry.archive().read(build: b.id, version: "latest") }
        }
    }

    @Test("start checks: a registry that deletes and takes the key passes; one that does not answer is a warning; no deletes, no authentication or another key is refused saying what to do")
    func startChecks() async throws {
        let registry = try await ArchiveRegistry.start()
        #expect(try await registry.archive().checkAtStart() == nil)
        // Nothing was written by the check.
        let tags = try await registry.send(.GET, "/v2/\(Self.repository)/tags/list", access: Self.all)
        #expect(tags.status == 404 || !tags.body.contains("\"tags\":["), "\(tags.body)")
        registry.stop()
        let warning = try await registry.archive().checkAtStart()
        #expect(warning?.contains("does not answer") == true && warning?.contains("stay in etcd") == true, "\(warning ?? "nil")")

        let noDeletes = try await ArchiveRegistry.start(deletes: false)
        defer { noDeletes.stop() }
        let withoutDeletes = try noDeletes.archive()
        await expectStartRefused(withoutDeletes, saying: ["storage.delete.enabled"])

        let otherKey = try RegistryLogArchive(registry: .init(url: noDeletes.server.url), tokens: .init(signingKey: TokenSigningKey.generate()))
        await expectStartRefused(otherKey, saying: ["refused the scheduler's credentials", "--registry-signing-key"])

        let dir = try TempDir("open-registry")
        let open = try await RegistryServer.start(root: dir.url.appendingPathComponent("registry"))
        defer { open.stop() }
        let onOpen = try RegistryLogArchive(registry: .init(url: open.url), tokens: registry.tokens)
        await expectStartRefused(onOpen, saying: ["without credentials", "readable by anyone", "token authentication"])

        // A registry that asks for a token but takes any (Distribution's "silly" auth stands for
        // a proxy that only checks a bearer token is there): refused, the forged token shown to work.
        let port = try FreePort.next()
        let sillyRoot = dir.url.appendingPathComponent("silly")
        try FileManager.default.createDirectory(at: sillyRoot, withIntermediateDirectories: true)
        let config = RegistryServer.configuration(root: sillyRoot, port: port) + """
            auth:
              silly:
                realm: "http://127.0.0.1:9/auth/token"
                service: "kiln-registry"

            """
        let configFile = sillyRoot.appendingPathComponent("config.yml")
        try config.write(to: configFile, atomically: true, encoding: .utf8)
        let silly = try ManagedProcess(name: "silly-registry", executable: try #require(ManagedProcess.which("docker-registry")),
                                       arguments: ["serve", configFile.path], logFile: sillyRoot.appendingPathComponent("registry.log"))
        defer { silly.stop() }
        try await silly.waitUntilReady(timeout: 20) { FreePort.isInUse(port) }
        let onSilly = try RegistryLogArchive(registry: .init(url: "http://127.0.0.1:\(port)"), tokens: registry.tokens)
        await expectStartRefused(onSilly, saying: ["a key it cannot know", "rootcertbundle"])
    }

    func expectStartRefused(_ archive: RegistryLogArchive, saying words: [String]) async {
        do {
            let warning = try await archive.checkAtStart()
            Issue.record("the start check passed (\(warning ?? "no warning"))")
        } catch {
            for w in words { #expect("\(error)".contains(w), "\(error)") }
        }
    }

    @Test("a scheduler whose registry archive would never delete refuses to start, saying why")
    func schedulerRefusesToStart() async throws {
        let registry = try await ArchiveRegistry.start(deletes: false)
        defer { registry.stop() }
        let archive = try registry.archive()
        do {
            try await withScheduler(configure: { c in
                c.registryTokens = registry.tokens
                c.registryAPI = .init(url: registry.server.url)
                c.logArchive = archive
            }) { _ in Issue.record("the scheduler started") }
            Issue.record("the scheduler started")
        } catch {
            #expect("\(error)".contains("storage.delete.enabled"), "\(error)")
        }
    }

    @Test("figures: 20 logs of 256 KiB each stored, read and deleted; time per call and bytes in the registry's storage (printed)")
    func figures() async throws {
        let registry = try await ArchiveRegistry.start()
        defer { registry.stop() }
        let archive = try registry.archive()
        // Maven-like output, 4 KiB chunks of 64 lines: 256 KiB a build, as LogArchiveSizeTests.
        let lines = (0..<4096).map { "[INFO] Downloaded from mirror: http://127.0.0.1:8081/org/apache/maven/plugin \($0 % 97) (\($0 * 13 % 1000) kB at 2.1 MB/s)" }
        let ids = (0..<20).map { _ in BuildID.generate() }
        let data = registry.server.root.appendingPathComponent("data")
        let empty = try Self.bytes(under: data)
        var clock = ContinuousClock.now
        for id in ids { try await archive.store(build: id, lines: lines) }
        let stored = ContinuousClock.now - clock
        let full = try Self.bytes(under: data)
        clock = ContinuousClock.now
        for id in ids { #expect(try await archive.read(build: id) == lines) }
        let read = ContinuousClock.now - clock
        clock = ContinuousClock.now
        for id in ids { try await archive.delete(build: id) }
        let deleted = ContinuousClock.now - clock
        for id in ids { #expect(try await archive.read(build: id) == nil) }
        let blob = try LogArchiveFile.encode(build: ids[0], lines: lines).count
        let raw = lines.reduce(0) { $0 + $1.utf8.count + 1 }
        func ms(_ d: Duration) -> String { String(format: "%.1f", Double(d.components.seconds * 1000) / Double(ids.count) + Double(d.components.attoseconds) / 1e15 / Double(ids.count)) }
        print("registry log archive: \(ids.count) logs of \(raw) B (blob \(blob) B, manifest \(try RegistryLogArchive.manifest(blob: LogArchiveFile.encode(build: ids[0], lines: lines)).count) B): store \(ms(stored)) ms, read \(ms(read)) ms, delete \(ms(deleted)) ms each; storage +\((full - empty) / ids.count) B a build")
        #expect(full - empty >= ids.count * blob, "the blobs are in the registry's storage")
    }

    static func bytes(under folder: URL) throws -> Int {
        var total = 0
        guard let files = FileManager.default.enumerator(at: folder, includingPropertiesForKeys: [.fileSizeKey, .isRegularFileKey]) else { return 0 }
        for case let file as URL in files {
            let values = try file.resourceValues(forKeys: [.fileSizeKey, .isRegularFileKey])
            if values.isRegularFile == true { total += values.fileSize ?? 0 }
        }
        return total
    }

    @Test("repository names: only Kiln's own (kiln_…) in the registry's grammar")
    func repositoryNames() throws {
        for good in ["kiln_logs/archive", "kiln_logs/farm-2", "kiln_x", "kiln_logs/a.b/c__d"] {
            #expect(throws: Never.self, "\(good)") { try RegistryLogArchive.checkRepository(good) }
        }
        for bad in ["logs/archive", "kiln-logs/archive", "kiln/logs", "Kiln_logs/archive", "kiln_logs/", "kiln_logs//a", "kiln_logs/-a", "kiln_logs/a_", "kiln_logs/a___b", "kiln_logs/a b", "", String(repeating: "kiln_", count: 60)] {
            #expect(throws: KilnError.self, "\(bad)") { try RegistryLogArchive.checkRepository(bad) }
        }
    }
}

/// The reserved repository through the scheduler's real token service: no one it knows gets
/// any scope on it.
@Suite("Registry log archive: the token service keeps it to the scheduler", .serialized)
struct RegistryLogArchiveAccessTests {
    static let reserved = "repository:\(RegistryLogArchive.defaultRepository):pull,push,delete"

    func token(_ h: SchedulerHarness, _ scopes: [String], basic credentials: (String, String)?) async throws -> HTTPReply {
        let query = (["service=kiln-registry"] + scopes.map { "scope=\($0.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? $0)" }).joined(separator: "&")
        let headers = credentials.map { [("Authorization", "Basic " + Data("\($0.0):\($0.1)".utf8).base64EncodedString())] } ?? []
        return try await h.request(.GET, "/auth/token?" + query, token: nil, headers: headers)
    }

    func granted(_ h: SchedulerHarness, _ key: TokenSigningKey, _ scopes: [String], basic credentials: (String, String)?) async throws -> [String] {
        let r = try await token(h, scopes, basic: credentials)
        #expect(r.status == 200, "\(credentials?.0 ?? "anonymous"): \(r.status) \(r.body)")
        struct Answer: Decodable { let token: String }
        let claims = try RegistryToken.verify(try JSONDecoder().decode(Answer.self, from: Data(r.body.utf8)).token, publicKey: key.publicKey)
        return claims.access.map(\.description)
    }

    @Test("admins, users, agents (even with a forged grant), deployers and anonymous pulls of public groups get no scope on it; the name cannot be a group's or a project's; an admin's token is refused by the registry")
    func noOneButTheScheduler() async throws {
        let registry = try await ArchiveRegistry.start()
        defer { registry.stop() }
        let archive = try registry.archive()
        try await withScheduler(configure: { c in
            c.registryTokens = registry.tokens
            c.registryAPI = .init(url: registry.server.url)
            c.logArchive = archive
        }) { h in
            let build = BuildID.generate()
            try await archive.store(build: build, lines: ["a private project's secret-looking line"])

            // The names: no group or project can be the reserved repository or its namespace.
            for body in [#"{"name":"kiln_logs"}"#, #"{"name":"kiln_logs/archive"}"#] {
                #expect(try await h.request(.POST, "/api/v1/groups", body: body).status == 400, "\(body)")
            }
            let project = #"{"name":"kiln_logs","repository":"http://127.0.0.1:1/x.git","buildImage":"a:1","buildCommand":"make"}"#
            #expect(try await h.request(.POST, "/api/v1/projects", body: project).status == 400)

            // People: the admin (and a second admin), a user, each with an API token.
            #expect(try await h.request(.POST, "/api/v1/groups", body: #"{"name":"pub"}"#).status == 201)
            #expect(try await h.request(.PUT, "/api/v1/groups/pub", body: #"{"visibility":"public"}"#).status == 200)
            var people: [(String, String)] = [("admin", h.adminToken)]
            for (name, admin) in [("boss", true), ("dev", false)] {
                let password = "a long enough passphrase"
                #expect(try await h.request(.POST, "/api/v1/users", body: try KilnJSON.encode(NewUser(name: name, password: password, admin: admin))).status == 201)
                let r = try await h.request(.POST, "/api/v1/tokens", body: #"{"name":"registry"}"#, token: nil,
                                            headers: [("Authorization", "Basic " + Data("\(name):\(password)".utf8).base64EncodedString())])
                people.append((name, try KilnJSON.decode(CreatedToken.self, from: r.body).token))
            }
            #expect(try await h.request(.PUT, "/api/v1/groups/pub/members/dev", body: #"{"role":"owner"}"#).status == 200)
            // Machines: an agent whose task and grant (written as root, as no API could) name the
            // reserved repository, and a deployer.
            let agentToken = try await AgentSecretsTests.machine(h, "agent-1", kind: .agent)
            let deployerToken = try await AgentSecretsTests.machine(h, "deployer-1", kind: .deployer)
            let forged = try KilnJSON.decode(Project.self, from: #"{"name":"archive","group":"kiln_logs","repository":"http://127.0.0.1:1/x.git","buildImage":"a:1","buildCommand":"make"}"#)
            #expect(forged.repositoryName == RegistryLogArchive.defaultRepository)
            try await h.etcd.put(h.keys.task(agent: "agent-1", build: build),
                                 try KilnJSON.encode(BuildTask(build: build, project: forged, ref: "main", commit: nil, tag: nil, mvncache: false, attempt: 1)))
            try await h.etcd.put(h.keys.grant(agent: "agent-1", build: build), BuildGrant(repository: RegistryLogArchive.defaultRepository, ref: "main").value)

            let callers = people + [("agent-1", agentToken), ("deployer-1", deployerToken)]
            for (name, secret) in callers {
                // What each may do elsewhere still works (the test can fail): admins get all of
                // pub/app, the owner dev too, a deployer pull, the agent nothing there.
                let control = try await granted(h, registry.key, ["repository:pub/app:pull,push,delete"], basic: (name, secret))
                let expected = ["admin": ["repository:pub/app:pull,push,delete"], "boss": ["repository:pub/app:pull,push,delete"],
                                "dev": ["repository:pub/app:pull,push,delete"], "deployer-1": ["repository:pub/app:pull"], "agent-1": []]
                #expect(control == expected[name], "\(name): \(control)")
                let reserved = try await granted(h, registry.key, [Self.reserved, "repository:kiln_logs/other:pull"], basic: (name, secret))
                #expect(reserved.isEmpty, "\(name) got \(reserved) on Kiln's own repositories")
            }
            // Anonymous: pub's images, not the archive (asked for alone: 401, nothing to sign).
            #expect(try await granted(h, registry.key, ["repository:pub/app:pull", Self.reserved], basic: nil) == ["repository:pub/app:pull"])
            #expect(try await token(h, [Self.reserved], basic: nil).status == 401)

            // The admin's own token from the token service, shown to the registry: refused.
            let r = try await token(h, [Self.reserved, "registry:catalog:*"], basic: ("admin", h.adminToken))
            struct Answer: Decodable { let token: String }
            let adminJWT = try JSONDecoder().decode(Answer.self, from: Data(r.body.utf8)).token
            let read = try await httpRequest(.GET, registry.server.url + "/v2/\(RegistryLogArchive.defaultRepository)/manifests/\(build)",
                                             headers: [("Authorization", "Bearer \(adminJWT)"), ("Accept", RegistryLogArchive.manifestType)])
            #expect(read.status == 401 && !read.body.contains("secret-looking"), "\(read.status) \(read.body)")
            // The scheduler itself reads it, through the API as a log would be (here: the archive).
            #expect(try await archive.read(build: build) == ["a private project's secret-looking line"])
        }
    }
}
