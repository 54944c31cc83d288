import Etcd
import FarmHarness
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
import Scheduler
import Testing

/// A farm of real processes on a real 3-member etcd cluster on loopback, every process given
/// all three members (`--etcd URL,URL,URL`), whose members are killed (by PID) under load.
@Suite("Farm on an etcd cluster (real processes)", .serialized)
struct EtcdClusterFarmTests {
    /// Requests `count` builds spread over `projects`, one every `every`. A request that etcd
    /// answers "unavailable" (an election under way) is made again, as a person would: a
    /// request that was applied all the same is a build of its own, not in the set.
    func enqueue(_ farm: ProcessFarm, _ count: Int, projects: [String], every: Duration = .milliseconds(50)) async throws -> Set<String> {
        var ids = Set<String>()
        for i in 0..<count {
            for attempt in 0..<50 {
                do {
                    ids.insert(try await farm.store.enqueue(project: projects[i % projects.count], request: BuildRequest()).id)
                    break
                } catch let error as EtcdError where error.isTransient && attempt < 49 {
                    try await Task.sleep(for: .milliseconds(200))
                }
            }
            try await Task.sleep(for: every)
        }
        return ids
    }

    /// The watches a member serves now (each member counts only its own clients').
    func watchers(on member: EtcdServer) async throws -> Int {
        let page = try await httpRequest(.GET, member.endpoint + "/metrics").body
        let line = page.split(separator: "\n").first { $0.hasPrefix("etcd_debugging_mvcc_watcher_total ") }
        return Int(line?.split(separator: " ").last ?? "") ?? -1
    }

    /// Every build in `ids` succeeded, was given to an agent exactly once and never held by
    /// two agents at once.
    func expectRunOnce(_ farm: ProcessFarm, _ history: FarmHistory, _ ids: Set<String>, _ builds: [String: Build]) async throws {
        #expect(builds.count == ids.count)
        let notSucceeded = builds.values.filter { $0.status != .succeeded }
        #expect(notSucceeded.isEmpty, "\(notSucceeded.map { "\($0.id) \($0.status) \($0.error ?? "")" })\n\(farm.logs())")
        #expect(builds.values.allSatisfy { $0.attempt == 1 }, "\(builds.values.filter { $0.attempt != 1 }.map { "\($0.id): \($0.attempt)" })")
        let check = await history.check()
        #expect(ids.allSatisfy { check.assignments[$0] == 1 }, "\(ids.filter { check.assignments[$0] != 1 }.map { "\($0): \(check.assignments[$0] ?? 0)" })")
        #expect(check.doubleDispatch.isEmpty && check.overlappingRunning.isEmpty && check.succeededTwice.isEmpty, "\(check.runTwice)")
    }

    @Test("the member every scheduler and agent uses is killed under load, then etcd's leader: no build is lost or run twice")
    func memberInUseKilledUnderLoad() async throws {
        let farm = try await ProcessFarm("etcd-cluster", kiln: ProcessFarm.testKiln, etcdMembers: 3,
                                         missing: "build it first (swift build --build-tests builds it with the tests)")
        let cluster = try #require(farm.etcdCluster)
        let history = FarmHistory(keys: farm.keys)
        let following = try await farm.followTasks(into: history)
        defer { following.cancel() }
        for id in ["sched-1", "sched-2"] { try await farm.startScheduler(id, leaderTTL: 3) }
        for i in 1...3 { try await farm.startAgent("agent-\(i)", capacity: 2, ttl: 5) }
        let projects = try await farm.addProjects(5)

        // 1. The first member listed is the one they all use: it serves their watches (the
        //    dispatcher's, each agent's task follow, the test's own history).
        let inUse = cluster.members[0]
        let watching = try await watchers(on: inUse)
        #expect(watching >= 5, "the processes do not watch through \(inUse.endpoint): \(watching) watchers")
        let first = try await withThrowingTaskGroup(of: Set<String>.self) { group in
            group.addTask { try await enqueue(farm, 40, projects: projects) }
            try await Task.sleep(for: .seconds(1))
            inUse.kill()
            return try await group.next()!
        }
        let firstBuilds = try await farm.waitForAll(first, timeout: .seconds(90))
        try await expectRunOnce(farm, history, first, firstBuilds)
        // The watches moved to the survivors.
        var moved = 0
        for member in cluster.members.dropFirst() { moved += try await watchers(on: member) }
        #expect(moved >= watching, "\(moved) watchers on the other members, \(watching) before")

        // 2. The member comes back and rejoins; then etcd's leader dies under load (an election:
        //    writes answer "unavailable" for a second or two).
        try await inUse.restart()
        let leader = try #require(await cluster.leader(client: farm.etcd))
        let second = try await withThrowingTaskGroup(of: Set<String>.self) { group in
            group.addTask { try await enqueue(farm, 40, projects: projects) }
            try await Task.sleep(for: .seconds(1))
            leader.kill()
            return try await group.next()!
        }
        let secondBuilds = try await farm.waitForAll(second, timeout: .seconds(90))
        try await expectRunOnce(farm, history, second, secondBuilds)
        // Nothing left assigned or queued, and both schedulers and every agent still run.
        #expect(try await farm.etcd.range(prefix: farm.keys.tasks).kvs.isEmpty)
        #expect(try await farm.etcd.range(prefix: farm.keys.queue).kvs.isEmpty)
        #expect(farm.schedulers.values.allSatisfy(\.process.isRunning) && farm.agents.values.allSatisfy(\.isRunning), "\(farm.logs())")
        farm.stop()
    }

    /// `kiln ARGS` (the one built beside the tests); its status and its output and errors.
    func kiln(_ arguments: [String]) async throws -> (status: Int32, output: String) {
        let (status, output) = try await Spawn.runDetached(ProcessFarm.testKiln, arguments)
        return (status, String(decoding: output, as: UTF8.self))
    }

    @Test("kiln etcd: status of every member, NOSPACE listed, disarm refused while full, defrag followers first and the leader last, then disarmed")
    func operatorCommands() async throws {
        let dir = try TempDir("etcd-cli")
        let cluster = try await EtcdCluster.start(dir: dir.url, maintenance: .init(compactionMode: nil, quotaBytes: 16 << 20))
        defer { cluster.kill() }
        let etcd = ["--etcd", cluster.endpoint]
        let client = EtcdClient(endpoints: cluster.endpoints)

        let status = try await kiln(["etcd", "status"] + etcd)
        #expect(status.status == 0, "\(status.output)")
        for endpoint in cluster.endpoints { #expect(status.output.contains("\(endpoint)  "), "\(status.output)") }
        #expect(status.output.components(separatedBy: "leader  ").count == 2, "one leader: \(status.output)")
        #expect(status.output.contains("of 16.0 MiB") && status.output.contains("no alarm"))

        let value = [UInt8](repeating: UInt8(ascii: "v"), count: 512 << 10)
        var full = false
        for _ in 0..<200 where !full {
            do { try await client.put("/fill", bytes: value) } catch EtcdError.noSpace { full = true }
        }
        #expect(full)
        let listed = try await kiln(["etcd", "alarm"] + etcd)
        #expect(listed.output.contains("NOSPACE on member"), "\(listed.output)")
        let tooSoon = try await kiln(["etcd", "alarm", "disarm"] + etcd)
        #expect(tooSoon.status != 0 && tooSoon.output.contains("would come back"), "\(tooSoon.output)")

        let revision = try await client.status()
        try await client.delete("/fill")
        try await client.compact(revision: revision)
        let leader = try #require(await cluster.leader())
        let defrag = try await kiln(["etcd", "defrag"] + etcd)
        #expect(defrag.status == 0, "\(defrag.output)")
        let order = defrag.output.split(separator: "\n").filter { $0.hasPrefix("defragmenting ") }
        #expect(order.count == 3 && order.last?.contains(leader.endpoint) == true, "the leader last: \(defrag.output)")
        let disarmed = try await kiln(["etcd", "alarm", "disarm"] + etcd)
        #expect(disarmed.status == 0 && disarmed.output.contains("disarmed NOSPACE"), "\(disarmed.output)")
        try await client.put("/after", "x")

        // With a member down, defragmenting another could cost the quorum: refused.
        cluster.members.first { $0 !== leader }!.kill()
        let refused = try await kiln(["etcd", "defrag"] + etcd)
        #expect(refused.status != 0 && refused.output.contains("does not answer"), "\(refused.output)")
    }
}
