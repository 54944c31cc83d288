import AsyncHTTPClient
import Deploy
import Etcd
import Foundation
import Hummingbird
import KilnCore
import KilnTestSupport
import LocalFarm
import Logging
import NIOCore
import NIOHTTP1
import Synchronization
import Testing
#if canImport(Glibc)
import Glibc
#endif

// The lb-agent tests' harness: backends, a running agent with its nginx, a farm of etcd and
// agents, a client that never pauses.

struct Reply: Equatable, CustomStringConvertible {
    let status: Int
    let body: String
    init(_ status: Int, _ body: String) {
        self.status = status
        self.body = body
    }
    var description: String { "\(status) \(body)" }
}

/// A backend: an HTTP server on a free port that answers its own name.
final class Backend: Sendable {
    let name: String
    let port: Int
    private let task: Task<Void, Error>

    private init(name: String, port: Int, task: Task<Void, Error>) {
        self.name = name
        self.port = port
        self.task = task
    }

    var address: String { "127.0.0.1:\(port)" }

    static func start(_ name: String) async throws -> Backend {
        let router = Router()
        router.get("/") { _, _ in name }
        var logger = Logger(label: "backend")
        // Stopping is cancelling, which Hummingbird logs as an error.
        logger.logLevel = .critical
        let (ports, continuation) = AsyncStream.makeStream(of: Int.self)
        let app = Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0), serverName: name),
                              onServerRunning: { continuation.yield($0.localAddress?.port ?? 0) }, logger: logger)
        let task = Task {
            defer { continuation.finish() }
            try await app.run()
        }
        for await port in ports { return Backend(name: name, port: port, task: task) }
        try await task.value
        throw FarmError("backend \(name) stopped before it listened")
    }

    func stop() async {
        task.cancel()
        _ = try? await task.value
    }
}

struct NginxProcesses: Equatable, CustomStringConvertible {
    let master: Int32
    let workers: Set<Int32>
    var description: String { "master \(master), workers \(workers.sorted())" }
}

/// One lb-agent run in this process, stopped by the farm at the end of the test.
final class RunningAgent: Sendable {
    let id: String
    let port: Int
    let directory: URL
    private let task: Task<Void, Error>

    init(id: String, port: Int, directory: URL, task: Task<Void, Error>) {
        self.id = id
        self.port = port
        self.directory = directory
        self.task = task
    }

    var listen: String { "127.0.0.1:\(port)" }
    var url: String { "http://\(listen)/" }

    /// nginx's master (from its pid file) and its workers that take connections (from /proc).
    func nginxProcesses() throws -> NginxProcesses {
        let text = try String(contentsOf: directory.appendingPathComponent("nginx.pid"), encoding: .utf8)
        guard let master = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)) else { throw FarmError("no pid in \(directory.path)/nginx.pid") }
        var workers: Set<Int32> = []
        for entry in try FileManager.default.contentsOfDirectory(atPath: "/proc") {
            guard let pid = Int32(entry), let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { continue }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            guard fields.count > 1, Int32(fields[1]) == master,
                  let cmdline = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline") else { continue }
            let title = String(decoding: cmdline.map { $0 == 0 ? 32 : $0 }, as: UTF8.self)
            if title.contains("worker process") && !title.contains("shutting down") { workers.insert(pid) }
        }
        return NginxProcesses(master: master, workers: workers)
    }

    /// Asks nginx for `/` of `host`, on a fresh connection.
    func get(_ host: String) async throws -> Reply {
        let r = try await httpRequest(.GET, url, headers: [("Host", host), ("Connection", "close")], timeout: .seconds(10))
        return Reply(r.status, r.body)
    }

    private let endSeen = Mutex(false)

    /// Cancels the agent and waits until it has stopped nginx and revoked its lease. Throws
    /// what the agent threw, unless `waitForEnd()` took it already.
    func stop() async throws {
        task.cancel()
        do { try await task.value } catch where !endSeen.withLock({ $0 }) { throw error } catch {}
    }

    /// Waits until the agent ends by itself, and returns what it threw.
    func waitForEnd(timeout: Duration = .seconds(10)) async throws -> (any Error)? {
        let task = self.task
        let error = try await withTimeout(timeout, waitingFor: "lb-agent \(id) to end") {
            do { try await task.value; return nil as (any Error)? } catch { return error }
        }
        endSeen.withLock { $0 = true }
        return error
    }
}

/// etcd has authentication on: `etcd` (the test's) is root, each lb-agent runs as its own
/// user with the lb-agent role (``EtcdAccess/lbAgent(group:id:)``).
struct LBFarm: Sendable {
    let server: EtcdServer
    let etcd: EtcdClient
    let users: EtcdUsers
    let keys = SLBKeys()
    let group = "web"
    let dir: URL
    let started: Started

    /// What the test started, stopped at its end.
    final class Started: Sendable {
        let agents = Mutex<[RunningAgent]>([])
        let backends = Mutex<[Backend]>([])
    }

    func backend(_ name: String) async throws -> Backend {
        let b = try await Backend.start(name)
        started.backends.withLock { $0.append(b) }
        return b
    }

    /// Starts an agent and waits until it has applied what etcd held when it started, and reported it.
    func startAgent(_ id: String, nginxModules: URL? = nil) async throws -> RunningAgent {
        let running = try await launchAgent(id, nginxModules: nginxModules)
        let key = keys.agent(group: group, id)
        try await waitUntil(etcd, prefix: key) { kvs in kvs.contains { $0.key == key } }
        return running
    }

    /// Starts an agent (on `port`, or a free one) without waiting for it.
    func launchAgent(_ id: String, port: Int? = nil, folder: String? = nil, nginxModules: URL? = nil) async throws -> RunningAgent {
        let port = try port ?? FreePort.next()
        let directory = dir.appendingPathComponent(folder ?? "lb-\(id)")
        var logger = Logger(label: "lb-agent")
        logger.logLevel = .warning
        let agent = LBAgent(
            configuration: .init(group: group, id: id, listen: "127.0.0.1:\(port)", directory: directory, keys: keys, nginxModules: nginxModules),
            etcd: try await client(id), logger: logger)
        let task = Task { try await agent.run() }
        let running = RunningAgent(id: id, port: port, directory: directory, task: task)
        started.agents.withLock { $0.append(running) }
        return running
    }

    /// A client as the lb-agent's own etcd user, made on its first start; a restart reuses
    /// the credential file, so an agent can start again while etcd is down.
    func client(_ id: String) async throws -> EtcdClient {
        let access = EtcdAccess.lbAgent(group: group, id: id)
        if !FileManager.default.fileExists(atPath: users.credentialFile(access).path) { try await users.ensure(access) }
        return EtcdClient(endpoint: server.endpoint, credentials: try users.credentials(access))
    }

    /// Writes a domain with these backends as its servers; returns the write's revision.
    func put(_ domain: String, _ backends: [Backend], weights: [Int]? = nil, settings: [String: String]? = nil) async throws -> Int64 {
        let servers = backends.enumerated().map { SLBServer(address: $1.address, weight: weights?[$0]) }
        return try await etcd.put(keys.domain(group: group, domain), try KilnJSON.encode(SLBDomain(domain: domain, servers: servers, settings: settings)))
    }

    func delete(_ domain: String) async throws -> Int64 {
        _ = try await etcd.delete(keys.domain(group: group, domain))
        return try await etcd.status()
    }

    @discardableResult
    func waitApplied(_ revision: Int64) async throws -> [SLBAgentReport] {
        try await LBAgents.waitApplied(etcd: etcd, keys: keys, group: group, revision: revision, timeout: .seconds(15))
    }
}

/// A real etcd for the test; every agent and backend started through the farm is stopped at
/// the end, whether the test passed or not (each agent stops its nginx by PID).
func withLBFarm(_ body: @escaping @Sendable (LBFarm) async throws -> Void) async throws {
    try await withEtcd(timeout: nil) { server, etcd in
        let dir = try TempDir("lb")
        let users = try await EtcdUsers.enable(endpoint: server.endpoint, credentialsDir: dir.path("credentials"))
        let farm = LBFarm(server: server, etcd: users.rootClient, users: users, dir: dir.url, started: .init())
        let result: Result<Void, any Error>
        do {
            try await body(farm)
            result = .success(())
        } catch {
            result = .failure(error)
        }
        for agent in farm.started.agents.withLock({ $0 }) {
            do { try await agent.stop() } catch { Issue.record("lb-agent \(agent.id) ended with: \(error)") }
        }
        for backend in farm.started.backends.withLock({ $0 }) { await backend.stop() }
        try result.get()
    }
}

/// Asks one domain through nginx again and again and counts what it got: each request on a
/// fresh connection, or, given `keepAlive`, through that client, which reuses its connections
/// (one an old worker closes at a reload fails the request that reused it).
final class SteadyClient: Sendable {
    struct Summary {
        var ok = 0
        var failures: [String] = []
        var names: Set<String> = []
    }

    let url: String
    let host: String
    let keepAlive: HTTPClient?
    private let state = Mutex(Summary())
    private let stopped = Atomic(false)

    init(url: String, host: String, keepAlive: HTTPClient? = nil) {
        self.url = url
        self.host = host
        self.keepAlive = keepAlive
    }

    private func request() async throws -> Reply {
        guard let keepAlive else {
            let r = try await httpRequest(.GET, url, headers: [("Host", host), ("Connection", "close")], timeout: .seconds(10))
            return Reply(r.status, r.body)
        }
        var request = HTTPClientRequest(url: url)
        request.headers.add(name: "Host", value: host)
        let response = try await keepAlive.execute(request, timeout: .seconds(10))
        return Reply(Int(response.status.code), String(buffer: try await response.body.collect(upTo: 1 << 20)))
    }

    var summary: Summary { state.withLock { $0 } }

    /// Ends `run()` after the request in flight.
    func stop() { stopped.store(true, ordering: .relaxed) }

    func run() async {
        while !stopped.load(ordering: .relaxed) {
            do {
                let r = try await request()
                state.withLock { s in
                    if r.status == 200 {
                        s.ok += 1
                        s.names.insert(r.body)
                    } else {
                        s.failures.append("\(r.status) \(r.body)")
                    }
                }
            } catch {
                state.withLock { $0.failures.append("\(error)") }
            }
        }
    }

}

/// Moves demo.localhost to a new backend `times` times: each change waits until the agent
/// applied it and serves the new backend, then gives requests that picked the old backend
/// just before 200 ms to finish before stopping it. Returns the last backend.
func switchServers(_ farm: LBFarm, _ agent: RunningAgent, from first: Backend, times: Int) async throws -> Backend {
    var current = first
    for n in 1...times {
        let next = try await farm.backend("v\(n)")
        try await farm.waitApplied(try await farm.put("demo.localhost", [next]))
        #expect(try await agent.get("demo.localhost") == Reply(200, next.name))
        try await Task.sleep(for: .milliseconds(200))
        await current.stop()
        current = next
    }
    return current
}
