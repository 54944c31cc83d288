import Etcd
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
import Logging
@testable import Scheduler
import Testing

/// The leader against a real etcd (with a small quota, to fill it): agents that refuse new
/// builds for lack of disk, and builds their agent released without recording an end
/// (issue 14, points 5 and 7).
@Suite("Refusing agents and ownerless builds, against a real etcd")
struct AgentDiskDispatchTests {
    let keys = Keys()
    let project = Project(name: "demo", repository: "http://127.0.0.1:1/demo.git", buildImage: "a:1", buildCommand: "make")

    /// A leading dispatcher that sweeps every 200 ms and reclaims after `grace`.
    func withLeader(grace: Duration = .seconds(1), _ body: @escaping @Sendable (EtcdServer, EtcdClient, SchedulerStore) async throws -> Void) async throws {
        try await withSmallEtcd { server, etcd in
            let store = SchedulerStore(etcd: etcd)
            let logger = { var l = Logger(label: "test"); l.logLevel = .critical; return l }()
            let dispatcher = Dispatcher(store: store, configuration: .init(leaderTTLSeconds: 5, sweepInterval: .milliseconds(200), ownerlessGrace: grace),
                                        logger: logger)
            try await store.saveProject(project)
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await dispatcher.run() }
                do {
                    try await body(server, etcd, store)
                } catch {
                    group.cancelAll()
                    throw error
                }
                group.cancelAll()
            }
        }
    }

    func register(_ etcd: EtcdClient, _ id: String, refusing: String?) async throws -> Int64 {
        // Nothing keeps it alive: long enough for a test slowed by the whole suite's load.
        let lease = try await etcd.grantLease(ttl: 300)
        try await putRegistration(etcd, id, refusing: refusing, lease: lease)
        return lease
    }

    func putRegistration(_ etcd: EtcdClient, _ id: String, refusing: String?, lease: Int64) async throws {
        let disk = AgentDisk(free: 1 << 30, budget: 8 << 30, used: 1 << 30, minFree: 2 << 30, refusing: refusing)
        try await etcd.put(keys.agent(id), try KilnJSON.encode(AgentInfo(id: id, capacity: 2, labels: [], version: "t", disk: disk)), lease: lease)
    }

    func record(_ kvs: [KeyValue]) -> Build? { kvs.first.flatMap { try? KilnJSON.decode(Build.self, from: $0.value) } }

    @Test func aBuildWaitsWhileTheOnlyAgentRefusesAndGoesThereOnceItTakesWorkAgain() async throws {
        try await withLeader { _, etcd, store in
            let reason = "short of disk space: 1 GiB free on the filesystem of /data, below the 2 GiB it keeps free (--min-free)"
            let lease = try await register(etcd, "a1", refusing: reason)
            let build = try await store.enqueue(project: "demo", request: BuildRequest())
            try await waitUntil(etcd, prefix: keys.build(build.id)) { record($0)?.waiting != nil }
            let waiting = try #require(record(try await etcd.range(prefix: keys.build(build.id)).kvs))
            #expect(waiting.status == .queued && waiting.waiting == "every live agent refuses new builds (a1: \(reason))")
            #expect(try await etcd.range(prefix: keys.tasks).kvs.isEmpty)
            // The agent has space again: it publishes its registration without the refusal.
            try await putRegistration(etcd, "a1", refusing: nil, lease: lease)
            try await waitUntil(etcd, prefix: keys.task(agent: "a1", build: build.id)) { !$0.isEmpty }
            #expect(record(try await etcd.range(prefix: keys.build(build.id)).kvs)?.status == .assigned)
        }
    }

    /// A build as the dispatcher assigned it to `agent` and the agent started it: record
    /// running, grant, and (if `task`) the task key.
    func running(_ etcd: EtcdClient, _ store: SchedulerStore, agent: String, task: Bool) async throws -> Build {
        var build = Build(id: BuildID.generate(), project: "demo", ref: "main")
        build.assign(to: agent)
        build.start(agent: agent, attempt: build.attempt, at: Date())
        try await etcd.put(keys.build(build.id), try KilnJSON.encode(build))
        try await etcd.put(keys.grant(agent: agent, build: build.id), BuildGrant(repository: "demo", ref: nil).value)
        if task {
            let t = BuildTask(build: build.id, project: project, ref: "main", commit: nil, tag: nil, mvncache: true, attempt: build.attempt)
            try await etcd.put(keys.task(agent: agent, build: build.id), try KilnJSON.encode(t))
        }
        return build
    }

    @Test func aBuildItsAgentReleasedIsRequeuedAfterTheGraceWithTheReason() async throws {
        try await withLeader { _, etcd, store in
            // Another agent is live with a task of its own: that one is left alone.
            _ = try await register(etcd, "a2", refusing: nil)
            let owned = try await running(etcd, store, agent: "a2", task: true)
            let released = try await running(etcd, store, agent: "a1", task: false)
            let before = Date()
            try await waitUntil(etcd, prefix: keys.build(released.id)) { record($0)?.status != .running }
            let requeued = try #require(record(try await etcd.range(prefix: keys.build(released.id)).kvs))
            #expect(Date().timeIntervalSince(before) >= 0.9, "not before the grace")
            #expect(requeued.status == .queued || requeued.status == .assigned, "back in the queue (and perhaps on to a2 already)")
            #expect(requeued.error == "agent 'a1' gave attempt 1 up without recording its end (it could not write to etcd) and released the build")
            let end = try #require(try await etcd.get(keys.logEnd(build: released.id, attempt: 1)))
            #expect(try KilnJSON.decode(LogChunk.self, from: end.value).lines.first?.contains("gave attempt 1 up") == true)
            #expect(try await etcd.get(keys.grant(agent: "a1", build: released.id)) == nil)
            #expect(record(try await etcd.range(prefix: keys.build(owned.id)).kvs)?.status == .running)
            #expect(try await etcd.get(keys.grant(agent: "a2", build: owned.id)) != nil)
        }
    }

    @Test func theAgentsOwnEndWithinTheGraceWinsAndTheGrantGoes() async throws {
        try await withLeader(grace: .seconds(60)) { _, etcd, store in
            var build = try await running(etcd, store, agent: "a1", task: false)
            // Seen ownerless by a sweep or two first.
            try await Task.sleep(for: .milliseconds(500))
            #expect(try await etcd.get(keys.grant(agent: "a1", build: build.id)) != nil)
            build.end(.succeeded, error: nil, at: Date())
            try await etcd.put(keys.build(build.id), try KilnJSON.encode(build))
            try await waitUntil(etcd, prefix: keys.grant(agent: "a1", build: build.id)) { $0.isEmpty }
            #expect(record(try await etcd.range(prefix: keys.build(build.id)).kvs)?.status == .succeeded)
            #expect(try await etcd.get(keys.queued(build.id)) == nil)
        }
    }

    @Test func underNOSPACETheReclaimWaitsForSpaceAndThenHappens() async throws {
        try await withLeader { server, etcd, store in
            // a1 is live (its task is not requeued as a dead agent's) and runs the build.
            _ = try await register(etcd, "a1", refusing: nil)
            let build = try await running(etcd, store, agent: "a1", task: true)
            try await server.fillUntilNoSpace(etcd)
            // The agent releases the build as it does under NOSPACE: a delete, which etcd takes.
            _ = try await etcd.delete(keys.task(agent: "a1", build: build.id))
            // Well past the grace: the leader tried and etcd refused each time.
            try await Task.sleep(for: .seconds(2))
            #expect(record(try await etcd.range(prefix: keys.build(build.id)).kvs)?.status == .running)
            #expect(try await etcd.get(keys.grant(agent: "a1", build: build.id)) != nil)
            try await server.recoverSpace(etcd)
            // Requeued with the reason (and given back to a1 at once, which is live).
            try await waitUntil(etcd, prefix: keys.build(build.id)) { record($0)?.error?.contains("gave attempt 1 up") == true }
            let after = try #require(record(try await etcd.range(prefix: keys.build(build.id)).kvs))
            #expect(after.status == .queued || (after.status == .assigned && after.attempt == 2), "\(after.status) \(after.attempt)")
        }
    }
}
