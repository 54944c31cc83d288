import AsyncHTTPClient
import BuildAgent
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
import NIOCore
import Scheduler
import Testing

/// Whole builds through the real components. One farm per test; the suite runs its tests
/// one at a time (they share the podman storage and the machine's two cores).
@Suite("End to end", .serialized)
struct EndToEndTests {
    @Test("the demo is built through scheduler and agent, pushed, pulled back and run")
    func demoBuildsPushesAndRuns() async throws {
        try await withFarm { farm in
            try await farm.addProject()
            let queued = try await farm.startBuild()
            // Follow the log while the build runs: the stream ends when the build does.
            // The whole build: the first on a fresh farm, on two shared cores, can pass a minute.
            let followed = try await farm.request(.GET, "/api/v1/builds/\(queued.id)/log?follow=1", token: farm.registryAuth.adminToken, timeout: .seconds(300),
                                            client: streamingHTTPClient).body
            let b = try await farm.build(queued.id)
            #expect(b.status.isFinal, "the followed log ended while the build was \(b.status)")
            #expect(followed.contains("==> fetch started") && followed.contains("kiln: steps:"), "\(followed)")
            let log = try await farm.log(b.id)
            #expect(log == followed)
            #expect(b.status == .succeeded, "\(b.error ?? "") \(log)")
            #expect(b.agent == "agent-1")
            #expect(b.attempt == 1)
            let commit = try #require(b.commit)
            #expect(commit.count == 40)
            #expect(b.tag == String(commit.prefix(7)))
            #expect(b.image == "\(farm.infra.registry.address)/demo:\(commit.prefix(7))")
            for step in b.steps {
                #expect(step.status == .succeeded, "\(step.name): \(step.error ?? "")")
                #expect(step.durationMs != nil && step.startedAt != nil && step.finishedAt != nil)
            }
            // Each step's start, end and duration are marked in the log.
            for step in ["fetch", "compile", "image", "push"] {
                let lines = log.split(separator: "\n")
                #expect(lines.contains { $0.hasPrefix("==> \(step) started at 20") }, "log lacks the start of \(step)")
                #expect(lines.contains { $0.hasPrefix("==> \(step) succeeded at 20") && $0.contains(" in ") && $0.hasSuffix("s") }, "log lacks the end of \(step)")
            }
            #expect(log.contains("kiln: build succeeded"))
            // The digest recorded is the registry's.
            let digest = try await DockerClient.registryDigest(registry: farm.infra.registry.address, repository: "demo", tag: b.tag!,
                                                               insecure: true, credentials: farm.admin)
            #expect(b.digest == digest)

            // Pull it back from the registry (as admin) and run it: it answers with the fixture's output.
            let image = try #require(b.image)
            _ = try? farm.podman(["rmi", "-f", image])
            try farm.podman(["pull", "--tls-verify=false", "--authfile", try farm.adminAuthFile(), image])
            let port = try FreePort.next()
            let name = "kiln-e2e-\(UUID().uuidString.prefix(8))"
            try farm.podman(["run", "-d", "--name", name, "--network", "host", "-e", "PORT=\(port)", image])
            defer { _ = try? farm.podman(["rm", "-f", name]) }
            let page = try await httpGet("http://127.0.0.1:\(port)/", waitingUpTo: 30)
            #expect(page.contains("kiln-demo version 1.0.0"), "\(page)")
            #expect(try await httpGet("http://127.0.0.1:\(port)/health", waitingUpTo: 5) == "ok")
            // Only the build output is in the image, not the sources.
            let app = try farm.podman(["run", "--rm", "--entrypoint", "/bin/ls", image, "-A", "/app"])
            #expect(app.trimmingCharacters(in: .whitespacesAndNewlines) == "kiln-demo.jar", "\(app)")
        }
    }

    @Test("mvncache on: a second build downloads nothing; off: everything again; a second fetch receives nothing")
    func mavenCacheAndIncrementalFetch() async throws {
        try await withFarm { farm in
            try await farm.addProject()
            let mirror = farm.infra.mavenMirror.requests
            let git = farm.infra.git.requests

            let cold = try await farm.finished(try await farm.startBuild("demo", BuildRequest(ref: "main", mvncache: true)).id)
            #expect(cold.status == .succeeded, "\(cold.error ?? "")")
            let coldDownloads = mirror.served
            #expect(coldDownloads > 50, "a cold build fetched only \(coldDownloads) files")

            let before = mirror.total, gitBefore = git.total
            let warm = try await farm.finished(try await farm.startBuild("demo", BuildRequest(ref: "main", tag: "warm", mvncache: true)).id)
            #expect(warm.status == .succeeded, "\(warm.error ?? "")")
            #expect(mirror.total == before, "a warm build asked the mirror \(mirror.total - before) times")
            #expect(warm.image?.hasSuffix("/demo:warm") == true)
            // The fetch was incremental: the mirror already had every object.
            #expect(try await farm.log(warm.id).contains("fetched 0 objects"))
            #expect(git.total > gitBefore)  // it did ask the server

            let servedBefore = mirror.served
            let off = try await farm.finished(try await farm.startBuild("demo", BuildRequest(ref: "main", tag: "nocache", mvncache: false)).id)
            #expect(off.status == .succeeded, "\(off.error ?? "")")
            #expect(mirror.served - servedBefore == coldDownloads, "without the cache: \(mirror.served - servedBefore) files, cold: \(coldDownloads)")
            #expect(!off.mvncache)

            // Two builds of the project at once on one agent: each over a cache layer of its own
            // (CacheLayers), neither waits for the other, both succeed and neither downloads.
            let servedBeforeTwins = mirror.served
            let a = try await farm.startBuild("demo", BuildRequest(ref: "main", tag: "twin-a", mvncache: true))
            let b = try await farm.startBuild("demo", BuildRequest(ref: "main", tag: "twin-b", mvncache: true))
            let (doneA, doneB) = (try await farm.finished(a.id), try await farm.finished(b.id))
            #expect(doneA.status == .succeeded && doneB.status == .succeeded)
            let logs = [try await farm.log(a.id), try await farm.log(b.id)]
            #expect(logs.allSatisfy { !$0.contains("waiting for the caches of demo") && $0.contains("kept only if it succeeds") }, "\(logs)")
            #expect(mirror.served == servedBeforeTwins, "the twins downloaded \(mirror.served - servedBeforeTwins) files")
        }
    }

    @Test("an exact commit and a new push are built; a missing Dockerfile and a failing compile fail with the reason; the agent goes on")
    func commitsAndFailures() async throws {
        try await withFarm { farm in
            try await farm.addProject()
            let first = try farm.infra.publishDemo()
            let second = try farm.infra.publishDemo(edit: { dir in
                let v = dir.appendingPathComponent("src/main/resources/version.txt")
                try "${project.version}-second\n".write(to: v, atomically: true, encoding: .utf8)
            })
            #expect(first != second)
            let old = try await farm.finished(try await farm.startBuild("demo", BuildRequest(ref: "main", commit: first, tag: "old")).id)
            #expect(old.status == .succeeded, "\(old.error ?? "")")
            #expect(old.commit == first)
            let tip = try await farm.finished(try await farm.startBuild("demo", BuildRequest(ref: "main", tag: "tip")).id)
            #expect(tip.commit == second)

            try await farm.addProject("nodockerfile", dockerfile: "docker/Missing.Dockerfile")
            let noDockerfile = try await farm.finished(try await farm.startBuild("nodockerfile").id)
            #expect(noDockerfile.status == .failed)
            #expect(noDockerfile.steps.first { $0.name == .image }?.status == .failed)
            #expect(noDockerfile.error?.contains("docker/Missing.Dockerfile") == true, "\(noDockerfile.error ?? "")")
            #expect(noDockerfile.steps.first { $0.name == .push }?.status == .skipped)

            try await farm.addProject("broken", buildCommand: "echo compiling; exit 3")
            let broken = try await farm.finished(try await farm.startBuild("broken").id)
            #expect(broken.status == .failed)
            #expect(broken.steps.first { $0.name == .compile }?.status == .failed)
            #expect(broken.error?.contains("status 3") == true, "\(broken.error ?? "")")
            let brokenLog = try await farm.log(broken.id)
            #expect(brokenLog.contains("compiling"))
            #expect(brokenLog.contains("==> compile failed"))

            let unknownRef = try await farm.finished(try await farm.startBuild("demo", BuildRequest(ref: "no-such-branch")).id)
            #expect(unknownRef.status == .failed)
            #expect(unknownRef.steps.first?.status == .failed)
            #expect(unknownRef.error?.contains("no-such-branch") == true, "\(unknownRef.error ?? "")")

            // The agent is still healthy.
            let after = try await farm.finished(try await farm.startBuild("demo", BuildRequest(ref: "main", tag: "after")).id)
            #expect(after.status == .succeeded, "\(after.error ?? "")")
        }
    }

    @Test("an unreachable registry fails the push step with the reason")
    func unreachableRegistry() async throws {
        let refusing = try FreePort.refusing()  // bound, never listening: refused
        defer { withExtendedLifetime(refusing) {} }
        let deadPort = refusing.port
        try await withFarm(configure: { farm, id in farm.agentConfiguration(id, registry: "127.0.0.1:\(deadPort)") }) { farm in
            try await farm.addProject()
            let b = try await farm.finished(try await farm.startBuild().id)
            #expect(b.status == .failed)
            let push = try #require(b.steps.first { $0.name == .push })
            #expect(push.status == .failed)
            #expect(b.error?.contains("127.0.0.1:\(deadPort)") == true, "\(b.error ?? "")")
            #expect(b.steps.filter { $0.status == .succeeded }.map(\.name) == [.fetch, .compile, .image])

            // The agent lost its lease (say etcd forgot it): it registers again under a new one.
            let key = farm.keys.agent("agent-1")
            let old = try #require(try await farm.etcd.get(key))
            try await farm.etcd.revokeLease(old.lease)
            try await farm.waitForAgents(1)
            let again = try #require(try await farm.etcd.get(key))
            #expect(again.lease != old.lease && again.lease != 0)
            // And it still builds: a compile failure is reported by the re-registered agent.
            try await farm.addProject("broken", buildCommand: "exit 4")
            let afterLoss = try await farm.finished(try await farm.startBuild("broken").id)
            #expect(afterLoss.error?.contains("status 4") == true, "\(afterLoss.error ?? "")")
        }
    }

    @Test("a build can be cancelled: its container is stopped; a step past its time limit fails")
    func cancelAndTimeout() async throws {
        try await withFarm(configure: { farm, id in
            farm.agentConfiguration(id, timeouts: StepTimeouts(fetch: .seconds(60), compile: .seconds(6), image: .seconds(60), push: .seconds(60)))
        }) { farm in
            // The shell prints "awake-42"; the command line the log shows first does not
            // contain that text, so finding it means the container runs.
            try await farm.addProject("sleepy", buildCommand: "echo awake-$((40+2)); sleep 300")
            let b = try await farm.startBuild("sleepy")
            try await farm.waitForLog(b.id, containing: "awake-42")
            let running = try farm.podman(["ps", "-q", "--filter", "label=kiln.build=\(b.id)"])
            #expect(!running.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty)
            let cancel = try await farm.request(.POST, "/api/v1/builds/\(b.id)/cancel")
            #expect(cancel.status == 200)
            let done = try await farm.finished(b.id, timeout: .seconds(30))
            #expect(done.status == .cancelled)
            #expect(done.steps.first { $0.name == .compile }?.status == .cancelled)
            let left = try farm.podman(["ps", "-a", "-q", "--filter", "label=kiln.build=\(b.id)"])
            #expect(left.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "container left: \(left)")

            let t = try await farm.finished(try await farm.startBuild("sleepy").id, timeout: .seconds(60))
            #expect(t.status == .failed)
            #expect(t.error?.contains("timed out after 6 s") == true, "\(t.error ?? "")")
            let gone = try farm.podman(["ps", "-a", "-q", "--filter", "label=kiln.build=\(t.id)"])
            #expect(gone.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty)
        }
    }
}

/// GET `url`, retrying while the server starts (up to `seconds`).
func httpGet(_ url: String, waitingUpTo seconds: Double) async throws -> String {
    let deadline = Date().addingTimeInterval(seconds)
    while true {
        do {
            let response = try await HTTPClient.shared.execute(HTTPClientRequest(url: url), timeout: .seconds(5))
            let body = String(buffer: try await response.body.collect(upTo: 1 << 20))
            if response.status == .ok { return body }
            if Date() > deadline { return "HTTP \(response.status.code): \(body)" }
        } catch {
            if Date() > deadline { throw error }
        }
        try await Task.sleep(for: .milliseconds(200))
    }
}
