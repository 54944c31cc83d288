@testable import BuildAgent
import CLibGit2
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
import Testing

/// A fetch that ran past its test's time limit (it connected where it should not have).
struct FetchTimedOut: Error {}

/// The fetch policy applied for real: names through the system's resolver, fetches in this
/// process and in the `kiln git-fetch` child against servers on loopback, and redirects.
/// Every server here counts its connections, so "refused" means "never connected to".
@Suite("FetchGuard: the policy at the resolver and at each connection")
struct FetchGuardTests {
    @Test("every spelling of this machine is refused after the resolver read it", arguments: [
        "127.0.0.1", "2130706433", "0x7f.1", "0x7f000001", "017700000001", "127.1", "0177.0.0.1", "localhost",
        "::ffff:127.0.0.1", "::1", "0.0.0.0", "0", "169.254.169.254", "0xa9fea9fe",
    ])
    func spellingsOfThisMachine(host: String) throws {
        let result = FetchGuard.check(host: host, port: 2379, policy: FetchPolicy())
        guard case .failure(let refusal) = result else { Issue.record("\(host) passed"); return }
        #expect(refusal.byPolicy, "\(host): \(refusal.message)")
        #expect(refusal.message.contains("--allow-fetch-from \(FetchAllowance.text(host: host, port: 2379))"), "\(refusal.message)")
    }

    @Test("this machine's own addresses are refused, whatever their range")
    func ownAddresses() throws {
        let own = HostAddresses.current().compactMap(IPAddress.init(bytes:)).filter { $0.kind != .linkLocal }
        try #require(!own.isEmpty)
        for address in own {
            guard case .failure(let refusal) = FetchGuard.check(host: address.description, port: 80, policy: FetchPolicy()) else {
                Issue.record("\(address) passed")
                continue
            }
            #expect(refusal.byPolicy, "\(refusal.message)")
        }
    }

    @Test("an allowed server passes on its port only; one that does not resolve is not a refusal")
    func allowedAndUnresolvable() throws {
        let policy = try FetchPolicy(parsing: ["localhost:3000"], denyPrivate: false)
        guard case .success(let addresses) = FetchGuard.check(host: "localhost", port: 3000, policy: policy) else {
            Issue.record("localhost:3000 was refused")
            return
        }
        #expect(addresses.allSatisfy { $0.ip.kind == .loopback })
        if case .success = FetchGuard.check(host: "localhost", port: 3001, policy: policy) { Issue.record("localhost:3001 passed") }
        guard case .failure(let unresolved) = FetchGuard.check(host: "no-such-host.invalid", port: 80, policy: policy) else {
            Issue.record("no-such-host.invalid resolved")
            return
        }
        #expect(!unresolved.byPolicy && unresolved.message.contains("cannot resolve"))
    }

    @Test("a fetch's connections all go to its first server: another port of the same host is a redirect and refused")
    func oneServerPerFetch() throws {
        let fetchGuard = FetchGuard(policy: try FetchPolicy(parsing: ["127.0.0.1:3000", "127.0.0.1:3001"], denyPrivate: false))
        guard case .success(let first) = fetchGuard.addresses(host: "127.0.0.1", port: "3000") else { Issue.record("first refused"); return }
        guard case .success(let again) = fetchGuard.addresses(host: "127.0.0.1", port: "3000") else { Issue.record("second refused"); return }
        #expect(first.map(\.ip) == again.map(\.ip))
        guard case .failure(let redirect) = fetchGuard.addresses(host: "127.0.0.1", port: "3001") else { Issue.record("other port passed"); return }
        #expect(redirect.message.contains("sent the fetch on to 127.0.0.1:3001"), "\(redirect.message)")
        #expect(fetchGuard.refusal == redirect.message)
    }

    @Test("every transport connects through the agent's stream: without a guard on the thread, none connects", arguments: ["http", "https", "git", "ssh"])
    func everyTransportUsesTheStream(scheme: String) throws {
        precondition(libgit2Initialised && GuardedStream.registered)
        let target = try StallingServer(.redirect(to: "http://127.0.0.1:1/"))
        defer { target.stop() }
        var remote: OpaquePointer?
        #expect(git_remote_create_detached(&remote, "\(scheme)://git@127.0.0.1:\(target.port)/x.git") == 0)
        defer { git_remote_free(remote) }
        var options = git_remote_connect_options()
        git_remote_connect_options_init(&options, UInt32(GIT_REMOTE_CONNECT_OPTIONS_VERSION))
        // libgit2 itself, as GitMirror.fetch calls it, but with no FetchGuard installed.
        #expect(git_remote_connect_ext(remote, GIT_DIRECTION_FETCH, &options) < 0)
        let message = git_error_last().flatMap { $0.pointee.message.map { String(cString: $0) } } ?? ""
        #expect(message.contains("no fetch policy is in force"), "\(scheme): \(message)")
        #expect(target.accepted == 0, "\(scheme) connected around the agent's stream")
    }

    @Test("in this process: a refused server is never connected to and no mirror is made; allowed, it is fetched from")
    func inProcess() async throws {
        let repo = try GitFixture()
        let sha = try repo.commit(["a.txt": "1\n"])
        // Answers at once and hangs up: a fetch that wrongly connects fails fast (and is counted)
        // instead of blocking this thread.
        let silent = try StallingServer(.redirect(to: "http://127.0.0.1:1/"))
        defer { silent.stop() }
        for url in ["http://127.0.0.1:\(silent.port)/x.git", "git://2130706433:\(silent.port)/x.git", "http://[::ffff:127.0.0.1]:\(silent.port)/x.git",
                    "ssh://git@0x7f.1:\(silent.port)/x.git", "http://localhost:\(silent.port)/x.git"] {
            let mirror = GitMirror(path: repo.dir.path("mirrors/refused.git"), url: url)
            let error = #expect(throws: GitError.self) { try mirror.fetch() }
            #expect(error?.kind == .refused, "\(url): \(String(describing: error))")
            #expect(error?.message.contains("--allow-fetch-from") == true)
            #expect(!FileManager.default.fileExists(atPath: mirror.path.path), "\(url): the mirror was made")
        }
        #expect(silent.accepted == 0, "a refused fetch connected")

        // The same checks let an allowed server through: git daemon on loopback.
        try await repo.withDaemon { url, server in
            let mirror = GitMirror(path: repo.dir.path("mirrors/allowed.git"), url: url)
            #expect(throws: GitError.self) { try mirror.fetch() }
            let stats = try mirror.fetch(policy: try FetchPolicy(parsing: [server], denyPrivate: false))
            #expect(stats.receivedObjects == 3)
            #expect(try mirror.resolve(ref: "main", commit: nil) == sha)
        }
    }

    @Test("in the child: the refusal is the step's reason and names the option; the server sees no connection")
    func inTheChild() async throws {
        let repo = try GitFixture()
        let silent = try StallingServer(.silent)
        defer { silent.stop() }
        let url = "http://user:s3cret@0x7f.1:\(silent.port)/x.git"
        let error = await #expect(throws: GitError.self) {
            _ = try await KilnCore.withTimeout(.seconds(30), { FetchTimedOut() }) {
                try await childFetcher().fetch(GitMirror(path: repo.dir.path("mirrors/c.git"), url: url))
            }
        }
        #expect(error?.operation == "fetch http://0x7f.1:\(silent.port)/x.git")
        #expect(error?.message.contains("resolves to 127.0.0.1, a loopback address") == true, "\(String(describing: error))")
        #expect(error?.message.contains("--allow-fetch-from 0x7f.1:\(silent.port)") == true)
        #expect(error.map { !$0.description.contains("s3cret") && !$0.description.contains("user") } == true)
        #expect(silent.accepted == 0)
    }

    @Test("redirects: to another port of the same host, to another host, even to an allowed server, fail; the target sees nothing")
    func redirects() async throws {
        let repo = try GitFixture()
        try repo.commit(["a.txt": "1\n"])
        let target = try StallingServer(.silent)
        defer { target.stop() }
        try await repo.withDaemon { _, daemon in
            let cases: [(location: String, says: String)] = [
                ("http://127.0.0.1:\(target.port)/x.git", "sent the fetch on to 127.0.0.1:\(target.port)"),
                ("http://localhost:\(target.port)/x.git", "redirect"),
                ("http://\(daemon)/origin.git", "sent the fetch on to \(daemon)"),
            ]
            for (i, c) in cases.enumerated() {
                let bouncer = try StallingServer(.redirect(to: c.location))
                defer { bouncer.stop() }
                let fetcher = try childFetcher(allowing: ["127.0.0.1:\(bouncer.port)", "localhost:\(target.port)", daemon])
                // A followed redirect reaches the silent target and hangs: the time limit ends it.
                let error = await #expect(throws: GitError.self) {
                    _ = try await KilnCore.withTimeout(.seconds(30), { FetchTimedOut() }) {
                        try await fetcher.fetch(GitMirror(path: repo.dir.path("mirrors/r\(i).git"), url: "http://127.0.0.1:\(bouncer.port)/x.git"))
                    }
                }
                #expect(error?.message.contains(c.says) == true && error?.message.contains("follows no redirect") == true, "\(c.location): \(String(describing: error))")
                #expect(bouncer.accepted >= 1, "the fetch never reached the redirecting server")
            }
        }
        #expect(target.accepted == 0, "a redirect was followed")
    }
}
