import Etcd
import Foundation
import KilnCore
import LocalFarm
import Synchronization

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
        let farm = try await BenchFarm.start(rig: rig, phase: "chaos", agents: s.agents, capacity: s.capacity, simulate: s.simulate,
                                             ttl: s.ttl, maxAttempts: s.maxAttempts)
        defer { farm.stop() }
        let history = History()
        let keys = farm.keys
        // The watch replays from revision 1: it sees the whole history, whenever it starts.
        return try await whileRunning({ try await history.follow(farm.etcd, prefix: keys.prefix + "/", keys: keys) }) {
            try await chaos(farm: farm, history: history, settings: s)
        }
    }

    private static func chaos(farm: BenchFarm, history: History, settings s: Settings) async throws -> PhaseReport {
        let rig = farm.rig
        let keys = farm.keys
        let projects = (0..<s.projects).map { String(format: "chaos-%02d", $0) }
        try await farm.createProjects(projects)
        say("  farm up: etcd \(farm.etcdServer.endpoint), scheduler \(farm.api.base), \(s.agents) agents registered")

        // Every build is requested at once; the queue drains while agents die.
        let ids = Locked<[String]>([])
        let next = Locked(0)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<s.clients {
                group.addTask {
                    while true {
                        let i = next.add(1)
                        if i >= s.builds { return }
                        let (b, _) = try await farm.api.requestBuild(projects[i % projects.count])
                        ids.withLock { $0.append(b.id) }
                    }
                }
            }
            try await group.waitForAll()
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
                        guard let victim = farm.agentIDs.randomElement() else { continue }
                        let at = Date()
                        farm.killAgent(victim)
                        let fresh = try farm.addAgent()
                        kills.withLock { $0.append(Kill(agent: victim, at: at, replacement: fresh)) }
                    }
                }
                let done = try await group.next()!
                group.cancelAll()
                return done
            }
        }
        let elapsed = (ContinuousClock.now - start).seconds
        let killList = kills.withLock { $0 }
        // Let the watch deliver what was committed up to now before reading the history.
        let revision = try await farm.etcd.status()
        while await history.revision < revision { try await Task.sleep(for: .milliseconds(20)) }
        let a = await history.analyse(requested: requested, kills: killList, keys: keys)

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
            Figure("lost builds", "\(a.lost.count) (not ended: \(a.notEnded.count), failed otherwise: \(a.failedOther.count))", target: "0", met: a.lost.isEmpty),
            Figure("failed for running out of attempts", "\(a.attemptsExhausted.count)", target: "0 with --max-attempts \(s.maxAttempts)", met: a.attemptsExhausted.isEmpty),
            Figure("builds run twice", "\(a.runTwice.count) (double dispatch \(a.doubleDispatch.count), overlapping running \(a.overlappingRunning.count), succeeded twice \(a.succeededTwice.count))", target: "0", met: a.runTwice.isEmpty),
            Figure("kill → requeue (task key deleted), p50 / p99", "\(Fmt.ms(a.requeue.p50)) / \(Fmt.ms(a.requeue.p99)) (n = \(a.requeue.count))", target: "p99 ≤ TTL + 2 s = \(Fmt.s(budget))", met: a.requeue.isEmpty ? nil : a.requeue.p99 <= budget * 1000),
            Figure("kill → lease expired (agent key deleted), p50 / p99", "\(Fmt.ms(a.leaseExpiry.p50)) / \(Fmt.ms(a.leaseExpiry.p99)) (n = \(a.leaseExpiry.count))"),
            Figure("lease expired → task key deleted, p50 / p99", "\(Fmt.ms(a.afterExpiry.p50)) / \(Fmt.ms(a.afterExpiry.p99))"),
        ]
        report.notes = [
            "\(killList.count) agents killed in \(Fmt.s(elapsed)) (\(a.unexpired) of them so near the end that their lease had not expired yet); \(a.ended) of \(requested.count) builds ended (succeeded \(a.succeeded)); builds that needed more than one attempt: \(a.retried), most attempts: \(a.maxAttempt)",
            "the killed agents' task keys: \(a.requeued) requeued by the scheduler, \(a.finishedInFlight) deleted by the agent's own finish that was already on its way at the kill, \(a.assignedAfterKill) of them assigned to the agent after it was killed (before its lease expired)",
        ]
        if !a.lost.isEmpty { report.notes.append("lost: " + a.lost.prefix(10).joined(separator: "; ")) }
        if !a.runTwice.isEmpty { report.notes.append("run twice: " + a.runTwice.prefix(10).joined(separator: "; ")) }
        if !a.attemptsExhausted.isEmpty { report.notes.append("out of attempts: " + a.attemptsExhausted.prefix(10).joined(separator: ", ")) }
        let unexpected = farm.agents.withLock { $0.filter { !$0.value.isRunning }.map(\.key) }
        if !unexpected.isEmpty { report.notes.append("agents that exited without being killed: \(unexpected.sorted().joined(separator: ", ")) (logs in \(rig.root.path)/chaos/logs)") }
        if !allEnded { report.notes.append("NOT all builds ended within \(Int(s.timeout)) s") }
        say(report.printed())
        return report
    }

    /// Every change under the prefix (logs aside), in revision order, with when this process
    /// saw it; and the live counts the progress line shows.
    actor History {
        struct Event: Sendable {
            let kind: WatchEvent.Kind
            let key: String
            let revision: Int64
            let version: Int64
            let record: Build?
            let seenAt: Date
        }

        private(set) var events: [Event] = []
        private(set) var revision: Int64 = 0
        private var endedBuilds = Set<String>()
        private var tasks = Set<String>()
        private var queue = Set<String>()

        var liveTasks: Int { tasks.count }
        var liveQueue: Int { queue.count }
        func ended(of ids: Set<String>) -> Int { endedBuilds.intersection(ids).count }

        func follow(_ etcd: EtcdClient, prefix: String, keys: Keys) async throws {
            for try await update in etcd.watch(prefix: prefix, fromRevision: 1) {
                switch update {
                case .events(let list, let rev):
                    let now = Date()
                    for e in list where !e.kv.key.hasPrefix(keys.logs) { add(e, keys: keys, at: now) }
                    revision = rev
                case .reset:
                    throw FarmError("the history was compacted during the chaos phase; the analysis needs all of it")
                }
            }
        }

        private func add(_ e: WatchEvent, keys: Keys, at now: Date) {
            let record = e.kind == .put && e.kv.key.hasPrefix(keys.builds) ? try? KilnJSON.decode(Build.self, from: e.kv.value) : nil
            events.append(Event(kind: e.kind, key: e.kv.key, revision: e.kv.modRevision, version: e.kv.version, record: record, seenAt: now))
            if let record, record.status.isFinal { endedBuilds.insert(record.id) }
            if e.kv.key.hasPrefix(keys.tasks) {
                if e.kind == .put { tasks.insert(e.kv.key) } else { tasks.remove(e.kv.key) }
            } else if e.kv.key.hasPrefix(keys.queue) {
                if e.kind == .put { queue.insert(e.kv.key) } else { queue.remove(e.kv.key) }
            }
        }

        struct Analysis: Sendable {
            var notEnded: [String] = []
            var failedOther: [String] = []
            var attemptsExhausted: [String] = []
            var lost: [String] { notEnded.map { "\($0) never ended" } + failedOther }
            var doubleDispatch: Set<String> = []
            var overlappingRunning: Set<String> = []
            var succeededTwice: Set<String> = []
            var runTwice: [String] = []
            var requeue = Samples()
            var leaseExpiry = Samples()
            var afterExpiry = Samples()
            var requeued = 0
            var finishedInFlight = 0
            var assignedAfterKill = 0
            var ended = 0
            var succeeded = 0
            var retried = 0
            var maxAttempt = 0
            /// Kills whose lease had not expired yet when the phase ended.
            var unexpired = 0
        }

        /// Replays the whole history.
        func analyse(requested: Set<String>, kills: [Kill], keys: Keys) -> Analysis {
            var a = Analysis()
            var final: [String: Build] = [:]
            var live: [String: Set<String>] = [:]          // build → agents holding a task key for it
            var running: [String: Set<String>] = [:]       // build → agents that set it running and still hold its task
            var succeededFinishes: [String: Int] = [:]     // build → transactions that finished it succeeded and removed a task
            var lastStatus: [String: BuildStatus] = [:]
            var intoSucceeded: [String: Int] = [:]
            let byRevision = Dictionary(grouping: events, by: \.revision)

            for e in events {
                if let owner = keys.taskOwner(e.key) {
                    if e.kind == .put && e.version == 1 {
                        live[owner.build, default: []].insert(owner.agent)
                        if live[owner.build]!.count > 1 {
                            a.doubleDispatch.insert(owner.build)
                            a.runTwice.append("\(owner.build): task keys of \(live[owner.build]!.sorted().joined(separator: " and ")) alive at once (revision \(e.revision))")
                        }
                    } else if e.kind == .delete {
                        live[owner.build]?.remove(owner.agent)
                        running[owner.build]?.remove(owner.agent)
                        let sameTxn = byRevision[e.revision] ?? []
                        if sameTxn.contains(where: { $0.record?.id == owner.build && $0.record?.status == .succeeded }) {
                            succeededFinishes[owner.build, default: 0] += 1
                        }
                    }
                } else if let b = e.record {
                    if b.status == .running, let agent = b.agent {
                        let others = (running[b.id] ?? []).subtracting([agent])
                        if !others.isEmpty {
                            a.overlappingRunning.insert(b.id)
                            a.runTwice.append("\(b.id): set running by \(agent) while \(others.sorted().joined(separator: ", ")) still ran it (revision \(e.revision))")
                        }
                        running[b.id, default: []].insert(agent)
                    }
                    if b.status == .succeeded && lastStatus[b.id] != .succeeded { intoSucceeded[b.id, default: 0] += 1 }
                    lastStatus[b.id] = b.status
                    if b.status.isFinal { final[b.id] = b }
                }
            }
            for (id, n) in succeededFinishes where n > 1 {
                a.succeededTwice.insert(id)
                a.runTwice.append("\(id): finished succeeded by \(n) transactions")
            }
            for (id, n) in intoSucceeded where n > 1 && !a.succeededTwice.contains(id) {
                a.succeededTwice.insert(id)
                a.runTwice.append("\(id): record turned succeeded \(n) times")
            }

            for id in requested {
                guard let b = final[id] else { a.notEnded.append(id); continue }
                a.ended += 1
                a.maxAttempt = max(a.maxAttempt, b.attempt)
                if b.attempt > 1 { a.retried += 1 }
                switch b.status {
                case .succeeded: a.succeeded += 1
                case .failed where (b.error ?? "").contains("gave up after"): a.attemptsExhausted.append(id)
                default: a.failedOther.append("\(id) \(b.status.rawValue): \(b.error ?? "")")
                }
            }

            // Kill → the deletion of each of the killed agent's task keys.
            for k in kills {
                let expiry = events.first { $0.kind == .delete && $0.key == keys.agent(k.agent) && $0.seenAt >= k.at }
                if let expiry { a.leaseExpiry.add(expiry.seenAt.timeIntervalSince(k.at) * 1000) } else { a.unexpired += 1 }
                let prefix = keys.tasks(of: k.agent)
                for e in events where e.kind == .delete && e.key.hasPrefix(prefix) && e.seenAt >= k.at {
                    guard let build = keys.taskOwner(e.key)?.build else { continue }
                    let sameTxn = byRevision[e.revision] ?? []
                    let requeued = sameTxn.contains { $0.key == keys.queued(build) && $0.kind == .put }
                        || sameTxn.contains { $0.record?.id == build && ($0.record?.error ?? "").contains("stopped renewing its lease") }
                    if !requeued { a.finishedInFlight += 1; continue }
                    a.requeued += 1
                    a.requeue.add(e.seenAt.timeIntervalSince(k.at) * 1000)
                    if let expiry { a.afterExpiry.add(e.seenAt.timeIntervalSince(expiry.seenAt) * 1000) }
                    if events.contains(where: { $0.key == e.key && $0.kind == .put && $0.version == 1 && $0.revision < e.revision && $0.seenAt >= k.at }) {
                        a.assignedAfterKill += 1
                    }
                }
            }
            return a
        }
    }
}
