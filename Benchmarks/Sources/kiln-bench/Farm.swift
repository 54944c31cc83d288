import ArgumentParser
import Foundation
import KilnCore
import LocalFarm
import UnixSignals

extension KilnBench {
    struct Farm: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "A whole farm of simulated agents: dispatch latency, throughput, cache affinity and chaos.",
            discussion: """
            Starts everything as separate processes on free loopback ports, and stops them by PID at \
            the end of each phase, on error and on Ctrl-C: a real etcd (data in a temp folder), \
            `kiln scheduler` and `kiln agent --simulate` processes (the kiln of --kiln). Projects and \
            builds go through the scheduler's HTTP API; measurements come from etcd watches. Phases:
              floor       etcd's own put → watch-event latency (the floor of any dispatch)
              latency     build accepted → agent starts it, one at a time, 20 agents
                          (target: p99 ≤ 3 × floor p99); with --etcd-auth both (the
                          default) on two farms, without etcd authentication and with
                          it, the builds going to them in turn
              throughput  builds assigned per second for a burst, 50 agents, next to etcd's own
                          transaction rate
              affinity    share of builds run where their project's caches are warm under
                          ≈ 50 % load, Zipf(1.1) popularity (target ≥ 97 %), the share on the
                          home agent, where the cold builds come from, the bounded load held
                          at each start (no agent above ceil(c × average)), and the queue wait
              chaos       agents killed with SIGKILL while building: nothing lost, nothing run
                          twice, kill → requeue p99 ≤ TTL + 2 s
              webhook     GitLab push deliveries: answer time under 50 concurrent ones, and
                          delivery → agent starts the build, next to the same through the API
            Results are printed and written to Benchmarks/results/farm-DATE.md.

            Example: swift build -c release --product kiln && swift build -c release --package-path Benchmarks
                     Benchmarks/.build/release/kiln-bench farm
                     Benchmarks/.build/release/kiln-bench farm --only latency,chaos
            """)

        enum Phase: String, CaseIterable, ExpressibleByArgument {
            case floor, latency, throughput, affinity, chaos, webhook
        }

        enum EtcdAuthMode: String, CaseIterable, ExpressibleByArgument {
            case on, off, both
        }

        @Option(help: ArgumentHelp("Phases to run, comma-separated: floor, latency, throughput, affinity, chaos, webhook (latency also measures the floor).", valueName: "phases"))
        var only: String = Phase.allCases.map(\.rawValue).joined(separator: ",")

        @Option(help: ArgumentHelp("etcd authentication of the phases' farms: on (each process its own etcd user, as `kiln up` runs it), off (anonymous), or both (the latency phase runs a farm of each, alternating builds between them, and compares them; the other phases on).", valueName: "on|off|both"))
        var etcdAuth: EtcdAuthMode = .both

        @Option(help: "Floor samples.") var floorSamples: Int = 500
        @Option(help: "Latency: builds measured.") var latencyBuilds: Int = 300
        @Option(help: "Latency: agents.") var latencyAgents: Int = 20
        @Option(help: "Throughput: builds in the burst.") var throughputBuilds: Int = 2000
        @Option(help: "Throughput: agents.") var throughputAgents: Int = 50
        @Option(help: "Throughput: concurrent clients enqueueing, and of etcd's own transaction rate.") var clients: Int = 32
        @Option(help: "Affinity: builds.") var affinityBuilds: Int = 2000
        @Option(help: "Affinity: average share of the slots kept busy, which sets the arrival rate.") var affinityLoad: Double = 0.5
        @Option(help: ArgumentHelp("Affinity: the scheduler's bounded-load factor (kiln scheduler --load-factor).", valueName: "c")) var affinityLoadFactor: Double = 1.25
        @Option(help: ArgumentHelp("Affinity: how long a build that would go cold waits for a warm agent (kiln scheduler --warm-wait; default: the scheduler's).", valueName: "seconds")) var affinityWarmWait: Double?
        @Option(help: "Chaos: builds.") var chaosBuilds: Int = 500
        @Option(help: "Chaos: agents.") var chaosAgents: Int = 12
        @Option(help: "Chaos: lease TTL of the agents, seconds.") var chaosTtl: Int = 3
        @Option(help: "Chaos: seconds after which a build that has not ended counts as lost.") var chaosTimeout: Double = 900
        @Option(help: "Webhook: concurrent deliveries per round.") var webhookConcurrent: Int = 50
        @Option(help: ArgumentHelp("The kiln executable to start as scheduler and agents (env KILN_BIN; default: the repository's .build/\(Repository.configuration)/kiln, the configuration of this kiln-bench).", valueName: "path"))
        var kiln: String = env("KILN_BIN", Repository.kiln)
        @Option(help: ArgumentHelp("Folder of the result file.", valueName: "dir")) var resultsDir: String = Repository.results
        @Option(help: ArgumentHelp("Log level of the scheduler and agents (their logs are in the temp folder).", valueName: "level")) var logLevel: String = "warning"
        @Flag(help: "Keep the temp folder (etcd data and the processes' logs) after a successful run.") var keep = false

        var phases: [Phase] { only.split(separator: ",").compactMap { Phase(rawValue: $0.trimmingCharacters(in: .whitespaces)) } }

        func validate() throws {
            let names = only.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            for n in names where Phase(rawValue: n) == nil {
                throw ValidationError("--only: unknown phase '\(n)'; pick from \(Phase.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            guard !names.isEmpty else { throw ValidationError("--only: name at least one phase") }
            guard floorSamples > 0, latencyBuilds > 0, throughputBuilds > 0, affinityBuilds > 0, chaosBuilds > 0 else { throw ValidationError("counts must be positive") }
            guard latencyAgents > 0, throughputAgents > 0, chaosAgents > 1, clients > 0 else { throw ValidationError("--*-agents and --clients must be positive (chaos needs at least 2 agents)") }
            guard (affinityWarmWait ?? 0) >= 0 else { throw ValidationError("--affinity-warm-wait is seconds, 0 or more") }
            guard affinityLoad > 0, affinityLoad < 1 else { throw ValidationError("--affinity-load is a share of the slots, between 0 and 1 (0.5 for half)") }
            guard chaosTtl >= 2 else { throw ValidationError("--chaos-ttl must be at least 2 seconds (etcd's shortest useful lease)") }
            guard FileManager.default.isExecutableFile(atPath: kiln) else {
                throw ValidationError("no kiln executable at \(kiln): \(Repository.buildKiln), or name one with --kiln or KILN_BIN")
            }
        }

        func run() async throws {
            bootstrapLogging()
            let root = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-bench-farm-\(UUID().uuidString.prefix(8))")
            let rig = try BenchRig(root: root, kiln: kiln, logLevel: logLevel, etcdAuth: etcdAuth != .off)
            let startedAt = Date()
            let load = (try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8))?.split(separator: " ").prefix(3).joined(separator: " ") ?? "?"
            say("kiln-bench farm: \(phases.map(\.rawValue).joined(separator: ", ")); \(ProcessInfo.processInfo.activeProcessorCount) cores, load average \(load), \(Repository.configuration) build of kiln-bench, kiln \(kiln); processes' data and logs in \(root.path)")

            let reports = Locked<[PhaseReport]>([])
            try await rig.runInterruptibly("kiln-bench farm", keep: keep, reports: reports,
                                           write: { try writeResults($0, startedAt: startedAt, load: load, complete: $1) }) {
                try await runPhases(rig: rig) { r in reports.withLock { $0.append(r) } }
            }
        }

        func runPhases(rig: BenchRig, _ done: @Sendable (PhaseReport) -> Void) async throws {
            let selected = Set(phases)
            var floor: Samples?
            if selected.contains(.floor) || selected.contains(.latency) {
                let r = try await FloorPhase.run(rig: rig, samples: floorSamples)
                floor = r.samples
                done(r.report)
            }
            if selected.contains(.latency), let floor {
                let settings = LatencyPhase.Settings(builds: latencyBuilds, agents: latencyAgents)
                let modes = etcdAuth == .both ? [false, true] : [etcdAuth == .on]
                for report in try await LatencyPhase.run(rig: rig, floor: floor, settings: settings, etcdAuth: modes) { done(report) }
            }
            if selected.contains(.throughput) {
                let settings = ThroughputPhase.Settings(builds: throughputBuilds, agents: throughputAgents, clients: clients, txnClients: clients)
                done(try await ThroughputPhase.run(rig: rig, settings: settings))
            }
            if selected.contains(.affinity) {
                let settings = AffinityPhase.Settings(builds: affinityBuilds, load: affinityLoad, loadFactor: affinityLoadFactor, warmWait: affinityWarmWait)
                done(try await AffinityPhase.run(rig: rig, settings: settings))
            }
            if selected.contains(.chaos) {
                let settings = ChaosPhase.Settings(builds: chaosBuilds, agents: chaosAgents, ttl: chaosTtl, timeout: chaosTimeout)
                done(try await ChaosPhase.run(rig: rig, settings: settings))
            }
            if selected.contains(.webhook) {
                done(try await WebhookPhase.run(rig: rig, settings: .init(concurrent: webhookConcurrent)))
            }
        }

        func writeResults(_ reports: [PhaseReport], startedAt: Date, load: String, complete: Bool) throws -> URL {
            let (file, commit, etcdVersion) = try ResultFile.place(in: resultsDir, kind: "farm", startedAt: startedAt)
            // The kiln binary as the repository names it (.build/release/kiln), else its full path.
            let root = Repository.root.path + "/"
            let kilnShown = kiln.hasPrefix(root) ? String(kiln.dropFirst(root.count)) : kiln
            var lines = [
                "# kiln-bench farm, \(KilnJSON.formatDate(startedAt))",
                "",
                "`\((["kiln-bench farm"] + CommandLine.arguments.dropFirst(2)).joined(separator: " "))` (\(Repository.configuration) build\(commit.map { ", commit \($0)" } ?? ""), kiln `\(kilnShown)`); "
                    + "\(ProcessInfo.processInfo.activeProcessorCount) cores, load average at start \(load); \(etcdVersion). "
                    + "Every component is its own process on this machine: etcd, `kiln scheduler`, and `kiln agent --simulate` processes (they build nothing; see `SimulatedBuildRunner`).",
                "",
            ]
            if !complete { lines += ["**Incomplete run**: it stopped early (error or interrupt); the phases below are those that finished.", ""] }
            lines += ["| phase | figure | measured | target | |", "|---|---|---:|---|---|"]
            for r in reports {
                for fig in r.figures where fig.met != nil {
                    lines.append("| \(r.title.split(separator: ":").first ?? "") | \(fig.name) | \(fig.measured) | \(fig.target) | \(fig.met! ? "met" : "**missed**") |")
                }
            }
            lines.append("")
            lines += reports.map(\.markdown)
            try lines.joined(separator: "\n").write(to: file, atomically: true, encoding: .utf8)
            return file
        }
    }
}
