import BuildAgent
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
import Testing

// An agent killed with SIGKILL in the middle of a compile leaves its container running, with
// the project's caches mounted (an overlay whose upper layer is the build's: CacheLayers). The
// agent started again with the same id must remove it before it builds anything, and drop
// that build's layer (it did not succeed), so that nothing of the dead attempt reaches the
// caches. The agents here are real `kiln agent` processes (the one beside this test bundle), so
// they can die like one does in production.
extension EndToEndTests {
    @Test("kill -9 during a compile: the restarted agent removes the orphan before its next build uses the cache")
    func orphanRemovedBeforeTheCacheIsUsedAgain() async throws {
        let kiln = try #require(KilnExecutable.besideCurrent)
        try #require(FileManager.default.isExecutableFile(atPath: kiln.path), "\(kiln.path) is missing: swift build --build-tests builds it")
        try await withFarm(agents: []) { farm in
            let id = "agent-orphan"
            let dataDir = farm.dataDir.appendingPathComponent("agents/\(id)")
            // main is the default branch: the protected caches; each attempt writes into its own layer.
            let cache = dataDir.appendingPathComponent("mvncache/protected/orphan")
            func layer(_ attempt: Int, _ build: String) -> URL {
                dataDir.appendingPathComponent("mvncache/.layers/protected/orphan/builds/\(build)-\(attempt)/upper")
            }
            let etcdCredentials = try await farm.infra.etcdUsers.ensure(.agent(id))
            func startAgent(_ run: Int) throws -> ManagedProcess {
                try ManagedProcess(
                    name: "kiln agent \(id) (run \(run))", executable: kiln.path,
                    arguments: ["agent", "--id", id, "--ttl", "3", "--capacity", "1", "--etcd", farm.infra.etcd.endpoint, "--etcd-credentials", etcdCredentials.path,
                                "--data-dir", dataDir.path, "--docker-socket", farm.infra.podman.socketPath,
                                "--registry", farm.infra.registry.address, "--allow-fetch-from", farm.infra.gitServerForFetches,
                                "--timeouts", "60,600,300,300", "--log-level", "info"],
                    logFile: farm.dataDir.appendingPathComponent("agent-\(run).log"))
            }
            // Each compile container beats into the cache under a name of its own while it runs
            // (not the host name: on the host network every container has the host's).
            try await farm.addProject("orphan", buildCommand: "B=beat-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \\n'); echo awake-$((40+2)); while true; do date +%s%N > /root/.m2/$B; sleep 0.2; done")

            let first = try startAgent(1)
            defer { first.killNow() }
            try await farm.waitForAgents(1)
            let b = try await farm.startBuild("orphan", BuildRequest(ref: "main", mvncache: true))
            try await farm.waitForLog(b.id, containing: "awake-42")
            let orphan = try farm.podman(["ps", "-q", "--no-trunc", "--filter", "label=kiln.build=\(b.id)"]).trimmingCharacters(in: .whitespacesAndNewlines)
            try #require(!orphan.isEmpty, "the compile container is not running")
            // Should this test fail, the orphan must not outlive it in the shared podman storage.
            defer { _ = try? farm.podman(["rm", "-f", "-t", "0", orphan]) }
            let orphanBeat = try await waitForBeat(in: layer(1, b.id), excluding: [], agent: first, farm: farm, build: b.id)

            first.killNow()
            // The container outlives its agent and goes on writing the cache.
            #expect(try farm.podman(["ps", "-q", "--no-trunc", "--filter", "id=\(orphan)"]).contains(orphan))
            #expect(try await isBeating(orphanBeat), "the orphan stopped by itself")
            // The scheduler gives the build another attempt once the dead agent's lease expires.
            try await farm.waitForBuild(b.id, timeout: .seconds(60)) { $0.status == .queued }

            let second = try startAgent(2)
            defer { second.stop() }
            // The new attempt's container beats: by then the orphan must be gone, and its beat still.
            let newBeat = try await waitForBeat(in: layer(2, b.id), excluding: [orphanBeat.lastPathComponent], agent: second, farm: farm, build: b.id)
            #expect(try farm.podman(["ps", "-a", "-q", "--no-trunc", "--filter", "id=\(orphan)"]).trimmingCharacters(in: .whitespacesAndNewlines).isEmpty,
                    "the orphan container still exists while a new build uses the cache")
            // The dead attempt's layer is gone with what it wrote; nothing of it reached the caches.
            #expect(!FileManager.default.fileExists(atPath: layer(1, b.id).path), "the dead attempt's cache layer is still there")
            #expect(((try? FileManager.default.contentsOfDirectory(atPath: cache.path)) ?? []).allSatisfy { !$0.hasPrefix("beat-") },
                    "the dead attempt's writes reached the caches")
            #expect(try await isBeating(newBeat))
            #expect(second.logTail(lines: 200).contains("removed a container an earlier run of this agent left"), "\(second.logTail())")
            let running = try await farm.build(b.id)
            #expect(running.attempt == 2 && running.agent == id)

            #expect(try await farm.request(.POST, "/api/v1/builds/\(b.id)/cancel").status == 200)
            #expect(try await farm.finished(b.id, timeout: .seconds(60)).status == .cancelled)
        }
    }

    /// Waits for a beat file in `folder` other than `excluding`, and returns it; on failure
    /// says what the agent and the build logged.
    func waitForBeat(in folder: URL, excluding: Set<String>, agent: ManagedProcess, farm: Farm, build: String) async throws -> URL {
        do {
            return try await KilnTestSupport.withTimeout(.seconds(90), waitingFor: "a compile container's beat in \(folder.path)") {
                while true {
                    let names = (try? FileManager.default.contentsOfDirectory(atPath: folder.path)) ?? []
                    if let name = names.first(where: { $0.hasPrefix("beat-") && !excluding.contains($0) }) {
                        return folder.appendingPathComponent(name)
                    }
                    try await Task.sleep(for: .milliseconds(100))
                }
            }
        } catch {
            throw FarmError("\(error)\nthe agent's log ends with:\n\(agent.logTail(lines: 40))\nthe build's log:\n\((try? await farm.log(build)) ?? "")")
        }
    }

    /// Whether `file` changes within 2 s (its writer beats every 0.2 s).
    func isBeating(_ file: URL) async throws -> Bool {
        let before = try String(contentsOf: file, encoding: .utf8)
        for _ in 0..<20 {
            try await Task.sleep(for: .milliseconds(100))
            if let now = try? String(contentsOf: file, encoding: .utf8), now != before, !now.isEmpty { return true }
        }
        return false
    }
}
