@testable import BuildAgent
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
import Testing

/// Fetches of private repositories against real servers: nginx with Basic authentication in
/// front of `git http-backend` (`PrivateGitHTTPServer`), and OpenSSH's sshd with a deploy key
/// and its own host keys (`PrivateGitSSHServer`), through the `kiln git-fetch` child as the
/// agent runs it. Serialized: the SSH tests look for temporary folders the child leaves.
@Suite("Git credentials: private repositories over HTTP(S) and SSH", .serialized)
struct GitCredentialTests {
    static let token = "glpat-Kiln-test-0123456789"

    /// A fixture with one commit, served over HTTP to `deploy` with `token`.
    func httpServer() async throws -> (GitFixture, String, PrivateGitHTTPServer) {
        let repo = try await onThread { try GitFixture() }
        let sha = try await onThread { try repo.commit(["a.txt": "private\n"]) }
        let server = try await PrivateGitHTTPServer.start(root: repo.dir.url, username: "deploy", password: Self.token)
        return (repo, sha, server)
    }

    func fetch(_ fetcher: GitFetcher, _ mirror: GitMirror, _ credential: GitCredential?) async throws -> FetchStats {
        try await KilnCore.withTimeout(.seconds(60), { FetchTimedOut() }) { try await fetcher.fetch(mirror, credential: credential) }
    }

    /// The error of a fetch that must fail; records an issue when it succeeds.
    func failure(_ fetcher: GitFetcher, _ mirror: GitMirror, _ credential: GitCredential?) async -> GitError? {
        await #expect(throws: GitError.self) { _ = try await fetch(fetcher, mirror, credential) }
    }

    /// Waits for nginx's log of a request (written just after its answer).
    func requests(_ server: PrivateGitHTTPServer, atLeast count: Int) async throws -> [PrivateGitHTTPServer.Request] {
        try await KilnTestSupport.withTimeout(.seconds(10), waitingFor: "\(count) requests in nginx's log") {
            while server.requests.count < count { try await Task.sleep(for: .milliseconds(20)) }
            return server.requests
        }
    }

    // MARK: HTTP(S)

    @Test("HTTP: the right token fetches, in the child and in this process, incrementally")
    func rightToken() async throws {
        let (repo, sha, server) = try await httpServer()
        defer { server.stop() }
        let credential = GitCredential.token(username: "deploy", token: Self.token)
        let mirror = GitMirror(path: repo.dir.path("mirrors/p.git"), url: server.url("origin.git"))
        let stats = try await fetch(try childFetcher(allowing: [server.server]), mirror, credential)
        #expect(stats.receivedObjects == 3)
        #expect(try mirror.resolve(ref: "main", commit: nil) == sha)
        let second = try repo.commit(["a.txt": "2\n"])
        let policy = try FetchPolicy(parsing: [server.server], denyPrivate: false)
        #expect(try await onThread { try mirror.fetch(credential: credential, policy: policy) }.receivedObjects == 3)
        #expect(try mirror.resolve(ref: "main", commit: nil) == second)
        #expect(try await requests(server, atLeast: 1).contains { $0.status == 200 && $0.user == "deploy" })
        // Let in, but no such repository: the message says the credential was used and what to check.
        let missing = await failure(try childFetcher(allowing: [server.server]), GitMirror(path: repo.dir.path("mirrors/m.git"), url: server.url("missing.git")), credential)
        #expect(missing?.kind == .credential && missing?.message.contains("found no such repository for the project's git credential, an HTTPS token of user deploy (HTTP 404)") == true,
                "\(String(describing: missing))")
    }

    @Test("HTTP: a wrong token is sent once and fails naming the credential, never the token")
    func wrongToken() async throws {
        let (repo, _, server) = try await httpServer()
        defer { server.stop() }
        let wrong = "glpat-WRONG-9876543210"
        let mirror = GitMirror(path: repo.dir.path("mirrors/p.git"), url: server.url("origin.git"))
        let error = await failure(try childFetcher(allowing: [server.server]), mirror, .token(username: "deploy", token: wrong))
        #expect(error?.kind == .credential, "\(String(describing: error))")
        #expect(error?.message.hasPrefix("127.0.0.1:\(server.port) refused the project's git credential, an HTTPS token of user deploy: check that the token of user deploy is valid") == true, "\(String(describing: error))")
        #expect(error.map { !$0.description.contains(wrong) && !$0.description.contains("WRONG") } == true)
        // Asked without a credential (401), then once with the wrong one (401): not again.
        let seen = try await requests(server, atLeast: 2)
        #expect(seen.map(\.status) == [401, 401] && seen.map(\.user) == ["-", "deploy"], "\(seen)")
    }

    @Test("HTTP: no credential, or an SSH key, fails saying what to set")
    func noOrWrongKindOfCredential() async throws {
        let (repo, _, server) = try await httpServer()
        defer { server.stop() }
        let fetcher = try childFetcher(allowing: [server.server])
        let mirror = GitMirror(path: repo.dir.path("mirrors/p.git"), url: server.url("origin.git"))
        let none = await failure(fetcher, mirror, nil)
        #expect(none?.kind == .credential)
        #expect(none?.message.hasPrefix("127.0.0.1:\(server.port) asks for credentials and the project has none: set one with kiln credential set git --project") == true, "\(String(describing: none))")
        let key = try await SSHKeyPair.generate()
        let wrongKind = await failure(fetcher, mirror, .sshKey(privateKey: key.privateKey, knownHosts: "[127.0.0.1]:\(server.port) \(key.typeAndKey)"))
        #expect(wrongKind?.message.contains("is for SSH, not HTTPS") == true, "\(String(describing: wrongKind))")
        #expect(wrongKind.map { !$0.description.contains("PRIVATE KEY") } == true)
    }

    @Test("HTTP: the fetch policy still refuses the loopback server, credential or not; nginx sees no request")
    func httpPolicy() async throws {
        let (repo, _, server) = try await httpServer()
        defer { server.stop() }
        let mirror = GitMirror(path: repo.dir.path("mirrors/p.git"), url: server.url("origin.git"))
        let error = await failure(try childFetcher(), mirror, .token(username: "deploy", token: Self.token))
        #expect(error?.kind == .refused && error?.message.contains("--allow-fetch-from 127.0.0.1:\(server.port)") == true, "\(String(describing: error))")
        #expect(!FileManager.default.fileExists(atPath: mirror.path.path))
        #expect(server.requests.isEmpty, "\(server.requests)")
    }

    @Test("the credential is in neither the child's command line nor its environment", arguments: ["http", "ssh"])
    func notInArgumentsOrEnvironment(scheme: String) async throws {
        let repo = try GitFixture()
        let silent = try StallingServer(.silent)
        defer { silent.stop() }
        let path = repo.dir.path("mirrors/argv-\(scheme).git")
        let key = try await SSHKeyPair.generate()
        let credential: GitCredential = scheme == "http"
            ? .token(username: "deploy", token: Self.token)
            : .sshKey(privateKey: key.privateKey, knownHosts: "[127.0.0.1]:\(silent.port) \(key.typeAndKey)")
        let secret = scheme == "http" ? Self.token : String(key.privateKey.split(separator: "\n")[1])
        let fetcher = try childFetcher(allowing: ["127.0.0.1:\(silent.port)"])
        let task = Task { try await fetcher.fetch(GitMirror(path: path, url: "\(scheme)://127.0.0.1:\(silent.port)/x.git"), credential: credential) }
        // The child has connected and waits: it holds the credential now.
        try await KilnTestSupport.withTimeout(.seconds(30), waitingFor: "the child's connection") {
            while silent.accepted == 0 { try await Task.sleep(for: .milliseconds(20)) }
        }
        let children = processes(containing: path.path)
        #expect(!children.isEmpty, "the git-fetch child was not found")
        for pid in children {
            for file in ["cmdline", "environ"] {
                let text = String(decoding: ProcFile.data("/proc/\(pid)/\(file)") ?? Data(), as: UTF8.self)
                #expect(!text.contains(secret), "the secret is in /proc/\(pid)/\(file)")
            }
            let arguments = String(decoding: FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") ?? Data(), as: UTF8.self)
            #expect(arguments.contains("--credential-stdin"))
        }
        task.cancel()
        _ = try? await task.value
    }

    // MARK: SSH

    /// One SSH case: a fixture with one commit, an sshd letting in `deployKey` with host keys
    /// of `types`, a fetcher allowed to reach it and a mirror of the fixture on it.
    struct SSHCase {
        let deployKey: SSHKeyPair
        let repo: GitFixture
        let sha: String
        let server: PrivateGitSSHServer
        let fetcher: GitFetcher
        let mirror: GitMirror

        init(hostKeys types: [SSHKeyPair.KeyType] = [.ed25519, .ecdsa, .rsa]) async throws {
            deployKey = try await SSHKeyPair.generate()
            let repo = try await onThread { try GitFixture() }
            self.repo = repo
            sha = try await onThread { try repo.commit(["a.txt": "private\n"]) }
            server = try await PrivateGitSSHServer.start(deployKeys: [deployKey.publicKey], hostKeyTypes: types)
            fetcher = try childFetcher(allowing: [server.server])
            mirror = GitMirror(path: repo.dir.path("mirrors/p.git"), url: server.url(repo.origin))
        }

        /// The deploy key with `knownHosts` as its pins.
        func credential(_ knownHosts: String) -> GitCredential { .sshKey(privateKey: deployKey.privateKey, knownHosts: knownHosts) }
    }

    /// The temporary HOMEs `kiln git-fetch` made for SSH fetches and did not remove.
    func leftHomes() -> Set<String> {
        Set(((try? FileManager.default.contentsOfDirectory(atPath: FileManager.default.temporaryDirectory.path)) ?? []).filter { $0.hasPrefix("kiln-git-fetch-") })
    }

    @Test("SSH: the deploy key with the pinned Ed25519 or ECDSA key fetches from a server holding three host key types", arguments: [SSHKeyPair.KeyType.ed25519, .ecdsa])
    func rightKey(pinned: SSHKeyPair.KeyType) async throws {
        let c = try await SSHCase()
        defer { c.server.stop() }
        let before = leftHomes()
        let credential = c.credential(c.server.knownHosts([pinned]))
        #expect(try await fetch(c.fetcher, c.mirror, credential).receivedObjects == 3)
        #expect(try c.mirror.resolve(ref: "main", commit: nil) == c.sha)
        let second = try c.repo.commit(["a.txt": "2\n"])
        #expect(try await fetch(c.fetcher, c.mirror, credential).receivedObjects == 3)
        #expect(try c.mirror.resolve(ref: "main", commit: nil) == second)
        #expect(c.server.acceptedKeys == 2 && c.server.refusedKeys == 0, "\(c.server.log)")
        #expect(leftHomes() == before, "kiln git-fetch left its temporary HOME")
    }

    @Test("SSH: an unknown host key (no pin for this port, or no credential) fails before the deploy key is offered")
    func unknownHostKey() async throws {
        let c = try await SSHCase()
        defer { c.server.stop() }
        let port = c.server.port
        // Pinned, but for the standard port: [127.0.0.1]:PORT is another server.
        let error = await failure(c.fetcher, c.mirror, c.credential("127.0.0.1 \(c.server.hostKeys[0].typeAndKey)"))
        #expect(error?.kind == .credential)
        #expect(error?.message.hasPrefix("the host key of 127.0.0.1:\(port) is not pinned: the known_hosts lines of the project's git credential name only 127.0.0.1, none of them [127.0.0.1]:\(port)") == true, "\(String(describing: error))")
        #expect(error.map { !$0.description.contains("PRIVATE KEY") } == true)
        let none = await failure(c.fetcher, c.mirror, nil)
        #expect(none?.message.hasPrefix("the host key of 127.0.0.1:\(port) is not pinned: the project has no git credential") == true, "\(String(describing: none))")
        let token = await failure(c.fetcher, c.mirror, .token(username: "deploy", token: Self.token))
        #expect(token?.message.contains("is not pinned: the project's git credential is an HTTPS token of user deploy") == true, "\(String(describing: token))")
        #expect(c.server.connections == 3 && c.server.acceptedKeys == 0 && c.server.refusedKeys == 0, "\(c.server.log)")
    }

    @Test("SSH: a changed host key fails as such, before the deploy key is offered; a server without the pinned key type too")
    func changedHostKey() async throws {
        let c = try await SSHCase()
        defer { c.server.stop() }
        let impostor = try await SSHKeyPair.generate()
        let changed = await failure(c.fetcher, c.mirror, c.credential("[127.0.0.1]:\(c.server.port) \(impostor.typeAndKey)"))
        #expect(changed?.kind == .credential)
        #expect(changed?.message.hasPrefix("the host key of 127.0.0.1:\(c.server.port) changed: it is not the one pinned in the project's git credential (the server presented ssh-ed25519 SHA256:") == true, "\(String(describing: changed))")
        #expect(changed?.message.contains("someone may be in the middle") == true)
        #expect(c.server.acceptedKeys == 0 && c.server.refusedKeys == 0, "\(c.server.log)")

        // Only an ECDSA key on this server: the pinned type is asked for and not there.
        let ecdsaOnly = try await SSHCase(hostKeys: [.ecdsa])
        defer { ecdsaOnly.server.stop() }
        let other = await failure(ecdsaOnly.fetcher, ecdsaOnly.mirror, ecdsaOnly.credential("[127.0.0.1]:\(ecdsaOnly.server.port) \(impostor.typeAndKey)"))
        #expect(other?.kind == .credential)
        #expect(other?.message.contains("the server has no host key of the type the project's git credential pins") == true, "\(String(describing: other))")
        #expect(ecdsaOnly.server.acceptedKeys == 0 && ecdsaOnly.server.refusedKeys == 0)
    }

    @Test("SSH: a key that is no deploy key of the repository is offered once and fails naming the credential")
    func wrongDeployKey() async throws {
        let c = try await SSHCase()
        defer { c.server.stop() }
        let stranger = try await SSHKeyPair.generate()
        let error = await failure(c.fetcher, c.mirror, .sshKey(privateKey: stranger.privateKey, knownHosts: c.server.knownHosts([.ed25519])))
        #expect(error?.kind == .credential)
        #expect(error?.message.hasPrefix("127.0.0.1:\(c.server.port) refused the project's git credential, an SSH deploy key for user root: check that its public key is a deploy key of this repository") == true, "\(String(describing: error))")
        let keyText = String(stranger.privateKey.split(separator: "\n")[1])
        #expect(error.map { !$0.description.contains(keyText) && !$0.description.contains("PRIVATE KEY") } == true)
        #expect(c.server.refusedKeys == 1 && c.server.acceptedKeys == 0, "\(c.server.log)")
    }

    @Test("SSH: the fetch policy refuses the loopback server before any connection; allowed, the same fetch works")
    func sshPolicy() async throws {
        let c = try await SSHCase(hostKeys: [.ed25519])
        defer { c.server.stop() }
        let credential = c.credential(c.server.knownHosts())
        let path = c.repo.origin.path
        for url in [c.server.url(c.repo.origin), "ssh://root@localhost:\(c.server.port)\(path)", "root@[127.0.0.1:\(c.server.port)]:\(path)"] {
            let mirror = GitMirror(path: c.repo.dir.path("mirrors/refused.git"), url: url)
            let error = await failure(try childFetcher(), mirror, credential)
            #expect(error?.kind == .refused && error?.message.contains("--allow-fetch-from") == true, "\(url): \(String(describing: error))")
            #expect(!FileManager.default.fileExists(atPath: mirror.path.path))
        }
        #expect(c.server.connections == 0, "\(c.server.log)")
        // In this process too (GuardedStream hands libssh2 the socket it connected).
        let mirror = c.mirror
        await #expect(throws: GitError.self) { try await onThread { try mirror.fetch(credential: credential) } }
        #expect(c.server.connections == 0)
        let policy = try FetchPolicy(parsing: [c.server.server], denyPrivate: false)
        #expect(try await onThread { try mirror.fetch(credential: credential, policy: policy) }.receivedObjects == 3)
        #expect(try c.mirror.resolve(ref: "main", commit: nil) == c.sha)
        #expect(c.server.connections == 1 && c.server.acceptedKeys == 1)
    }
}
