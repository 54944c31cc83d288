import BuildAgent
import Foundation
import LocalFarm
import KilnCore
import Scheduler

/// Phase 4, cache affinity: under a normal load, the share of builds that ran where their
/// project's git mirror and caches were warm (issue 16's measure), the share on the project's
/// home agent beside it, and how evenly the load spread (max / average per agent).
enum AffinityPhase {
    struct Settings: Sendable {
        var builds = 2000
        var agents = 20
        var capacity = 4
        var projects = 200
        var zipf = 1.1
        var simulate = "0.2-1"
        /// Average share of the farm's slots busy, which sets the arrival rate.
        var load = 0.5
        /// The scheduler's bounded-load factor c.
        var loadFactor = 1.25
        /// `kiln scheduler --warm-wait`; nil: the scheduler's default.
        var warmWait: Double?
    }

    static func run(rig: BenchRig, settings s: Settings) async throws -> PhaseReport {
        guard let duration = SimulatedDuration(s.simulate) else { throw FarmError("--affinity-simulate: seconds or a range of seconds, e.g. 0.2-1") }
        let slots = s.agents * s.capacity
        // Little's law: busy slots = arrival rate × mean duration.
        let rate = s.load * Double(slots) / duration.mean
        say("== cache affinity: \(s.agents) simulated agents (--simulate \(s.simulate), capacity \(s.capacity)), \(s.projects) projects with Zipf(\(s.zipf)) popularity, \(s.builds) builds arriving at \(String(format: "%.1f", rate))/s (Poisson) for \(Int(s.load * 100)) % average load")
        let farm = try await rig.startFarm("affinity", agents: s.agents, .init(capacity: s.capacity, ttl: 10, simulate: s.simulate),
                                          schedulerOptions: ["--load-factor", String(s.loadFactor)] + (s.warmWait.map { ["--warm-wait", String($0)] } ?? []))
        defer { farm.stop() }
        let projects = (0..<s.projects).map { String(format: "aff-%03d", $0) }
        try await farm.createProjects(projects)
        farm.sayUp()

        let zipf = ZipfSampler(n: s.projects, s: s.zipf)
        let tracker = BuildTracker()
        let requested = Locked(0)
        let late = Locked(0)
        let failedPosts = Locked<[String]>([])
        let (arrivalStart, allFinal) = try await whileTracking(farm, tracker) {
            try await withProgress({
                let (r, f) = await (tracker.runningCount, tracker.finalCount)
                return "requested \(requested.value), started \(r), ended \(f) of \(s.builds)"
            }) {
                let clock = ContinuousClock()
                let start = clock.now
                let startDate = Date()
                var due = start
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for _ in 0..<s.builds {
                        // Exponential gaps: a Poisson process at `rate`, on an absolute schedule.
                        due = due + .milliseconds(Int((-log(1 - Double.random(in: 0..<1)) / rate * 1000).rounded()))
                        if clock.now < due { try await Task.sleep(until: due, clock: clock) } else { late.add(1) }
                        let project = projects[zipf.draw()]
                        group.addTask {
                            do {
                                _ = try await farm.api.requestBuild(project)
                                requested.add(1)
                            } catch {
                                failedPosts.withLock { $0.append("\(error)") }
                            }
                        }
                    }
                    try await group.waitForAll()
                }
                let all = try await tracker.waitFinals(requested.value, timeout: .seconds(600))
                return (startDate, all)
            }
        }

        // The homes as the scheduler's ring sees them: the same members (id, weight =
        // capacity, as registered) and virtual nodes.
        let agentInfos = try await farm.etcd.range(prefix: farm.keys.agents).kvs.compactMap { try? KilnJSON.decode(AgentInfo.self, from: $0.value) }
        let ring = HashRing(members: agentInfos.map { .init(id: $0.id, weight: $0.capacity) }, virtualNodes: 64)
        let finals = await tracker.finals
        let ran = finals.filter { $0.status == .succeeded && $0.agent != nil }
        let rank = Dictionary(uniqueKeysWithValues: projects.enumerated().map { ($1, $0) })
        func onHome(_ builds: [Build]) -> (Int, Int) { (builds.filter { $0.agent == ring.home(of: $0.project) }.count, builds.count) }
        let (home, total) = onHome(ran)
        let share = total > 0 ? Double(home) / Double(total) : .nan

        // Where the misses come from: by popularity.
        var byRank: [String] = []
        for (label, range) in [("most popular project", 0..<1), ("ranks 2–10", 1..<10), ("ranks 11–\(s.projects)", 10..<s.projects)] {
            let group = ran.filter { range.contains(rank[$0.project] ?? -1) }
            let (h, t) = onHome(group)
            byRank.append("\(label): \(t) builds (\(Fmt.pct(Double(t) / Double(max(1, total)))) of all), \(Fmt.pct(t > 0 ? Double(h) / Double(t) : .nan)) on their home")
        }
        // The load the farm actually carried, and how long builds waited.
        let starts = ran.compactMap(\.startedAt), ends = ran.compactMap(\.finishedAt)
        let busy = ran.reduce(0.0) { sum, b in sum + (b.finishedAt.flatMap { f in b.startedAt.map { f.timeIntervalSince($0) } } ?? 0) }
        let span = (ends.max() ?? arrivalStart).timeIntervalSince(starts.min() ?? arrivalStart)
        let carried = span > 0 ? busy / span / Double(slots) : .nan
        let waits = Samples(ran.compactMap { b in b.startedAt.map { $0.timeIntervalSince(b.createdAt) * 1000 } })
        let perAgent = Dictionary(grouping: ran, by: { $0.agent! }).mapValues(\.count)
        // The load each agent carried: its busy slot-seconds over the run; max / average over
        // the agents (an agent that ran nothing counts as 0).
        var busyPerAgent: [String: Double] = Dictionary(uniqueKeysWithValues: agentInfos.map { ($0.id, 0) })
        for b in ran { if let f = b.finishedAt, let st = b.startedAt { busyPerAgent[b.agent!, default: 0] += f.timeIntervalSince(st) } }
        let meanBusy = busyPerAgent.values.reduce(0, +) / Double(max(1, busyPerAgent.count))
        let maxOverAvg = meanBusy > 0 ? (busyPerAgent.values.max() ?? 0) / meanBusy : .nan
        // The most builds one agent ran at once, as the records' start and end times show.
        var peak = 0
        var events: [(Date, Int, String)] = []
        for b in ran { if let st = b.startedAt, let f = b.finishedAt { events += [(st, 1, b.agent!), (f, -1, b.agent!)] } }
        var now: [String: Int] = [:]
        for (_, d, a) in events.sorted(by: { $0.0 != $1.0 ? $0.0 < $1.0 : $0.1 < $1.1 }) {
            now[a, default: 0] += d
            peak = max(peak, now[a] ?? 0)
        }
        // What affinity is for: a build that runs where its project ran before finds its git
        // mirror and caches warm. In start order, each build is warm if its agent had started a
        // build of the same project earlier in the run (the first build of each project is
        // cold everywhere, so it is left out). That is also when a simulated agent starts
        // publishing the project as warm (`DiskKeeper.ran`), which the scheduler places by.
        var seen: [String: Set<String>] = [:]
        var warm = 0, comparable = 0
        for b in ran.sorted(by: { ($0.startedAt ?? .distantFuture) < ($1.startedAt ?? .distantFuture) }) {
            if let agents = seen[b.project] {
                comparable += 1
                if agents.contains(b.agent!) { warm += 1 }
            }
            seen[b.project, default: []].insert(b.agent!)
        }
        let warmShare = comparable > 0 ? Double(warm) / Double(comparable) : .nan
        let cold = Self.coldBuilds(ran, ring: ring, capacity: Dictionary(uniqueKeysWithValues: agentInfos.map { ($0.id, $0.capacity) }), c: s.loadFactor)
        let warmWait = s.warmWait ?? Dispatcher.Configuration.defaultWarmWait
        let agentsPerProject = projects.prefix(10).map { seen[$0]?.count ?? 0 }

        // What placement on the home could reach at best with this popularity: each home
        // agent runs at most its capacity (or its bounded-load bound at the mean load) of its
        // projects' offered load; the rest must run elsewhere or wait. Fluctuations only lower it.
        var offered: [String: Double] = [:]
        for (k, p) in projects.enumerated() { if let h = ring.home(of: p) { offered[h, default: 0] += rate * zipf.share(k) * duration.mean } }
        let totalOffered = offered.values.reduce(0, +)
        let meanBound = Double(min(s.capacity, Int((s.loadFactor * (s.load * Double(slots) + 1) * Double(s.capacity) / Double(slots)).rounded(.up))))
        let capBound = offered.values.reduce(0) { $0 + min($1, Double(s.capacity)) } / totalOffered
        let loadBound = offered.values.reduce(0) { $0 + min($1, meanBound) } / totalOffered
        let topHome = offered[ring.home(of: projects[0]) ?? ""] ?? 0

        var report = PhaseReport("Cache affinity under normal load")
        report.setup = [
            "fresh etcd, `kiln scheduler --load-factor \(s.loadFactor)\(s.warmWait.map { " --warm-wait \($0)" } ?? "")` (bounded loads, c = \(s.loadFactor); a build that would go cold waits up to \(Fmt.s(warmWait)) for its home or a warm agent\(s.warmWait == nil ? ", the default" : "")), \(s.agents) × `kiln agent --simulate \(s.simulate) --capacity \(s.capacity)` (\(slots) slots)",
            "\(s.projects) projects, popularity Zipf(\(s.zipf)) (the most popular one draws \(Fmt.pct(zipf.share(0))) of the builds); \(s.builds) builds arriving as a Poisson process at \(String(format: "%.1f", rate))/s = \(s.load) × \(slots) slots / \(Fmt.s(duration.mean)) mean duration",
            "home agent = `HashRing(members: agents as registered (id, weight = capacity), virtualNodes: 64).home(of: project)`, the scheduler's ring with every agent free; where a build ran = its final record's `agent`",
        ]
        report.figures = [
            Figure("builds that ran on an agent where their project had run before (warm mirror and caches; first build of each project left out)",
                   "\(Fmt.pct(warmShare)) (\(warm) of \(comparable))", target: "≥ 97 %", met: warmShare >= 0.97),
            Figure("builds that ran on their project's home agent", "\(Fmt.pct(share)) (\(home) of \(total))"),
            Figure("builds started on an agent already running its capacity", "\(cold.overCapacity) of \(ran.count)", target: "0", met: cold.overCapacity == 0),
            Figure("builds started on an agent already at its bound ceil(c × average) = min(capacity, ceil(c × (m + 1) × w / W)) (issue 3's max/average ≤ c, held as a bound at each placement): an estimate from the records' start and end times, which see neither the assignments not yet started nor the ended builds whose task the scheduler still counts",
                   "\(cold.overBound) of \(ran.count); highest running / bound at a start \(String(format: "%.2f", cold.peakOverBound))"),
            Figure("max / average load per agent (busy slot-seconds over the run; not bounded by c: integer bounds allow 3 at an average of 2 running)", String(format: "%.3f", maxOverAvg)),
            Figure("most builds one agent ran at once (its bound at the mean load: \(Int(meanBound)), capacity \(s.capacity))", "\(peak)"),
            Figure("average load carried (busy slot-seconds / span / slots)", Fmt.pct(carried)),
            Figure("queue wait (created → agent starts it), p50 / p99", "\(Fmt.ms(waits.p50)) / \(Fmt.ms(waits.p99))"),
            Figure("queue wait of the builds that went cold (first builds left out), p50 / p99", cold.waits.isEmpty ? "none" : "\(Fmt.ms(cold.waits.p50)) / \(Fmt.ms(cold.waits.p99))"),
        ]
        report.notes = ["where the \(cold.total) cold builds (first builds left out) come from, by the records' start and end times: " +
            "\(cold.onlyHome) had no agent warm for their project but its home (a first overflow), \(cold.allWarmFull) found their home and every warm agent at its bound, " +
            "\(cold.roomLeft) started while their home or a warm agent had room by the records (the scheduler's view lagged behind the records, or the wait ran out as a slot freed); " +
            "their home was at its bound for \(cold.homeFull) of them; \(cold.projects) projects went cold at least once; by popularity: \(cold.byRank(rank, projects: s.projects))",
            "first builds of a project (cold by definition, left out of the warm share): \(seen.count)"]
        report.notes += byRank + [
            "at best, even with no fluctuation, a home agent runs only up to its capacity of its projects' offered load: that caps the share on the home at \(Fmt.pct(capBound)); with bounded loads (c = \(s.loadFactor), at most \(Int(meanBound)) builds an agent at the mean load) at \(Fmt.pct(loadBound)). The most popular project's home is offered \(String(format: "%.1f", topHome)) builds at once on average, for \(s.capacity) slots",
            "builds per agent: min \(perAgent.values.min() ?? 0), max \(perAgent.values.max() ?? 0)",
            "agents each of the 10 most popular projects ran on: \(agentsPerProject.map(String.init).joined(separator: ", ")) (of \(s.agents))",
            "requested \(requested.value) (failed POSTs \(failedPosts.withLock { $0.count })), ended \(finals.count), succeeded \(ran.count)\(allFinal ? "" : "; NOT all ended within 600 s"); arrivals sent late because the bench fell behind its schedule: \(late.value)",
        ]
        say(report.printed())
        return report
    }
}

extension AffinityPhase {
    /// The builds that went cold (not the first of their project), and what the farm looked
    /// like when each started, rebuilt from the records' start and end times.
    struct ColdBuilds {
        var total = 0
        /// No agent was warm for the project but its home.
        var onlyHome = 0
        /// The home and every warm agent were at their bound.
        var allWarmFull = 0
        /// The home or a warm agent had room.
        var roomLeft = 0
        var homeFull = 0
        var projects = 0
        var waits = Samples()
        var ranks: [String: Int] = [:]
        /// Starts on an agent that already ran its bound, and the highest running / bound seen.
        var overBound = 0
        var overCapacity = 0
        var peakOverBound = 0.0

        func byRank(_ rank: [String: Int], projects n: Int) -> String {
            let groups = [("the most popular", 0..<1), ("ranks 2–10", 1..<10), ("ranks 11–\(n)", 10..<n)]
            return groups.map { label, range in "\(ranks.filter { range.contains(rank[$0.key] ?? -1) }.values.reduce(0, +)) of \(label)" }.joined(separator: ", ")
        }
    }

    static func coldBuilds(_ ran: [Build], ring: HashRing, capacity: [String: Int], c: Double) -> ColdBuilds {
        let spans = ran.compactMap { b -> (id: String, agent: String, start: Date, end: Date)? in
            guard let a = b.agent, let st = b.startedAt, let f = b.finishedAt else { return nil }
            return (b.id, a, st, f)
        }
        let weight = capacity.values.reduce(0, +)
        var result = ColdBuilds()
        var seen: [String: Set<String>] = [:]
        var coldProjects: Set<String> = []
        for b in ran.sorted(by: { ($0.startedAt ?? .distantFuture) < ($1.startedAt ?? .distantFuture) }) {
            guard let agent = b.agent, let t = b.startedAt else { continue }
            // What ran at `t`, this build left out.
            var load: [String: Int] = [:]
            for x in spans where x.id != b.id && x.start <= t && t < x.end { load[x.agent, default: 0] += 1 }
            let m = load.values.reduce(0, +)
            func bound(_ a: String) -> Int {
                let w = capacity[a] ?? 0
                return min(w, max(1, Int((c * Double(m + 1) * Double(w) / Double(max(1, weight))).rounded(.up))))
            }
            let full = { (a: String) in load[a, default: 0] >= bound(a) }
            if full(agent) { result.overBound += 1 }
            if load[agent, default: 0] >= capacity[agent] ?? 0 { result.overCapacity += 1 }
            result.peakOverBound = max(result.peakOverBound, Double(load[agent, default: 0] + 1) / Double(max(1, bound(agent))))
            defer { seen[b.project, default: []].insert(agent) }
            guard let warm = seen[b.project], !warm.contains(agent) else { continue }
            result.total += 1
            coldProjects.insert(b.project)
            result.ranks[b.project, default: 0] += 1
            result.waits.add(t.timeIntervalSince(b.createdAt) * 1000)
            let home = ring.home(of: b.project) ?? ""
            if full(home) { result.homeFull += 1 }
            if !full(home) || warm.contains(where: { !full($0) }) {
                result.roomLeft += 1
            } else if warm.subtracting([home]).isEmpty {
                result.onlyHome += 1
            } else {
                result.allWarmFull += 1
            }
        }
        result.projects = coldProjects.count
        return result
    }
}

extension SimulatedDuration {
    var mean: Double { (lower + upper) / 2 }
}
