import BuildAgent
import Etcd
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
import Logging
import Testing

/// Issue 14, point 7, on the agent's side: an agent that cannot write a build's end (etcd over
/// its quota) releases the build's task so that the slot frees, and records the end once etcd
/// takes writes again, unless the leader requeued the build meanwhile. Real etcd with a small
/// quota, filled until NOSPACE; a simulated agent (the writes are the real agent's).
@Suite("An end the agent cannot write, against a full etcd")
struct UnrecordedEndTests {
    let keys = Keys()
    let project = Project(name: "sim", repository: "http://127.0.0.1:1/sim.git", buildImage: "a:1", buildCommand: "make")

    func withAgent(_ body: @escaping @Sendable (EtcdServer, EtcdClient) async throws -> Void) async throws {
        try await withSmallEtcd { server, etcd in
            let dir = try TempDir("unrecorded-end")
            var config = AgentConfiguration(id: "sim-1", capacity: 2, ttlSeconds: 6, dataDir: dir.path("agent"),
                                            etcdEndpoint: server.endpoint, simulate: SimulatedDuration(seconds: 6))
            config.etcdRetryLimit = .seconds(2)
            config.minFree = 0
            try await withAgentService(config, etcd: etcd) { try await body(server, etcd) }
        }
    }

    /// The record and task key of a build assigned to sim-1, as the dispatcher writes them.
    func assign(_ etcd: EtcdClient) async throws -> (build: String, taskKey: String) {
        var build = Build(id: BuildID.generate(), project: project.name, ref: "main")
        build.status = .assigned
        build.agent = "sim-1"
        build.attempt = 1
        let task = BuildTask(build: build.id, project: project, ref: "main", commit: nil, tag: nil, mvncache: true, attempt: 1)
        let taskKey = keys.task(agent: "sim-1", build: build.id)
        try await etcd.put(keys.build(build.id), try KilnJSON.encode(build))
        try await etcd.put(taskKey, try KilnJSON.encode(task))
        return (build.id, taskKey)
    }

    func status(_ kvs: [KeyValue]) -> BuildStatus? { kvs.first.flatMap { try? KilnJSON.decode(Build.self, from: $0.value) }?.status }

    /// Fills etcd while the build of `id` runs (it lasts 6 s: a fill takes well under that).
    func fillWhileRunning(_ server: EtcdServer, _ etcd: EtcdClient, _ id: String) async throws {
        try await waitUntil(etcd, prefix: keys.build(id)) { status($0) == .running }
        try await server.fillUntilNoSpace(etcd)
        try #require(status(try await etcd.range(prefix: keys.build(id)).kvs) == .running, "the build ended before etcd was full: the machine is too slow for this test's 6 s")
    }

    @Test func theAgentReleasesTheSlotUnderNOSPACEAndRecordsTheEndOnceEtcdTakesWritesAgain() async throws {
        try await withAgent { server, etcd in
            let (id, taskKey) = try await assign(etcd)
            try await fillWhileRunning(server, etcd, id)
            // The build ends (6 s), its end is refused for the retry limit (2 s), then the task
            // key goes: a delete, which etcd over its quota still takes.
            try await waitUntil(etcd, prefix: taskKey, timeout: .seconds(30)) { $0.isEmpty }
            #expect(status(try await etcd.range(prefix: keys.build(id)).kvs) == .running, "no end written: etcd is full")
            #expect(try await server.alarms() == ["NOSPACE"])
            #expect(try await etcd.get(keys.agent("sim-1")) != nil, "the agent stays registered (its lease is kept alive)")

            try await server.recoverSpace(etcd)
            try await waitUntil(etcd, prefix: keys.build(id), timeout: .seconds(30)) { status($0) == .succeeded }
            let chunks = try await etcd.range(prefix: keys.logs(of: id)).kvs.compactMap { try? KilnJSON.decode(LogChunk.self, from: $0.value) }
            #expect(chunks.last?.end == true, "the log's end went with the record")
            #expect(try await etcd.get(taskKey) == nil)
            // The agent takes and finishes new work as before.
            let (next, _) = try await assign(etcd)
            try await waitUntil(etcd, prefix: keys.build(next), timeout: .seconds(20)) { status($0) == .succeeded }
        }
    }

    @Test func aBuildTheLeaderRequeuedMeanwhileGetsNoEndFromTheAgent() async throws {
        try await withAgent { server, etcd in
            let (id, taskKey) = try await assign(etcd)
            try await fillWhileRunning(server, etcd, id)
            try await waitUntil(etcd, prefix: taskKey, timeout: .seconds(30)) { $0.isEmpty }
            let running = try #require(try await etcd.get(keys.build(id)))
            try await server.recoverSpace(etcd)
            // The leader requeues the build, guarded by the record's revision as it does. The
            // agent tries its end every 2 s at most; it seldom gets there in the moment between
            // the recovery and this write, and then the requeue must be the one refused.
            var record = try KilnJSON.decode(Build.self, from: running.value)
            _ = record.agentLost("sim-1", maxAttempts: 3, at: Date(), reason: "released")
            let r = try await etcd.txn(Txn(compare: [.modRevision(running.key, .equal, running.modRevision)],
                                           success: [.put(running.key, try KilnJSON.encode(record))]))
            guard r.succeeded else {
                #expect(status(try await etcd.range(prefix: keys.build(id)).kvs) == .succeeded, "the agent's end came first")
                return
            }
            // The agent's next rounds are refused by the record's revision: nothing changes.
            try await Task.sleep(for: .seconds(5))
            let kv = try #require(try await etcd.get(keys.build(id)))
            #expect(kv.modRevision == r.revision && status([kv]) == .queued)
            let chunks = try await etcd.range(prefix: keys.logs(of: id)).kvs.compactMap { try? KilnJSON.decode(LogChunk.self, from: $0.value) }
            #expect(!chunks.contains { $0.end == true }, "no end of the agent's")
        }
    }
}
