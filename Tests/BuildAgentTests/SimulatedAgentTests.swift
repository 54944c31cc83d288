import BuildAgent
import Etcd
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
import Logging
import Testing

/// `kiln agent --simulate`: the real agent (registration, lease, task watch, guarded writes)
/// against a real etcd, with a task put by hand as the dispatcher would put it.
@Suite("Simulated agent against a real etcd")
struct SimulatedAgentTests {
    let keys = Keys()
    let project = Project(name: "sim", repository: "http://127.0.0.1:1/sim.git", buildImage: "a:1", buildCommand: "make")

    /// Starts etcd and one simulated agent, runs `body`, stops both.
    func withSimulatedAgent(_ simulate: SimulatedDuration, log: SimulatedSize? = nil, disk: SimulatedSize? = nil,
                            _ body: @escaping @Sendable (EtcdClient, URL) async throws -> Void) async throws {
        try await withEtcd(timeout: nil) { server, etcd in
            let dir = try TempDir("simulated-agent")
            var config = AgentConfiguration(id: "sim-1", capacity: 2, ttlSeconds: 30, dataDir: dir.path("agent"),
                                            etcdEndpoint: server.endpoint, dockerSocket: dir.path("no-such.sock").path,
                                            simulate: simulate)
            config.simulateLog = log
            config.simulateDisk = disk
            try await withAgentService(config, etcd: etcd) { try await body(etcd, dir.path("agent")) }
        }
    }

    func withSimulatedAgent(_ simulate: SimulatedDuration, _ body: @escaping @Sendable (EtcdClient) async throws -> Void) async throws {
        try await withSimulatedAgent(simulate) { etcd, _ in try await body(etcd) }
    }

    @Test func sizesAreReadAsTheOptionsWriteThemAndDrawnWithinTheirBounds() throws {
        let range = try #require(SimulatedSize("10K-4M"))
        #expect(range.lower == 10 << 10 && range.upper == 4 << 20)
        #expect(SimulatedSize("64K")?.lower == 64 << 10)
        for bad in ["", "0", "4M-10K", "ten", "1K-2K-3K", "-4M"] { #expect(SimulatedSize(bad) == nil, "\(bad)") }
        let draws = (0..<2000).map { _ in range.draw() }
        #expect(draws.allSatisfy { (10 << 10)...(4 << 20) ~= $0 })
        // Log-uniform: half the draws fall under the geometric mean (about 202 KiB), far below the middle.
        let under = draws.filter { $0 < 202 << 10 }.count
        #expect((800...1200).contains(under), "\(under) of 2000 under the geometric mean")
    }

    @Test func aSimulatedLogAndDiskUseAreWrittenForReal() async throws {
        try await withSimulatedAgent(SimulatedDuration(seconds: 0.2), log: SimulatedSize("64K"), disk: SimulatedSize("1M")) { etcd, dataDir in
            let (id, _) = try await assign(etcd)
            // Any end, then which: a failure says why instead of a timeout (60 s: the whole suite loads the machine).
            try await waitUntil(etcd, prefix: keys.build(id), timeout: .seconds(60)) { kvs in
                kvs.first.flatMap { try? KilnJSON.decode(Build.self, from: $0.value) }?.status.isFinal == true
            }
            let ended = try await record(etcd, id)
            #expect(ended.status == .succeeded, "\(ended.status): \(ended.error ?? "")")
            // The log: at least the drawn 64 KiB of output in etcd's chunks, in several writes.
            let chunks = try await etcd.range(prefix: keys.logs).kvs.compactMap { try? KilnJSON.decode(LogChunk.self, from: $0.value) }
            let bytes = chunks.flatMap(\.lines).reduce(0) { $0 + $1.utf8.count + 1 }
            #expect(bytes >= 64 << 10 && bytes < 80 << 10, "\(bytes) bytes of log")
            #expect(chunks.count >= 3)
            // The disk: half the drawn megabyte in the project's mirror, half in its Maven cache.
            let mirror = dataDir.appendingPathComponent("mirrors/sim.git/simulated-\(id)")
            let cache = dataDir.appendingPathComponent("mvncache/shared/sim/simulated-\(id)")
            #expect((try FileManager.default.attributesOfItem(atPath: mirror.path)[.size] as? Int) == 512 << 10)
            #expect((try FileManager.default.attributesOfItem(atPath: cache.path)[.size] as? Int) == 512 << 10)
        }
    }

    /// Writes a build record as assigned and its task key, as the dispatcher's transaction does.
    func assign(_ etcd: EtcdClient, cancel: Bool = false) async throws -> (build: String, taskKey: String) {
        var build = Build(id: BuildID.generate(), project: project.name, ref: "main")
        build.status = .assigned
        build.agent = "sim-1"
        build.attempt = 1
        let task = BuildTask(build: build.id, project: project, ref: "main", commit: nil, tag: nil, mvncache: true, attempt: 1, cancel: cancel)
        let taskKey = keys.task(agent: "sim-1", build: build.id)
        try await etcd.put(keys.build(build.id), try KilnJSON.encode(build))
        try await etcd.put(taskKey, try KilnJSON.encode(task))
        return (build.id, taskKey)
    }

    func record(_ etcd: EtcdClient, _ id: String) async throws -> Build {
        try KilnJSON.decode(Build.self, from: try #require(try await etcd.get(keys.build(id))).value)
    }

    @Test func aTaskPutByHandRunsToSucceededAndItsTaskIsDeleted() async throws {
        try await withSimulatedAgent(SimulatedDuration(seconds: 0.2)) { etcd in
            // No container API exists at the socket: the simulated agent never asks for one.
            let before = Date()
            let (id, taskKey) = try await assign(etcd)
            try await waitUntil(etcd, prefix: keys.build(id)) { kvs in
                kvs.first.flatMap { try? KilnJSON.decode(Build.self, from: $0.value) }?.status == .succeeded
            }
            let done = try await record(etcd, id)
            #expect(done.agent == "sim-1")
            #expect(done.attempt == 1)
            let started = try #require(done.startedAt)
            let finished = try #require(done.finishedAt)
            #expect(started >= before.addingTimeInterval(-0.001))
            #expect(finished.timeIntervalSince(started) >= 0.19)
            #expect(try await etcd.get(taskKey) == nil)
            // The log ends with an end chunk written in the same transaction.
            let chunks = try await etcd.range(prefix: keys.logs(of: id)).kvs.compactMap { try? KilnJSON.decode(LogChunk.self, from: $0.value) }
            #expect(chunks.last?.end == true)
            #expect(chunks.flatMap(\.lines).contains { $0.contains("nothing is built") })
        }
    }

    @Test func aCancelRequestedWhileItRunsFinishesItCancelled() async throws {
        try await withSimulatedAgent(SimulatedDuration(seconds: 60)) { etcd in
            let (id, taskKey) = try await assign(etcd)
            try await waitUntil(etcd, prefix: keys.build(id)) { kvs in
                kvs.first.flatMap { try? KilnJSON.decode(Build.self, from: $0.value) }?.status == .running
            }
            // What the scheduler's cancel does: the same task key, with cancel set.
            var task = try KilnJSON.decode(BuildTask.self, from: try #require(try await etcd.get(taskKey)).value)
            task.cancel = true
            try await etcd.put(taskKey, try KilnJSON.encode(task))
            try await waitUntil(etcd, prefix: keys.build(id)) { kvs in
                kvs.first.flatMap { try? KilnJSON.decode(Build.self, from: $0.value) }?.status == .cancelled
            }
            #expect(try await etcd.get(taskKey) == nil)
        }
    }

    @Test func aTaskTakenAwayWhileItRunsWritesNothingMore() async throws {
        // 3 s: long enough for the delete to land while it runs on a loaded machine.
        try await withSimulatedAgent(SimulatedDuration(seconds: 3)) { etcd in
            let (id, taskKey) = try await assign(etcd)
            try await waitUntil(etcd, prefix: keys.build(id)) { kvs in
                kvs.first.flatMap { try? KilnJSON.decode(Build.self, from: $0.value) }?.status == .running
            }
            // The task taken away, in a transaction that tells its revision: a write the agent
            // had sent before (a step's start, say) may land before it, none may land after.
            let taken = try await etcd.txn(Txn(success: [.delete(taskKey)]))
            // A second build, put after the first was taken away, runs to its end on the same
            // agent: once it has, the first one's wait is long over.
            let (second, _) = try await assign(etcd)
            try await waitUntil(etcd, prefix: keys.build(second)) { kvs in
                kvs.first.flatMap { try? KilnJSON.decode(Build.self, from: $0.value) }?.status == .succeeded
            }
            let record = try #require(try await etcd.get(keys.build(id)))
            #expect(record.modRevision < taken.revision, "the record was written at revision \(record.modRevision), after the task was deleted at \(taken.revision)")
            #expect(try KilnJSON.decode(Build.self, from: record.value).status == .running)
        }
    }

    @Test func durationsParse() {
        #expect(SimulatedDuration("0") == SimulatedDuration(seconds: 0))
        #expect(SimulatedDuration("2")?.upper == 2)
        #expect(SimulatedDuration("0.5-3")?.lower == 0.5)
        #expect(SimulatedDuration("0.5-3")?.upper == 3)
        #expect(SimulatedDuration("3-1") == nil)
        #expect(SimulatedDuration("-1") == nil)
        #expect(SimulatedDuration("fast") == nil)
        let d = SimulatedDuration("0.5-3")!
        for _ in 0..<100 { #expect((Duration.milliseconds(500)...Duration.seconds(3)).contains(d.draw())) }
    }
}
