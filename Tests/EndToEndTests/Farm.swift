import AsyncHTTPClient
import BuildAgent
import Deploy
import Etcd
import Foundation
import Hummingbird
import KilnTestSupport
import KilnCore
import LocalFarm
import Logging
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import RegistryAuth
import Scheduler
import Testing

/// A whole farm for one test: the real components (etcd, registry, podman's API service,
/// the Maven mirror, the git server with the demo project) on free loopback ports, and
/// Kiln's scheduler and agents in this process. Agent data is fresh for each farm, so the
/// first build of a project is cold; the podman storage is shared between runs so the base
/// images are made once. etcd has authentication on, as `kiln up` has it: the scheduler and
/// each agent use their own etcd user (``EtcdAccess``); the test's own client is root.
///
/// The registry runs with token authentication, the scheduler being its token service, as
/// `kiln up` runs it: every agent has machine credentials of kind agent, the deploy backends
/// those of machine `deployer`, and `adminToken` is user admin's password.
final class Farm: Sendable {
    static let podmanRoot = URL(fileURLWithPath: ProcessInfo.processInfo.environment["KILN_TEST_PODMAN_ROOT"] ?? "/var/tmp/kiln-test/podman-e2e")
    /// The deploy tests' cells, on a storage of their own as `kiln up` has them
    /// (`Infrastructure.startCells`): nothing they pull is in the builders' storage.
    static let cellsRoot = URL(fileURLWithPath: ProcessInfo.processInfo.environment["KILN_TEST_CELLS_ROOT"] ?? "/var/tmp/kiln-test/podman-cells")

    let infra: Infrastructure
    let api: String
    let etcd: EtcdClient
    let keys = Keys()
    let dataDir: URL
    let registryAuth: FarmRegistryAuth

    init(infra: Infrastructure, api: String, dataDir: URL, registryAuth: FarmRegistryAuth) {
        self.infra = infra
        self.api = api
        self.etcd = infra.etcdUsers.rootClient
        self.dataDir = dataDir
        self.registryAuth = registryAuth
    }

    /// User admin's credentials for the registry.
    var admin: RegistryCredentials { RegistryCredentials(user: "admin", password: registryAuth.adminToken) }

    /// The agent's etcd user must exist: `withFarm` makes one for each of its agents. The agent
    /// may fetch from the farm's git server (on loopback, as `kiln up` allows it) and from
    /// the servers in `allowFetchFrom` (HOST:PORT).
    func agentConfiguration(_ id: String, registry: String? = nil, timeouts: StepTimeouts = .init(), capacity: Int = 2,
                            allowFetchFrom: [String] = []) -> AgentConfiguration {
        var configuration = AgentConfiguration(
            // A lease of 10 s, as in production: with both cores busy (the other suites run beside
            // these), a 4 s lease once expired in the middle of a build, which then ran a second attempt.
            id: id, capacity: capacity, ttlSeconds: 10, dataDir: dataDir.appendingPathComponent("agents/\(id)"),
            etcdEndpoint: infra.etcd.endpoint, dockerSocket: infra.podman.socketPath, registry: registry ?? infra.registry.address,
            mavenMirror: infra.mavenMirrorForBuilds, timeouts: timeouts)
        configuration.fetchPolicy = try! FetchPolicy(parsing: [infra.gitServerForFetches] + allowFetchFrom, denyPrivate: false)
        // These tests read what the Dockerfiles' RUN steps print, and the podman root is reused
        // across runs: no layers kept from an earlier run (kept images: AgentDiskTests).
        configuration.keepImages = 0
        // The suites build one commit again on purpose (caches, compiles, fetches), which a reuse
        // would skip: the harness's agents build for real; ReuseEndToEndTests turns reuse on.
        configuration.reuseBuilds = false
        configuration.registryCredentials = registryAuth.machines[id]
        // Each build's secrets from the farm's scheduler, as `kiln up`'s agents get them.
        configuration.schedulers = [api]
        // Unreadable (no user made for this id): the agent runs anonymous and etcd refuses it.
        configuration.etcdCredentials = try? infra.etcdUsers.credentials(.agent(id))
        return configuration
    }

    // MARK: API

    /// A request to the API as the first admin.
    func request(_ method: HTTPMethod, _ path: String, body: String? = nil) async throws -> HTTPReply {
        try await request(method, path, body: body, token: registryAuth.adminToken)
    }

    /// A request with `token` (nil: none).
    func request(_ method: HTTPMethod, _ path: String, body: String? = nil, token: String?, timeout: TimeAmount = .seconds(60),
                 client: HTTPClient = .shared) async throws -> HTTPReply {
        try await httpRequest(method, api + path, body: body, headers: token.map { [("Authorization", "Bearer \($0)")] } ?? [], client: client, timeout: timeout)
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
        let key = keys.build(id)
        let decode: @Sendable ([KeyValue]) -> Build? = { kvs in
            kvs.first { $0.key == key }.flatMap { try? KilnJSON.decode(Build.self, from: $0.value) }
        }
        do {
            return decode(try await waitUntil(etcd, prefix: key, timeout: timeout) { decode($0).map(condition) ?? false })!
        } catch let e as TimedOut {
            let current = try? await build(id)
            throw FarmError("\(e): build \(id) is \(current.map { "\($0.status) \($0.error ?? "")" } ?? "unknown"); log:\n\((try? await log(id)) ?? "")")
        }
    }

    /// Waits (on an etcd watch of the build's log chunks) until a line contains `text`.
    func waitForLog(_ id: String, containing text: String, timeout: Duration = .seconds(120)) async throws {
        try await waitUntil(etcd, prefix: keys.logs(of: id), timeout: timeout) { kvs in kvs.contains { $0.string.contains(text) } }
    }

    func finished(_ id: String, timeout: Duration = .seconds(300)) async throws -> Build {
        try await waitForBuild(id, timeout: timeout) { $0.status.isFinal }
    }
}

/// Starts a farm with the given agents, runs `body`, and stops everything by PID. With
/// `deploy`, the scheduler runs the post-build plugins (deploy, lb, retire, notify).
func withFarm(agents ids: [String] = ["agent-1"], deploy: Bool = false, configure: (@Sendable (Farm, String) -> AgentConfiguration)? = nil,
              _ body: @Sendable (Farm) async throws -> Void) async throws {
    let dir = URL(fileURLWithPath: "/var/tmp/kiln-test/e2e-\(UUID().uuidString.prefix(8))")
    defer { try? FileManager.default.removeItem(at: dir) }
    var logger = Logger(label: "e2e")
    logger.logLevel = ProcessInfo.processInfo.environment["KILN_TEST_LOG"].flatMap { Logger.Level(rawValue: $0) } ?? .critical
    let agentLogger = logger
    // The registry's realm is the scheduler's /auth/token: its port is chosen first.
    let apiPort = try FreePort.next()
    let auth = try FarmRegistryAuth(directory: dir.appendingPathComponent("credentials"), apiPort: apiPort, agents: ids)
    let infra = try await Infrastructure.start(dataDir: dir, podmanRoot: Farm.podmanRoot, registryAuth: auth.registry, logger: logger,
                                               progress: { print("farm: \($0)") })
    do {
        try infra.publishDemo()
        try await auth.registerMachines(etcd: infra.etcdUsers.rootClient)
        // The first admin, whose API token is also user admin's registry password.
        let adminTokenFile = dir.appendingPathComponent("credentials/admin-token").path
        try CredentialFile.write(auth.adminToken, to: adminTokenFile)
        _ = try await SchedulerStore(etcd: infra.etcdUsers.rootClient).ensureFirstAdmin(tokenFile: adminTokenFile)
        let (ports, portsContinuation) = AsyncStream.makeStream(of: Int.self)
        var configuration = SchedulerConfiguration(port: apiPort, etcdEndpoint: infra.etcd.endpoint)
        configuration.registryTokens = auth.tokenService
        configuration.registryEventsToken = auth.eventsToken
        configuration.secretsKeyFile = try LocalSecretsKey.ensure(credentialsDir: dir.appendingPathComponent("credentials"))
        try await infra.etcdUsers.ensure(.scheduler)
        configuration.etcdCredentials = try infra.etcdUsers.credentials(.scheduler)
        for id in ids { try await infra.etcdUsers.ensure(.agent(id)) }
        if deploy {
            let schedulerEtcd = EtcdClient(endpoint: infra.etcd.endpoint, credentials: configuration.etcdCredentials)
            var env = DeployEnvironment(store: AppStore(etcd: schedulerEtcd),
                                        deployers: ["local": LocalDeployer(registryCredentials: auth.machines["deployer"])])
            env.registry = infra.registry.address
            let monitor = DiscoveryMonitor(env: env, interval: .seconds(1), healthEventSpacing: 0, logger: logger)
            configuration.plugins = env.plugins
            // Scaling through the same backends (the demo app names no secretEnv).
            configuration.scaler = AppScaler(env: env, secrets: nil)
            configuration.leaderTasks = [{ await monitor.run() }]
        }
        let app = buildSchedulerApplication(configuration: configuration, logger: logger,
                                            onServerRunning: { portsContinuation.yield($0) })
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await app.run() }
            var port = 0
            for await p in ports { port = p; break }
            let farm = Farm(infra: infra, api: "http://127.0.0.1:\(port)", dataDir: dir, registryAuth: auth)
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
        // An agent registers after its preparation (the base images, its disk's first look,
        // the kept images' pruning), which takes long while every suite starts at once.
        try await waitUntil(etcd, prefix: keys.agents, timeout: .seconds(120)) { $0.count >= count }
    }

    /// Runs the podman CLI against the farm's (the builders') storage.
    @discardableResult
    func podman(_ args: [String]) throws -> String {
        let r = try infra.podman.podmanCommand(args)
        guard r.status == 0 else { throw FarmError("podman \(args.joined(separator: " ")) failed: \(r.output)") }
        return r.output
    }

    /// Runs the podman CLI against the cells' storage (`Farm.cellsRoot`).
    @discardableResult
    func cellsPodman(_ args: [String]) throws -> String {
        let r = try Infrastructure.cellsPodman(root: Farm.cellsRoot, args)
        guard r.status == 0 else { throw FarmError("podman (cells) \(args.joined(separator: " ")) failed: \(r.output)") }
        return r.output
    }
}

/// The registry's token authentication of a test farm: a signing key and its certificate,
/// the admin token, and machine credentials for each agent and for `deployer`, the way
/// `kiln up` makes them (files of mode 0600; etcd holds only the tokens' SHA-256).
struct FarmRegistryAuth: Sendable {
    let registry: RegistryServer.TokenAuth
    let tokenService: RegistryTokenService.Configuration
    let adminToken: String
    /// What the registry sends its events to the scheduler with.
    let eventsToken: String
    /// By machine name: each agent's and `deployer`'s credentials.
    let machines: [String: RegistryCredentials]

    init(directory: URL, apiPort: Int, agents: [String]) throws {
        let key = TokenSigningKey.generate()
        let bundle = directory.appendingPathComponent("registry-signing-cert.pem")
        try CredentialFile.write(try key.certificatePEM(), to: bundle.path)
        adminToken = Secret.random()
        eventsToken = Secret.random()
        registry = RegistryServer.TokenAuth(realm: "http://127.0.0.1:\(apiPort)/auth/token", rootCertBundle: bundle,
                                            events: ("http://127.0.0.1:\(apiPort)/hooks/registry", eventsToken))
        tokenService = RegistryTokenService.Configuration(signingKey: key)
        var machines: [String: RegistryCredentials] = [:]
        for name in agents + ["deployer"] { machines[name] = RegistryCredentials(user: name, password: Secret.random()) }
        self.machines = machines
    }

    func registerMachines(etcd: EtcdClient, keys: Keys = Keys()) async throws {
        for (name, credentials) in machines {
            let kind: MachineCredential.Kind = name == "deployer" ? .deployer : .agent
            let record = MachineCredential(name: name, kind: kind, tokenSHA256: MachineToken.sha256Hex(credentials.password))
            _ = try await etcd.put(keys.machine(name), try KilnJSON.encode(record))
        }
    }
}
