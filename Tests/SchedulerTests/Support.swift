import AsyncHTTPClient
import Etcd
import Foundation
import KilnTestSupport
import Hummingbird
import KilnCore
import LocalFarm
import Logging
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import Plugins
import Scheduler
import TLSTrust

/// A scheduler running in this process on a free port, over a real etcd started for the test
/// with authentication on: the scheduler is its own etcd user (``EtcdAccess/scheduler``), the
/// harness's client is root.
struct SchedulerHarness: Sendable {
    let api: String
    let etcd: EtcdClient
    /// The first admin's API token (the scheduler made user `admin` with it).
    let adminToken: String
    /// The scheduler's `--secrets-key-file` (nil: started without one).
    let secretsKeyFile: String?
    /// The client of `request`: one trusting the test CA for a scheduler serving TLS.
    var client: HTTPClient = .shared
    let keys = Keys()

    /// A request as the admin.
    func request(_ method: HTTPMethod, _ path: String, body: String? = nil) async throws -> HTTPReply {
        try await request(method, path, body: body, token: adminToken)
    }

    /// A request with `token` (nil: none).
    func request(_ method: HTTPMethod, _ path: String, body: String? = nil, token: String?, headers: [(String, String)] = []) async throws -> HTTPReply {
        try await httpRequest(method, api + path, body: body, headers: (token.map { [("Authorization", "Bearer \($0)")] } ?? []) + headers, client: client)
    }

    func build(_ id: String) async throws -> Build {
        try KilnJSON.decode(Build.self, from: try await request(.GET, "/api/v1/builds/\(id)").body)
    }

    /// Waits until `condition` holds for the keys under `prefix` (on an etcd watch).
    func waitFor(prefix: String, timeout: Duration = .seconds(20), _ condition: @escaping @Sendable ([KeyValue]) -> Bool) async throws {
        try await waitUntil(etcd, prefix: prefix, timeout: timeout, condition)
    }

    static let demoProject = #"{"name":"demo","repository":"http://127.0.0.1:1/demo.git","buildImage":"localhost/kiln/jdk17-maven:1","buildCommand":"mvn -B -q package"}"#
}

/// `secretsKey`: start the scheduler with a secrets key file of its own (`credentials/secrets-key`),
/// as `kiln up` does; false: without one. `prepare` runs on etcd (as root) before the scheduler starts.
/// `plugins`: the post-build plugins it runs pipelines with (none: it runs no pipeline).
/// `etcd`: etcd's compaction and quota; `configure`: changes to the scheduler's configuration.
/// `ca`: the scheduler serves TLS (`configure` sets its `tls`) with a certificate of this CA,
/// which the harness's requests trust.
func withScheduler(secretsKey: Bool = true, plugins: [any PostBuildPlugin] = [], etcd maintenance: EtcdServer.Maintenance = .standard, ca: TrustedCA? = nil,
                   configure: @escaping @Sendable (inout SchedulerConfiguration) -> Void = { _ in },
                   prepare: @escaping @Sendable (EtcdClient) async throws -> Void = { _ in },
                   _ body: @escaping @Sendable (SchedulerHarness) async throws -> Void) async throws {
    try await withEtcd(timeout: nil, maintenance: maintenance) { server, _ in
        let credentials = try TempDir("scheduler-credentials")
        defer { withExtendedLifetime(credentials) {} }
        let users = try await EtcdUsers.enable(endpoint: server.endpoint, credentialsDir: credentials.url)
        try await users.ensure(.scheduler)
        var configuration = SchedulerConfiguration(port: 0, etcdEndpoint: server.endpoint, plugins: plugins)
        configuration.etcdCredentials = try users.credentials(.scheduler)
        if secretsKey { configuration.secretsKeyFile = try LocalSecretsKey.ensure(credentialsDir: credentials.url) }
        configure(&configuration)
        let etcd = users.rootClient
        try await prepare(etcd)
        let tokenFile = credentials.url.appendingPathComponent("admin-token").path
        _ = try await SchedulerStore(etcd: etcd).ensureFirstAdmin(tokenFile: tokenFile)
        let adminToken = try CredentialFile.read(tokenFile)
        var logger = Logger(label: "test")
        // Cancelling the server at the end of a test logs an error about its channels.
        logger.logLevel = .critical
        let (ports, portsContinuation) = AsyncStream.makeStream(of: Int.self)
        let app = buildSchedulerApplication(
            configuration: configuration, logger: logger,
            onServerRunning: { portsContinuation.yield($0) })
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                // A scheduler that refuses to start (its start check) ends the wait for its port.
                defer { portsContinuation.finish() }
                try await app.run()
            }
            var port = 0
            for await p in ports { port = p; break }
            if port == 0 { try await group.next() }
            var harness = SchedulerHarness(api: "\(configuration.tls == nil ? "http" : "https")://127.0.0.1:\(port)", etcd: etcd, adminToken: adminToken,
                                           secretsKeyFile: configuration.secretsKeyFile)
            if let ca { harness.client = OutgoingHTTP.client(.init(connect: .seconds(10), read: .seconds(60), retryConnecting: false), trusting: ca) }
            do {
                try await body(harness)
            } catch {
                group.cancelAll()
                throw error
            }
            group.cancelAll()
        }
    }
}

/// Registers an agent the way `kiln agent` does (a key under a lease), without running one:
/// the scheduler sees only etcd, so this is the real protocol, not a stand-in.
/// Registers an agent under a lease of `ttl` seconds that nothing keeps alive: long by default,
/// so that a test slowed by the whole suite's load (tens of seconds) never loses its agents by
/// accident; a test of an agent's death revokes the lease or passes a short one.
func registerAgent(_ h: SchedulerHarness, id: String, capacity: Int, labels: [String] = [], ttl: Int64 = 300) async throws -> Int64 {
    let lease = try await h.etcd.grantLease(ttl: ttl)
    try await h.etcd.put(h.keys.agent(id), try KilnJSON.encode(AgentInfo(id: id, capacity: capacity, labels: labels, version: "test")), lease: lease)
    return lease
}
