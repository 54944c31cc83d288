import Etcd
import Foundation
import KilnCore
import LocalFarm

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
        let farm = try await rig.startFarm("throughput", agents: s.agents, .init(capacity: s.capacity, ttl: 10, simulate: "0"))
        defer { farm.stop() }
        let projects = (0..<s.projects).map { String(format: "tp-%02d", $0) }
        try await farm.createProjects(projects)
        farm.sayUp()

        // 1. A burst through the API with every agent up.
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
                try await enqueue(farm, projects, count: s.builds, clients: s.clients, enqueued: enqueued, failed: failedPosts)
                let end = Date()
                let all = try await tracker.waitFinals(enqueued.value, timeout: .seconds(600))
                return (start, end, all)
            }
        }
        let assignments = await tracker.assignments
        let finals = await tracker.finals
        let finalTimes = await tracker.builds.values.compactMap(\.finalSeenAt).sorted()
        let ok = enqueued.value

        // 2. The dispatcher alone: a queue filled while no agent is up, drained once they are.
        say("  draining: agents stopped, \(s.builds) builds queued, then \(s.agents) fresh agents started")
        try await farm.processes.stopAgents()
        // The fresh agents' etcd users are made before the clock starts: making a user (or a
        // role) changes etcd's auth revision, which makes every client's token stale at once,
        // so 50 made during the drain measured etcd's re-authentications (24 assignments/s,
        // 90 s for the agents to start), not the dispatcher.
        let fresh = (1...s.agents).map { "drain-\($0)" }
        if let users = farm.processes.etcdUsers {
            for id in fresh { _ = try await users.ensure(.agent(id)) }
        }
        let drain = BuildTracker()
        let drainQueued = Locked(0)
        let (agentsStarted, agentsUp, drainAll) = try await whileTracking(farm, drain) {
            try await withProgress({
                let (a, f) = await (drain.assignments.count, drain.finalCount)
                return "queued \(drainQueued.value), assigned \(a), ended \(f) of \(s.builds)"
            }) {
                try await enqueue(farm, projects, count: s.builds, clients: s.clients, enqueued: drainQueued, failed: failedPosts)
                let started = Date()
                for id in fresh { try await farm.processes.startAgent(farm.agent, id: id) }
                try await farm.processes.waitForAgents()
                let up = Date()
                let all = try await drain.waitFinals(drainQueued.value, timeout: .seconds(600))
                return (started, up, all)
            }
        }
        let drained = await drain.assignments

        // 3. etcd's own rate, on the same etcd with the farm stopped.
        farm.processes.stopProcesses()
        say("  farm stopped; etcd's own transaction rate on the same etcd: \(s.txns) sequential, then \(s.txnClients) concurrent clients")
        let sequential = try await txnRate(farm.etcd, clients: 1, total: s.txns, clock: clock)
        let concurrent = try await txnRate(farm.etcd, clients: s.txnClients, total: s.txns * 2, clock: clock)

        func rate(_ times: [Date]) -> Double { times.count > 1 ? Double(times.count - 1) / times.last!.timeIntervalSince(times.first!) : .nan }
        let assignRate = rate(assignments)
        let drainRate = rate(drained)
        let enqueueRate = Double(ok) / enqueueEnd.timeIntervalSince(enqueueStart)
        let lastFinal = finalTimes.last
        var report = PhaseReport("Throughput: a burst of builds")
        report.setup = [
            "fresh etcd, `kiln scheduler`, \(s.agents) × `kiln agent --simulate 0 --capacity \(s.capacity)` (\(s.agents * s.capacity) slots), each its own process",
            "\(s.builds) builds requested through the API by \(s.clients) concurrent clients, round-robin over \(s.projects) projects",
            "assignments counted from a watch on /kiln/tasks/ (each task key created is one assignment), from the first to the last",
            "then a drain, to see the dispatcher without the API in front of it: the agents stopped, \(s.builds) more builds queued through the API, \(s.agents) fresh agents started; assignments per second from the first to the last",
            "etcd's own rate afterwards, on the same etcd with scheduler and agents stopped: a transaction comparing a key's version and putting it (as the dispatcher's assignment compares revisions and puts), each client on its own key",
        ]
        report.figures = [
            Figure("builds assigned per second, burst through the API with the agents up (first → last assignment)", Fmt.rate(assignRate)),
            Figure("builds enqueued per second (\(s.clients) concurrent POSTs)", Fmt.rate(enqueueRate)),
            Figure("first POST → last build ended", lastFinal.map { Fmt.s($0.timeIntervalSince(enqueueStart)) } ?? "-"),
            Figure("builds assigned per second draining a queue of \(s.builds)", Fmt.rate(drainRate)),
            Figure("etcd txn/s, one client, sequential", Fmt.rate(sequential)),
            Figure("etcd txn/s, \(s.txnClients) concurrent clients", Fmt.rate(concurrent)),
            Figure("drain assignments per second / etcd sequential txn/s", String(format: "%.3f", drainRate / sequential)),
        ]
        let succeeded = finals.filter { $0.status == .succeeded }.count
        report.notes = [
            "builds enqueued \(ok) of \(s.builds) (failed POSTs: \(failedPosts.withLock { $0.count })), assignments seen \(assignments.count), ended \(finals.count) (succeeded \(succeeded))\(allFinal ? "" : "; NOT all ended within 600 s")",
        ]
        report.notes.append("drain: \(drained.count) assignments; the fresh agents were all registered \(drained.first.map { Fmt.s(agentsUp.timeIntervalSince($0)) } ?? "-") after the first assignment (\(Fmt.s(agentsUp.timeIntervalSince(agentsStarted))) after they were started); the drain took \(drained.count > 1 ? Fmt.s(drained.last!.timeIntervalSince(drained.first!)) : "-")\(drainAll ? "" : "; NOT all ended within 600 s")")
        if let first = failedPosts.withLock({ $0.first }) { report.notes.append("first failed POST: \(first)") }
        say(report.printed())
        return report
    }

    /// Requests `count` builds through the API from `clients` concurrent clients, round-robin
    /// over `projects`.
    static func enqueue(_ farm: BenchFarm, _ projects: [String], count: Int, clients: Int, enqueued: Locked<Int>, failed: Locked<[String]>) async throws {
        try await inParallel(count: count, workers: clients) { i in
            do {
                _ = try await farm.api.requestBuild(projects[i % projects.count])
                enqueued.add(1)
            } catch {
                failed.withLock { $0.append("\(error)") }
            }
        }
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
        return Double(each * clients) / (clock.now - start).inSeconds
    }
}
