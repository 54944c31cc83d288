import Foundation
import KilnCore
import LocalFarm

/// Phase 2, dispatch latency: from the API accepting a build (its POST returned) to the
/// agent starting it, one build at a time on an otherwise idle farm.
enum LatencyPhase {
    struct Settings: Sendable {
        var builds = 300
        var warmup = 10
        var agents = 20
        var capacity = 4
        var projects = 50
    }

    /// The phase on one farm per entry of `etcdAuth` (authentication on or off), all up at
    /// once: the builds go to the farms in turn, the order swapped every round, so a change of
    /// the machine's load during the run weighs on every farm alike. Returns a report per farm
    /// and, for two, their comparison.
    static func run(rig: BenchRig, floor: Samples, settings s: Settings, etcdAuth modes: [Bool]) async throws -> [PhaseReport] {
        say("== dispatch latency, etcd authentication \(modes.map { $0 ? "on" : "off" }.joined(separator: " and ")): \(s.agents) simulated agents (--simulate 0, capacity \(s.capacity)) per farm, \(s.builds) builds one at a time over \(s.projects) projects\(modes.count > 1 ? ", alternating between the farms" : "")")
        var farms: [BenchFarm] = []
        defer { for farm in farms { farm.stop() } }
        for auth in modes {
            let farm = try await rig.startFarm(auth ? "latency-auth" : "latency-noauth", agents: s.agents,
                                               .init(capacity: s.capacity, ttl: 10, simulate: "0"), etcdAuth: auth)
            farms.append(farm)
            try await farm.createProjects(projects(s))
            farm.sayUp()
        }
        let measured = try await measure(farms, settings: s)
        var reports = zip(modes, measured).map { report(etcdAuth: $0, samples: $1, floor: floor, settings: s, alongside: modes.count > 1) }
        if modes == [false, true] {
            reports.append(compare(off: measured[0].map(\.started), on: measured[1].map(\.started)))
        }
        return reports
    }

    struct Sample: Sendable { var started: Double; var seen: Double; var post: Double }

    static func projects(_ s: Settings) -> [String] { (0..<s.projects).map { String(format: "lat-%02d", $0) } }

    /// `s.warmup + s.builds` builds on each farm, one at a time across all farms.
    static func measure(_ farms: [BenchFarm], settings s: Settings) async throws -> [[Sample]] {
        let projects = projects(s)
        let done = Locked<[[Sample]]>(Array(repeating: [], count: farms.count))
        let trackers = farms.map { _ in BuildTracker() }
        // Each farm's tracker follows its own etcd for as long as the builds go on.
        var body: @Sendable () async throws -> Void = {
            try await withProgress({ "\(done.withLock { $0.map(\.count).min() ?? 0 }) of \(s.builds) builds measured per farm" }) {
                for i in 0..<(s.warmup + s.builds) {
                    let order = i % 2 == 0 ? Array(farms.indices) : Array(farms.indices.reversed())
                    for f in order {
                        let sample = try await one(farms[f], trackers[f], project: projects[i % projects.count])
                        if i >= s.warmup { done.withLock { $0[f].append(sample) } }
                    }
                }
            }
        }
        for (farm, tracker) in zip(farms, trackers) {
            let inner = body
            body = { try await whileTracking(farm, tracker, inner) }
        }
        try await body()
        return done.withLock { $0 }
    }

    /// One build: requested, waited for until it ends; its times from the POST's answer.
    static func one(_ farm: BenchFarm, _ tracker: BuildTracker, project: String) async throws -> Sample {
        let sent = Date()
        let (build, accepted) = try await farm.api.requestBuild(project)
        guard let seen = try await tracker.waitFinal(build.id, timeout: .seconds(30)), let final = seen.final else {
            throw FarmError("build \(build.id) did not end within 30 s on an idle farm; see \(farm.logs)")
        }
        guard final.status == .succeeded, let startedAt = final.startedAt, let runningSeen = seen.runningSeenAt else {
            throw FarmError("build \(build.id) ended \(final.status.rawValue) (\(final.error ?? "")) instead of succeeding")
        }
        return Sample(started: startedAt.timeIntervalSince(accepted) * 1000,
                      seen: runningSeen.timeIntervalSince(accepted) * 1000,
                      post: accepted.timeIntervalSince(sent) * 1000)
    }

    static func report(etcdAuth: Bool, samples all: [Sample], floor: Samples, settings s: Settings, alongside: Bool) -> PhaseReport {
        let auth = etcdAuth ? "on" : "off"
        let started = Samples(all.map(\.started)), seen = Samples(all.map(\.seen)), post = Samples(all.map(\.post))
        let target = 3 * floor.p99
        var report = PhaseReport("Dispatch latency: build accepted → agent starts it (etcd authentication \(auth))")
        report.setup = [
            alongside
                ? "this farm and the other of this phase up at once, each build going to them in turn (the order swapped every round)"
                : "one farm",
            etcdAuth
                ? "etcd authentication on: the scheduler and each agent authenticate as their own etcd user (least-privilege roles, `EtcdAccess`) and send the token on every call"
                : "etcd authentication off: every process anonymous (as before issue 11)",
            "fresh etcd, `kiln scheduler`, \(s.agents) × `kiln agent --simulate 0 --capacity \(s.capacity)`, each its own process",
            "\(s.builds) builds requested one at a time through `POST /api/v1/projects/{name}/builds`, round-robin over \(s.projects) projects; the next is requested once the previous has ended (so no sample overlaps another's writes); \(s.warmup) warm-up builds dropped",
            "start: POST answer received (the queue entry is committed by then); end: the `startedAt` the agent writes in the record with status running, which it stamps when the task reaches its runner (since 1f513fd; before, just before the write, after reading the record). Both are this machine's wall clock (CLOCK_REALTIME, shared by the processes); `startedAt` is kept to the millisecond",
            "for comparison: POST answer → this process's watch on /kiln/builds/ delivers the running record (the later of the two clocks: it adds the agent's read of the record, its running write and one watch delivery)",
        ]
        report.figures = [
            Figure("accepted → agent starts it (startedAt), p50", Fmt.ms(started.p50)),
            Figure("accepted → agent starts it (startedAt), p99", Fmt.ms(started.p99), target: "≤ 3 × floor p99 = \(Fmt.ms(target))", met: started.p99 <= target),
            Figure("accepted → running record seen on a watch, p50 / p99", "\(Fmt.ms(seen.p50)) / \(Fmt.ms(seen.p99))"),
            Figure("POST round trip (request sent → answer), p50 / p99", "\(Fmt.ms(post.p50)) / \(Fmt.ms(post.p99))"),
            Figure("floor p50 / p99 (phase 1)", "\(Fmt.ms(floor.p50)) / \(Fmt.ms(floor.p99))"),
        ]
        report.notes = ["accepted → startedAt: \(started.summary)", "samples below 0 ms (the agent started it before the POST answer arrived): \(all.filter { $0.started < 0 }.count)"]
        say(report.printed())
        return report
    }

    /// Authentication on against off, from the two runs of the phase.
    static func compare(off offMS: [Double], on onMS: [Double]) -> PhaseReport {
        let off = Samples(offMS), on = Samples(onMS)
        var report = PhaseReport("Dispatch latency with etcd authentication against without")
        report.setup = ["the two farms above, measured in this run build by build in turn: accepted → agent starts it (startedAt)"]
        report.figures = [
            Figure("p50 off / on", "\(Fmt.ms(off.p50)) / \(Fmt.ms(on.p50))"),
            Figure("p99 off / on", "\(Fmt.ms(off.p99)) / \(Fmt.ms(on.p99))"),
            Figure("p50 on − off", Fmt.ms(on.p50 - off.p50)),
            Figure("p99 on − off", Fmt.ms(on.p99 - off.p99)),
        ]
        say(report.printed())
        return report
    }
}
