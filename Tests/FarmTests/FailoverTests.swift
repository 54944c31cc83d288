import Etcd
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
import Scheduler
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Faults of a farm of real processes: schedulers paused and killed, etcd restarted and
/// compacted. Each test checks that every build ends, succeeded, given to an agent once.
@Suite("Farm faults (real processes)", .serialized)
struct FailoverTests {
    /// Requests `count` builds spread over `projects`, one every `every`.
    func enqueue(_ farm: ProcessFarm, _ count: Int, projects: [String], every: Duration = .milliseconds(40)) async throws -> Set<String> {
        var ids = Set<String>()
        for i in 0..<count {
            ids.insert(try await farm.store.enqueue(project: projects[i % projects.count], request: BuildRequest()).id)
            try await Task.sleep(for: every)
        }
        return ids
    }

    @Test("three schedulers: a paused leader is deposed and its writes refused, a killed one replaced; no build is dispatched twice")
    func leaderFailover() async throws {
        let farm = try await ProcessFarm("failover")
        let log = try await AssignmentLog(etcd: farm.etcd, keys: farm.store.keys)
        for id in ["sched-1", "sched-2", "sched-3"] { try await farm.startScheduler(id, leaderTTL: 2) }
        for i in 1...4 { try await farm.startAgent("agent-\(i)", capacity: 2, ttl: 10) }
        let projects = try await farm.addProjects(6)

        let first = try #require(try await farm.leader(asking: "sched-3"))
        // Every scheduler names the same leader.
        for id in farm.schedulers.keys { #expect(try await farm.leader(asking: id) == first) }

        // A build requested through a follower's API is dispatched by the leader.
        let follower = farm.schedulers.keys.sorted().first { $0 != first }!
        let viaFollower = try await httpRequest(.POST, "\(farm.schedulers[follower]!.api)/api/v1/projects/\(projects[0])/builds", body: "{}")
        #expect(viaFollower.status == 201 || viaFollower.status == 202, "\(viaFollower.body)")
        var ids = Set<String>()
        if let id = viaFollower.json?["id"] as? String { ids.insert(id) }

        // Builds arrive while the leader is paused (SIGSTOP) past its TTL: another takes over;
        // when the old one wakes, its lease is gone and its writes are refused.
        async let arriving = enqueue(farm, 40, projects: projects, every: .milliseconds(100))
        try await Task.sleep(for: .milliseconds(500))
        let paused = farm.schedulers[first]!.process
        kill(paused.pid, SIGSTOP)
        let pausedAt = ContinuousClock.now
        var second: String?
        let asking = farm.schedulers.keys.sorted().first { $0 != first }!
        while ContinuousClock.now - pausedAt < .seconds(15) {
            if let l = try await farm.leader(asking: asking), l != first { second = l; break }
            try await Task.sleep(for: .milliseconds(100))
        }
        let takeover = ContinuousClock.now - pausedAt
        let newLeader = try #require(second, "no scheduler took over from a paused leader\n\(farm.logs())")
        // The TTL is 2 s; a new leader is elected once etcd expires the lease.
        #expect(takeover < .seconds(6), "takeover took \(takeover)")
        try await Task.sleep(for: .seconds(1))
        kill(paused.pid, SIGCONT)
        ids.formUnion(try await arriving)

        // Then the new leader dies outright; the third takes over.
        try await Task.sleep(for: .milliseconds(300))
        farm.schedulers[newLeader]!.process.killNow()
        ids.formUnion(try await enqueue(farm, 20, projects: projects, every: .milliseconds(100)))

        let builds = try await farm.waitForAll(ids, timeout: .seconds(90))
        #expect(builds.count == 61)
        let notSucceeded = builds.values.filter { $0.status != .succeeded }
        #expect(notSucceeded.isEmpty, "\(notSucceeded.map { "\($0.id) \($0.status) \($0.error ?? "")" })\n\(farm.logs())")
        // Given to an agent once each: one task key ever, attempt 1, never two at once.
        #expect(builds.values.allSatisfy { $0.attempt == 1 }, "\(builds.values.filter { $0.attempt != 1 }.map { "\($0.id): \($0.attempt)" })")
        try await Task.sleep(for: .milliseconds(200))
        let assigned = log.assignments
        #expect(ids.allSatisfy { assigned[$0] == 1 }, "\(ids.filter { assigned[$0] != 1 }.map { "\($0): \(assigned[$0] ?? 0)" })")
        #expect(log.overlaps.isEmpty)
        // Exactly one leader now, and not the killed one.
        let now = try await farm.leader(asking: first)
        #expect(now != nil && now != newLeader)
    }

    @Test("etcd killed and restarted under load, then compacted past the watchers of a paused scheduler and agent: no task is missed")
    func etcdRestartAndCompaction() async throws {
        let farm = try await ProcessFarm("etcd-faults")
        let log = try await AssignmentLog(etcd: farm.etcd, keys: farm.store.keys)
        try await farm.startScheduler("sched-1", leaderTTL: 5)
        for i in 1...3 { try await farm.startAgent("agent-\(i)", capacity: 2, ttl: 10) }
        let projects = try await farm.addProjects(5)

        // 1. etcd dies (SIGKILL) and comes back while builds are requested and running.
        var ids = try await enqueue(farm, 20, projects: projects, every: .milliseconds(30))
        farm.etcdServer.kill()
        try await Task.sleep(for: .milliseconds(700))
        try await farm.etcdServer.restart()
        ids.formUnion(try await enqueue(farm, 20, projects: projects, every: .milliseconds(30)))
        _ = try await farm.waitForAll(ids, timeout: .seconds(60))

        // 2. The scheduler and one agent are paused while etcd restarts, builds are queued and
        //    the history they would resume from is compacted away: both must re-read.
        let scheduler = farm.schedulers["sched-1"]!.process, agent = farm.agents["agent-1"]!
        kill(scheduler.pid, SIGSTOP)
        kill(agent.pid, SIGSTOP)
        farm.etcdServer.kill()
        try await farm.etcdServer.restart()
        let more = try await enqueue(farm, 30, projects: projects, every: .milliseconds(5))
        for i in 0..<200 { try await farm.etcd.put("/filler/\(i % 10)", String(i)) }
        let revision = try await farm.etcd.status()
        try await farm.etcd.compact(revision: revision)
        kill(scheduler.pid, SIGCONT)
        kill(agent.pid, SIGCONT)
        ids.formUnion(more)

        let builds = try await farm.waitForAll(ids, timeout: .seconds(90))
        #expect(builds.count == 70)
        let notSucceeded = builds.values.filter { $0.status != .succeeded }
        #expect(notSucceeded.isEmpty, "\(notSucceeded.map { "\($0.id) \($0.status) \($0.error ?? "")" })\n\(farm.logs())")
        #expect(builds.values.allSatisfy { $0.attempt == 1 }, "\(builds.values.filter { $0.attempt != 1 }.map { "\($0.id): \($0.attempt)" })")
        // The paused agent took work again after its watch was compacted away.
        let afterCompaction = builds.values.filter { more.contains($0.id) }
        #expect(afterCompaction.contains { $0.agent == "agent-1" }, "agent-1 ran none of the builds queued while it was paused\n\(farm.logs())")
        #expect(log.overlaps.isEmpty)
        #expect(try await farm.etcd.range(prefix: farm.store.keys.tasks).kvs.isEmpty)
        #expect(try await farm.etcd.range(prefix: farm.store.keys.queue).kvs.isEmpty)
    }
}
