import Etcd
import Foundation
import KilnCore
import KilnTestSupport
import Logging
@testable import Scheduler
import Testing

/// Delay scheduling (`DispatchState` rule 4a, `--warm-wait`) through the leading dispatcher
/// against a real etcd: a build whose home is at its bound waits for it rather than go cold,
/// lets later builds of other projects pass, and goes cold once the wait is over.
@Suite("Waiting for a warm agent, against a real etcd")
struct WarmWaitDispatchTests {
    let keys = Keys()
    let demo = Project(name: "demo", repository: "http://127.0.0.1:1/demo.git", buildImage: "a:1", buildCommand: "make")
    /// Two agents of capacity 2 on the dispatcher's ring (64 virtual nodes, weight = capacity).
    let ring = HashRing(members: [.init(id: "a1", weight: 2), .init(id: "a2", weight: 2)], virtualNodes: 64)
    var home: String { ring.home(of: "demo")! }
    var cold: String { home == "a1" ? "a2" : "a1" }

    func withLeader(warmWait: Double, _ body: @escaping @Sendable (EtcdClient, SchedulerStore) async throws -> Void) async throws {
        let (keys, demo, home) = (keys, demo, home)
        try await withEtcd(timeout: .seconds(60)) { _, etcd in
            let store = SchedulerStore(etcd: etcd)
            let logger = { var l = Logger(label: "test"); l.logLevel = .critical; return l }()
            let dispatcher = Dispatcher(store: store, configuration: .init(warmWait: warmWait, leaderTTLSeconds: 5), logger: logger)
            try await store.saveProject(demo)
            let lease = try await etcd.grantLease(ttl: 300)
            for id in ["a1", "a2"] {
                let disk = AgentDisk(free: 1 << 40, budget: 1 << 30, used: 0, minFree: 0,
                                     warm: id == home ? [WarmProject(name: "demo", bytes: 1)] : [])
                try await etcd.put(keys.agent(id), try KilnJSON.encode(AgentInfo(id: id, capacity: 2, labels: [], version: "t", disk: disk)), lease: lease)
            }
            // The home runs two builds of demo: its bound, min(2, ceil(1.25 × 3 × 2 / 4)) = 2.
            for b in ["r0", "r1"] {
                let t = BuildTask(build: b, project: demo, ref: "main", commit: nil, tag: nil, mvncache: true, attempt: 1)
                try await etcd.put(keys.task(agent: home, build: b), try KilnJSON.encode(t))
            }
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await dispatcher.run() }
                do {
                    try await body(etcd, store)
                } catch {
                    group.cancelAll()
                    throw error
                }
                group.cancelAll()
            }
        }
    }

    func taskAgent(_ kvs: [KeyValue], _ build: String) -> String? {
        kvs.compactMap { keys.taskOwner($0.key) }.first { $0.build == build }?.agent
    }

    @Test func aBuildWaitsForItsHomeWhileALaterBuildOfAnotherProjectIsPlaced() async throws {
        let (keys, home, cold) = (keys, home, cold)
        // A project whose home is the other agent, which has room.
        let otherName = (0..<100).map { "other\($0)" }.first { ring.home(of: $0) == cold }!
        try await withLeader(warmWait: 60) { etcd, store in
            try await store.saveProject(Project(name: otherName, repository: "http://127.0.0.1:1/o.git", buildImage: "a:1", buildCommand: "make"))
            let waiting = try await store.enqueue(project: "demo", request: BuildRequest())
            let later = try await store.enqueue(project: otherName, request: BuildRequest())
            let placed = try await waitUntil(etcd, prefix: keys.tasks) { self.taskAgent($0, later.id) != nil }
            #expect(taskAgent(placed, later.id) == cold)
            // The same passes left demo's older build queued, though the cold agent had room.
            #expect(taskAgent(placed, waiting.id) == nil)
            #expect(try await etcd.range(prefix: keys.queued(waiting.id)).kvs.count == 1)
            // A home slot frees: the waiting build goes home, long before its wait is over.
            try await etcd.delete(keys.task(agent: home, build: "r0"))
            let after = try await waitUntil(etcd, prefix: keys.tasks) { self.taskAgent($0, waiting.id) != nil }
            #expect(taskAgent(after, waiting.id) == home)
        }
    }

    @Test func pastTheWaitTheBuildGoesCold() async throws {
        let (keys, cold) = (keys, cold)
        try await withLeader(warmWait: 0.5) { etcd, store in
            let clock = ContinuousClock(), start = clock.now
            let build = try await store.enqueue(project: "demo", request: BuildRequest())
            let placed = try await waitUntil(etcd, prefix: keys.tasks) { self.taskAgent($0, build.id) != nil }
            let waited = clock.now - start
            #expect(taskAgent(placed, build.id) == cold)
            #expect(waited >= .milliseconds(500), "went cold after \(waited), before its wait of 0.5 s")
        }
    }
}
