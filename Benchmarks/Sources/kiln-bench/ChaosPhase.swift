import Etcd
import FarmHarness
import Foundation
import KilnCore
import LocalFarm

/// Phase 5, chaos: agents are killed with SIGKILL while builds run, and replaced by fresh
/// ones. Nothing may be lost or run twice, and a dead agent's builds must go back to the
/// queue within about one TTL.
enum ChaosPhase {
    struct Settings: Sendable {
        var builds = 500
        var agents = 12
        var capacity = 4
        var projects = 30
        var simulate = "1-3"
        var ttl = 3
        var maxAttempts = 10
        /// Seconds between kills, drawn uniformly.
        var killEvery = 2.0...5.0
        /// A build not ended by then is lost.
        var timeout = 900.0
        var clients = 16
    }

    struct Kill: Sendable {
        let agent: String
        let at: Date
        let replacement: String
    }

    static func run(rig: BenchRig, settings s: Settings) async throws -> PhaseReport {
        say("== chaos: \(s.builds) builds (--simulate \(s.simulate)) over \(s.projects) projects on \(s.agents) agents (capacity \(s.capacity), --ttl \(s.ttl)); every \(Int(s.killEvery.lowerBound))–\(Int(s.killEvery.upperBound)) s one agent gets SIGKILL and a fresh one starts; scheduler --max-attempts \(s.maxAttempts)")
        let farm = try await rig.startFarm("chaos", agents: s.agents, .init(capacity: s.capacity, ttl: s.ttl, simulate: s.simulate),
                                           schedulerOptions: ["--max-attempts", String(s.maxAttempts)])
        defer { farm.stop() }
        let history = FarmHistory(keys: farm.keys)
        // The watch replays from revision 1: it sees the whole history, whenever it starts.
        return try await whileRunning({ try await history.follow(farm.etcd, prefix: farm.keys.prefix + "/", from: 1, failOnCompaction: true) }) {
            try await chaos(farm: farm, history: history, settings: s)
        }
    }

    private static func chaos(farm: BenchFarm, history: FarmHistory, settings s: Settings) async throws -> PhaseReport {
        let keys = farm.keys
        let projects = (0..<s.projects).map { String(format: "chaos-%02d", $0) }
        try await farm.createProjects(projects)
        farm.sayUp()

        // Every build is requested at once; the queue drains while agents die.
        let ids = Locked<[String]>([])
        try await inParallel(count: s.builds, workers: s.clients) { i in
            let (b, _) = try await farm.api.requestBuild(projects[i % projects.count])
            ids.withLock { $0.append(b.id) }
        }
        let requested = Set(ids.withLock { $0 })
        let start = ContinuousClock.now
        let deadline = start + .seconds(s.timeout)
        say("  \(requested.count) builds queued; killing agents until all have ended (at most \(Int(s.timeout)) s)")

        let kills = Locked<[Kill]>([])
        let allEnded = try await withProgress({
            let (ended, tasks, queued) = await (history.ended(of: requested), history.liveTasks, history.liveQueue)
            return "ended \(ended) of \(requested.count); running or assigned \(tasks), queued \(queued); \(kills.withLock { $0.count }) agents killed"
        }) {
            try await withThrowingTaskGroup(of: Bool.self) { group in
                group.addTask {
                    while ContinuousClock.now < deadline {
                        if await history.ended(of: requested) == requested.count { return true }
                        try await Task.sleep(for: .milliseconds(100))
                    }
                    return false
                }
                group.addTask {
                    while true {
                        try await Task.sleep(for: .milliseconds(Int(Double.random(in: s.killEvery) * 1000)))
                        guard let victim = farm.processes.agentIDs.randomElement() else { continue }
                        let at = Date()
                        farm.processes.killAgent(victim)
                        let fresh = try await farm.addAgent()
                        kills.withLock { $0.append(Kill(agent: victim, at: at, replacement: fresh)) }
                    }
                }
                let done = try await group.next()!
                group.cancelAll()
                return done
            }
        }
        let elapsed = (ContinuousClock.now - start).inSeconds
        let killList = kills.withLock { $0 }
        // Let the watch deliver what was committed up to now before reading the history.
        let revision = try await farm.etcd.status()
        while await history.revision < revision { try await Task.sleep(for: .milliseconds(20)) }
        let events = await history.events
        let check = RunOnceCheck(events, keys: keys)
        let o = check.outcome(of: requested)
        let t = KillTimings(events, kills: killList, keys: keys)

        let budget = Double(s.ttl) + 2
        var report = PhaseReport("Chaos: agents killed while they build")
        report.setup = [
            "fresh etcd, `kiln scheduler --max-attempts \(s.maxAttempts)` (high enough that no build fails for running out of attempts), \(s.agents) × `kiln agent --simulate \(s.simulate) --capacity \(s.capacity) --ttl \(s.ttl)`",
            "\(requested.count) builds requested at once over \(s.projects) projects; every \(s.killEvery.lowerBound)–\(s.killEvery.upperBound) s (uniform) a random live agent gets SIGKILL and a fresh agent with a new id starts, until every build has ended",
            "everything is judged from one etcd watch on /kiln/ from revision 1 (the whole history: builds, tasks, queue, agents)",
            "lost: not ended within \(Int(s.timeout)) s, or ended failed for a reason other than running out of attempts; run twice: two task keys of one build alive at once (double dispatch), a record set running by one agent while another agent's running attempt still held its task key, or two successful finishes",
            "kill → requeue: from the SIGKILL to this process's watch seeing each of the killed agent's task keys deleted (held at the kill, or assigned to it before its lease expired)",
        ]
        report.figures = [
            Figure("lost builds", "\(o.lost.count) (not ended: \(o.notEnded.count), failed otherwise: \(o.failedOther.count))", target: "0", met: o.lost.isEmpty),
            Figure("failed for running out of attempts", "\(o.attemptsExhausted.count)", target: "0 with --max-attempts \(s.maxAttempts)", met: o.attemptsExhausted.isEmpty),
            Figure("builds run twice", "\(check.runTwice.count) (double dispatch \(check.doubleDispatch.count), overlapping running \(check.overlappingRunning.count), succeeded twice \(check.succeededTwice.count))", target: "0", met: check.runTwice.isEmpty),
            Figure("kill → requeue (task key deleted), p50 / p99", "\(Fmt.ms(t.requeue.p50)) / \(Fmt.ms(t.requeue.p99)) (n = \(t.requeue.count))", target: "p99 ≤ TTL + 2 s = \(Fmt.s(budget))", met: t.requeue.isEmpty ? nil : t.requeue.p99 <= budget * 1000),
            Figure("kill → lease expired (agent key deleted), p50 / p99", "\(Fmt.ms(t.leaseExpiry.p50)) / \(Fmt.ms(t.leaseExpiry.p99)) (n = \(t.leaseExpiry.count))"),
            Figure("lease expired → task key deleted, p50 / p99", "\(Fmt.ms(t.afterExpiry.p50)) / \(Fmt.ms(t.afterExpiry.p99))"),
        ]
        report.notes = [
            "\(killList.count) agents killed in \(Fmt.s(elapsed)) (\(t.unexpired) of them so near the end that their lease had not expired yet); \(o.ended) of \(requested.count) builds ended (succeeded \(o.succeeded)); builds that needed more than one attempt: \(o.retried), most attempts: \(o.maxAttempt)",
            "the killed agents' task keys: \(t.requeued) requeued by the scheduler, \(t.finishedInFlight) deleted by the agent's own finish that was already on its way at the kill, \(t.assignedAfterKill) of them assigned to the agent after it was killed (before its lease expired)",
        ]
        if !o.lost.isEmpty { report.notes.append("lost: " + o.lost.prefix(10).joined(separator: "; ")) }
        if !check.runTwice.isEmpty { report.notes.append("run twice: " + check.runTwice.prefix(10).joined(separator: "; ")) }
        if !o.attemptsExhausted.isEmpty { report.notes.append("out of attempts: " + o.attemptsExhausted.prefix(10).joined(separator: ", ")) }
        let unexpected = farm.processes.agents.filter { !$0.value.isRunning }.map(\.key)
        if !unexpected.isEmpty { report.notes.append("agents that exited without being killed: \(unexpected.sorted().joined(separator: ", ")) (logs in \(farm.logs))") }
        if !allEnded { report.notes.append("NOT all builds ended within \(Int(s.timeout)) s") }
        say(report.printed())
        return report
    }

    /// From each SIGKILL to the deletion of each of the killed agent's task keys, on this
    /// process's clock (when the watch delivered each event).
    struct KillTimings {
        var requeue = Samples()
        var leaseExpiry = Samples()
        var afterExpiry = Samples()
        var requeued = 0
        var finishedInFlight = 0
        var assignedAfterKill = 0
        /// Kills whose lease had not expired yet when the phase ended.
        var unexpired = 0

        init(_ events: [FarmEvent], kills: [Kill], keys: Keys) {
            let byRevision = Dictionary(grouping: events, by: \.revision)
            for k in kills {
                let expiry = events.first { $0.kind == .delete && $0.key == keys.agent(k.agent) && $0.seenAt >= k.at }
                if let expiry { leaseExpiry.add(expiry.seenAt.timeIntervalSince(k.at) * 1000) } else { unexpired += 1 }
                let prefix = keys.tasks(of: k.agent)
                for e in events where e.kind == .delete && e.key.hasPrefix(prefix) && e.seenAt >= k.at {
                    guard let build = keys.taskOwner(e.key)?.build else { continue }
                    let sameTxn = byRevision[e.revision] ?? []
                    let requeuedNow = sameTxn.contains { $0.key == keys.queued(build) && $0.kind == .put }
                        || sameTxn.contains { $0.record?.id == build && ($0.record?.error ?? "").contains("stopped renewing its lease") }
                    if !requeuedNow { finishedInFlight += 1; continue }
                    requeued += 1
                    requeue.add(e.seenAt.timeIntervalSince(k.at) * 1000)
                    if let expiry { afterExpiry.add(e.seenAt.timeIntervalSince(expiry.seenAt) * 1000) }
                    if events.contains(where: { $0.key == e.key && $0.kind == .put && $0.version == 1 && $0.revision < e.revision && $0.seenAt >= k.at }) {
                        assignedAfterKill += 1
                    }
                }
            }
        }
    }
}
