import ArgumentParser
import Deploy
import Etcd
import KilnCore
import Scheduler
import ServiceLifecycle

struct SchedulerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "scheduler",
        abstract: "Serve the HTTP API and assign queued builds to agents.",
        discussion: """
        Keeps its state in etcd: projects, builds, the queue and the assignments. Assigns each \
        queued build to the first agent with room along a consistent-hash ring of the live \
        agents, keyed by project, in one etcd transaction that fails if the agent is gone.

        Run as many schedulers as you like against one etcd: all serve the API, one is elected \
        leader (a lease on /kiln/leader) and dispatches; when it dies another takes over within \
        --leader-ttl. A deposed leader's writes are refused by etcd, so no build is dispatched twice.

        The leader also runs each project's post-build pipeline when a build succeeds (deploy, \
        lb, retire, notify: see `kiln plugins`), in the cells registered with `kiln cell add`. \
        Kubernetes cells use the bearer token in KILN_KUBE_TOKEN, if set.

        Example: kiln scheduler --listen 127.0.0.1:7070 --etcd http://127.0.0.1:2379
        """)

    @OptionGroup var etcd: EtcdOptions

    @Option(name: .long, help: ArgumentHelp("Address to serve the API on (env KILN_LISTEN).", valueName: "host:port"))
    var listen: String = env("KILN_LISTEN", "127.0.0.1:7070")

    @Option(name: .long, help: "Attempts a build gets when its agents die before it fails.")
    var maxAttempts: Int = 3

    @Option(name: .long, help: ArgumentHelp("Bounded loads: no agent runs more than ceil(c × average) builds; past it a build walks on along the ring.", valueName: "c"))
    var loadFactor: Double = 1.25

    @Option(name: .long, help: ArgumentHelp("This scheduler's name in the leader election (env KILN_SCHEDULER_ID; default: host-pid).", valueName: "name"))
    var id: String = env("KILN_SCHEDULER_ID", Dispatcher.defaultID())

    @Option(name: .long, help: ArgumentHelp("Lease TTL of the leader: a dead leader is replaced within it.", valueName: "seconds"))
    var leaderTTL: Int = 10

    @Option(name: .long, help: ArgumentHelp("How often the leader checks the live version of every deployed app: an instance failing its health check leaves its domains, and comes back when it passes (0: never).", valueName: "seconds"))
    var discoveryInterval: Double = 5

    func validate() throws {
        guard leaderTTL >= 2 else { throw ValidationError("--leader-ttl must be at least 2 seconds") }
        guard discoveryInterval >= 0 else { throw ValidationError("--discovery-interval must be 0 (off) or more seconds") }
        guard !id.isEmpty, !id.contains("\n") else { throw ValidationError("--id must be a non-empty name on one line") }
        guard HostPort(listen) != nil else { throw ValidationError("--listen must be HOST:PORT, for example 127.0.0.1:7070, not '\(listen)'") }
        guard maxAttempts >= 1 else { throw ValidationError("--max-attempts must be at least 1") }
        guard loadFactor >= 1 else { throw ValidationError("--load-factor must be at least 1 (1.25 is the usual choice)") }
    }

    func run() async throws {
        let logger = KilnLogging.bootstrap(etcd.logLevel)
        let hp = HostPort(listen)!
        // The post-build plugins: deploys run from the leader, through the cells in etcd.
        let deploy = DeployEnvironment(
            store: AppStore(etcd: try etcd.client(logger: logger), keys: Keys(prefix: etcd.prefix)),
            deployers: DeployEnvironment.standardDeployers())
        var configuration = SchedulerConfiguration(
            host: hp.host, port: hp.port, etcdEndpoint: etcd.etcd, keyPrefix: etcd.prefix,
            dispatcher: .init(maxAttempts: maxAttempts, loadFactor: loadFactor, id: id, leaderTTLSeconds: Int64(leaderTTL)),
            plugins: deploy.plugins)
        configuration.etcdCredentials = try etcd.access.readCredentials()
        configuration.etcdTLS = etcd.access.tls
        if discoveryInterval > 0 {
            let monitor = DiscoveryMonitor(env: deploy, interval: .milliseconds(Int64(discoveryInterval * 1000)), logger: logger)
            configuration.leaderTasks = [{ await monitor.run() }]
        }
        let app = buildSchedulerApplication(
            configuration: configuration,
            logger: logger,
            onServerRunning: { port in logger.notice("kiln scheduler listening on http://\(hp.host):\(port), etcd \(etcd.etcd)") })
        let group = ServiceGroup(configuration: .init(services: [.init(service: app)], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
    }
}

struct HostPort {
    let host: String
    let port: Int
    init?(_ s: String) {
        guard let colon = s.lastIndex(of: ":"), let p = Int(s[s.index(after: colon)...]), (0...65535).contains(p) else { return nil }
        host = String(s[..<colon])
        port = p
        if host.isEmpty { return nil }
    }
}
