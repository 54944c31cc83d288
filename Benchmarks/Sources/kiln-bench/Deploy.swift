import ArgumentParser
import AsyncHTTPClient
import FarmHarness
import Foundation
import KilnCore
import LocalFarm

extension KilnBench {
    struct Deploy: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Push to served: build succeeded → first request answered by the new version through nginx; failed requests during the switch.",
            discussion: """
            Runs against a farm started by `kiln up` (same --data-dir). Each run pushes a new \
            commit of the demo project (its page names the run), builds it, and lets its \
            pipeline (deploy ▶ lb ▶ retire) move nginx onto the new version, while --clients \
            loops request the page through nginx without pause. Figures (issue 5):
              served     from the build's end (its record's finishedAt) to the first answer
                         that names the run, p50 over the runs
              failed     requests that got no 200 during all runs (target: 0), for client
                         loops that open a new connection per request and for loops that
                         keep connections alive (half the --clients each)
              steps      each pipeline step's duration, p50
            Results are printed and written to Benchmarks/results/deploy-DATE.md.

            Example: scripts/up.sh &  then  Benchmarks/.build/release/kiln-bench deploy --runs 5
            """)

        @Option(help: ArgumentHelp("Scheduler API URL (env KILN_API).", valueName: "url")) var api: String = env("KILN_API", "http://127.0.0.1:7070")
        @Option(help: ArgumentHelp("nginx address.", valueName: "host:port")) var lb: String = "127.0.0.1:8088"
        @Option(help: "Domain the demo app is served on.") var domain: String = "demo.localhost"
        @Option(help: ArgumentHelp("kiln up's data folder (its git server holds the demo project).", valueName: "dir")) var dataDir: String = env("KILN_DATA_DIR", "./kiln-data")
        @Option(help: "Runs (pushes).") var runs: Int = 5
        @Option(help: "Client loops requesting the page during each run.") var clients: Int = 4
        @Option(help: ArgumentHelp("Where to write the results (a folder).", valueName: "dir")) var results: String = Repository.results

        func validate() throws {
            guard runs >= 1, clients >= 1 else { throw ValidationError("--runs and --clients must be at least 1") }
        }

        func run() async throws {
            // The first admin's token, which `kiln up` keeps with its other credentials.
            let token = try CredentialFile.read(URL(fileURLWithPath: dataDir).appendingPathComponent("credentials/admin-token").path)
            let client = FarmAPI(base: api, token: token)
            let repo = URL(fileURLWithPath: dataDir).appendingPathComponent("git/demo.git")
            guard FileManager.default.fileExists(atPath: repo.appendingPathComponent("HEAD").path) else {
                throw ValidationError("no demo repository at \(repo.path): start the farm with `kiln up --data-dir \(dataDir)` first")
            }
            guard let source = DemoRepository.locateFixtures()?.appendingPathComponent("demo") else {
                throw ValidationError("cannot find fixtures/demo: run from the repository")
            }
            let project = try await client.get("/api/v1/projects/demo", as: Project.self)
            guard project.pipeline?.contains(where: { $0.plugin == "lb" }) == true else {
                throw ValidationError("project demo has no lb step in its pipeline: start the farm with `kiln up`, which gives it deploy ▶ lb ▶ retire")
            }
            let stamp = String(Int(Date().timeIntervalSince1970) % 100_000)
            say("kiln-bench deploy: \(runs) runs, \(clients) client loops on http://\(lb)/ (Host \(domain))")
            var served = Samples(), stepTimes: [String: Samples] = [:], pipelineTimes = Samples()
            var requests = [0, 0], failures: [[String]] = [[], []]
            for i in 1...runs {
                let marker = "bench-\(stamp)-\(i)"
                try DemoRepository.publish(source: source, bareRepository: repo, message: "bench \(marker)", edit: { dir in
                    try "${project.version}-\(marker)\n".write(to: dir.appendingPathComponent("src/main/resources/version.txt"), atomically: true, encoding: .utf8)
                })
                // Loop k % 2 == 0 opens a new connection per request; the others keep theirs.
                let seen = Locked<Date?>(nil), count = Locked([0, 0]), failed = Locked<[[String]]>([[], []])
                let loops = (0..<clients).map { k in
                    Task {
                        let kind = k % 2
                        while !Task.isCancelled {
                            do {
                                // HTTPClient.shared, as the CLI's client (it retries a refused connection).
                                let page = try await FarmHTTP.send("GET", "http://\(lb)/", headers: [("Host", domain)] + (kind == 0 ? [("Connection", "close")] : []),
                                                                   client: .shared, timeout: .seconds(10))
                                guard (200..<300).contains(page.status) else { throw FarmError("HTTP \(page.status) \(page.body.prefix(200))") }
                                count.withLock { $0[kind] += 1 }
                                if page.body.contains(marker) { seen.withLock { if $0 == nil { $0 = Date() } } }
                            } catch {
                                if Task.isCancelled { break }
                                count.withLock { $0[kind] += 1 }
                                failed.withLock { $0[kind].append("\(error)") }
                            }
                        }
                    }
                }
                let (queued, _) = try await client.requestBuild("demo", trigger: "bench deploy")
                var build = queued
                while !(build.status.isFinal && (build.status != .succeeded || build.deploy?.status.isFinal == true)) {
                    try await Task.sleep(for: .milliseconds(100))
                    build = try await client.get("/api/v1/builds/\(queued.id)", as: Build.self)
                }
                let deadline = Date().addingTimeInterval(30)
                while seen.value == nil && Date() < deadline && build.deploy?.status == .succeeded { try await Task.sleep(for: .milliseconds(20)) }
                try await Task.sleep(for: .milliseconds(300))
                for l in loops { l.cancel() }
                for l in loops { _ = await l.value }
                for kind in 0..<2 {
                    requests[kind] += count.value[kind]
                    failures[kind] += failed.value[kind]
                }
                guard build.status == .succeeded, let run = build.deploy, run.status == .succeeded, let end = build.finishedAt, let at = seen.value else {
                    say("run \(i): build \(build.id) \(build.status.rawValue), pipeline \(build.deploy?.status.rawValue ?? "none"): \(build.error ?? build.deploy?.error ?? "the new version was not seen within 30 s")")
                    continue
                }
                let ms = at.timeIntervalSince(end) * 1000
                served.add(ms)
                if let d = run.durationMs { pipelineTimes.add(Double(d)) }
                for s in run.steps { if let d = s.durationMs { stepTimes[s.plugin, default: Samples()].add(Double(d)) } }
                say("run \(i): build \(build.id) succeeded; served by the new version \(Fmt.ms(ms)) later (\(run.steps.map { "\($0.plugin) \(Fmt.ms(Double($0.durationMs ?? 0)))" }.joined(separator: ", "))); \(count.value.reduce(0, +)) requests, \(failed.value.map(\.count).reduce(0, +)) failed")
            }
            var lines = [
                "# kiln-bench deploy, \(KilnJSON.formatDate(Date()))", "",
                "\(runs) runs on this machine (\(ProcessInfo.processInfo.activeProcessorCount) cores); \(clients) client loops requesting the page through nginx without pause.", "",
                "| figure | measured | target |", "|---|---|---|",
                "| build succeeded → first request served by the new version (p50) | \(Fmt.ms(served.p50)) (max \(Fmt.ms(served.max)), n = \(served.count)) | - |",
                "| failed requests during the switches, a new connection per request | \(failures[0].count) of \(requests[0]) | 0 |",
                "| failed requests during the switches, kept-alive connections | \(failures[1].count) of \(requests[1]) | 0 |",
                "| pipeline run (p50) | \(Fmt.ms(pipelineTimes.p50)) | - |",
            ]
            for (plugin, t) in stepTimes.sorted(by: { $0.key < $1.key }) { lines.append("| \(plugin) step (p50) | \(Fmt.ms(t.p50)) | - |") }
            let allFailures = failures[0] + failures[1]
            if !allFailures.isEmpty {
                lines += ["", "First failures:", ""] + failures[0].prefix(3).map { "- new connection: \($0)" } + failures[1].prefix(3).map { "- kept alive: \($0)" }
            }
            let report = lines.joined(separator: "\n") + "\n"
            print("\n" + report)
            let dir = URL(fileURLWithPath: results)
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
            let f = DateFormatter()
            f.dateFormat = "yyyy-MM-dd-HHmmss"
            let file = dir.appendingPathComponent("deploy-\(f.string(from: Date())).md")
            try report.write(to: file, atomically: true, encoding: .utf8)
            say("written to \(file.path)")
            if served.count < runs || !allFailures.isEmpty { throw ExitCode(1) }
        }
    }
}
