@testable import BuildAgent
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
import Testing

/// The fetch in a child process (`kiln git-fetch`, started by `GitFetcher`): the `kiln` built
/// beside this test bundle, against git daemon and against servers that stall.
@Suite("GitFetcher: the fetch in a child process that can be killed")
struct GitFetcherTests {
    @Test("the child fetches, reports its stats, and fetches incrementally")
    func fetchesInAChild() async throws {
        let repo = try GitFixture()
        let first = try repo.commit(["a.txt": "1\n"])
        try await repo.withDaemon { url, server in
            let fetcher = try childFetcher(allowing: [server])
            let mirror = GitMirror(path: repo.dir.path("mirrors/child.git"), url: url)
            let stats = try await fetcher.fetch(mirror)
            #expect(stats.receivedObjects == 3)
            #expect(try mirror.resolve(ref: "main", commit: nil) == first)
            #expect(try await fetcher.fetch(mirror).receivedObjects == 0)
        }
    }

    @Test("a server that fails: the child's reason becomes the error")
    func failureReason() async throws {
        let repo = try GitFixture()
        let refusing = try FreePort.refusing()  // bound, never listening: refused
        defer { withExtendedLifetime(refusing) {} }  // held until the test ends
        let port = refusing.port
        let mirror = GitMirror(path: repo.dir.path("mirrors/refused.git"), url: "http://127.0.0.1:\(port)/x.git")
        let error = await #expect(throws: GitError.self) { _ = try await childFetcher(allowing: ["127.0.0.1:\(port)"]).fetch(mirror) }
        #expect(error?.operation == "fetch http://127.0.0.1:\(port)/x.git")
        #expect(error?.message.isEmpty == false && error?.message.contains("git: fetch") == false, "\(String(describing: error))")
        // A refused URL never starts the child.
        let hostile = GitMirror(path: repo.dir.path("mirrors/h.git"), url: "ext::sh -c touch% /tmp/pwned")
        let refused = await #expect(throws: GitError.self) { _ = try await childFetcher().fetch(hostile) }
        #expect(refused?.kind == .invalidURL)
    }

    @Test("a server that stalls: the time limit kills the child at once, nothing is left, the mirror fetches again",
          arguments: [StallingServer.Mode.silent, .partialHTTP])
    func stalledServerIsKilled(mode: StallingServer.Mode) async throws {
        let repo = try GitFixture()
        let sha = try repo.commit(["a.txt": "1\n"])
        let server = try StallingServer(mode)
        defer { server.stop() }
        let fetcher = try childFetcher(allowing: ["127.0.0.1:\(server.port)"])
        let path = repo.dir.path("mirrors/stalled.git")
        let started = ContinuousClock.now
        struct Limit: Error {}
        await #expect(throws: Limit.self) {
            _ = try await KilnCore.withTimeout(.seconds(2), { Limit() }) { try await fetcher.fetch(GitMirror(path: path, url: server.url)) }
        }
        let took = ContinuousClock.now - started
        // The server never answers: a child that was not killed would hang here for good. The bound is
        // loose because a loaded CI machine took 11.4 s to reap the child and return.
        #expect(took < .seconds(60), "the fetch took \(took) to stop")
        #expect(server.accepted >= 1, "the child never reached the server")
        #expect(processes(containing: path.path).isEmpty, "a git-fetch child is left: \(processes(containing: path.path))")
        // The same mirror, now from a server that answers: the lock is free and the fetch works.
        try await repo.withDaemon { url, server in
            let stats = try await childFetcher(allowing: [server]).fetch(GitMirror(path: path, url: url))
            #expect(stats.receivedObjects == 3)
            #expect(try GitMirror(path: path, url: url).resolve(ref: "main", commit: nil) == sha)
        }
    }

    @Test("cancelling the caller kills the child and throws CancellationError")
    func cancelKills() async throws {
        let repo = try GitFixture()
        let server = try StallingServer(.silent)
        defer { server.stop() }
        let fetcher = try childFetcher(allowing: ["127.0.0.1:\(server.port)"])
        let path = repo.dir.path("mirrors/cancelled.git")
        let task = Task { try await fetcher.fetch(GitMirror(path: path, url: server.url)) }
        // Synchronised on the server: the child has connected and waits for an answer.
        try await KilnTestSupport.withTimeout(.seconds(30), waitingFor: "the child's connection") {
            while server.accepted == 0 { try await Task.sleep(for: .milliseconds(20)) }
        }
        let cancelledAt = ContinuousClock.now
        task.cancel()
        await #expect(throws: CancellationError.self) { _ = try await task.value }
        #expect(ContinuousClock.now - cancelledAt < .seconds(60), "the cancel waited (the server never answers)")
        #expect(processes(containing: path.path).isEmpty)
    }

    @Test("what a killed fetch leaves (lock files, half-written packs) is removed by the next fetch")
    func leftoversAreRemoved() throws {
        let repo = try GitFixture()
        try repo.commit(["a.txt": "1\n"])
        let mirror = repo.mirror()
        try mirror.fetch()
        let second = try repo.commit(["a.txt": "2\n"])
        let leftovers = ["refs/heads/main.lock", "packed-refs.lock", "config.lock", "objects/pack/pack_git2_a1b2c3", "objects/pack/tmp_pack_XyZ"]
        for name in leftovers {
            let file = mirror.path.appendingPathComponent(name)
            try FileManager.default.createDirectory(at: file.deletingLastPathComponent(), withIntermediateDirectories: true)
            try Data("half".utf8).write(to: file)
        }
        let stats = try mirror.fetch()
        #expect(stats.receivedObjects == 3)
        #expect(try mirror.resolve(ref: "main", commit: nil) == second)
        for name in leftovers {
            #expect(!FileManager.default.fileExists(atPath: mirror.path.appendingPathComponent(name).path), "\(name) is still there")
        }
    }

    @Test("leftover names: locks and temporary files only")
    func leftoverNames() {
        for name in ["main.lock", "packed-refs.lock", "pack_git2_Ab12", "tmp_pack_1", "tmp_obj_x", "HEAD.lock"] {
            #expect(GitMirror.isLeftover(name), "\(name)")
        }
        for name in ["main", "packed-refs", "HEAD", "config", "pack-0123abcd.pack", "pack-0123abcd.idx", "locked", "ab"] {
            #expect(!GitMirror.isLeftover(name), "\(name)")
        }
    }

    @Test("the child's outcome: stats, its reason, a signal")
    func interpret() throws {
        let ok = Spawn.Outcome(status: 0, stdout: Data(#"{"receivedObjects":3,"receivedBytes":200,"indexedObjects":3,"durationMs":5}"#.utf8), stderr: Data())
        #expect(try GitFetcher.interpret(ok, operation: "fetch u") == FetchStats(receivedObjects: 3, receivedBytes: 200, indexedObjects: 3, durationMs: 5))
        let failed = Spawn.Outcome(status: 1, stdout: Data(), stderr: Data("git: fetch u: unexpected http status code: 404\n".utf8))
        let e1 = #expect(throws: GitError.self) { try GitFetcher.interpret(failed, operation: "fetch u") }
        #expect(e1?.description == "git: fetch u: unexpected http status code: 404")
        let killed = Spawn.Outcome(status: 137, stdout: Data(), stderr: Data())
        let e2 = #expect(throws: GitError.self) { try GitFetcher.interpret(killed, operation: "fetch u") }
        #expect(e2?.message.contains("signal 9") == true)
        let garbage = Spawn.Outcome(status: 0, stdout: Data("hello".utf8), stderr: Data())
        #expect(throws: GitError.self) { try GitFetcher.interpret(garbage, operation: "fetch u") }
    }
}
