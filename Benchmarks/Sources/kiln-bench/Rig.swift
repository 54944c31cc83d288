import Etcd
import FarmHarness
import Foundation
import KilnCore
import LocalFarm
import Synchronization
import ArgumentParser
import UnixSignals

/// The processes of `kiln-bench farm`: each phase's farm (the harness's `ProcessFarm`: a real
/// etcd, a `kiln scheduler` and simulated `kiln agent`s) and the floor's bare etcd, all
/// children of this process in folders under `root`, all stopped by PID when a phase ends,
/// when the benchmark fails, or on Ctrl-C (`stopAll`).
final class BenchRig: Sendable {
    /// Everything of this run: data dirs and the processes' logs, a folder per phase.
    let root: URL
    /// The `kiln` executable of the schedulers and agents.
    let kiln: String
    let logLevel: String
    /// Whether a phase's farm has etcd authentication on (each process its own user), unless
    /// the phase says otherwise (the latency phase runs both ways).
    let etcdAuth: Bool
    private let farms = Mutex<[ProcessFarm]>([])
    private let etcds = Mutex<[EtcdServer]>([])

    init(root: URL, kiln: String, logLevel: String, etcdAuth: Bool = true) throws {
        self.etcdAuth = etcdAuth
        self.root = root
        self.kiln = kiln
        self.logLevel = logLevel
        try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
    }

    /// Stops every process still running: each farm's agents and scheduler, then its etcd.
    func stopAll() {
        for farm in farms.withLock({ $0 }) { farm.stop() }
        for server in etcds.withLock({ $0 }) { server.stop() }
    }

    /// A bare etcd in the folder `name` (the floor's).
    func startEtcd(_ name: String) async throws -> EtcdServer {
        let server = try await EtcdServer.start(dataDir: root.appendingPathComponent("\(name)/etcd"))
        etcds.withLock { $0.append(server) }
        return server
    }

    /// One phase's farm in the folder `phase`: a fresh etcd, `kiln scheduler` with
    /// `schedulerOptions`, and `agents` simulated agents (`agent-1`, …), every one registered.
    func startFarm(_ phase: String, agents count: Int, _ agent: ProcessFarm.AgentOptions, schedulerOptions: [String] = [], etcdAuth: Bool? = nil,
                   etcdMaintenance: EtcdServer.Maintenance = .standard) async throws -> BenchFarm {
        let farm = try await ProcessFarm(dir: root.appendingPathComponent(phase), kiln: kiln, logLevel: logLevel, etcdAuth: etcdAuth ?? self.etcdAuth,
                                         etcdMaintenance: etcdMaintenance, missing: Repository.buildKiln)
        farms.withLock { $0.append(farm) }
        let scheduler = try await farm.startScheduler("scheduler", options: schedulerOptions)
        for _ in 0..<count { try await farm.startAgent(agent) }
        try await farm.waitForAgents()
        return BenchFarm(processes: farm, api: FarmAPI(base: scheduler.api, token: farm.adminToken), agent: agent)
    }
}

/// One phase's farm, started together and stopped together, with the options of its agents
/// (the chaos phase and the drain start fresh ones).
struct BenchFarm: Sendable {
    let processes: ProcessFarm
    let api: FarmAPI
    let agent: ProcessFarm.AgentOptions

    var etcd: EtcdClient { processes.etcd }
    var keys: Keys { processes.keys }

    /// Starts one more agent with the next unused id.
    @discardableResult
    func addAgent() async throws -> String { try await processes.startAgent(agent) }

    /// Creates `names` as projects through the API (simulated agents fetch nothing, so any
    /// valid repository URL does).
    func createProjects(_ names: [String]) async throws {
        for name in names {
            try await api.createProject(Project(name: name, repository: "http://127.0.0.1:1/\(name).git", buildImage: "localhost/kiln/none:1", buildCommand: "true"))
        }
    }

    /// Says where the farm runs, once it is up.
    func sayUp() {
        say("  farm up: etcd \(processes.etcdServer.endpoint) (authentication \(processes.etcdUsers == nil ? "off" : "on")), scheduler \(api.base), \(processes.agents.count) agents registered")
    }

    /// Where the phase's processes log.
    var logs: String { processes.dir.appendingPathComponent("logs").path }

    func stop() { processes.stop() }
}

/// The scheduler's HTTP API as the benchmarks use it, through `FarmHTTP`'s wide pool.
struct FarmAPI: Sendable {
    let base: String
    /// An admin's API token, sent with every request.
    let token: String
    var headers: [(String, String)] { [("Authorization", "Bearer \(token)")] }

    func createProject(_ project: Project) async throws {
        let r = try await FarmHTTP.send("POST", base + "/api/v1/projects", body: try KilnJSON.encode(project), headers: headers)
        guard r.status == 200 || r.status == 201 else { throw FarmError("POST /api/v1/projects (\(project.name)): HTTP \(r.status) \(r.body)") }
    }

    /// Requests a build of `project`; returns it and the moment the API's answer arrived.
    func requestBuild(_ project: String, trigger: String = "bench") async throws -> (build: Build, accepted: Date) {
        let r = try await FarmHTTP.send("POST", base + "/api/v1/projects/\(project)/builds", body: #"{"ref":"main","trigger":"\#(trigger)"}"#, headers: headers)
        let accepted = Date()
        guard r.status == 201 else { throw FarmError("POST /api/v1/projects/\(project)/builds: HTTP \(r.status) \(r.body)") }
        return (try KilnJSON.decode(Build.self, from: r.body), accepted)
    }

    func get<T: Decodable>(_ path: String, as: T.Type) async throws -> T {
        let r = try await FarmHTTP.send("GET", base + path, headers: headers)
        guard r.status == 200 else { throw FarmError("GET \(path): HTTP \(r.status) \(r.body)") }
        return try KilnJSON.decode(T.self, from: r.body)
    }
}

extension BenchRig {
    /// Runs `body` (which appends to `reports`) until it ends or SIGINT/SIGTERM arrives, then
    /// stops every process the rig started; writes the reports so far with `write` (told
    /// whether the run completed) and says where; removes the rig's folder after a success
    /// unless `keep`, keeps it after a failure. Throws `ExitCode` 1 (130 when interrupted).
    func runInterruptibly(_ name: String, keep: Bool, reports: Locked<[PhaseReport]>,
                          write: ([PhaseReport], Bool) throws -> URL,
                          _ body: @escaping @Sendable () async throws -> Void) async throws {
        let signals = await UnixSignalsSequence(trapping: .sigint, .sigterm)
        let outcome: Result<Void, Error> = await withTaskGroup(of: Result<Void, Error>?.self) { group in
            group.addTask {
                do {
                    try await body()
                    return .success(())
                } catch {
                    return .failure(error)
                }
            }
            group.addTask {
                for await _ in signals { break }
                if Task.isCancelled { return nil }
                say("\n\(name): interrupted; stopping every process it started")
                self.stopAll()
                return .failure(ExitCode(130))
            }
            let first = await group.next()!!
            group.cancelAll()
            return first
        }
        stopAll()
        let done = reports.withLock { $0 }
        if !done.isEmpty {
            let file = try write(done, (try? outcome.get()) != nil)
            say("\nresults written to \(file.path)")
        }
        switch outcome {
        case .success:
            if keep { say("kept \(root.path)") } else { try? FileManager.default.removeItem(at: root) }
        case .failure(let error):
            if !(error is ExitCode) { say("\(name) failed: \(error)") }
            say("the processes' data and logs are kept in \(root.path)")
            throw error is ExitCode ? error : ExitCode(1)
        }
    }
}
