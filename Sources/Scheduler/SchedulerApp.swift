import Etcd
import Hummingbird
import KilnCore
import Logging
import NIOCore
import Plugins
import ServiceLifecycle

/// Settings of one `kiln scheduler` process.
public struct SchedulerConfiguration: Sendable {
    public var host: String
    /// 0 picks a free port (tests read it back through `onServerRunning`).
    public var port: Int
    public var etcdEndpoint: String
    /// The scheduler's etcd user (``KilnCore/EtcdAccess/scheduler``); nil: anonymous.
    public var etcdCredentials: EtcdCredentials?
    /// TLS to etcd (an `https://` endpoint).
    public var etcdTLS: EtcdTLS?
    public var keyPrefix: String
    public var dispatcher: Dispatcher.Configuration
    /// The post-build plugins this scheduler runs (deploy, lb, retire, notify: wired by
    /// `kiln scheduler` from the Deploy module). Empty: pipelines wait for a scheduler that has them.
    public var plugins: [any PostBuildPlugin]
    /// Scales apps for `POST /api/v1/apps/{name}/scale` (the Deploy module's `AppScaler`,
    /// wired by `kiln scheduler`); nil: that route answers 503.
    public var scaler: (any AppScaling)?
    /// Work only the leader does besides dispatching and pipelines (deploy discovery).
    public var leaderTasks: [@Sendable () async -> Void] = []
    /// The registry's token service (`GET /auth/token`); nil: this scheduler serves no tokens.
    public var registryTokens: RegistryTokenService.Configuration?
    /// The token the registry sends its push and delete events with (`POST /hooks/registry`);
    /// nil: no such route.
    public var registryEventsToken: String?
    /// Where the scheduler asks the registry's HTTP API (the console's image pages, deleting
    /// tags); nil: those pages show what the build records know, and deletes answer 503.
    public var registryAPI: RegistryClient.Configuration?
    /// Mark the console's cookies `Secure` on every request (`--console-secure-cookies`), for
    /// a scheduler behind a TLS proxy that does not send `X-Forwarded-Proto: https`. A
    /// scheduler serving TLS itself (`tls`) marks them so whatever this says.
    public var consoleSecureCookies = false
    /// Serve HTTPS with this certificate and key (`--tls-cert`, `--tls-key`); nil: plain HTTP.
    public var tls: SchedulerTLS?
    /// The secrets key file (`--secrets-key-file`, mode 0600; docs/secrets.md): secrets and
    /// credentials are sealed in etcd under its first key. nil: the secret routes answer 503,
    /// and the scheduler refuses to start if etcd already holds sealed secrets. The start
    /// also refuses a file that does not open what etcd holds.
    public var secretsKeyFile: String?
    /// Retention's pruner on the leader (docs/retention.md); nil: nothing is pruned.
    public var retention: Pruner.Configuration? = .init()
    /// Where ended builds' logs go once they leave etcd (`--log-archive`; docs/logs.md): every
    /// scheduler of a farm needs the same one. nil: logs stay in etcd (tests that read chunks).
    public var logArchive: (any LogArchive)?
    /// How the leader's archiver retries and sweeps.
    public var logArchiver = LogArchiver.Configuration()
    /// The space quota to assume for an etcd member whose metrics do not report it
    /// (`--etcd-quota-bytes`); nil: etcd's default of 2 GiB. See ``EtcdHealth``.
    public var etcdQuotaBytes: Int64?
    /// How often ``EtcdHealth`` looks at etcd's size and alarms.
    public var etcdHealthInterval: Duration = .seconds(10)
    /// Share of a member's quota in use from which the scheduler compacts etcd itself (0: never).
    public var etcdCompactAt: Double = 0.5
    /// History those compactions keep.
    public var etcdKeepHistory: Duration = .seconds(30)

    public init(host: String = "127.0.0.1", port: Int = 7070, etcdEndpoint: String = "http://127.0.0.1:2379",
                keyPrefix: String = "/kiln", dispatcher: Dispatcher.Configuration = .init(), plugins: [any PostBuildPlugin] = []) {
        self.plugins = plugins
        self.host = host
        self.port = port
        self.etcdEndpoint = etcdEndpoint
        self.keyPrefix = keyPrefix
        self.dispatcher = dispatcher
    }
}

/// Builds the scheduler: the HTTP API and the dispatcher, as one Hummingbird application
/// whose services run together. Used by `kiln scheduler` and by the tests.
public func buildSchedulerApplication(
    configuration: SchedulerConfiguration,
    logger: Logger,
    onServerRunning: @escaping @Sendable (Int) async -> Void = { _ in }
) -> some ApplicationProtocol {
    let etcd = EtcdClient(endpoint: configuration.etcdEndpoint, logger: logger, credentials: configuration.etcdCredentials, tls: configuration.etcdTLS)
    let store = SchedulerStore(etcd: etcd, keys: Keys(prefix: configuration.keyPrefix), logArchive: configuration.logArchive)
    let router = Router(context: KilnRequestContext.self)
    router.add(middleware: JSONErrorMiddleware(logger: logger))
    let secrets = SchedulerSecrets(keyFile: configuration.secretsKeyFile, etcd: etcd, keys: store.keys)
    let metrics = SchedulerMetrics()
    let etcdHealth = EtcdHealth(etcd: etcd, quotaBytes: configuration.etcdQuotaBytes, interval: configuration.etcdHealthInterval,
                                compactAt: configuration.etcdCompactAt, keepHistory: configuration.etcdKeepHistory, logger: logger)
    API(store: store, schedulerID: configuration.dispatcher.id, metrics: metrics, secrets: secrets, etcdHealth: etcdHealth,
        scaler: configuration.scaler, logger: logger).addRoutes(to: router)
    // With the token service's key the registry client signs its own tokens.
    let registry = configuration.registryAPI.map { RegistryClient(configuration: $0, tokens: configuration.registryTokens) }
    ImagesAPI(store: store, registry: registry, logger: logger).addRoutes(to: router.group("api/v1"))
    var console = Console(store: store, secrets: secrets, secureCookies: configuration.consoleSecureCookies || configuration.tls != nil, etcdHealth: etcdHealth,
                          scaler: configuration.scaler, logger: logger)
    console.registry = registry
    console.addRoutes(to: router)
    if let tokens = configuration.registryTokens {
        RegistryTokenService(configuration: tokens, store: store, logger: logger).addRoutes(to: router)
    }
    if let token = configuration.registryEventsToken {
        RegistryEvents(store: store, token: token, logger: logger).addRoutes(to: router)
    }
    // The plugins look secrets up in the sealed store (nil without a key file: a step naming one fails saying so).
    let pipelines = configuration.plugins.isEmpty ? nil
        : PipelineService(store: store, runner: PipelineRunner(plugins: configuration.plugins, secrets: secrets.store), logger: logger)
    // The pruner removes a pruned build's archived log too (the same archive the store reads).
    let pruner = configuration.retention.map { Pruner(etcd: etcd, keys: store.keys, archive: store.logArchive, configuration: $0, logger: logger) }
    var leaderTasks = configuration.leaderTasks
    let schedulerID = configuration.dispatcher.id
    if let pruner { leaderTasks.append { await pruner.lead(schedulerID: schedulerID) } }
    let dispatcher = Dispatcher(store: store, configuration: configuration.dispatcher, pipelines: pipelines,
                                leaderTasks: leaderTasks,
                                logArchiver: LogArchiver(store: store, configuration: configuration.logArchiver, logger: logger), logger: logger)
    var app = Application(
        router: router,
        server: configuration.tls?.server ?? .http1(),
        configuration: .init(address: .hostname(configuration.host, port: configuration.port), serverName: "kiln-scheduler"),
        services: [dispatcher, BuildEventCounter(store: store, metrics: metrics, logger: logger), etcdHealth],
        onServerRunning: { channel in await onServerRunning(channel.localAddress?.port ?? configuration.port) },
        logger: logger)
    // A key file that does not open what etcd holds stops the start here, before any request.
    app.beforeServerStarts { try await secrets.checkAtStart(logger: logger) }
    // The log archive in a registry that would show logs to anyone, or never delete them,
    // stops the start here; one that does not answer yet is only a warning (logs wait in etcd).
    if let archive = configuration.logArchive as? RegistryLogArchive {
        app.beforeServerStarts { if let warning = try await archive.checkAtStart() { logger.warning("\(warning)") } }
    }
    // Index entries for records from before the indexes, once per farm (a marker says done).
    app.beforeServerStarts { try await IndexMigration(store: store, logger: logger).runIfNeeded() }
    return app
}
