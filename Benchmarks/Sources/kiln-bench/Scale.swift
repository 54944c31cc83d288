import ArgumentParser
import AsyncHTTPClient
import BuildAgent
import Etcd
import FarmHarness
import Foundation
import KilnCore
import LocalFarm
import Logging
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

extension KilnBench {
    /// Issue 17, point 4: what many builders cost etcd. Hundreds of simulated agents run in this
    /// process (the real `AgentService`, each its own etcd user, lease and task watch), against a
    /// real etcd with authentication and `kiln scheduler` processes; then simulated builds.
    struct Scale: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Hundreds of simulated agents and thousands of simulated builds: what each costs etcd (docs/scale.md).",
            discussion: """
            Starts a real etcd with authentication on (as `kiln up` runs it) and --schedulers `kiln \
            scheduler` processes, on free loopback ports, stopped by PID at the end, on error and on \
            Ctrl-C. The --agents simulated agents run INSIDE this process (500 processes would need \
            about 21 GB): each is the real `AgentService` with `simulate` (registration under a lease \
            renewed every third of --ttl, a watch on its task prefix, guarded writes), logged in as \
            its own etcd user, its etcd client on an HTTPClient shared by --agents-per-client agents \
            (the etcd client's pool is soft-limited to 256 connections per host, and each agent's \
            watch holds one). The agents' users are all made BEFORE the clock starts: making a user \
            makes every client's token stale at once.
            The agents start --start-rate a second (with etcd's bcrypt cost at its default 10, 500 logins at once stalled etcd here; at cost 4, which LocalFarm's etcd runs with, 500 at once registered in 3 s).
            Steps and figures:
              1 register  from the first agent started until all are in /kiln/agents/
                          (each logs in: etcd checks a bcrypt hash per login)
              2 idle      once etcd's revision stands still for 5 s, over --idle seconds:
                          etcd revisions/s, raft proposals/s, lease keep-alive requests/s,
                          gRPC calls/s, watchers and watch streams (etcd /metrics), etcd
                          CPU (utime+stime of /proc/PID/stat) and RSS, the schedulers' CPU,
                          this process's CPU (the agents); keys and bytes under
                          /kiln/agents/
              3 latency   build accepted → agent starts it, one build at a time
              4 builds    --builds simulated builds over --projects projects, in equal
                          steps at each of --rates builds/s: per step the queue wait
                          (accepted → startedAt) p50/p99, etcd revisions per build, watch
                          events sent per build (etcd_debugging_mvcc_events_total), bytes
                          etcd sent per build; then keys and bytes kept per build and per
                          project, by prefix, and etcd's in-use size after a compaction
              5 baseline  all but --baseline-agents agents stopped: the idle figures and
                          the latency again on the same farm; per additional agent, the
                          difference
              6 ceiling   etcd's guarded transactions/s, 1 client and --txn-clients
            Results are printed and written to Benchmarks/results/scale-DATE.md.

            Example (in Benchmarks/, then from the repository):
              swift build -c release --product kiln
              swift build -c release --product kiln-bench
              Benchmarks/.build/release/kiln-bench scale --kiln Benchmarks/.build/release/kiln
              Benchmarks/.build/release/kiln-bench scale --agents 200 --builds 500 --rates 10,40
            """)

        @Option(help: "Simulated agents, in this process.") var agents: Int = 500
        @Option(help: "Agents sharing one HTTPClient (each holds a watch; the pool is soft-limited to 256 connections per host).") var agentsPerClient: Int = 100
        @Option(help: "`kiln scheduler` processes (one leads, the others stand by and serve the API).") var schedulers: Int = 2
        @Option(help: "Builds each agent runs at once.") var capacity: Int = 2
        @Option(help: ArgumentHelp("The agents' lease TTL (kiln agent --ttl; renewed every third of it).", valueName: "seconds")) var ttl: Int = 10
        @Option(help: ArgumentHelp("Seconds each simulated build lasts (kiln agent --simulate).", valueName: "seconds")) var duration: String = "0.1-0.5"
        @Option(help: "Agents' etcd users made at once before the clock starts.") var userConcurrency: Int = 8
        @Option(help: ArgumentHelp("Agents started per second (each logs in to etcd: a bcrypt check of its password; at bcrypt cost 10, 500 at once stalled etcd here, at cost 4 they took 3 s).", valueName: "per-second")) var startRate: Double = 10
        @Option(help: ArgumentHelp("Length of each idle window.", valueName: "seconds")) var idle: Double = 30
        @Option(help: "Latency: builds measured (one at a time), with all agents and again with --baseline-agents.") var latencyBuilds: Int = 200
        @Option(help: "Agents left for the baseline (the farm bench's latency phase uses 20).") var baselineAgents: Int = 20
        @Option(help: "Simulated builds of the builds step, split equally over --rates.") var builds: Int = 2000
        @Option(help: "Projects of the builds step, round robin.") var projects: Int = 200
        @Option(help: ArgumentHelp("Builds requested per second, one step each, comma-separated.", valueName: "rates")) var rates: String = "10,20,40,80"
        @Option(help: "Concurrent clients requesting builds.") var clients: Int = 16
        @Option(help: "Ceiling: concurrent clients of etcd's transaction rate.") var txnClients: Int = 32
        @Option(help: ArgumentHelp("The kiln executable of the schedulers (env KILN_BIN; default: the repository's .build/\(Repository.configuration)/kiln).", valueName: "path"))
        var kiln: String = env("KILN_BIN", Repository.kiln)
        @Option(help: ArgumentHelp("Folder of the result file.", valueName: "dir")) var resultsDir: String = Repository.results
        @Option(help: ArgumentHelp("Log level of the schedulers (their logs are in the temp folder).", valueName: "level")) var logLevel: String = "warning"
        @Flag(help: "Keep the temp folder (etcd data and the schedulers' logs) after a successful run.") var keep = false

        var rateList: [Double] { rates.split(separator: ",").compactMap { Double($0.trimmingCharacters(in: .whitespaces)) } }

        func validate() throws {
            guard agents > 0, agentsPerClient > 0, schedulers > 0, capacity > 0, userConcurrency > 0, clients > 0, txnClients > 0, projects > 0 else {
                throw ValidationError("counts must be positive")
            }
            guard agentsPerClient <= 200 else { throw ValidationError("--agents-per-client at most 200: each agent holds a watch connection, and the pool is soft-limited to 256 per host") }
            guard baselineAgents > 0, baselineAgents < agents else { throw ValidationError("--baseline-agents must be between 1 and --agents − 1") }
            guard startRate > 0 else { throw ValidationError("--start-rate must be above 0 agents a second") }
            guard ttl >= 2 else { throw ValidationError("--ttl must be at least 2 seconds (etcd's shortest useful lease)") }
            guard idle >= 5 else { throw ValidationError("--idle must be at least 5 seconds (a lease renewal cycle at the default TTL is 3.3 s)") }
            guard SimulatedDuration(duration) != nil else { throw ValidationError("--duration must be seconds or a range such as 0.1-0.5, not '\(duration)'") }
            let r = rateList
            guard !r.isEmpty, r.count == rates.split(separator: ",").count, r.allSatisfy({ $0 > 0 }) else {
                throw ValidationError("--rates must be builds per second, comma-separated, each above 0 (for example 10,20,40,80), not '\(rates)'")
            }
            guard builds >= r.count else { throw ValidationError("--builds must be at least one per rate") }
            guard FileManager.default.isExecutableFile(atPath: kiln) else {
                throw ValidationError("no kiln executable at \(kiln): \(Repository.buildKiln), or name one with --kiln or KILN_BIN")
            }
        }

        func run() async throws {
            bootstrapLogging()
            let limit = ProcStat.raiseFileLimit()
            let root = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-bench-scale-\(UUID().uuidString.prefix(8))")
            let rig = try BenchRig(root: root, kiln: kiln, logLevel: logLevel)
            let startedAt = Date()
            let load = ProcStat.loadAverage()
            say("kiln-bench scale: \(agents) in-process simulated agents, \(schedulers) schedulers; \(ProcessInfo.processInfo.activeProcessorCount) cores, load average \(load), open files \(limit), \(Repository.configuration) build of kiln-bench, kiln \(kiln); data and logs in \(root.path)")
            let reports = Locked<[PhaseReport]>([])
            let loadAtEnd = Locked("?")
            try await rig.runInterruptibly("kiln-bench scale", keep: keep, reports: reports,
                                           write: { try writeResults($0, startedAt: startedAt, load: load, loadAtEnd: loadAtEnd.value, complete: $1) }) {
                let sim = SimulatedAgents()
                do {
                    try await steps(rig, sim: sim) { r in reports.withLock { $0.append(r) } }
                } catch {
                    await sim.stopAll()
                    await sim.shutdownClients()
                    loadAtEnd.value = ProcStat.loadAverage()
                    throw error
                }
                await sim.stopAll()
                await sim.shutdownClients()
                loadAtEnd.value = ProcStat.loadAverage()
            }
        }

        // MARK: the steps

        func steps(_ rig: BenchRig, sim: SimulatedAgents, _ done: @Sendable (PhaseReport) -> Void) async throws {
            let clock = ContinuousClock()
            say("== farm: etcd with authentication, \(schedulers) × `kiln scheduler`")
            let farm = try await rig.startFarm("scale", agents: 0, .init(capacity: capacity, ttl: ttl, simulate: duration))
            for k in stride(from: 2, through: schedulers, by: 1) { try await farm.processes.startScheduler("scheduler-\(k)") }
            let etcd = farm.etcd
            let keys = farm.keys
            guard let users = farm.processes.etcdUsers else { throw FarmError("the farm has etcd authentication off; this bench measures it on") }
            let s0 = try await Inventory.read(etcd, prefix: keys.prefix + "/")
            let buildProjects = (0..<projects).map { String(format: "s-%03d", $0) }
            let latency = LatencyPhase.Settings(builds: latencyBuilds, warmup: 10, agents: agents, capacity: capacity, projects: 50)
            try await farm.createProjects(buildProjects + LatencyPhase.projects(latency))
            let s1 = try await Inventory.read(etcd, prefix: keys.prefix + "/")
            let projectCount = buildProjects.count + latency.projects

            // 1. Users first (each user made stales every token), then the agents on the clock.
            let ids = (1...agents).map { "agent-\($0)" }
            say("  making \(agents) etcd users (\(userConcurrency) at once), before the clock starts")
            let usersStart = clock.now
            try await forEach(ids, concurrency: userConcurrency) { id in _ = try await users.ensure(.agent(id)) }
            let usersTime = (clock.now - usersStart).seconds
            let credentials = try ids.map { try users.credentials(.agent($0)) }
            // The schedulers' tokens went stale with the first user: let them log in again now.
            try await Task.sleep(for: .seconds(2))

            say("== register: starting \(agents) agents in this process, \(agentsPerClient) per HTTPClient")
            let httpClients = sim.makeClients(count: (agents + agentsPerClient - 1) / agentsPerClient)
            let regStart = clock.now
            for (i, id) in ids.enumerated() {
                try await Task.sleep(until: regStart + .seconds(Double(i) / startRate))
                var config = AgentConfiguration(id: id, capacity: capacity, ttlSeconds: Int64(ttl), dataDir: rig.root.appendingPathComponent("scale/sim-agents/\(id)"),
                                                etcdEndpoint: farm.processes.etcdEndpoint, simulate: SimulatedDuration(duration), kilnExecutable: nil)
                config.etcdCredentials = credentials[i]
                sim.start(id, AgentService(configuration: config, httpClient: httpClients[i / agentsPerClient], logger: Logger(label: "kiln.scale.\(id)")))
            }
            let startedAll = (clock.now - regStart).seconds
            var registered: Int64 = 0
            var countTimeouts = 0
            let deadline = clock.now + .seconds(900)
            while true {
                // A loaded etcd may miss the 10 s request timeout: count that and look again.
                guard let n = try? await etcd.count(prefix: keys.agents) else {
                    countTimeouts += 1
                    continue
                }
                registered = n
                if registered >= agents { break }
                if let failed = sim.failures.first { throw FarmError("an agent stopped while registering: \(failed)") }
                guard clock.now < deadline else { throw FarmError("only \(registered) of \(agents) agents registered within 900 s") }
                try await Task.sleep(for: .milliseconds(100))
            }
            let regTime = (clock.now - regStart).seconds
            say("  all \(agents) registered after \(Fmt.s(regTime)), \(Fmt.s(regTime - startedAll)) after the last was started")
            var reg = PhaseReport("Registration: \(agents) simulated agents")
            reg.setup = [
                "etcd with authentication (\(schedulers) × `kiln scheduler`, each its own etcd user), \(agents) × `AgentService` with `simulate \(duration)`, capacity \(capacity), `--ttl \(ttl)`, in this process, \(httpClients.count) HTTPClients of \(agentsPerClient) agents",
                "each agent's etcd user and role made by `EtcdUsers.ensure` before the clock (\(userConcurrency) at once); the agents started \(String(format: "%.0f", startRate)) a second (each logs in to etcd: a bcrypt check of its password, at cost 4 in LocalFarm's etcd; at cost 10, 500 at once stalled etcd on this machine); the clock runs from the first agent started to the count of /kiln/agents/ reaching \(agents) (polled every 100 ms)",
            ]
            reg.figures = [
                Figure("etcd users and roles made, before the clock", "\(Fmt.s(usersTime)) (\(Fmt.ms(usersTime * 1000 / Double(agents))) per agent)"),
                Figure("agents started (the services' tasks made), \(String(format: "%.0f", startRate)) a second", Fmt.s(startedAll)),
                Figure("the bench's count of /kiln/agents/ timed out (10 s) while they registered", "\(countTimeouts) times"),
                Figure("the last registered, after the last was started", Fmt.s(regTime - startedAll)),
                Figure("all \(agents) registered", Fmt.s(regTime)),
                Figure("registrations per second", String(format: "%.1f /s", Double(agents) / regTime)),
            ]
            say(reg.printed())
            done(reg)

            // 2. Idle with every agent.
            let procs = Procs(farm: farm)
            say("== idle: settling (no revision for 5 s, at most 120 s), then \(Int(idle)) s with nothing to build")
            try await settle(etcd)
            let idleN = try await idleWindow(farm, procs: procs, agentsNow: agents)
            let agentKeys = try await Inventory.read(etcd, prefix: keys.agents)
            var idleReport = idleN.report("Idle: \(agents) agents registered", agents: agents, ttl: ttl, idle: idle)
            idleReport.figures.append(Figure("keys under /kiln/agents/", "\(agentKeys.total.keys) (\(Fmt.bytes(agentKeys.total.bytes)), \(agentKeys.total.bytes / Int64(max(1, agentKeys.total.keys))) B a key with its value)"))
            say(idleReport.printed())
            done(idleReport)

            // 3. Dispatch latency with every agent.
            say("== latency with \(agents) agents: \(latencyBuilds) builds one at a time")
            let latN = try await LatencyPhase.measure([farm], settings: latency)[0]

            // 4. Builds at rising rates.
            let compactedBefore = try await compactAndMeasure(etcd, endpoint: farm.processes.etcdServer.endpoint)
            let s2 = try await Inventory.read(etcd, prefix: keys.prefix + "/")
            let buildReports = try await buildSteps(farm, projects: buildProjects, procs: procs)
            for r in buildReports { done(r) }
            let compactedAfter = try await compactAndMeasure(etcd, endpoint: farm.processes.etcdServer.endpoint)
            let s3 = try await Inventory.read(etcd, prefix: keys.prefix + "/")
            let retained = retainedReport(s0: s0, s1: s1, s2: s2, s3: s3, projects: projectCount, builds: builds,
                                          inUseBefore: compactedBefore, inUseAfter: compactedAfter)
            done(retained)

            // 5. The baseline: the same farm with fewer agents.
            say("== baseline: stopping all but \(baselineAgents) agents")
            let stopped = Array(ids.dropFirst(baselineAgents))
            await sim.stop(stopped)
            let stopDeadline = clock.now + .seconds(120)
            while try await etcd.count(prefix: keys.agents) > Int64(baselineAgents) {
                guard clock.now < stopDeadline else { throw FarmError("stopped agents still registered after 120 s") }
                try await Task.sleep(for: .milliseconds(100))
            }
            try await settle(etcd)
            let idleB = try await idleWindow(farm, procs: procs, agentsNow: baselineAgents)
            let idleBReport = idleB.report("Idle: \(baselineAgents) agents registered (the same farm, after the rest stopped)", agents: baselineAgents, ttl: ttl, idle: idle)
            say(idleBReport.printed())
            done(idleBReport)
            done(marginal(idleN, idleB, agentsN: agents, agentsB: baselineAgents))
            say("== latency with \(baselineAgents) agents: \(latencyBuilds) builds one at a time")
            var latencyB = latency
            latencyB.agents = baselineAgents
            let latB = try await LatencyPhase.measure([farm], settings: latencyB)[0]
            done(latencyReport(latN, latB))

            // 6. etcd's write ceiling on this machine, the agents gone.
            await sim.stopAll()
            say("== ceiling: etcd's guarded transactions per second (1 and \(txnClients) clients)")
            let one = try await ThroughputPhase.txnRate(etcd, clients: 1, total: 1000, clock: clock)
            let many = try await ThroughputPhase.txnRate(etcd, clients: txnClients, total: 8000, clock: clock)
            var ceiling = PhaseReport("etcd's write ceiling here")
            ceiling.setup = ["after the agents stopped, the schedulers idle; each transaction compares a key's version and puts it (the shape of an assignment), as root, authentication on (`ThroughputPhase.txnRate`)"]
            ceiling.figures = [
                Figure("guarded transactions per second, 1 client", Fmt.rate(one)),
                Figure("guarded transactions per second, \(txnClients) concurrent clients", Fmt.rate(many)),
            ]
            say(ceiling.printed())
            done(ceiling)
        }

        /// Waits until etcd's revision has not moved for 5 s (the leader done with what the last
        /// step left it: departed agents, sweeps), at most 120 s.
        func settle(_ etcd: EtcdClient) async throws {
            let clock = ContinuousClock()
            let deadline = clock.now + .seconds(120)
            var last = try await etcd.status(), since = clock.now
            while clock.now < deadline {
                try await Task.sleep(for: .seconds(1))
                let now = try await etcd.status()
                if now != last { last = now; since = clock.now } else if clock.now - since >= .seconds(5) { return }
            }
            say("  note: etcd's revision still moved after 120 s of settling; the idle window is not quiet")
        }

        /// Runs `body` for each of `items`, `concurrency` at once.
        func forEach(_ items: [String], concurrency: Int, _ body: @escaping @Sendable (String) async throws -> Void) async throws {
            try await inParallel(count: items.count, workers: concurrency) { try await body(items[$0]) }
        }

        // MARK: idle

        func idleWindow(_ farm: BenchFarm, procs: Procs, agentsNow: Int) async throws -> IdleFigures {
            let a = try await Snapshot.take(farm, procs: procs)
            try await Task.sleep(for: .seconds(idle))
            let b = try await Snapshot.take(farm, procs: procs)
            let status = try await farm.etcd.memberStatus(of: farm.processes.etcdServer.endpoint)
            return IdleFigures(a: a, b: b, etcdRSS: ProcStat.rss(procs.etcd), schedulerRSS: procs.schedulers.map { ProcStat.rss($0.pid) },
                               selfRSS: ProcStat.rss(getpid()), db: status.dbSizeBytes, inUse: status.dbSizeInUseBytes)
        }

        func marginal(_ n: IdleFigures, _ b: IdleFigures, agentsN: Int, agentsB: Int) -> PhaseReport {
            let extra = Double(agentsN - agentsB)
            func per(_ f: (IdleFigures) -> Double) -> Double { (f(n) - f(b)) / extra }
            var r = PhaseReport("Idle: what one more agent costs (\(agentsN) against \(agentsB) agents, same farm)")
            r.setup = ["(figure with \(agentsN) − figure with \(agentsB)) / \(agentsN - agentsB), from the two idle windows above"]
            r.figures = [
                Figure("etcd revisions/s per agent", String(format: "%.4f", per(\.revisionsPerSecond))),
                Figure("lease keep-alive requests/s per agent", String(format: "%.3f", per(\.keepAlivesPerSecond))),
                Figure("gRPC calls/s per agent (every gateway request)", String(format: "%.3f", per(\.grpcPerSecond))),
                Figure("etcd watchers per agent", String(format: "%.2f", per { Double($0.watchers) })),
                Figure("etcd CPU per agent (cores × 1000)", String(format: "%.3f", per(\.etcdCores) * 1000)),
                Figure("etcd RSS per agent", Fmt.bytes(Int64(per { Double($0.etcdRSS) }))),
                Figure("this process's CPU per agent (the simulated agents; cores × 1000)", String(format: "%.3f", per(\.selfCores) * 1000)),
                Figure("this process's RSS per agent (in-process agent with its HTTP share)", Fmt.bytes(Int64(per { Double($0.selfRSS) }))),
                Figure("schedulers' CPU per agent, all schedulers (cores × 1000)", String(format: "%.3f", per { $0.schedulerCores.reduce(0, +) } * 1000)),
                Figure("bytes etcd sends to clients per agent per second", String(format: "%.0f B/s", per(\.sentBytesPerSecond))),
            ]
            say(r.printed())
            return r
        }

        func latencyReport(_ n: [LatencyPhase.Sample], _ b: [LatencyPhase.Sample]) -> PhaseReport {
            let sn = Samples(n.map(\.started)), sb = Samples(b.map(\.started))
            let wn = Samples(n.map(\.seen)), wb = Samples(b.map(\.seen))
            var r = PhaseReport("Dispatch latency: \(agents) agents against \(baselineAgents), same farm")
            r.setup = [
                "`LatencyPhase.measure` (the farm bench's latency phase) on this farm: \(latencyBuilds) builds requested one at a time through the API, round robin over 50 projects, 10 warm-up builds dropped; the \(agents)-agent run before the builds step, the \(baselineAgents)-agent run after the rest stopped",
                "accepted (POST answer) → `startedAt` the agent stamps when the task reaches its runner (one clock: the agents are in this process)",
            ]
            r.figures = [
                Figure("accepted → agent starts it, p50: \(agents) / \(baselineAgents) agents", "\(Fmt.ms(sn.p50)) / \(Fmt.ms(sb.p50))"),
                Figure("accepted → agent starts it, p99: \(agents) / \(baselineAgents) agents", "\(Fmt.ms(sn.p99)) / \(Fmt.ms(sb.p99))", target: "p99 with \(agents) ≤ 2 × p99 with \(baselineAgents)", met: sn.p99 <= 2 * sb.p99),
                Figure("accepted → running record seen on a watch, p50 / p99: \(agents) agents", "\(Fmt.ms(wn.p50)) / \(Fmt.ms(wn.p99))"),
                Figure("accepted → running record seen on a watch, p50 / p99: \(baselineAgents) agents", "\(Fmt.ms(wb.p50)) / \(Fmt.ms(wb.p99))"),
            ]
            r.notes = ["\(agents) agents: \(sn.summary)", "\(baselineAgents) agents: \(sb.summary)"]
            say(r.printed())
            return r
        }

        // MARK: builds

        func buildSteps(_ farm: BenchFarm, projects: [String], procs: Procs) async throws -> [PhaseReport] {
            let tracker = BuildTracker()
            let perStep = builds / rateList.count
            let requested = Locked(0)
            return try await whileTracking(farm, tracker) {
                var out: [PhaseReport] = []
                for (k, rate) in rateList.enumerated() {
                    let count = k == rateList.count - 1 ? builds - perStep * (rateList.count - 1) : perStep
                    say("== builds, step \(k + 1) of \(rateList.count): \(count) builds at \(rate) /s over \(projects.count) projects")
                    let a = try await Snapshot.take(farm, procs: procs, trackerEvents: await tracker.eventsSeen)
                    let accepted = Locked<[(String, Date)]>([])
                    let failures = Locked<[String]>([])
                    let first = requested.value
                    try await withProgress({ "requested \(requested.value - first) of \(count), ended \(await tracker.finalCount - first)" }) {
                        try await request(farm, projects: projects, first: first, count: count, rate: rate, accepted: accepted, failures: failures, requested: requested)
                        guard try await tracker.waitFinals(first + count - failures.value.count, timeout: .seconds(900)) else {
                            throw FarmError("builds of the step at \(rate) /s did not all end within 900 s; see \(farm.logs)")
                        }
                        try await quietLogs(farm)
                    }
                    let b = try await Snapshot.take(farm, procs: procs, trackerEvents: await tracker.eventsSeen)
                    var waits = Samples()
                    var notSucceeded = 0
                    for (id, at) in accepted.value {
                        guard let final = await tracker.seen(id)?.final else { continue }
                        if final.status != .succeeded { notSucceeded += 1 }
                        if let started = final.startedAt { waits.add(started.timeIntervalSince(at) * 1000) }
                    }
                    let n = Double(accepted.value.count)
                    let wall = (b.at - a.at).seconds
                    let events = b.metrics.sum("etcd_debugging_mvcc_events_total") - a.metrics.sum("etcd_debugging_mvcc_events_total")
                    let own = Double(b.trackerEvents - a.trackerEvents)
                    var r = PhaseReport("Builds at \(rate) /s: \(count) simulated builds, \(agents) agents")
                    r.setup = [
                        "\(count) builds requested at \(rate) a second (open loop, \(clients) clients) round robin over \(projects.count) projects; each lasts \(duration) s on an agent of capacity \(capacity); the step ends when every build has ended and no log chunk is left in etcd (the leader archived them)",
                        "per build: the deltas of the step (from just before the first request to that end) divided by the builds; they include the step's share of the idle background (the agents' keep-alives are not revisions)",
                        "watch events: `etcd_debugging_mvcc_events_total` (every event etcd sent, to every watcher); this bench's own two watches (/kiln/builds/, /kiln/tasks/) took \(Int(own)) of them, shown apart",
                    ]
                    r.figures = [
                        Figure("builds ended / not succeeded / failed requests", "\(accepted.value.count) / \(notSucceeded) / \(failures.value.count)", target: "\(count) / 0 / 0",
                               met: accepted.value.count == count && notSucceeded == 0 && failures.value.isEmpty),
                        Figure("queue wait: accepted → agent starts it, p50 / p99", "\(Fmt.ms(waits.p50)) / \(Fmt.ms(waits.p99))"),
                        Figure("etcd revisions per build", String(format: "%.2f", Double(b.revision - a.revision) / n)),
                        Figure("raft proposals committed per build", String(format: "%.2f", (b.metrics.sum("etcd_server_proposals_committed_total") - a.metrics.sum("etcd_server_proposals_committed_total")) / n)),
                        Figure("watch events sent per build, all watchers / without this bench's watches", String(format: "%.1f / %.1f", events / n, (events - own) / n)),
                        Figure("bytes etcd sent to clients per build", Fmt.bytes(Int64((b.metrics.sum("etcd_network_client_grpc_sent_bytes_total") - a.metrics.sum("etcd_network_client_grpc_sent_bytes_total")) / n))),
                        Figure("bytes clients sent to etcd per build", Fmt.bytes(Int64((b.metrics.sum("etcd_network_client_grpc_received_bytes_total") - a.metrics.sum("etcd_network_client_grpc_received_bytes_total")) / n))),
                        Figure("gRPC calls per build (every gateway request)", String(format: "%.1f", (b.metrics.sum("grpc_server_started_total") - a.metrics.sum("grpc_server_started_total")) / n)),
                        Figure("etcd CPU over the step (cores)", String(format: "%.2f", Double(b.cpu.etcd - a.cpu.etcd) / ProcStat.ticksPerSecond / wall)),
                        Figure("leading scheduler's CPU over the step (cores, the busiest)", String(format: "%.2f", zip(b.cpu.schedulers, a.cpu.schedulers).map { Double($0 - $1) }.max()! / ProcStat.ticksPerSecond / wall)),
                        Figure("revisions/s over the step", String(format: "%.0f /s", Double(b.revision - a.revision) / wall)),
                    ]
                    if let f = failures.value.first { r.notes.append("first failed request: \(f)") }
                    r.notes.append("queue wait: \(waits.summary)")
                    say(r.printed())
                    out.append(r)
                }
                return out
            }
        }

        /// Requests `count` builds at `rate` a second from `clients` tasks.
        func request(_ farm: BenchFarm, projects: [String], first: Int, count: Int, rate: Double, accepted: Locked<[(String, Date)]>,
                     failures: Locked<[String]>, requested: Locked<Int>) async throws {
            let start = ContinuousClock.now
            try await inParallel(count: count, workers: clients) { i in
                try await Task.sleep(until: start + .seconds(Double(i) / rate))
                do {
                    let (build, at) = try await farm.api.requestBuild(projects[(first + i) % projects.count], trigger: "scale")
                    accepted.withLock { $0.append((build.id, at)) }
                } catch {
                    failures.withLock { $0.append("\(error)") }
                }
                requested.add(1)
            }
        }

        /// Waits until no log chunk is left in etcd (the leader archives each build's log at its end).
        func quietLogs(_ farm: BenchFarm) async throws {
            let deadline = ContinuousClock.now + .seconds(300)
            while ContinuousClock.now < deadline {
                if try await farm.etcd.count(prefix: farm.keys.logs) == 0 { return }
                try await Task.sleep(for: .milliseconds(200))
            }
            throw FarmError("log chunks still in etcd 5 minutes after the builds ended (see \(farm.logs))")
        }

        /// Compacts etcd at its current revision, then reads its in-use size.
        func compactAndMeasure(_ etcd: EtcdClient, endpoint: String) async throws -> Int64 {
            try await etcd.compact(revision: try await etcd.status())
            try await Task.sleep(for: .seconds(2))
            return try await etcd.memberStatus(of: endpoint).dbSizeInUseBytes
        }

        func retainedReport(s0: Inventory, s1: Inventory, s2: Inventory, s3: Inventory, projects: Int, builds: Int,
                            inUseBefore: Int64, inUseAfter: Int64) -> PhaseReport {
            var r = PhaseReport("What etcd keeps: per project and per build")
            r.setup = [
                "keys and bytes (key + value) by prefix, read from etcd: before and after the \(projects) projects were made (through the API), and before and after the \(builds) builds of the builds step (every build ended, its log archived)",
                "in use: etcd's `dbSizeInUse` after a compaction at the current revision, before and after the builds",
            ]
            for (name, c) in s1.minus(s0).groups.sorted(by: { $0.key < $1.key }) where c.keys != 0 {
                r.figures.append(Figure("per project: \(name)", String(format: "%.2f keys, %@", Double(c.keys) / Double(projects), Fmt.bytes(c.bytes / Int64(projects)))))
            }
            let p = s1.minus(s0).total
            r.figures.append(Figure("per project: all of /kiln/", String(format: "%.2f keys, %@", Double(p.keys) / Double(projects), Fmt.bytes(p.bytes / Int64(projects)))))
            for (name, c) in s3.minus(s2).groups.sorted(by: { $0.key < $1.key }) where c.keys != 0 || c.bytes != 0 {
                r.figures.append(Figure("per build: \(name)", String(format: "%.2f keys, %@", Double(c.keys) / Double(builds), Fmt.bytes(c.bytes / Int64(builds)))))
            }
            let b = s3.minus(s2).total
            r.figures.append(Figure("per build: all of /kiln/", String(format: "%.2f keys, %@", Double(b.keys) / Double(builds), Fmt.bytes(b.bytes / Int64(builds)))))
            r.figures.append(Figure("etcd in use after compaction, before / after the builds", "\(Fmt.bytes(inUseBefore)) / \(Fmt.bytes(inUseAfter)): \(Fmt.bytes((inUseAfter - inUseBefore) / Int64(builds))) per build"))
            r.figures.append(Figure("all of /kiln/ after the builds", "\(s3.total.keys) keys, \(Fmt.bytes(s3.total.bytes))"))
            say(r.printed())
            return r
        }

        func writeResults(_ reports: [PhaseReport], startedAt: Date, load: String, loadAtEnd: String, complete: Bool) throws -> URL {
            try ResultFile.write(reports, kind: "scale", in: resultsDir, startedAt: startedAt, load: "at start \(load), at end \(loadAtEnd)",
                                 setting: "etcd and the schedulers are processes of their own; the \(agents) simulated agents run in kiln-bench's process.", complete: complete)
        }
    }
}

// MARK: the agents in this process

/// The in-process agents: one task per `AgentService`, stopped by cancelling it (the service
/// then stops its builds and revokes its lease, as on a graceful shutdown), and the HTTPClients
/// they share.
final class SimulatedAgents: Sendable {
    private let tasks = Mutex<[String: Task<Void, Never>]>([:])
    private let clients = Mutex<[HTTPClient]>([])
    private let failed = Locked<[String]>([])

    var failures: [String] { failed.value }

    /// `count` HTTPClients configured as the etcd client's own (a 3 s connect timeout, no read
    /// timeout for watches, 256 connections per host).
    func makeClients(count: Int) -> [HTTPClient] {
        var configuration = HTTPClient.Configuration()
        configuration.timeout = HTTPClient.Configuration.Timeout(connect: .seconds(3), read: nil)
        configuration.connectionPool = HTTPClient.Configuration.ConnectionPool(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: 256)
        configuration.connectionPool.retryConnectionEstablishment = false
        configuration.redirectConfiguration = .disallow
        configuration.decompression = .disabled
        let made = (0..<count).map { _ in HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration) }
        clients.withLock { $0 += made }
        return made
    }

    func start(_ id: String, _ service: AgentService) {
        let failed = self.failed
        let task = Task {
            do { try await service.run() } catch is CancellationError {} catch {
                failed.withLock { $0.append("\(id): \(error)") }
            }
        }
        tasks.withLock { $0[id] = task }
    }

    /// Cancels the agents `ids` and waits until each has revoked its lease and returned.
    func stop(_ ids: [String]) async {
        let stopping = tasks.withLock { t in ids.compactMap { t.removeValue(forKey: $0) } }
        for t in stopping { t.cancel() }
        for t in stopping { await t.value }
    }

    func stopAll() async { await stop(tasks.withLock { Array($0.keys) }) }

    func shutdownClients() async {
        for c in clients.withLock({ c in defer { c.removeAll() }; return c }) { try? await c.shutdown() }
    }
}

// MARK: measurements

/// The farm's processes whose CPU is read.
struct Procs: Sendable {
    let etcd: Int32
    let schedulers: [ManagedProcess]

    init(farm: BenchFarm) {
        etcd = farm.processes.etcdServer.process.pid
        schedulers = farm.processes.schedulers.sorted { $0.key < $1.key }.map(\.value.process)
    }
}

/// CPU and memory of a process from /proc, the load average, the open-files limit.
enum ProcStat {
    static let ticksPerSecond = Double(sysconf(Int32(_SC_CLK_TCK)))

    /// utime + stime of `pid`, in clock ticks.
    static func cpuTicks(_ pid: Int32) -> Int64 {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = text.lastIndex(of: ")") else { return 0 }
        // Fields after the command: state is field 3; utime and stime are fields 14 and 15.
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard fields.count > 12, let u = Int64(fields[11]), let s = Int64(fields[12]) else { return 0 }
        return u + s
    }

    /// VmRSS of `pid`, in bytes.
    static func rss(_ pid: Int32) -> Int64 {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
              let kb = Int64(line.split(separator: " ").dropFirst().first ?? "") else { return 0 }
        return kb * 1024
    }

    static func loadAverage() -> String {
        (try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8))?.split(separator: " ").prefix(3).joined(separator: " ") ?? "?"
    }

    /// Raises the soft open-files limit to the hard one (each agent holds a lock file and
    /// connections); returns the limit now in force.
    static func raiseFileLimit() -> UInt64 {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 0 }
        limit.rlim_cur = limit.rlim_max
        _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        _ = getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        return UInt64(limit.rlim_cur)
    }
}

/// etcd's Prometheus text: a sample per line, `name{labels} value`.
struct Metrics: Sendable {
    let samples: [(name: String, labels: String, value: Double)]

    init(_ text: String) {
        samples = text.split(separator: "\n").compactMap { line in
            guard !line.hasPrefix("#"), let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else { return nil }
            let head = line[..<space]
            if let brace = head.firstIndex(of: "{") { return (String(head[..<brace]), String(head[brace...]), value) }
            return (String(head), "", value)
        }
    }

    /// The sum over every label set of `name` whose labels contain `labelsContaining`.
    func sum(_ name: String, labelsContaining: String = "") -> Double {
        samples.filter { $0.name == name && (labelsContaining.isEmpty || $0.labels.contains(labelsContaining)) }.reduce(0) { $0 + $1.value }
    }

    static func read(_ endpoint: String) async throws -> Metrics {
        let r = try await FarmHTTP.send("GET", endpoint + "/metrics")
        guard r.status == 200 else { throw FarmError("GET \(endpoint)/metrics: HTTP \(r.status)") }
        return Metrics(r.body)
    }
}

/// One moment of the farm: etcd's revision and metrics, the processes' CPU.
struct Snapshot: Sendable {
    struct CPU: Sendable { var etcd: Int64; var schedulers: [Int64]; var this: Int64 }
    let at: ContinuousClock.Instant
    let revision: Int64
    let metrics: Metrics
    let cpu: CPU
    let trackerEvents: Int

    static func take(_ farm: BenchFarm, procs: Procs, trackerEvents: Int = 0) async throws -> Snapshot {
        let revision = try await farm.etcd.status()
        let metrics = try await Metrics.read(farm.processes.etcdServer.endpoint)
        let cpu = CPU(etcd: ProcStat.cpuTicks(procs.etcd), schedulers: procs.schedulers.map { ProcStat.cpuTicks($0.pid) }, this: ProcStat.cpuTicks(getpid()))
        return Snapshot(at: .now, revision: revision, metrics: metrics, cpu: cpu, trackerEvents: trackerEvents)
    }
}

/// An idle window's figures, from a snapshot at each end.
struct IdleFigures: Sendable {
    let a: Snapshot
    let b: Snapshot
    let etcdRSS: Int64
    let schedulerRSS: [Int64]
    let selfRSS: Int64
    let db: Int64
    let inUse: Int64

    var wall: Double { (b.at - a.at).seconds }
    func rate(_ name: String, _ labels: String = "") -> Double { (b.metrics.sum(name, labelsContaining: labels) - a.metrics.sum(name, labelsContaining: labels)) / wall }
    func cores(_ from: Int64, _ to: Int64) -> Double { Double(to - from) / ProcStat.ticksPerSecond / wall }

    var revisionsPerSecond: Double { Double(b.revision - a.revision) / wall }
    var keepAlivesPerSecond: Double { rate("grpc_server_started_total", #"grpc_method="LeaseKeepAlive""#) }
    var grpcPerSecond: Double { rate("grpc_server_started_total") }
    var proposalsPerSecond: Double { rate("etcd_server_proposals_committed_total") }
    var sentBytesPerSecond: Double { rate("etcd_network_client_grpc_sent_bytes_total") }
    var watchers: Int { Int(b.metrics.sum("etcd_debugging_mvcc_watcher_total")) }
    var streams: Int { Int(b.metrics.sum("etcd_debugging_mvcc_watch_stream_total")) }
    var etcdCores: Double { cores(a.cpu.etcd, b.cpu.etcd) }
    var schedulerCores: [Double] { zip(a.cpu.schedulers, b.cpu.schedulers).map { cores($0, $1) } }
    var selfCores: Double { cores(a.cpu.this, b.cpu.this) }

    func report(_ title: String, agents: Int, ttl: Int, idle: Double) -> PhaseReport {
        var r = PhaseReport(title)
        r.setup = [
            "\(String(format: "%.1f", wall)) s with nothing queued; rates are deltas over the window: revisions from etcd's status, the rest from etcd's /metrics; CPU is utime+stime from /proc/PID/stat over the window (1.00 = one core)",
            "keep-alive requests: `grpc_server_started_total{grpc_method=\"LeaseKeepAlive\"}` (the JSON gateway opens a stream per request); expected \(agents) agents × 3 / TTL \(ttl) s = \(String(format: "%.0f", Double(agents) * 3 / Double(ttl))) /s",
        ]
        r.figures = [
            Figure("etcd revisions/s", String(format: "%.2f", revisionsPerSecond)),
            Figure("raft proposals committed/s", String(format: "%.2f", proposalsPerSecond)),
            Figure("lease keep-alive requests/s", String(format: "%.1f", keepAlivesPerSecond)),
            Figure("gRPC calls/s, all methods (every gateway request)", String(format: "%.1f", grpcPerSecond)),
            Figure("etcd watchers / watch streams", "\(watchers) / \(streams)"),
            Figure("bytes etcd sends to clients/s", Fmt.bytes(Int64(sentBytesPerSecond)) + "/s"),
            Figure("etcd CPU (cores)", String(format: "%.3f", etcdCores)),
            Figure("etcd RSS", Fmt.bytes(etcdRSS)),
            Figure("etcd db size / in use", "\(Fmt.bytes(db)) / \(Fmt.bytes(inUse))"),
            Figure("schedulers' CPU (cores, each)", schedulerCores.map { String(format: "%.3f", $0) }.joined(separator: ", ")),
            Figure("schedulers' RSS (each)", schedulerRSS.map(Fmt.bytes).joined(separator: ", ")),
            Figure("this process: the \(agents) agents, CPU (cores) / RSS", String(format: "%.3f / %@", selfCores, Fmt.bytes(selfRSS))),
        ]
        return r
    }
}

/// Keys and bytes (key + value) under a prefix, grouped by their first one or two path
/// elements below `/kiln/` (`builds/`, `index/builds/`, …).
struct Inventory: Sendable {
    struct Count: Sendable { var keys = 0; var bytes: Int64 = 0 }
    var groups: [String: Count] = [:]
    var total = Count()

    static func group(of key: String) -> String {
        let parts = key.split(separator: "/", omittingEmptySubsequences: true)
        guard parts.count >= 2 else { return key }
        if parts[1] == "index", parts.count >= 3 { return "/\(parts[0])/index/\(parts[2])/" }
        return "/\(parts[0])/\(parts[1])/"
    }

    static func read(_ etcd: EtcdClient, prefix: String) async throws -> Inventory {
        let end = EtcdClient.prefixEnd(prefix)
        var from = prefix
        var inv = Inventory()
        while true {
            let page = try await etcd.range(key: from, rangeEnd: end, limit: 500)
            for kv in page.kvs {
                let n = Int64(kv.key.utf8.count + kv.value.count)
                inv.groups[group(of: kv.key), default: Count()].keys += 1
                inv.groups[group(of: kv.key), default: Count()].bytes += n
                inv.total.keys += 1
                inv.total.bytes += n
            }
            guard page.more, let last = page.kvs.last else { return inv }
            from = last.key + "\u{0}"
        }
    }

    func minus(_ other: Inventory) -> Inventory {
        var d = Inventory()
        for name in Set(groups.keys).union(other.groups.keys) {
            let a = groups[name] ?? Count(), b = other.groups[name] ?? Count()
            d.groups[name] = Count(keys: a.keys - b.keys, bytes: a.bytes - b.bytes)
        }
        d.total = Count(keys: total.keys - other.total.keys, bytes: total.bytes - other.total.bytes)
        return d
    }
}
