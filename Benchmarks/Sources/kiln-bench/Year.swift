import ArgumentParser
import Etcd
import FarmHarness
import Foundation
import KilnCore
import LocalFarm
import UnixSignals

extension KilnBench {
    /// Issue 14's benchmark: a year of a busy farm, compressed. Part `etcd`: tens of thousands of
    /// simulated builds whose logs go through etcd and out to the log archive, on an etcd with a
    /// small quota; the API's reads timed at 100 builds and again at the end. Part `disk`: one
    /// agent building hundreds of projects under a disk budget, with real files.
    struct Year: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "A year of a busy farm in an hour: etcd stays bounded, reads stay fast, an agent's disk stays in budget.",
            discussion: """
            Two parts, each on a farm of its own processes (a real etcd, `kiln scheduler`, `kiln agent \
            --simulate`), stopped by PID at the end, on error and on Ctrl-C:
              etcd   --builds simulated builds over --projects projects, each writing a log of a size
                     drawn log-uniformly from --log-size, live into etcd in chunks; the leader archives
                     each log when its build ends and deletes the chunks. etcd runs with --quota and
                     periodic compaction keeping --history. Measured: etcd's database size and in-use
                     size every 5 s (no NOSPACE alarm; in use after a final compaction under the bound
                     stated), the bytes etcd holds per build, and the p99 of listing builds, reading a
                     build, reading an archived log and scraping /metrics after the first --probe-at
                     builds and again after all of them, on the same builds (target: within 1.5×).
              disk   one agent builds each of --disk-projects projects twice; every build adds a size
                     drawn from --disk-size to its project's mirror and Maven cache folders (real files,
                     which the agent's DiskKeeper measures and evicts as it does a real build's). The
                     folders' total is sampled every 200 ms against --disk-budget.
            Results are printed and written to Benchmarks/results/year-DATE.md.

            Example: swift build -c release --product kiln && swift build -c release --package-path Benchmarks
                     Benchmarks/.build/release/kiln-bench year
                     Benchmarks/.build/release/kiln-bench year --only etcd --builds 2000
            """)

        enum Part: String, CaseIterable, ExpressibleByArgument { case etcd, disk }

        @Option(help: ArgumentHelp("Parts to run, comma-separated: etcd, disk.", valueName: "parts"))
        var only: String = "etcd,disk"
        @Option(help: "etcd part: simulated builds in all.") var builds: Int = 20_000
        @Option(help: "etcd part: projects the builds go to, round robin.") var projects: Int = 200
        @Option(help: "etcd part: simulated agents.") var agents: Int = 8
        @Option(help: "Builds each agent runs at once.") var capacity: Int = 4
        @Option(help: ArgumentHelp("etcd part: seconds each simulated build lasts (kiln agent --simulate).", valueName: "seconds")) var duration: String = "0.5-2"
        @Option(help: ArgumentHelp("etcd part: bytes of log each build writes, drawn log-uniformly (kiln agent --simulate-log).", valueName: "range")) var logSize: String = "10K-4M"
        @Option(help: ArgumentHelp("etcd part: etcd's --quota-backend-bytes.", valueName: "size")) var quota: String = "256M"
        @Option(help: ArgumentHelp("etcd part: history etcd keeps (periodic --auto-compaction-retention), as `kiln up` runs it. The scheduler compacts sooner when etcd fills (kiln scheduler --etcd-compact-at).", valueName: "duration")) var history: String = "5m"
        @Option(help: "etcd part: builds queued or running at most at once (default: twice the slots).") var inFlight: Int?
        @Option(help: ArgumentHelp("etcd part: seconds of history the scheduler keeps when it compacts a filling etcd (kiln scheduler --etcd-keep-history; the default of 30 is for a real farm's pace, not a year in an hour's).", valueName: "seconds"))
        var keepHistory: Int = 10
        @Option(help: ArgumentHelp("etcd part: builds requested per second (default: a year of --builds in an hour, 20,000 / 3,600 s = 5.6 /s); 0: as fast as the window allows.", valueName: "per-second"))
        var rate: Double?
        @Option(help: "etcd part: concurrent clients requesting builds.") var clients: Int = 8
        @Option(help: "etcd part: builds after which the reads are timed the first time.") var probeAt: Int = 100
        @Option(help: "Timed requests of each kind, each time.") var samples: Int = 200
        @Option(help: ArgumentHelp("etcd part: the bound stated for etcd's in-use size after compaction at the end.", valueName: "size")) var bound: String = "64M"
        @Option(help: "disk part: projects, each built twice.") var diskProjects: Int = 200
        @Option(help: ArgumentHelp("disk part: the agent's --disk-budget.", valueName: "size")) var diskBudget: String = "256M"
        @Option(help: ArgumentHelp("disk part: bytes each build adds to its project's folders (kiln agent --simulate-disk).", valueName: "range")) var diskSize: String = "2M-16M"
        @Option(help: ArgumentHelp("The kiln executable to start (env KILN_BIN; default: the repository's .build/\(Repository.configuration)/kiln).", valueName: "path"))
        var kiln: String = env("KILN_BIN", Repository.kiln)
        @Option(help: ArgumentHelp("Folder of the result file.", valueName: "dir")) var resultsDir: String = Repository.results
        @Option(help: ArgumentHelp("Log level of the scheduler and agents.", valueName: "level")) var logLevel: String = "warning"
        @Flag(help: "Keep the temp folder after a successful run.") var keep = false

        var parts: [Part] { only.split(separator: ",").compactMap { Part(rawValue: $0.trimmingCharacters(in: .whitespaces)) } }

        func validate() throws {
            for n in only.split(separator: ",") where Part(rawValue: n.trimmingCharacters(in: .whitespaces)) == nil {
                throw ValidationError("--only: unknown part '\(n)'; pick from etcd, disk")
            }
            guard builds > probeAt, probeAt >= 50 else { throw ValidationError("--builds must be more than --probe-at, which must be at least 50 (a full page of the listings)") }
            guard projects > 0, agents > 0, capacity > 0, clients > 0, samples > 0, diskProjects > 0 else { throw ValidationError("counts must be positive") }
            for (name, value) in [("--quota", quota), ("--bound", bound), ("--disk-budget", diskBudget)] where Self.size(value) == nil {
                throw ValidationError("\(name) must be a size such as 256M, not '\(value)'")
            }
            for (name, value) in [("--log-size", logSize), ("--disk-size", diskSize)] where Self.range(value) == nil {
                throw ValidationError("\(name) must be a size or a range of sizes such as 10K-4M, not '\(value)'")
            }
            guard FileManager.default.isExecutableFile(atPath: kiln) else {
                throw ValidationError("no kiln executable at \(kiln): \(Repository.buildKiln), or name one with --kiln or KILN_BIN")
            }
        }

        static func size(_ text: String) -> Int? {
            var t = text.uppercased()
            var shift = 0
            if let last = t.last, let s = ["K": 10, "M": 20, "G": 30][String(last)] { shift = s; t.removeLast() }
            return Int(t).map { $0 << shift }
        }

        static func range(_ text: String) -> (Int, Int)? {
            let p = text.split(separator: "-").map(String.init)
            guard (1...2).contains(p.count), let lo = size(p[0]), let hi = size(p.last!), lo > 0, lo <= hi else { return nil }
            return (lo, hi)
        }

        func run() async throws {
            bootstrapLogging()
            let root = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-bench-year-\(UUID().uuidString.prefix(8))")
            let rig = try BenchRig(root: root, kiln: kiln, logLevel: logLevel)
            let startedAt = Date()
            let load = (try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8))?.split(separator: " ").prefix(3).joined(separator: " ") ?? "?"
            say("kiln-bench year: \(parts.map(\.rawValue).joined(separator: ", ")); \(ProcessInfo.processInfo.activeProcessorCount) cores, load average \(load), kiln \(kiln); data and logs in \(root.path)")
            let reports = Locked<[PhaseReport]>([])
            try await rig.runInterruptibly("kiln-bench year", keep: keep, reports: reports,
                                           write: { try writeResults($0, startedAt: startedAt, load: load, complete: $1) }) {
                if parts.contains(.etcd) { let r = try await etcdPart(rig); reports.withLock { $0.append(r) } }
                if parts.contains(.disk) { let r = try await diskPart(rig); reports.withLock { $0.append(r) } }
            }
        }

        // MARK: etcd

        func etcdPart(_ rig: BenchRig) async throws -> PhaseReport {
            let quotaBytes = Int64(Self.size(quota)!)
            let slots = agents * capacity
            let window = inFlight ?? slots * 2
            say("== etcd: \(builds) simulated builds over \(projects) projects, logs \(logSize) (log-uniform), \(agents) agents × \(capacity); etcd quota \(quota), history \(history); at most \(window) builds queued or running")
            let maintenance = EtcdServer.Maintenance(compactionMode: .periodic, compactionRetention: history, quotaBytes: quotaBytes)
            let farm = try await rig.startFarm("etcd", agents: agents, .init(capacity: capacity, ttl: 10, simulate: duration, extra: ["--simulate-log", logSize]),
                                               schedulerOptions: ["--etcd-quota-bytes", String(quotaBytes), "--prune-interval", "120",
                                                                  "--etcd-health-interval", "5", "--etcd-keep-history", String(keepHistory)],
                                               etcdMaintenance: maintenance)
            defer { farm.stop() }
            let names = (0..<projects).map { String(format: "y-%03d", $0) }
            try await farm.createProjects(names)
            farm.sayUp()

            let watch = EtcdWatcher(etcd: farm.etcd, endpoint: farm.processes.etcdServer.endpoint, keys: farm.keys)
            let tracker = BuildTracker()
            let enqueued = Locked(0)
            let failures = Locked<[String]>([])
            let clock = ContinuousClock()
            let began = clock.now
            let result = try await whileRunning({ try await watch.run() }) {
                try await whileTracking(farm, tracker) {
                    try await withProgress(every: .seconds(15), {
                        let f = await tracker.finalCount
                        let e = await watch.latest
                        let elapsed = (clock.now - began).seconds
                        return "enqueued \(enqueued.value), ended \(f) of \(builds) (\(String(format: "%.1f", Double(f) / max(elapsed, 1))) /s); etcd db \(Fmt.bytes(e.db)), in use \(Fmt.bytes(e.inUse)), chunk keys \(e.chunkKeys), alarms \(e.alarms.isEmpty ? "none" : e.alarms.joined(separator: ","))"
                    }) {
                        // 1. The first builds, then a quiet farm: every log archived.
                        try await enqueue(farm, names, upTo: probeAt, window: window, tracker: tracker, enqueued: enqueued, failures: failures)
                        try await quiet(farm, tracker: tracker, count: enqueued.value)
                        let probeIDs = Array(await tracker.finals.filter { $0.status == .succeeded }.map(\.id).prefix(100))
                        say("  \(enqueued.value) builds ended and archived; timing the reads (\(samples) of each)")
                        let early = try await probe(farm, ids: probeIDs, project: names[0])
                        let earlyCount = enqueued.value
                        // 2. The rest of the year.
                        let yearStart = clock.now
                        try await enqueue(farm, names, upTo: builds, window: window, tracker: tracker, enqueued: enqueued, failures: failures)
                        try await quiet(farm, tracker: tracker, count: enqueued.value)
                        let yearTime = (clock.now - yearStart).seconds
                        say("  \(enqueued.value) builds ended and archived after \(Fmt.s(yearTime)); timing the reads again")
                        let late = try await probe(farm, ids: probeIDs, project: names[0])
                        return (early, late, earlyCount, yearTime, probeIDs)
                    }
                }
            }
            let (early, late, earlyCount, yearTime, probeIDs) = result
            let peak = await watch.peak
            let alarms = await watch.alarmsSeen
            let samplesTaken = await watch.samples

            // What etcd holds now, and after a compaction at this revision.
            let held = try await EtcdWatcher.bytes(farm.etcd, prefix: farm.keys.prefix + "/")
            let revision = try await farm.etcd.status()
            try await farm.etcd.compact(revision: revision)
            try await Task.sleep(for: .seconds(1))
            let after = try await farm.etcd.memberStatus(of: farm.processes.etcdServer.endpoint)
            let archive = EtcdWatcher.folderBytes(farm.processes.logArchive)
            let finals = await tracker.finals
            let succeeded = finals.filter { $0.status == .succeeded }.count
            let logBytes = try await meanLogBytes(farm, ids: probeIDs)

            var report = PhaseReport("etcd: \(enqueued.value) builds, logs \(logSize)")
            report.setup = [
                "\(agents) `kiln agent --simulate \(duration) --simulate-log \(logSize)` of capacity \(capacity); \(projects) projects, builds requested round robin by \(clients) clients, at most \(window) queued or running, \(String(format: "%.1f", rate ?? Double(builds) / 3600)) requested a second",
                "etcd `--quota-backend-bytes \(quotaBytes)` `--auto-compaction-mode periodic --auto-compaction-retention \(history)`; the scheduler's log archive in its data dir (gzip files), `--prune-interval 120`, retention at its defaults (500 builds and 90 days a project: none is pruned here); `--etcd-health-interval 5 --etcd-keep-history \(keepHistory)`: past half its quota in use, the scheduler compacts etcd keeping \(keepHistory) s",
                "etcd sampled every 5 s (\(samplesTaken) samples): db size, in-use size, alarms, live log chunk keys",
                "the first 50 builds go to the first project (its page of 50 is full at both probes), the rest round robin; reads timed one at a time, \(samples) of each, on a quiet farm (every build ended and its log archived), after \(earlyCount) builds and after \(enqueued.value), on the same \(probeIDs.count) builds",
            ]
            let boundBytes = Int64(Self.size(bound)!)
            report.figures = [
                Figure("builds ended", "\(finals.count) (\(succeeded) succeeded) in \(Fmt.s(yearTime)) after the first \(earlyCount)", target: "\(enqueued.value)", met: finals.count == enqueued.value),
                Figure("failed requests", "\(failures.value.count)", target: "0", met: failures.value.isEmpty),
                Figure("NOSPACE or other alarms seen", alarms.isEmpty ? "none" : alarms.sorted().joined(separator: ", "), target: "none", met: alarms.isEmpty),
                Figure("etcd db size, largest", Fmt.bytes(peak.db), target: "< quota \(Fmt.bytes(quotaBytes))", met: peak.db < quotaBytes),
                Figure("etcd in use, largest", Fmt.bytes(peak.inUse)),
                Figure("live log chunk keys, most at once", "\(peak.chunkKeys)"),
                Figure("etcd in use after compaction at the end", Fmt.bytes(after.dbSizeInUseBytes), target: "≤ \(Fmt.bytes(boundBytes))", met: after.dbSizeInUseBytes <= boundBytes),
                Figure("etcd keys + values per build at the end", Fmt.bytes(held / Int64(max(1, enqueued.value))) + " (\(Fmt.bytes(held)) in all)"),
                Figure("log bytes per build (what etcd held per build before issue 14: every chunk stayed)", Fmt.bytes(logBytes) + " (mean of the \(probeIDs.count) timed builds' logs)"),
                Figure("log archive on disk per build", Fmt.bytes(archive / Int64(max(1, enqueued.value))) + " (\(Fmt.bytes(archive)) in all, gzip)"),
            ]
            for kind in ProbeKind.allCases {
                let a = early[kind] ?? Samples(), b = late[kind] ?? Samples()
                let ratio = b.p99 / a.p99
                report.figures.append(Figure("\(kind.rawValue): p99 at \(enqueued.value) / at \(earlyCount)",
                                             "\(Fmt.ms(b.p99)) / \(Fmt.ms(a.p99)) = \(String(format: "%.2f", ratio))×", target: "≤ 1.5×", met: ratio <= 1.5))
            }
            for kind in ProbeKind.allCases {
                report.notes.append("\(kind.rawValue) at \(earlyCount): \(early[kind]?.summary ?? "-"); at \(enqueued.value): \(late[kind]?.summary ?? "-")")
            }
            if !failures.value.isEmpty { report.notes.append("first failed request: \(failures.value[0])") }
            say(report.printed())
            return report
        }

        /// Requests builds round robin until `upTo` were requested, keeping at most `window` not ended.
        func enqueue(_ farm: BenchFarm, _ names: [String], upTo: Int, window: Int, tracker: BuildTracker,
                     enqueued: Locked<Int>, failures: Locked<[String]>) async throws {
            let first = enqueued.value
            let next = Locked(first)
            let perSecond = rate ?? Double(builds) / 3600
            let start = ContinuousClock.now
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<clients {
                    group.addTask {
                        while true {
                            while enqueued.value - (await tracker.finalCount) >= window { try await Task.sleep(for: .milliseconds(20)) }
                            let i = next.add(1)
                            if i >= upTo { return }
                            if perSecond > 0 { try await Task.sleep(until: start + .seconds(Double(i - first) / perSecond)) }
                            do {
                                // The first 50 go to the first project: its page of 50 is full at the first probe too.
                                _ = try await farm.api.requestBuild(i < 50 ? names[0] : names[i % names.count], trigger: "year")
                                enqueued.add(1)
                            } catch {
                                failures.withLock { $0.append("\(error)") }
                            }
                        }
                    }
                }
                try await group.waitForAll()
            }
        }

        /// Waits until `count` builds have ended and no log chunk is left in etcd.
        func quiet(_ farm: BenchFarm, tracker: BuildTracker, count: Int) async throws {
            guard try await tracker.waitFinals(count, timeout: .seconds(3600)) else { throw FarmError("not every build ended within an hour") }
            let deadline = ContinuousClock.now + .seconds(600)
            while ContinuousClock.now < deadline {
                if try await farm.etcd.count(prefix: farm.keys.logs) == 0 { return }
                try await Task.sleep(for: .milliseconds(500))
            }
            throw FarmError("log chunks still in etcd 10 minutes after every build ended: the archiver is behind or stuck (see \(farm.logs))")
        }

        enum ProbeKind: String, CaseIterable, Sendable {
            case listAll = "list builds (newest 50, all projects)"
            case listProject = "list builds (newest 50 of a project)"
            case readBuild = "read a build"
            case readLog = "read an archived log"
            case metrics = "scrape /metrics"
        }

        /// Times each kind of read `samples` times, one request at a time.
        func probe(_ farm: BenchFarm, ids: [String], project: String) async throws -> [ProbeKind: Samples] {
            var out: [ProbeKind: Samples] = [:]
            let base = farm.api.base
            for kind in ProbeKind.allCases {
                var s = Samples()
                for i in 0..<samples {
                    let id = ids[i % ids.count]
                    let path: String
                    switch kind {
                    case .listAll: path = "/api/v1/builds?limit=50"
                    case .listProject: path = "/api/v1/builds?project=\(project)&limit=50"
                    case .readBuild: path = "/api/v1/builds/\(id)"
                    case .readLog: path = "/api/v1/builds/\(id)/log"
                    case .metrics: path = "/metrics"
                    }
                    let start = ContinuousClock.now
                    let r = try await FarmHTTP.send("GET", base + path, headers: farm.api.headers)
                    let elapsed = ContinuousClock.now - start
                    guard r.status == 200 else { throw FarmError("GET \(path): HTTP \(r.status) \(r.body.prefix(300))") }
                    s.add(elapsed.milliseconds)
                }
                out[kind] = s
            }
            return out
        }

        /// The mean size of the logs of `ids` as the API serves them.
        func meanLogBytes(_ farm: BenchFarm, ids: [String]) async throws -> Int64 {
            var total = 0
            for id in ids {
                let r = try await FarmHTTP.send("GET", farm.api.base + "/api/v1/builds/\(id)/log", headers: farm.api.headers)
                total += r.body.utf8.count
            }
            return Int64(total / max(1, ids.count))
        }

        // MARK: disk

        func diskPart(_ rig: BenchRig) async throws -> PhaseReport {
            let budget = Int64(Self.size(diskBudget)!)
            let (_, maxSize) = Self.range(diskSize)!
            let diskCapacity = 2
            say("== disk: one agent builds each of \(diskProjects) projects twice, each build adding \(diskSize) to its project's folders; --disk-budget \(diskBudget)")
            let farm = try await rig.startFarm("disk", agents: 1, .init(capacity: diskCapacity, ttl: 10, simulate: "0.05",
                                                                         extra: ["--simulate-disk", diskSize, "--disk-budget", diskBudget]))
            defer { farm.stop() }
            let names = (0..<diskProjects).map { String(format: "d-%03d", $0) }
            try await farm.createProjects(names)
            farm.sayUp()
            guard let agentID = farm.processes.agentIDs.first else { throw FarmError("the disk part's agent did not start") }
            let dataDir = farm.processes.dir.appendingPathComponent("agents/\(agentID)")
            let folders = ["mirrors", "mvncache"].map { dataDir.appendingPathComponent($0) }
            let largest = Locked<Int64>(0)
            let sampled = Locked(0)
            let tracker = BuildTracker()
            let enqueued = Locked(0)
            let failures = Locked<[String]>([])
            let order = (names + names).shuffled()
            try await whileRunning({
                while true {
                    let held = folders.map(EtcdWatcher.folderBytes).reduce(0, +)
                    largest.withLock { $0 = max($0, held) }
                    sampled.add(1)
                    try await Task.sleep(for: .milliseconds(200))
                }
            }) {
                try await whileTracking(farm, tracker) {
                    try await withProgress(every: .seconds(10), {
                        "ended \(await tracker.finalCount) of \(order.count); folders at most \(Fmt.bytes(largest.value)) so far"
                    }) {
                        let next = Locked(0)
                        try await withThrowingTaskGroup(of: Void.self) { group in
                            for _ in 0..<4 {
                                group.addTask {
                                    while true {
                                        while enqueued.value - (await tracker.finalCount) >= diskCapacity * 2 { try await Task.sleep(for: .milliseconds(10)) }
                                        let i = next.add(1)
                                        if i >= order.count { return }
                                        do {
                                            _ = try await farm.api.requestBuild(order[i], trigger: "year-disk")
                                            enqueued.add(1)
                                        } catch { failures.withLock { $0.append("\(error)") } }
                                    }
                                }
                            }
                            try await group.waitForAll()
                        }
                        guard try await tracker.waitFinals(enqueued.value, timeout: .seconds(1800)) else { throw FarmError("not every build ended within 30 minutes") }
                    }
                }
            }
            try await Task.sleep(for: .seconds(1))
            let finalHeld = folders.map(EtcdWatcher.folderBytes).reduce(0, +)
            let kept = folders.flatMap { (try? FileManager.default.contentsOfDirectory(atPath: $0.path)) ?? [] }.count
            let finals = await tracker.finals
            let slack = Int64(diskCapacity * maxSize)
            var report = PhaseReport("disk: one agent, \(diskProjects) projects")
            report.setup = [
                "`kiln agent --simulate 0.05 --simulate-disk \(diskSize) --disk-budget \(diskBudget)`, capacity \(diskCapacity): each build writes its drawn bytes as two real files, in `mirrors/<project>.git` and `mvncache/shared/<project>`, and tells the agent's DiskKeeper it used them, as a real build's fetch and compile do; the DiskKeeper measures, stamps and evicts them with its own code",
                "every project built twice, in a shuffled order; the agent's `mirrors` and `mvncache` folders summed every 200 ms (\(sampled.value) samples)",
                "not covered: the container engine's storage (kept images): a simulated agent has none",
            ]
            report.figures = [
                Figure("builds ended", "\(finals.count) (\(finals.filter { $0.status == .succeeded }.count) succeeded)", target: "\(order.count)", met: finals.count == order.count && failures.value.isEmpty),
                Figure("folders after the last build", Fmt.bytes(finalHeld) + " (\(kept) entries kept of \(diskProjects * 2))", target: "≤ budget \(Fmt.bytes(budget))", met: finalHeld <= budget),
                Figure("folders, largest sampled", Fmt.bytes(largest.value), target: "≤ budget + what the running builds add before they end (\(diskCapacity) × \(Fmt.bytes(Int64(maxSize))))", met: largest.value <= budget + slack),
            ]
            say(report.printed())
            return report
        }

        func writeResults(_ reports: [PhaseReport], startedAt: Date, load: String, complete: Bool) throws -> URL {
            try ResultFile.write(reports, kind: "year", in: resultsDir, startedAt: startedAt, load: "at start \(load)",
                                 setting: "Every component is its own process on this machine.", complete: complete)
        }
    }
}

/// etcd's size and alarms sampled every 5 s while the year runs, and its largest figures.
actor EtcdWatcher {
    struct Sample: Sendable {
        var db: Int64 = 0
        var inUse: Int64 = 0
        var chunkKeys: Int64 = 0
        var alarms: [String] = []
    }

    let etcd: EtcdClient
    let endpoint: String
    let keys: Keys
    private(set) var latest = Sample()
    private(set) var peak = Sample()
    private(set) var alarmsSeen: Set<String> = []
    private(set) var samples = 0

    init(etcd: EtcdClient, endpoint: String, keys: Keys) {
        self.etcd = etcd
        self.endpoint = endpoint
        self.keys = keys
    }

    func run() async throws {
        while true {
            if let status = try? await etcd.memberStatus(of: endpoint) {
                var s = Sample(db: status.dbSizeBytes, inUse: status.dbSizeInUseBytes)
                s.chunkKeys = (try? await etcd.count(prefix: keys.logs)) ?? 0
                s.alarms = ((try? await etcd.alarms()) ?? []).map(\.description)
                latest = s
                peak.db = max(peak.db, s.db)
                peak.inUse = max(peak.inUse, s.inUse)
                peak.chunkKeys = max(peak.chunkKeys, s.chunkKeys)
                alarmsSeen.formUnion(s.alarms)
                samples += 1
            }
            try await Task.sleep(for: .seconds(5))
        }
    }

    /// The bytes of every key and value under `prefix`, read in pages of 500.
    static func bytes(_ etcd: EtcdClient, prefix: String) async throws -> Int64 {
        let end = EtcdClient.prefixEnd(prefix)
        var from = prefix
        var total: Int64 = 0
        while true {
            let page = try await etcd.range(key: from, rangeEnd: end, limit: 500)
            for kv in page.kvs { total += Int64(kv.key.utf8.count + kv.value.count) }
            guard page.more, let last = page.kvs.last else { return total }
            from = last.key + "\u{0}"
        }
    }

    /// The bytes the files under `folder` hold.
    static func folderBytes(_ folder: URL) -> Int64 {
        guard let e = FileManager.default.enumerator(at: folder, includingPropertiesForKeys: [.fileSizeKey, .isRegularFileKey]) else { return 0 }
        var total: Int64 = 0
        for case let url as URL in e {
            if let v = try? url.resourceValues(forKeys: [.fileSizeKey, .isRegularFileKey]), v.isRegularFile == true { total += Int64(v.fileSize ?? 0) }
        }
        return total
    }
}

extension Fmt {
    static func bytes(_ n: Int64) -> String {
        let v = Double(n)
        let k = 1024.0
        if v >= k * k * k { return String(format: "%.2f GiB", v / (k * k * k)) }
        if v >= k * k { return String(format: "%.1f MiB", v / (k * k)) }
        if v >= k { return String(format: "%.1f KiB", v / k) }
        return "\(n) B"
    }
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
    var milliseconds: Double { seconds * 1000 }
}
