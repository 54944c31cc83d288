import Etcd
import Foundation
import LocalFarm
import Synchronization

/// Phase 3, throughput: how many builds per second the scheduler assigns when a burst is
/// queued at once, next to how many transactions etcd itself commits per second.
enum ThroughputPhase {
    struct Settings: Sendable {
        var builds = 2000
        var agents = 50
        var capacity = 4
        var projects = 50
        /// Concurrent POSTs while enqueueing.
        var clients = 32
        /// Transactions of etcd's own rate, sequential and in total across the concurrent clients.
        var txns = 2000
        var txnClients = 32
    }

    static func run(rig: BenchRig, settings s: Settings) async throws -> PhaseReport {
        say("== throughput: \(s.agents) simulated agents (--simulate 0, capacity \(s.capacity)), \(s.builds) builds enqueued by \(s.clients) concurrent clients over \(s.projects) projects")
        let farm = try await BenchFarm.start(rig: rig, phase: "throughput", agents: s.agents, capacity: s.capacity, simulate: "0")
        defer { farm.stop() }
        let projects = (0..<s.projects).map { String(format: "tp-%02d", $0) }
        try await farm.createProjects(projects)
        say("  farm up: etcd \(farm.etcdServer.endpoint), scheduler \(farm.api.base), \(s.agents) agents registered")

        let tracker = BuildTracker()
        let enqueued = Locked(0)
        let failedPosts = Locked<[String]>([])
        let clock = ContinuousClock()
        let (enqueueStart, enqueueEnd, allFinal) = try await whileTracking(farm, tracker) {
            try await withProgress({
                let (a, f) = await (tracker.assignments.count, tracker.finalCount)
                return "enqueued \(enqueued.value), assigned \(a), ended \(f) of \(s.builds)"
            }) {
                let start = Date()
                let next = Locked(0)
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for _ in 0..<s.clients {
                        group.addTask {
                            while true {
                                let i = next.add(1)
                                if i >= s.builds { return }
                                do {
                                    _ = try await farm.api.requestBuild(projects[i % projects.count])
                                    enqueued.add(1)
                                } catch {
                                    failedPosts.withLock { $0.append("\(error)") }
                                }
                            }
                        }
                    }
                    try await group.waitForAll()
                }
                let end = Date()
                let ok = enqueued.value
                let all = try await tracker.waitFinals(ok, timeout: .seconds(600))
                return (start, end, all)
            }
        }
        let assignments = await tracker.assignments
        let finals = await tracker.finals
        let finalTimes = await tracker.builds.values.compactMap(\.finalSeenAt).sorted()
        let ok = enqueued.value

        // etcd's own rate, on the same etcd with the farm stopped.
        farm.rig.stop(farm.agents.withLock { Array($0.values) } + [farm.scheduler])
        say("  farm stopped; etcd's own transaction rate on the same etcd: \(s.txns) sequential, then \(s.txnClients) concurrent clients")
        let sequential = try await txnRate(farm.etcd, clients: 1, total: s.txns, clock: clock)
        let concurrent = try await txnRate(farm.etcd, clients: s.txnClients, total: s.txns * 2, clock: clock)

        let assignRate = assignments.count > 1 ? Double(assignments.count - 1) / assignments.last!.timeIntervalSince(assignments.first!) : .nan
        let enqueueRate = Double(ok) / enqueueEnd.timeIntervalSince(enqueueStart)
        let lastFinal = finalTimes.last
        var report = PhaseReport("Throughput: a burst of builds")
        report.setup = [
            "fresh etcd, `kiln scheduler`, \(s.agents) × `kiln agent --simulate 0 --capacity \(s.capacity)` (\(s.agents * s.capacity) slots), each its own process",
            "\(s.builds) builds requested through the API by \(s.clients) concurrent clients, round-robin over \(s.projects) projects",
            "assignments counted from a watch on /kiln/tasks/ (each task key created is one assignment), from the first to the last",
            "etcd's own rate afterwards, on the same etcd with scheduler and agents stopped: a transaction comparing a key's version and putting it (as the dispatcher's assignment compares revisions and puts), each client on its own key",
        ]
        report.figures = [
            Figure("builds assigned per second (first → last assignment)", Fmt.rate(assignRate)),
            Figure("builds enqueued per second (\(s.clients) concurrent POSTs)", Fmt.rate(enqueueRate)),
            Figure("first POST → last build ended", lastFinal.map { Fmt.s($0.timeIntervalSince(enqueueStart)) } ?? "-"),
            Figure("etcd txn/s, one client, sequential", Fmt.rate(sequential)),
            Figure("etcd txn/s, \(s.txnClients) concurrent clients", Fmt.rate(concurrent)),
            Figure("assignments per second / etcd sequential txn/s", String(format: "%.3f", assignRate / sequential)),
        ]
        let succeeded = finals.filter { $0.status == .succeeded }.count
        report.notes = [
            "builds enqueued \(ok) of \(s.builds) (failed POSTs: \(failedPosts.withLock { $0.count })), assignments seen \(assignments.count), ended \(finals.count) (succeeded \(succeeded))\(allFinal ? "" : "; NOT all ended within 600 s")",
        ]
        if let first = failedPosts.withLock({ $0.first }) { report.notes.append("first failed POST: \(first)") }
        say(report.printed())
        return report
    }

    /// Transactions per second that `clients` concurrent clients reach, `total` in all.
    static func txnRate(_ etcd: EtcdClient, clients: Int, total: Int, clock: ContinuousClock) async throws -> Double {
        let each = max(1, total / clients)
        let runID = UUID().uuidString.prefix(8)
        for c in 0..<clients { try await etcd.put("/bench/txn/\(runID)/\(c)", "0") }
        let start = clock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
            for c in 0..<clients {
                group.addTask {
                    let key = "/bench/txn/\(runID)/\(c)"
                    var version: Int64 = 1
                    for j in 0..<each {
                        let r = try await etcd.txn(Txn(compare: [.version(key, .equal, version)], success: [.put(key, String(j))]))
                        guard r.succeeded else { throw FarmError("txn on \(key) failed its compare (version \(version))") }
                        version += 1
                    }
                }
            }
            try await group.waitForAll()
        }
        return Double(each * clients) / (clock.now - start).seconds
    }
}
