import AsyncHTTPClient
import Etcd
import Foundation
import KilnCore
import LocalFarm
import NIOCore
import NIOFoundationCompat
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The processes of `kiln bench farm`: a real etcd, a `kiln scheduler` and simulated
/// `kiln agent`s, each a child process of this one on free loopback ports, all stopped by
/// PID when a phase ends, when the bench fails, or on Ctrl-C.
final class BenchRig: Sendable {
    /// Everything of this run: data dirs and the processes' logs.
    let root: URL
    /// This very binary, which is also the scheduler and the agents.
    let executable: String
    let logLevel: String
    private let children = Mutex<[ManagedProcess]>([])
    private let etcds = Mutex<[EtcdServer]>([])

    init(root: URL, logLevel: String) throws {
        self.root = root
        self.logLevel = logLevel
        if let exe = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") {
            executable = exe
        } else {
            executable = CommandLine.arguments[0]
        }
        try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
    }

    /// Stops every process still running: the agents and the scheduler first (SIGTERM to all
    /// at once, then each is waited for), then etcd.
    func stopAll() {
        let processes = children.withLock { all in
            defer { all.removeAll() }
            return all
        }
        stop(processes)
        let servers = etcds.withLock { all in
            defer { all.removeAll() }
            return all
        }
        for s in servers { s.stop() }
    }

    /// SIGTERM to all of `processes` at once, then waits for each (SIGKILL past the grace).
    func stop(_ processes: [ManagedProcess]) {
        for p in processes where p.isRunning { kill(p.pid, SIGTERM) }
        for p in processes { p.stop(grace: 10) }
        let pids = Set(processes.map(\.pid))
        children.withLock { $0.removeAll { pids.contains($0.pid) } }
    }

    func startEtcd(_ name: String) async throws -> EtcdServer {
        let server = try await EtcdServer.start(dataDir: root.appendingPathComponent("\(name)/etcd"))
        etcds.withLock { $0.append(server) }
        return server
    }

    private func spawn(_ name: String, _ arguments: [String], phase: String) throws -> ManagedProcess {
        let p = try ManagedProcess(name: name, executable: executable, arguments: arguments,
                                   logFile: root.appendingPathComponent("\(phase)/logs/\(name).log"))
        children.withLock { $0.append(p) }
        return p
    }

    /// Starts `kiln scheduler` on a free port and waits until its API answers.
    func startScheduler(etcd: EtcdServer, phase: String, maxAttempts: Int? = nil, loadFactor: Double? = nil) async throws -> (process: ManagedProcess, api: String) {
        var lastError: Error?
        for _ in 0..<3 {
            let port = try FreePort.next()
            var args = ["scheduler", "--listen", "127.0.0.1:\(port)", "--etcd", etcd.endpoint, "--log-level", logLevel]
            if let maxAttempts { args += ["--max-attempts", String(maxAttempts)] }
            if let loadFactor { args += ["--load-factor", String(loadFactor)] }
            let p = try spawn("scheduler", args, phase: phase)
            let api = "http://127.0.0.1:\(port)"
            do {
                try await p.waitUntilReady(timeout: 30) {
                    (try? await BenchHTTP.send("GET", "\(api)/api/v1/health", body: nil))?.status == 200
                }
                return (p, api)
            } catch {
                stop([p])
                lastError = error  // most likely the port was taken meanwhile: pick another
            }
        }
        throw lastError!
    }

    /// Starts one simulated agent (it registers on its own; see `waitForAgents`).
    func startAgent(id: String, etcd: EtcdServer, phase: String, simulate: String, capacity: Int, ttl: Int) throws -> ManagedProcess {
        try spawn(id, ["agent", "--simulate", simulate, "--id", id, "--capacity", String(capacity), "--ttl", String(ttl),
                       "--data-dir", root.appendingPathComponent("\(phase)/\(id)").path,
                       "--etcd", etcd.endpoint, "--log-level", logLevel], phase: phase)
    }
}

/// One phase's farm: etcd, scheduler and agents, started together and stopped together.
final class BenchFarm: Sendable {
    let rig: BenchRig
    let phase: String
    let etcdServer: EtcdServer
    let etcd: EtcdClient
    let scheduler: ManagedProcess
    let api: BenchAPI
    let keys = Keys()
    let capacity: Int
    let ttl: Int
    let simulate: String
    /// The live agent processes by id (the chaos phase replaces them).
    let agents = Mutex<[String: ManagedProcess]>([:])
    private let nextAgent = Mutex(1)

    private init(rig: BenchRig, phase: String, etcdServer: EtcdServer, scheduler: ManagedProcess, api: String, capacity: Int, ttl: Int, simulate: String) {
        self.rig = rig
        self.phase = phase
        self.etcdServer = etcdServer
        self.etcd = EtcdClient(endpoint: etcdServer.endpoint)
        self.scheduler = scheduler
        self.api = BenchAPI(base: api)
        self.capacity = capacity
        self.ttl = ttl
        self.simulate = simulate
    }

    /// Starts a fresh etcd, the scheduler and `agents` simulated agents, and waits until
    /// every agent is registered.
    static func start(rig: BenchRig, phase: String, agents count: Int, capacity: Int, simulate: String, ttl: Int = 10,
                      maxAttempts: Int? = nil, loadFactor: Double? = nil) async throws -> BenchFarm {
        let server = try await rig.startEtcd(phase)
        let (scheduler, api) = try await rig.startScheduler(etcd: server, phase: phase, maxAttempts: maxAttempts, loadFactor: loadFactor)
        let farm = BenchFarm(rig: rig, phase: phase, etcdServer: server, scheduler: scheduler, api: api, capacity: capacity, ttl: ttl, simulate: simulate)
        for _ in 0..<count { _ = try farm.addAgent() }
        try await farm.waitForAgents(count)
        return farm
    }

    /// Starts one more agent with the next unused id.
    @discardableResult
    func addAgent() throws -> String {
        let n = nextAgent.withLock { n in
            defer { n += 1 }
            return n
        }
        let id = "agent-\(n)"
        let p = try rig.startAgent(id: id, etcd: etcdServer, phase: phase, simulate: simulate, capacity: capacity, ttl: ttl)
        agents.withLock { $0[id] = p }
        return id
    }

    /// Stops every agent (SIGTERM: each revokes its lease) and waits until none is registered.
    func stopAgents() async throws {
        rig.stop(agents.withLock { all in
            defer { all.removeAll() }
            return Array(all.values)
        })
        while try await !etcd.range(prefix: keys.agents).kvs.isEmpty { try await Task.sleep(for: .milliseconds(50)) }
    }

    /// Kills an agent with SIGKILL, as a crash would; returns when it has been reaped.
    func killAgent(_ id: String) {
        guard let p = agents.withLock({ $0.removeValue(forKey: id) }) else { return }
        p.killNow()
    }

    var agentIDs: [String] { agents.withLock { Array($0.keys) }.sorted { Self.agentNumber($0) < Self.agentNumber($1) } }

    static func agentNumber(_ id: String) -> Int { Int(id.split(separator: "-").last ?? "") ?? 0 }

    /// Waits until `count` agents are registered in etcd; fails if one of them exits.
    func waitForAgents(_ count: Int, timeout: Double = 120) async throws {
        let deadline = ContinuousClock.now + .seconds(timeout)
        while ContinuousClock.now < deadline {
            for (id, p) in agents.withLock({ $0 }) where !p.isRunning {
                throw FarmError("\(id) exited while starting; its log (\(p.logFile.path)) ends with:\n\(p.logTail())")
            }
            if try await etcd.range(prefix: keys.agents).kvs.count >= count { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw FarmError("the agents did not all register within \(Int(timeout)) s; see \(rig.root.appendingPathComponent("\(phase)/logs").path)")
    }

    /// Creates `names` as projects through the API (simulated agents fetch nothing, so any
    /// valid repository URL does).
    func createProjects(_ names: [String]) async throws {
        for name in names {
            try await api.createProject(name)
        }
    }

    /// Stops agents, scheduler and etcd.
    func stop() {
        rig.stop(agents.withLock { Array($0.values) })
        rig.stop([scheduler])
        etcdServer.stop()
    }
}

/// The scheduler's HTTP API as the bench uses it, through a client with room for many
/// concurrent requests (`HTTPClient.shared` allows 8 connections per host).
struct BenchAPI: Sendable {
    let base: String

    func createProject(_ name: String) async throws {
        let project = Project(name: name, repository: "http://127.0.0.1:1/\(name).git", buildImage: "localhost/kiln/none:1", buildCommand: "true")
        let r = try await BenchHTTP.send("POST", base + "/api/v1/projects", body: try KilnJSON.encode(project))
        guard r.status == 200 || r.status == 201 else { throw FarmError("POST /api/v1/projects (\(name)): HTTP \(r.status) \(r.body)") }
    }

    /// Requests a build of `project`; returns it and the moment the API's answer arrived.
    func requestBuild(_ project: String) async throws -> (build: Build, accepted: Date) {
        let r = try await BenchHTTP.send("POST", base + "/api/v1/projects/\(project)/builds", body: #"{"ref":"main","trigger":"bench"}"#)
        let accepted = Date()
        guard r.status == 201 else { throw FarmError("POST /api/v1/projects/\(project)/builds: HTTP \(r.status) \(r.body)") }
        return (try KilnJSON.decode(Build.self, from: r.body), accepted)
    }
}

enum BenchHTTP {
    /// Never shut down, like `HTTPClient.shared`.
    static let client: HTTPClient = {
        var configuration = HTTPClient.Configuration()
        configuration.timeout = .init(connect: .seconds(3), read: .seconds(60))
        configuration.connectionPool = .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: 256)
        configuration.connectionPool.retryConnectionEstablishment = false
        return HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }()

    static func send(_ method: String, _ url: String, body: String?, headers: [(String, String)] = []) async throws -> (status: Int, body: String) {
        var request = HTTPClientRequest(url: url)
        request.method = .init(rawValue: method)
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(string: body))
        }
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        let response = try await client.execute(request, timeout: .seconds(60))
        return (Int(response.status.code), String(buffer: try await response.body.collect(upTo: 16 << 20)))
    }
}
