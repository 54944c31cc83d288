import ArgumentParser
import FarmHarness
import Foundation
import KilnCore
import LocalFarm
import Processes
import UnixSignals

extension KilnBench {
    struct MultiHost: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "multihost",
            abstract: "Dispatch latency and push to served on the multi-host farm (network namespaces) against `kiln up` on this machine, in one run (issue 17).",
            discussion: """
            Needs root (network namespaces, podman storage) and the Debian packages of \
            scripts/install-deps.sh. Starts two farms on this machine and runs the same \
            workload on both, alternating between them build by build and run by run (the \
            order swapped every round), so that a change of the machine's load weighs on both \
            alike.

            single host: `kiln up --no-demo --agents 3 --capacity 1` as a child process, in a \
            temporary --data-dir under /var/tmp/kiln-bench with free ports, the busybox build \
            image put into its builders' podman storage, nginx of lb group `local` on 127.0.0.1.

            multi host: the farm of Tests/MultiHostTests (NetnsFarm): 3 etcd, registry, git, \
            2 schedulers, 3 builders, 2 cells behind nginx TLS, 2 lb hosts (group mh), each \
            host a network namespace. Its builders' podman storages are NetnsFarm's persistent \
            ones (/var/tmp/kiln-test/multihost/builder-N, or KILN_TEST_MULTIHOST_ROOT), which \
            every NetnsFarm on this machine shares: a farm locks them while it runs, so this \
            waits while MultiHostTests (or another multihost run) is running.

            dispatch (accepted → started): from the API's 201 answer to POST \
            /api/v1/projects/lat/builds (a project with no pipeline) to the `startedAt` of the \
            build's record. The agent stamps `startedAt` when the task reaches its build runner \
            (BuildRunner.runGuarded, before it reads the record), so the figure spans the queue \
            write, the scheduler's watch of the queue, its choice and task write, and the \
            agent's watch of its tasks. One build at a time; --warmup builds per farm dropped; \
            p50, p90, max.

            push (hook → served): from the answer to GitLab's push hook (a new page of project \
            `web` published on the farm's git server; pipeline deploy ▶ lb ▶ retire) to the \
            first answer naming the new page from EVERY lb of that farm (each asked every \
            20 ms: 1 lb single host, 2 multi host); it includes the build. Also build end \
            (the record's finishedAt) → served by every lb, and the p50 of each pipeline step \
            and each build step. One warm-up push per farm first (the app's first deploy), not \
            counted; the next push waits for the pipeline's end (retire included).

            Both farms are stopped in every case (kiln up by SIGTERM, waited for, its folder \
            removed; the namespaces torn down), Ctrl-C included. Exits 1 if a build or a push \
            failed. With the defaults it takes about 10 minutes on 2 cores (both farms start in \
            under a minute; a push and its pipeline take 25 to 45 s). Results are printed and \
            written to Benchmarks/results/multihost-DATE.md.

            Example (from the repository, as root):
              swift build -c release --product kiln
              swift build -c release --package-path Benchmarks
              Benchmarks/.build/release/kiln-bench multihost --builds 20 --runs 5
            """)


        @Option(help: "Dispatch builds measured per farm, one at a time.") var builds: Int = 20
        @Option(help: "Dispatch builds per farm before those measured, dropped.") var warmup: Int = 2
        @Option(help: "Pushes measured per farm.") var runs: Int = 5
        @Option(help: ArgumentHelp("The kiln executable both farms run.", valueName: "path")) var kiln: String = Repository.kiln
        @Option(help: ArgumentHelp("Where to write the results (a folder).", valueName: "dir")) var results: String = Repository.results

        func validate() throws {
            guard builds >= 1, runs >= 1, warmup >= 0 else { throw ValidationError("--builds and --runs must be at least 1, --warmup at least 0") }
            guard getuid() == 0 else { throw ValidationError("multihost needs root (network namespaces, podman storage): run it as root") }
            if let reason = NetnsSupport.reason { throw ValidationError("network namespaces cannot be made here: \(reason)") }
            guard FileManager.default.isExecutableFile(atPath: kiln) else { throw ValidationError("no kiln at \(kiln): \(Repository.buildKiln), or pass --kiln") }
        }

        func run() async throws {
            bootstrapLogging()
            let startedAt = Date()
            let single = Locked<SingleHostFarm?>(nil), multi = Locked<NetnsFarm?>(nil)
            let reports = Locked<[PhaseReport]>([])
            let failures = Locked<[String]>([])
            let stopAll: @Sendable () -> Void = {
                if let m = multi.withLock({ f in defer { f = nil }; return f }) {
                    say("stopping the multi-host farm")
                    m.stop()
                }
                if let s = single.withLock({ f in defer { f = nil }; return f }) {
                    say("stopping kiln up (SIGTERM to \(s.process.pid))")
                    s.stop()
                }
            }
            let (builds, warmup, runs, kiln) = (builds, warmup, runs, kiln)
            let body: @Sendable () async throws -> Void = {
                say("kiln-bench multihost: \(builds) dispatch builds (+\(warmup) warm-up) and \(runs) pushes (+1 warm-up) per farm, the farms alternating")
                let s = try await SingleHostFarm.start(kiln: kiln) { f in single.withLock { $0 = f } }
                let m = try await Self.startMulti(kiln: kiln) { f in multi.withLock { $0 = f } }
                let targets = [try await Target.multi(m), try await Target.single(s)]
                let dispatch = try await Self.dispatch(targets, builds: builds, warmup: warmup, failures: failures)
                reports.withLock { $0.append(Self.dispatchReport(targets, dispatch, builds: builds, warmup: warmup)) }
                let push = try await Self.push(targets, runs: runs, failures: failures)
                reports.withLock { $0.append(Self.pushReport(targets, push, runs: runs)) }
            }
            let signals = await UnixSignalsSequence(trapping: .sigint, .sigterm)
            let outcome: Result<Void, Error> = await withTaskGroup(of: Result<Void, Error>?.self) { group in
                group.addTask {
                    do { try await body(); return .success(()) } catch { return .failure(error) }
                }
                group.addTask {
                    for await _ in signals { break }
                    if Task.isCancelled { return nil }
                    say("\nmultihost: interrupted; stopping both farms")
                    return .failure(ExitCode(130))
                }
                let first = await group.next()!!
                group.cancelAll()
                return first
            }
            stopAll()
            if case .failure(let error) = outcome, !(error is ExitCode) { failures.withLock { $0.append("stopped early: \(error)") } }
            var done = reports.value
            let failed = failures.value
            if !failed.isEmpty {
                var r = PhaseReport("Failures")
                r.notes = failed
                done.append(r)
            }
            if !done.isEmpty {
                let file = try ResultFile.write(done, kind: "multihost", in: results, startedAt: startedAt, load: Self.load(),
                                                setting: "Both farms on this one machine, up at once; the multi-host farm's hosts are network namespaces joined by a bridge.",
                                                complete: (try? outcome.get()) != nil)
                say("\nresults written to \(file.path)")
            }
            if case .failure(let error) = outcome {
                if let code = error as? ExitCode { throw code }
                say("multihost: \(error)")
                throw ExitCode(1)
            }
            if !failed.isEmpty { throw ExitCode(1) }
        }

        static func startMulti(kiln: String, keep: @Sendable (NetnsFarm) -> Void) async throws -> NetnsFarm {
            say("starting the multi-host farm (network namespaces)")
            let began = Date()
            let farm = try await NetnsFarm.start(kiln: kiln)
            keep(farm)
            do {
                try await farm.startKiln()
            } catch {
                throw FarmError("the multi-host farm did not start: \(error)\n\(farm.logs())")
            }
            say("  multi-host farm up in \(Fmt.s(Date().timeIntervalSince(began))) (run \(farm.net.runID))")
            return farm
        }

        static func load() -> String {
            (try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8)).map { $0.split(separator: " ").prefix(3).joined(separator: " ") } ?? "?"
        }

        // MARK: dispatch

        /// Per farm (index of `targets`), accepted → startedAt in ms.
        static func dispatch(_ targets: [Target], builds: Int, warmup: Int, failures: Locked<[String]>) async throws -> [Samples] {
            say("== dispatch latency: \(builds) builds of project lat (no pipeline) one at a time per farm, after \(warmup) warm-up")
            var samples = targets.map { _ in Samples() }
            for i in 0..<(warmup + builds) {
                for t in (i % 2 == 0 ? Array(targets.indices) : Array(targets.indices.reversed())) {
                    let target = targets[t]
                    do {
                        let r = try await target.request("POST", "/api/v1/projects/lat/builds", try KilnJSON.encode(BuildRequest(ref: "main", trigger: "bench multihost")))
                        let accepted = Date()
                        guard r.status == 201 else { throw FarmError("POST /api/v1/projects/lat/builds answered \(r.status): \(r.body)") }
                        let id = try KilnJSON.decode(Build.self, from: r.body).id
                        let build = try await target.waitForBuild(id, timeout: 300) { $0.status.isFinal }
                        guard build.status == .succeeded, let started = build.startedAt else {
                            throw FarmError("build \(id) ended \(build.status.rawValue): \(build.error ?? "")")
                        }
                        let ms = started.timeIntervalSince(accepted) * 1000
                        if i >= warmup { samples[t].add(ms) }
                        say("  \(target.name) build \(i + 1)\(i < warmup ? " (warm-up)" : ""): accepted → started \(Fmt.ms(ms)) (build took \(Fmt.ms(Double(build.durationMs ?? -1))))")
                    } catch is CancellationError {
                        throw CancellationError()
                    } catch {
                        say("  \(target.name) build \(i + 1) failed: \(error)")
                        failures.withLock { $0.append("\(target.name) dispatch build \(i + 1): \(error)") }
                    }
                }
            }
            return samples
        }

        static func dispatchReport(_ targets: [Target], _ s: [Samples], builds: Int, warmup: Int) -> PhaseReport {
            var report = PhaseReport("Dispatch latency: API accepted → agent started it (multi host / single host)")
            report.setup = [
                "project `lat`: busybox build image, build command `cat message`, a Dockerfile (the image is built and pushed), no pipeline",
                "\(builds) builds per farm requested one at a time through `POST /api/v1/projects/lat/builds` (the next once the previous has ended), the farms alternating build by build, the order swapped every round; \(warmup) warm-up builds per farm dropped",
                "start: the API's 201 answer received by kiln-bench; end: the build record's `startedAt`, which the agent stamps when the task reaches its build runner (`BuildRunner.runGuarded`, before it reads the record and writes it running). It spans the queue write, the scheduler's watch of the queue, its choice and task write, and the agent's watch of its tasks. One wall clock: every process and namespace shares this machine's CLOCK_REALTIME; `startedAt` is kept to the millisecond",
                "multi host: the scheduler reached over TLS on sched-1's namespace, etcd a 3-member TLS cluster on hosts of its own; single host: `kiln up`, one etcd on loopback",
            ]
            report.figures = compareFigures(targets, [("accepted → started", s)])
            report.notes = zip(targets, s).map { "\($0.name): \($1.summary); samples below 0 ms (the agent stamped `startedAt` before the 201 answer reached kiln-bench): \($1.values.filter { $0 < 0 }.count)" }
                + ["after the first build of `lat` on a farm, the others have the same commit and inputs, so the agent reuses its result (builds of about 0.1 to 0.2 s): that happens after `startedAt`, outside the figure"]
            say(report.printed())
            return report
        }

        // MARK: push

        struct PushSamples: Sendable {
            var served = Samples(), afterBuild = Samples(), pipeline = Samples()
            var steps: [String: Samples] = [:]
            var buildSteps: [String: Samples] = [:]
        }

        static func push(_ targets: [Target], runs: Int, failures: Locked<[String]>) async throws -> [PushSamples] {
            say("== push to served: 1 warm-up and \(runs) pushes of a new page of project web per farm, alternating")
            var samples = targets.map { _ in PushSamples() }
            let stamp = String(Int(Date().timeIntervalSince1970) % 100_000)
            for i in 0...runs {
                for t in (i % 2 == 0 ? Array(targets.indices) : Array(targets.indices.reversed())) {
                    let target = targets[t]
                    let marker = "bench-\(stamp)-\(i)"
                    do {
                        let r = try await target.pushAndServe(marker)
                        let served = r.servedAt.values.max()!.timeIntervalSince(r.answered) * 1000
                        let afterBuild = r.servedAt.values.max()!.timeIntervalSince(r.buildEnd) * 1000
                        let steps = r.build.deploy?.steps ?? []
                        say("  \(target.name) push \(i)\(i == 0 ? " (warm-up)" : ""): hook → served by every lb \(Fmt.ms(served)), build end → served \(Fmt.ms(afterBuild)) (build \(Fmt.ms(Double(r.build.durationMs ?? -1))); \(steps.map { "\($0.plugin) \(Fmt.ms(Double($0.durationMs ?? -1)))" }.joined(separator: ", ")))")
                        if i == 0 { continue }
                        samples[t].served.add(served)
                        samples[t].afterBuild.add(afterBuild)
                        if let d = r.build.deploy?.durationMs { samples[t].pipeline.add(Double(d)) }
                        for s in steps { if let d = s.durationMs { samples[t].steps[s.plugin, default: Samples()].add(Double(d)) } }
                        for s in r.build.steps { if let d = s.durationMs { samples[t].buildSteps[s.name.rawValue, default: Samples()].add(Double(d)) } }
                    } catch is CancellationError {
                        throw CancellationError()
                    } catch {
                        say("  \(target.name) push \(i) failed: \(error)")
                        failures.withLock { $0.append("\(target.name) push \(i)\(i == 0 ? " (warm-up)" : ""): \(error)") }
                    }
                }
            }
            return samples
        }

        static func pushReport(_ targets: [Target], _ s: [PushSamples], runs: Int) -> PhaseReport {
            var report = PhaseReport("Push to served: GitLab push hook answered → the new page served by every lb (multi host / single host)")
            report.setup = [
                "project `web` as in Tests/MultiHostTests (`pushWeb`): a busybox httpd image, pipeline deploy (1 replica per cell, 2 cells) ▶ lb ▶ retire; each push publishes a page naming the run on the farm's git server and sends GitLab's push hook to the (leading) scheduler",
                "\(runs) pushes per farm, the farms alternating run by run, the order swapped every round; one warm-up push per farm first (the app's first deploy, nothing to retire), not counted",
                "hook → served: from the push hook's 201 answer to the first answer naming the new page from every lb of the farm, each lb asked every 20 ms with a new connection (single host: its one nginx on 127.0.0.1; multi host: lb-1 and lb-2 over the op link); the figure is the later lb's",
                "build end → served: from the build record's `finishedAt` (written by the agent) to the same moment; steps: each pipeline step's and each build step's `durationMs` from the build's record (the build is part of hook → served)",
            ]
            var rows: [(String, [Samples])] = [
                ("hook → served by every lb", s.map(\.served)),
                ("build end → served by every lb", s.map(\.afterBuild)),
                ("pipeline run", s.map(\.pipeline)),
            ]
            for p in Set(s.flatMap(\.steps.keys)).sorted() { rows.append(("pipeline step \(p)", s.map { $0.steps[p] ?? Samples() })) }
            for b in ["fetch", "compile", "image", "push"] where s.contains(where: { $0.buildSteps[b] != nil }) {
                rows.append(("build step \(b)", s.map { $0.buildSteps[b] ?? Samples() }))
            }
            report.figures = compareFigures(targets, Array(rows.prefix(2)))
                + compareFigures(targets, Array(rows.dropFirst(2)), only50: true)
            say(report.printed())
            return report
        }

        /// One figure per percentile and row: "multi X · single Y · ×ratio".
        static func compareFigures(_ targets: [Target], _ rows: [(String, [Samples])], only50: Bool = false) -> [Figure] {
            var figures: [Figure] = []
            let stats: [(String, (Samples) -> Double)] = [("p50", { $0.p50 })] + (only50 ? [] : [("p90", { $0.percentile(90) }), ("max", { $0.max })])
            for (name, samples) in rows {
                for (label, f) in stats {
                    let values = samples.map(f)
                    let ratio = values.count == 2 && values[1] > 0 && !values[0].isNaN ? String(format: "×%.2f", values[0] / values[1]) : "-"
                    let parts = zip(targets, values).map { "\($0.name) \(Fmt.ms($1))" }.joined(separator: " · ")
                    figures.append(Figure("\(name), \(label) (n = \(samples.map { String($0.count) }.joined(separator: " / ")))", "\(parts) · multi/single \(ratio)"))
                }
            }
            return figures
        }
    }
}

/// What the benchmark does to one farm, the same calls for both.
struct Target: Sendable {
    let name: String
    let request: @Sendable (_ method: String, _ path: String, _ body: String?) async throws -> (status: Int, body: String)
    let publish: @Sendable (_ name: String, _ files: [String: String]) throws -> (url: String, commit: String)
    let hook: @Sendable (_ url: String, _ commit: String, _ token: String) async throws -> String
    /// Each lb's answer for the web domain (a new connection per request).
    let lbs: [(name: String, fetch: @Sendable () async throws -> (status: Int, body: String))]
    let lbGroup: String
    let domain: String

    static let hookSecret = "multihost-bench-hook-secret"

    static func multi(_ farm: NetnsFarm) async throws -> Target {
        let lbs = NetnsFarm.lbHosts.map { lb in
            let address = farm.net.host(lb).address
            return (name: lb, fetch: { @Sendable () async throws -> (status: Int, body: String) in
                try farm.net.checkRoute(address)
                return try await FarmHTTP.send("GET", "http://\(address):\(NetnsFarm.lbPort)/", headers: [("Host", "web.test"), ("Connection", "close")], timeout: .seconds(5))
            })
        }
        let t = Target(name: "multi", request: { try await farm.request($0, $1, body: $2) },
                       publish: { try farm.publish($0, files: $1) },
                       hook: { try await farm.sendPushHook(repository: $0, commit: $1, token: $2) },
                       lbs: lbs, lbGroup: NetnsFarm.lbGroup, domain: "web.test")
        try await t.addProjects()
        return t
    }

    static func single(_ farm: SingleHostFarm) async throws -> Target {
        let api = farm.api, token = farm.adminToken, lbPort = farm.lbPort
        let t = Target(
            name: "single",
            request: { try await FarmHTTP.send($0, api + $1, body: $2, headers: [("Authorization", "Bearer \(token)")], timeout: .seconds(30)) },
            publish: { try farm.publish($0, files: $1) },
            hook: { url, commit, secret in
                let hook: [String: Any] = [
                    "object_kind": "push", "ref": "refs/heads/main", "before": String(repeating: "0", count: 40), "after": commit,
                    "checkout_sha": commit, "user_username": "multihost-bench", "total_commits_count": 1, "project": ["git_http_url": url],
                ]
                let body = String(decoding: try JSONSerialization.data(withJSONObject: hook), as: UTF8.self)
                let reply = try await FarmHTTP.send("POST", api + "/hooks/gitlab", body: body,
                                                    headers: [("X-Gitlab-Event", "Push Hook"), ("X-Gitlab-Token", secret), ("X-Gitlab-Event-UUID", UUID().uuidString)])
                guard reply.status == 201, let answer = try JSONSerialization.jsonObject(with: Data(reply.body.utf8)) as? [String: Any],
                      let id = (answer["builds"] as? [String])?.first else { throw FarmError("the push hook answered \(reply.status): \(reply.body)") }
                return id
            },
            lbs: [(name: "lb-1", fetch: {
                try await FarmHTTP.send("GET", "http://127.0.0.1:\(lbPort)/", headers: [("Host", "web.localhost"), ("Connection", "close")], timeout: .seconds(5))
            })],
            lbGroup: "local", domain: "web.localhost")
        try await t.addProjects()
        return t
    }

    static let buildImage = "localhost/kiln/busybox:1"

    static func webFiles(_ page: String) -> [String: String] {
        ["Dockerfile": "FROM \(buildImage)\nCOPY index.html /www/index.html\nCMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n",
         "index.html": "<h1>web \(page)</h1>\n"]
    }

    /// Projects `lat` (no pipeline) and `web` (deploy ▶ lb ▶ retire), as Tests/MultiHostTests adds them.
    func addProjects() async throws {
        let lat = try publish("lat", ["Dockerfile": "FROM \(Self.buildImage)\nCOPY message /message\nCMD [\"cat\", \"/message\"]\n", "message": "lat v1\n"])
        let web = try publish("web", Self.webFiles("v0"))
        let pipeline = [
            PipelineStep(plugin: "deploy", settings: ["app": .string("web"), "port": .number(8080), "replicas": .number(1), "healthPath": .string("/"),
                                                      "healthTimeoutSeconds": .number(120)]),
            PipelineStep(plugin: "lb", settings: ["group": .string(lbGroup), "domain": .string(domain), "app": .string("web")]),
            PipelineStep(plugin: "retire", settings: ["app": .string("web"), "drainSeconds": .number(1)]),
        ]
        for project in [Project(name: "lat", repository: lat.url, buildImage: Self.buildImage, buildCommand: "cat message"),
                        Project(name: "web", repository: web.url, buildImage: Self.buildImage, buildCommand: "cat index.html", webhookSecret: Self.hookSecret, pipeline: pipeline)] {
            let r = try await request("POST", "/api/v1/projects", try KilnJSON.encode(project))
            guard r.status == 201 || r.status == 200 else { throw FarmError("\(name) host: adding project \(project.name): \(r.status) \(r.body)") }
        }
    }

    /// Polls the build's record every 50 ms until `condition` holds.
    func waitForBuild(_ id: String, timeout: Double, _ condition: (Build) -> Bool) async throws -> Build {
        let deadline = Date().addingTimeInterval(timeout)
        var last: Build?
        while Date() < deadline {
            let r = try await request("GET", "/api/v1/builds/\(id)", nil)
            if r.status == 200 {
                let b = try KilnJSON.decode(Build.self, from: r.body)
                if condition(b) { return b }
                last = b
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw FarmError("\(name) host: build \(id) not done within \(Int(timeout)) s (last: \(last.map { "\($0.status.rawValue) on \($0.agent ?? "-"), deploy \($0.deploy?.status.rawValue ?? "none")" } ?? "no record"))")
    }

    struct Pushed: Sendable { var answered: Date; var servedAt: [String: Date]; var buildEnd: Date; var build: Build }

    /// Publishes a page naming `marker`, sends the push hook, asks every lb every 20 ms until
    /// each has answered with the page; then waits for the build's pipeline to end.
    func pushAndServe(_ marker: String, timeout: Double = 420) async throws -> Pushed {
        let pushed = try publish("web", Self.webFiles(marker))
        let id = try await hook(pushed.url, pushed.commit, Self.hookSecret)
        let answered = Date()
        let deadline = answered.addingTimeInterval(timeout)
        var seen: [String: Date] = [:]
        var lastCheck = Date.distantPast
        while seen.count < lbs.count {
            guard Date() < deadline else { throw FarmError("\(name) host: build \(id): page \(marker) not served by \(lbs.map(\.name).filter { seen[$0] == nil }) within \(Int(timeout)) s") }
            for lb in lbs where seen[lb.name] == nil {
                if let page = try? await lb.fetch(), page.status == 200, page.body.contains(marker) { seen[lb.name] = Date() }
            }
            // The build's record once a second, to fail fast rather than wait out the timeout.
            if Date().timeIntervalSince(lastCheck) > 1 {
                lastCheck = Date()
                let r = try await request("GET", "/api/v1/builds/\(id)", nil)
                if r.status == 200, let b = try? KilnJSON.decode(Build.self, from: r.body),
                   b.status.isFinal && b.status != .succeeded || b.deploy?.status.isFinal == true && b.deploy?.status != .succeeded {
                    throw FarmError("\(name) host: build \(id) \(b.status.rawValue) \(b.error ?? ""), pipeline \(b.deploy?.status.rawValue ?? "none") \(b.deploy?.error ?? "")")
                }
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        let build = try await waitForBuild(id, timeout: 120) { $0.status.isFinal && ($0.status != .succeeded || $0.deploy?.status.isFinal == true) }
        guard build.status == .succeeded, build.deploy?.status == .succeeded, let end = build.finishedAt else {
            throw FarmError("\(name) host: build \(id) \(build.status.rawValue), pipeline \(build.deploy?.status.rawValue ?? "none"): \(build.deploy?.error ?? build.error ?? "")")
        }
        return Pushed(answered: answered, servedAt: seen, buildEnd: end, build: build)
    }
}

/// `kiln up --no-demo` as a child process in a temporary data folder with free ports; the
/// busybox build image put into its builders' podman storage.
final class SingleHostFarm: Sendable {
    let process: ManagedProcess
    let data: URL
    let api: String
    let adminToken: String
    let gitPort: Int
    let lbPort: Int

    init(process: ManagedProcess, data: URL, api: String, adminToken: String, gitPort: Int, lbPort: Int) {
        (self.process, self.data, self.api, self.adminToken, self.gitPort, self.lbPort) = (process, data, api, adminToken, gitPort, lbPort)
    }

    /// `keep` receives a farm to stop as soon as its process runs, before it is ready.
    static func start(kiln: String, keep: @Sendable (SingleHostFarm) -> Void) async throws -> SingleHostFarm {
        let data = URL(fileURLWithPath: "/var/tmp/kiln-bench/multihost-single-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: data, withIntermediateDirectories: true)
        var ports: [Int] = []
        while ports.count < 7 { let p = try FreePort.next(); if !ports.contains(p) { ports.append(p) } }
        let (etcd, peer, registry, apiPort, maven, git, lb) = (ports[0], ports[1], ports[2], ports[3], ports[4], ports[5], ports[6])
        say("starting kiln up --no-demo in \(data.path) (API 127.0.0.1:\(apiPort), nginx 127.0.0.1:\(lb))")
        let began = Date()
        let process = try ManagedProcess(
            name: "kiln-up", executable: kiln,
            arguments: ["up", "--no-demo", "--agents", "3", "--capacity", "1", "--data-dir", data.path,
                        "--etcd-port", "\(etcd)", "--etcd-peer-port", "\(peer)", "--registry-port", "\(registry)", "--api-port", "\(apiPort)",
                        "--maven-port", "\(maven)", "--git-port", "\(git)", "--lb-port", "\(lb)"],
            logFile: data.appendingPathComponent("kiln-up.log"))
        let partial = SingleHostFarm(process: process, data: data, api: "http://127.0.0.1:\(apiPort)", adminToken: "", gitPort: git, lbPort: lb)
        keep(partial)
        let deadline = Date().addingTimeInterval(900)
        while !((try? String(contentsOf: process.logFile, encoding: .utf8))?.contains("Kiln is running") ?? false) {
            guard process.isRunning else { throw FarmError("kiln up exited (\(process.status ?? -1)) before it was running: \(process.logTail(lines: 30))") }
            guard Date() < deadline else { throw FarmError("kiln up not running after 15 minutes: \(process.logTail(lines: 30))") }
            try await Task.sleep(for: .milliseconds(250))
        }
        let token = try CredentialFile.read(data.appendingPathComponent("credentials/admin-token").path)
        let farm = SingleHostFarm(process: process, data: data, api: partial.api, adminToken: token, gitPort: git, lbPort: lb)
        keep(farm)
        try farm.ensureBusyboxImage()
        say("  kiln up running in \(Fmt.s(Date().timeIntervalSince(began)))")
        return farm
    }

    /// The busybox build image in the builders' storage, `<data>/podman` (Infrastructure.start).
    func ensureBusyboxImage() throws {
        try PodmanService.ensureBusyboxImage(Target.buildImage, root: data.appendingPathComponent("podman"))
    }

    /// Publishes `files` as `main` of `<data>/git/<name>.git`, which kiln up's git server serves.
    func publish(_ name: String, files: [String: String]) throws -> (url: String, commit: String) {
        let source = data.appendingPathComponent("bench-sources/\(name)")
        try? FileManager.default.removeItem(at: source)
        try FileManager.default.createDirectory(at: source, withIntermediateDirectories: true)
        for (file, content) in files { try content.write(to: source.appendingPathComponent(file), atomically: true, encoding: .utf8) }
        let commit = try DemoRepository.publish(source: source, bareRepository: data.appendingPathComponent("git/\(name).git"))
        return ("http://127.0.0.1:\(gitPort)/\(name).git", commit)
    }

    /// SIGTERM to kiln up and wait (it stops everything it started, app containers too);
    /// then its podman storages and its folder are removed.
    func stop() {
        process.stop(grace: 180)
        for root in ["podman", "cells"] { try? PodmanService.removeStorage(root: data.appendingPathComponent(root)) }
        do { try FileManager.default.removeItem(at: data) } catch { say("  could not remove \(data.path): \(error)") }
    }
}
