import AsyncHTTPClient
import BuildAgent
import Etcd
import Foundation
import Hummingbird
import KilnCore
import LocalFarm
import Logging
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import Scheduler
import Testing

/// A whole farm for one test: the real components (etcd, registry, podman's API service,
/// the Maven mirror, the git server with the demo project) on free loopback ports, and
/// Kiln's scheduler and agents in this process. Agent data is fresh for each farm, so the
/// first build of a project is cold; the podman storage is shared between runs so the base
/// images are made once.
final class Farm: Sendable {
    static let podmanRoot = URL(fileURLWithPath: ProcessInfo.processInfo.environment["KILN_TEST_PODMAN_ROOT"] ?? "/var/tmp/kiln-test/podman-e2e")

    let infra: Infrastructure
    let api: String
    let etcd: EtcdClient
    let keys = Keys()
    let dataDir: URL

    init(infra: Infrastructure, api: String, dataDir: URL) {
        self.infra = infra
        self.api = api
        self.etcd = EtcdClient(endpoint: infra.etcd.endpoint)
        self.dataDir = dataDir
    }

    func agentConfiguration(_ id: String, registry: String? = nil, timeouts: StepTimeouts = .init(), capacity: Int = 2) -> AgentConfiguration {
        AgentConfiguration(
            id: id, capacity: capacity, ttlSeconds: 4, dataDir: dataDir.appendingPathComponent("agents/\(id)"),
            etcdEndpoint: infra.etcd.endpoint, dockerSocket: infra.podman.socketPath, registry: registry ?? infra.registry.address,
            mavenMirror: infra.mavenMirror.url, timeouts: timeouts)
    }

    // MARK: API

    struct Reply: Sendable {
        let status: Int
        let body: String
    }

    func request(_ method: HTTPMethod, _ path: String, body: String? = nil) async throws -> Reply {
        var r = HTTPClientRequest(url: api + path)
        r.method = method
        if let body {
            r.headers.add(name: "Content-Type", value: "application/json")
            r.body = .bytes(ByteBuffer(string: body))
        }
        let response = try await HTTPClient.shared.execute(r, timeout: .seconds(60))
        return Reply(status: Int(response.status.code), body: String(buffer: try await response.body.collect(upTo: 32 << 20)))
    }

    func addProject(_ name: String = "demo", repository: String? = nil, buildCommand: String = "mvn -B -q package", dockerfile: String = "Dockerfile") async throws {
        let p = Project(name: name, repository: repository ?? infra.repositoryURL("demo"), buildImage: Infrastructure.buildImage,
                        buildCommand: buildCommand, dockerfile: dockerfile)
        let r = try await request(.POST, "/api/v1/projects", body: try KilnJSON.encode(p))
        #expect(r.status == 201 || r.status == 200, "\(r.body)")
    }

    func startBuild(_ project: String = "demo", _ req: BuildRequest = BuildRequest(ref: "main")) async throws -> Build {
        let r = try await request(.POST, "/api/v1/projects/\(project)/builds", body: try KilnJSON.encode(req))
        #expect(r.status == 201, "\(r.body)")
        return try KilnJSON.decode(Build.self, from: r.body)
    }

    func build(_ id: String) async throws -> Build {
        try KilnJSON.decode(Build.self, from: try await request(.GET, "/api/v1/builds/\(id)").body)
    }

    func log(_ id: String) async throws -> String {
        try await request(.GET, "/api/v1/builds/\(id)/log").body
    }

    /// Waits (on an etcd watch of the build record) until `condition` holds.
    @discardableResult
    func waitForBuild(_ id: String, timeout: Duration = .seconds(300), _ condition: @escaping @Sendable (Build) -> Bool) async throws -> Build {
        let etcd = self.etcd, key = keys.build(id)
        return try await withThrowingTaskGroup(of: Build?.self) { group in
            group.addTask {
                let first = try await etcd.range(key: key, rangeEnd: nil)
                if let kv = first.kvs.first, let b = try? KilnJSON.decode(Build.self, from: kv.value), condition(b) { return b }
                for try await update in etcd.watch(key: key, fromRevision: first.revision + 1) {
                    guard case .events(let events, _) = update else { continue }
                    for e in events where e.kind == .put {
                        if let b = try? KilnJSON.decode(Build.self, from: e.kv.value), condition(b) { return b }
                    }
                }
                return nil
            }
            group.addTask {
                try await Task.sleep(for: timeout)
                return nil
            }
            let result = try await group.next() ?? nil
            group.cancelAll()
            guard let result else {
                let current = try? await self.build(id)
                throw FarmError("build \(id) did not reach the expected state within \(timeout); it is \(current.map { "\($0.status) \($0.error ?? "")" } ?? "unknown"); log:\n\((try? await self.log(id)) ?? "")")
            }
            return result
        }
    }

    /// Waits (on an etcd watch of the build's log chunks) until a line contains `text`.
    func waitForLog(_ id: String, containing text: String, timeout: Duration = .seconds(120)) async throws {
        let etcd = self.etcd, prefix = keys.logs(of: id)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                let first = try await etcd.range(prefix: prefix)
                if first.kvs.contains(where: { $0.string.contains(text) }) { return }
                for try await update in etcd.watch(prefix: prefix, fromRevision: first.revision + 1) {
                    guard case .events(let events, _) = update else { continue }
                    if events.contains(where: { $0.kind == .put && $0.kv.string.contains(text) }) { return }
                }
            }
            group.addTask {
                try await Task.sleep(for: timeout)
                throw FarmError("'\(text)' did not appear in the log of \(id) within \(timeout)")
            }
            try await group.next()
            group.cancelAll()
        }
    }

    func finished(_ id: String, timeout: Duration = .seconds(300)) async throws -> Build {
        try await waitForBuild(id, timeout: timeout) { $0.status.isFinal }
    }
}

/// Starts a farm with the given agents, runs `body`, and stops everything by PID.
func withFarm(agents ids: [String] = ["agent-1"], configure: (@Sendable (Farm, String) -> AgentConfiguration)? = nil,
              _ body: @Sendable (Farm) async throws -> Void) async throws {
    let dir = URL(fileURLWithPath: "/var/tmp/kiln-test/e2e-\(UUID().uuidString.prefix(8))")
    defer { try? FileManager.default.removeItem(at: dir) }
    var logger = Logger(label: "e2e")
    logger.logLevel = ProcessInfo.processInfo.environment["KILN_TEST_LOG"].flatMap { Logger.Level(rawValue: $0) } ?? .critical
    let agentLogger = logger
    let infra = try await Infrastructure.start(dataDir: dir, podmanRoot: Farm.podmanRoot, logger: logger,
                                               progress: { print("farm: \($0)") })
    do {
        try infra.publishDemo()
        let (ports, portsContinuation) = AsyncStream.makeStream(of: Int.self)
        let app = buildSchedulerApplication(configuration: .init(port: 0, etcdEndpoint: infra.etcd.endpoint), logger: logger,
                                            onServerRunning: { portsContinuation.yield($0) })
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await app.run() }
            var port = 0
            for await p in ports { port = p; break }
            let farm = Farm(infra: infra, api: "http://127.0.0.1:\(port)", dataDir: dir)
            for id in ids {
                let config = configure?(farm, id) ?? farm.agentConfiguration(id)
                group.addTask { try await AgentService(configuration: config, logger: agentLogger).run() }
            }
            try await farm.waitForAgents(ids.count)
            do {
                try await body(farm)
            } catch {
                group.cancelAll()
                throw error
            }
            group.cancelAll()
        }
    } catch {
        await infra.stop()
        throw error
    }
    await infra.stop()
}

extension Farm {
    func waitForAgents(_ count: Int) async throws {
        let etcd = self.etcd, prefix = keys.agents
        let first = try await etcd.range(prefix: prefix)
        if first.kvs.count >= count { return }
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                for try await _ in etcd.watch(prefix: prefix, fromRevision: first.revision + 1) {
                    if try await etcd.range(prefix: prefix).kvs.count >= count { return }
                }
            }
            group.addTask {
                try await Task.sleep(for: .seconds(30))
                throw FarmError("\(count) agents did not register within 30 s")
            }
            try await group.next()
            group.cancelAll()
        }
    }

    /// Runs the podman CLI against the farm's storage.
    @discardableResult
    func podman(_ args: [String]) throws -> String {
        let r = try infra.podman.podmanCommand(args)
        guard r.status == 0 else { throw FarmError("podman \(args.joined(separator: " ")) failed: \(r.output)") }
        return r.output
    }
}
