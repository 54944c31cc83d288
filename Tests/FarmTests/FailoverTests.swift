import Etcd
import FarmHarness
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
        let history = FarmHistory(keys: farm.keys)
        let following = try await farm.followTasks(into: history)
        defer { following.cancel() }
        for id in ["sched-1", "sched-2", "sched-3"] { try await farm.startScheduler(id, leaderTTL: 2) }
        for i in 1...4 { try await farm.startAgent("agent-\(i)", capacity: 2, ttl: 10) }
        let projects = try await farm.addProjects(6)

        let first = try #require(try await farm.leader(asking: "sched-3"))
        // Every scheduler names the same leader.
        for id in farm.schedulers.keys { #expect(try await farm.leader(asking: id) == first) }

        // A build requested through a follower's API is dispatched by the leader.
        let follower = farm.schedulers.keys.sorted().first { $0 != first }!
        let viaFollower = try await httpRequest(.POST, "\(farm.schedulers[follower]!.api)/api/v1/projects/\(projects[0])/builds", body: "{}", headers: farm.adminHeaders)
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
        let check = await history.check()
        let assigned = check.assignments
        #expect(ids.allSatisfy { assigned[$0] == 1 }, "\(ids.filter { assigned[$0] != 1 }.map { "\($0): \(assigned[$0] ?? 0)" })")
        #expect(check.doubleDispatch.isEmpty, "\(check.runTwice)")
        // Exactly one leader now, and not the killed one.
        let now = try await farm.leader(asking: first)
        #expect(now != nil && now != newLeader)
    }

    @Test("etcd killed and restarted under load, then compacted past the watchers of a paused scheduler and agent: no task is missed")
    func etcdRestartAndCompaction() async throws {
        let farm = try await ProcessFarm("etcd-faults")
        let history = FarmHistory(keys: farm.keys)
        let following = try await farm.followTasks(into: history)
        defer { following.cancel() }
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
        let check = await history.check()
        #expect(check.doubleDispatch.isEmpty, "\(check.runTwice)")
        #expect(try await farm.etcd.range(prefix: farm.store.keys.tasks).kvs.isEmpty)
        #expect(try await farm.etcd.range(prefix: farm.store.keys.queue).kvs.isEmpty)
    }

    @Test("an agent paused past its TTL loses its build to another; when it wakes, its writes are refused and the build ends once")
    func aReturningAgentsWritesAreRefused() async throws {
        let farm = try await ProcessFarm("returning-agent")
        try await farm.startScheduler("sched-1", leaderTTL: 5)
        try await farm.startAgent("agent-1", capacity: 1, ttl: 2, simulate: "3")
        let projects = try await farm.addProjects(1)
        let build = try await farm.store.enqueue(project: projects[0], request: BuildRequest())
        let key = farm.store.keys.build(build.id)
        try await waitUntil(farm.etcd, prefix: key) { kvs in
            kvs.compactMap { try? KilnJSON.decode(Build.self, from: $0.value) }.contains { $0.status == .running && $0.agent == "agent-1" }
        }
        // agent-1 stops answering mid-build; its lease expires and the build goes back to
        // the queue; agent-2 takes it.
        let paused = farm.agents["agent-1"]!
        kill(paused.pid, SIGSTOP)
        try await farm.startAgent("agent-2", capacity: 1, ttl: 10, simulate: "3")
        try await waitUntil(farm.etcd, prefix: key, timeout: .seconds(20)) { kvs in
            kvs.compactMap { try? KilnJSON.decode(Build.self, from: $0.value) }.contains { $0.status == .running && $0.agent == "agent-2" }
        }
        // agent-1 wakes while agent-2 builds: its simulated build ends and tries to write.
        kill(paused.pid, SIGCONT)
        let ended = try await farm.waitForAll([build.id], timeout: .seconds(30))[build.id]!
        #expect(ended.status == .succeeded && ended.agent == "agent-2" && ended.attempt == 2, "\(ended)")
        // Let agent-1 finish its stale attempt, then check that nothing it wrote landed.
        try await Task.sleep(for: .seconds(4))
        let after = try await farm.store.build(build.id)
        #expect(after.status == .succeeded && after.agent == "agent-2" && after.finishedAt == ended.finishedAt)
        #expect(paused.logTail(lines: 200).contains("taken away"), "agent-1 did not report its build taken away:\n\(paused.logTail(lines: 30))")
        // agent-1 registered again and is back in the farm.
        let agents = try await farm.store.agents().map(\.id)
        #expect(agents.contains("agent-1") && agents.contains("agent-2"))
    }

    @Test("a build's log is kept when its agent is killed mid-build and when the scheduler restarts, and its next attempt adds to it")
    func logsSurviveAKilledAgentAndARestartedScheduler() async throws {
        let farm = try await ProcessFarm("logs")
        try await farm.startScheduler("sched-1", leaderTTL: 5)
        try await farm.startAgent("agent-1", capacity: 1, ttl: 2, simulate: "30")
        let projects = try await farm.addProjects(1)
        let build = try await farm.store.enqueue(project: projects[0], request: BuildRequest())
        // agent-1 starts it and writes its first lines; then it is killed.
        try await waitUntil(farm.etcd, prefix: farm.store.keys.logs(of: build.id)) { kvs in
            kvs.contains { String(decoding: $0.value, as: UTF8.self).contains("agent-1") }
        }
        let before = try await farm.store.log(of: build.id)
        #expect(before.contains { $0.contains("simulated build \(build.id)") && $0.contains("on agent agent-1") }, "\(before)")
        farm.agents["agent-1"]!.killNow()
        // Its lease runs out; the build goes back to the queue and agent-2 runs attempt 2.
        try await farm.startAgent("agent-2", capacity: 1, ttl: 10, simulate: "0.5")
        let ended = try await farm.waitForAll([build.id], timeout: .seconds(30))[build.id]!
        #expect(ended.status == .succeeded && ended.attempt == 2 && ended.agent == "agent-2")

        // The scheduler is killed and another starts: the whole log is still served, in order:
        // attempt 1 up to agent-1's last line, the requeue, then attempt 2 to its end.
        farm.schedulers["sched-1"]!.process.killNow()
        try await farm.startScheduler("sched-2", leaderTTL: 5)
        let reply = try await httpRequest(.GET, "\(farm.schedulers["sched-2"]!.api)/api/v1/builds/\(build.id)/log", headers: farm.adminHeaders)
        #expect(reply.status == 200)
        let lines = reply.body.split(separator: "\n").map(String.init)
        for line in before { #expect(lines.contains(line), "lost after the kill and the restart: \(line)") }
        let firstOfAgent1 = lines.firstIndex { $0.contains("on agent agent-1") }
        let requeue = lines.firstIndex { $0.contains("stopped renewing its lease during attempt 1") }
        let firstOfAgent2 = lines.firstIndex { $0.contains("on agent agent-2") }
        let end = lines.lastIndex { $0.contains("simulated build succeeded") }
        #expect(firstOfAgent1 != nil && requeue != nil && firstOfAgent2 != nil && end != nil, "\(lines)")
        if let a = firstOfAgent1, let r = requeue, let b = firstOfAgent2, let e = end { #expect(a < r && r < b && b < e, "\(lines)") }
    }

    @Test("kiln build --follow prints the live log and how long the build has run, and exits with its outcome")
    func buildFollowShowsProgressAndExitsWithTheOutcome() async throws {
        let farm = try await ProcessFarm("follow")
        try await farm.startScheduler("sched-1", leaderTTL: 5)
        try await farm.startAgent("agent-1", capacity: 1, ttl: 10, simulate: "2.5")
        let projects = try await farm.addProjects(1)
        let api = farm.schedulers["sched-1"]!.api
        // The CLI takes its token from KILN_TOKEN (as a script would).
        let environment = ProcessInfo.processInfo.environment.merging(["KILN_TOKEN": farm.adminToken]) { $1 }
        let (status, output) = try await Spawn.runDetached(farm.kiln, ["build", projects[0], "--follow", "--api", api], environment: environment)
        let text = String(decoding: output, as: UTF8.self)
        #expect(status == 0, "\(text)")
        #expect(text.contains("queued build "))
        #expect(text.contains("kiln: simulated build") && text.contains("on agent agent-1"), "the live log: \(text)")
        // Not a terminal here: the progress line is printed as a line of its own.
        #expect(text.contains("… running") || text.contains("… assigned"), "no progress line: \(text)")
        #expect(text.contains("succeeded"), "\(text)")
        // A build that is cancelled while followed ends the command with a failure status.
        async let followed = Spawn.runDetached(farm.kiln, ["build", projects[0], "--follow", "--api", api], environment: environment)
        try await waitUntil(farm.etcd, prefix: farm.store.keys.builds) { kvs in
            kvs.compactMap { try? KilnJSON.decode(Build.self, from: $0.value) }.contains { $0.status == .running && $0.attempt == 1 && $0.finishedAt == nil }
        }
        let running = try await farm.builds().values.first { $0.status == .running }!
        _ = try await farm.store.cancel(running.id)
        let (cancelledStatus, cancelledOutput) = try await followed
        #expect(cancelledStatus != 0, "\(String(decoding: cancelledOutput, as: UTF8.self))")
    }
}
