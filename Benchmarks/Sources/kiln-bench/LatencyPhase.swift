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

    /// The phase on a farm with etcd authentication on or off; the report and the samples of
    /// accepted → startedAt, for ``compare(off:on:)``.
    static func run(rig: BenchRig, floor: Samples, settings s: Settings, etcdAuth: Bool) async throws -> (PhaseReport, Samples) {
        let auth = etcdAuth ? "on" : "off"
        say("== dispatch latency, etcd authentication \(auth): \(s.agents) simulated agents (--simulate 0, capacity \(s.capacity)), \(s.builds) builds one at a time over \(s.projects) projects")
        let farm = try await rig.startFarm(etcdAuth ? "latency-auth" : "latency-noauth", agents: s.agents,
                                           .init(capacity: s.capacity, ttl: 10, simulate: "0"), etcdAuth: etcdAuth)
        defer { farm.stop() }
        let projects = (0..<s.projects).map { String(format: "lat-%02d", $0) }
        try await farm.createProjects(projects)
        farm.sayUp()

        struct Sample: Sendable { var started: Double; var seen: Double; var post: Double }
        let done = Locked<[Sample]>([])
        let tracker = BuildTracker()
        try await whileTracking(farm, tracker) {
            try await withProgress({ "\(done.withLock { $0.count }) of \(s.builds) builds measured" }) {
                for i in 0..<(s.warmup + s.builds) {
                    let sent = Date()
                    let (build, accepted) = try await farm.api.requestBuild(projects[i % projects.count])
                    guard let seen = try await tracker.waitFinal(build.id, timeout: .seconds(30)), let final = seen.final else {
                        throw FarmError("build \(build.id) did not end within 30 s on an idle farm; see \(farm.logs)")
                    }
                    guard final.status == .succeeded, let startedAt = final.startedAt, let runningSeen = seen.runningSeenAt else {
                        throw FarmError("build \(build.id) ended \(final.status.rawValue) (\(final.error ?? "")) instead of succeeding")
                    }
                    if i < s.warmup { continue }
                    let sample = Sample(started: startedAt.timeIntervalSince(accepted) * 1000,
                                        seen: runningSeen.timeIntervalSince(accepted) * 1000,
                                        post: accepted.timeIntervalSince(sent) * 1000)
                    done.withLock { $0.append(sample) }
                }
            }
        }
        let all = done.withLock { $0 }
        let started = Samples(all.map(\.started)), seen = Samples(all.map(\.seen)), post = Samples(all.map(\.post))
        let target = 3 * floor.p99
        var report = PhaseReport("Dispatch latency: build accepted → agent starts it (etcd authentication \(auth))")
        report.setup = [
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
        return (report, started)
    }

    /// Authentication on against off, from the two runs of the phase.
    static func compare(off: Samples, on: Samples) -> PhaseReport {
        var report = PhaseReport("Dispatch latency with etcd authentication against without")
        report.setup = ["the two latency runs above, in this run, one after the other on fresh farms (off first): accepted → agent starts it (startedAt)"]
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
