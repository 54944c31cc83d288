import Etcd
import FarmHarness
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
import Scheduler

/// What the fault tests add to the harness's farm: the `kiln` built beside the tests, the
/// scheduler's store, waits on etcd, and the assignments checked from etcd's own history.
extension ProcessFarm {
    /// The `kiln` executable built beside this test bundle (`swift build --build-tests`).
    static var testKiln: String {
        KilnExecutable.besideCurrent?.path ?? "kiln"
    }

    /// A farm in a temporary folder, its processes logging at info.
    convenience init(_ label: String) async throws {
        try await self.init(label, kiln: ProcessFarm.testKiln,
                            missing: "build it first (swift build --build-tests builds it with the tests)")
    }

    var store: SchedulerStore { SchedulerStore(etcd: etcd, keys: keys) }

    func startScheduler(_ id: String, leaderTTL: Int, maxAttempts: Int = 3) async throws {
        try await startScheduler(id, options: ["--leader-ttl", String(leaderTTL), "--max-attempts", String(maxAttempts)])
    }

    /// Starts an agent and waits until it is registered.
    func startAgent(_ id: String, capacity: Int = 2, ttl: Int = 3, simulate: String = "0.2-0.6") async throws {
        try await startAgent(AgentOptions(capacity: capacity, ttl: ttl, simulate: simulate), id: id)
        try await waitForAgents([id], timeout: .seconds(30))
    }

    /// The scheduler that leads now, as the API of `asking` reports it.
    func leader(asking: String) async throws -> String? {
        let reply = try await httpRequest(.GET, "\(schedulers[asking]!.api)/api/v1/scheduler", headers: adminHeaders)
        return reply.json?["leader"] as? String
    }

    func addProjects(_ count: Int) async throws -> [String] {
        var names: [String] = []
        for i in 0..<count {
            let name = "project-\(i)"
            try await store.saveProject(Project(name: name, repository: "http://127.0.0.1:1/\(name).git", buildImage: "a:1", buildCommand: "make"))
            names.append(name)
        }
        return names
    }

    /// Waits until every build in `ids` has ended.
    func waitForAll(_ ids: Set<String>, timeout: Duration) async throws -> [String: Build] {
        do {
            try await waitUntil(etcd, prefix: keys.builds, timeout: timeout) { kvs in
                let ended = kvs.compactMap { try? KilnJSON.decode(Build.self, from: $0.value) }.filter { ids.contains($0.id) && $0.status.isFinal }
                return ended.count == ids.count
            }
        } catch let error as TimedOut {
            // Say which builds did not end, where they stand, and what the processes said.
            let open = try await builds().values.filter { ids.contains($0.id) && !$0.status.isFinal }
            let tasks = try await etcd.range(prefix: keys.tasks).kvs.map(\.key)
            let queue = try await etcd.range(prefix: keys.queue).kvs.map(\.key)
            throw FarmError("""
                \(error): \(open.count) of \(ids.count) builds not ended: \(open.prefix(10).map { "\($0.id) \($0.status.rawValue) agent=\($0.agent ?? "-") attempt=\($0.attempt)" })
                tasks: \(tasks.prefix(10)); queue: \(queue.prefix(10))
                \(logs())
                """)
        }
        return try await builds().filter { ids.contains($0.key) }
    }

    /// Follows the task keys from now on into `history`, in a task of its own; the caller
    /// cancels it. A compacted history is carried on from (as the tests did before the
    /// check was shared); `history.compacted` says so.
    func followTasks(into history: FarmHistory) async throws -> Task<Void, Never> {
        let start = try await etcd.range(prefix: keys.tasks).revision
        let (etcd, keys) = (self.etcd, self.keys)
        return Task { try? await history.follow(etcd, prefix: keys.tasks, from: start + 1, failOnCompaction: false) }
    }
}
