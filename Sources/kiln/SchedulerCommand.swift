import ArgumentParser
import Deploy
import DockerAPI
import Etcd
import Foundation
import KilnCore
import Plugins
import RegistryAuth
import Scheduler
import Sealing
import ServiceLifecycle
import TLSTrust

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
        Kubernetes cells are reached over https with each cell's own credential (`kiln cell \
        credential set`). notify calls only the URLs --notify-allow names.

        It also serves the web console at / (log in with a user's password or API token; \
        sessions live in etcd, so every scheduler accepts them): see docs/console.md.

        Builds' logs live in etcd while they are written; once a build (and its pipeline run) \
        has ended the leader moves its log into the log archive (--log-archive): see docs/logs.md.

        With --registry-signing-key and --admin-token-file it is also the registry's token \
        service (GET /auth/token, Docker's token specification): user admin with the admin \
        token gets everything, an agent push and pull on the repositories of its current \
        builds, a deployer pull; see docs/registry-auth.md to point a registry at it.

        Example: kiln scheduler --listen 127.0.0.1:7070 --etcd http://127.0.0.1:2379 \
          --registry-signing-key /etc/kiln/registry-signing-key.pem --admin-token-file /etc/kiln/admin-token \
          --registry-credentials /etc/kiln/registry-deployer
        """)

    @OptionGroup var etcd: EtcdOptions

    @Option(name: .long, help: ArgumentHelp("Address to serve the API on (env KILN_LISTEN).", valueName: "host:port"))
    var listen: String = env("KILN_LISTEN", "127.0.0.1:7070")

    @Option(name: .long, help: "Attempts a build gets when its agents die before it fails.")
    var maxAttempts: Int = 3

    @Option(name: .long, help: ArgumentHelp("Bounded loads: no agent runs more than ceil(c × average) builds; past it a build walks on along the ring.", valueName: "c"))
    var loadFactor: Double = 1.25

    @Option(name: .long, help: ArgumentHelp("""
        Delay scheduling: when a build's home agent and every agent holding its project's caches \
        warm are at their bound, it waits up to this long for one of them before a cold agent \
        takes it (env KILN_WARM_WAIT; 0: no wait). Builds of other projects are placed meanwhile, \
        and no agent goes above its bound. Keep it small against a cold build's extra cost (a \
        full clone and empty dependency caches).
        """, valueName: "seconds"))
    var warmWait: Double = Double(env("KILN_WARM_WAIT", "")) ?? Dispatcher.Configuration.defaultWarmWait

    @Option(name: .long, help: ArgumentHelp("This scheduler's name in the leader election (env KILN_SCHEDULER_ID; default: host-pid).", valueName: "name"))
    var id: String = env("KILN_SCHEDULER_ID", Dispatcher.defaultID())

    @Option(name: .long, help: ArgumentHelp("Lease TTL of the leader: a dead leader is replaced within it.", valueName: "seconds"))
    var leaderTTL: Int = 10

    @Option(name: .long, help: ArgumentHelp("""
        etcd's space quota in bytes, for a member whose /metrics does not report it (env         KILN_ETCD_QUOTA_BYTES; default: etcd's own default, 2147483648). etcd 3.4 reports its         --quota-backend-bytes there, and that wins. The scheduler warns past 80 % of it and         shows it as kiln_etcd_quota_bytes; docs/etcd-operations.md.
        """, valueName: "bytes"))
    var etcdQuotaBytes: Int64? = ProcessInfo.processInfo.environment["KILN_ETCD_QUOTA_BYTES"].flatMap { Int64($0) }

    @Option(name: .long, help: ArgumentHelp("How often this scheduler asks etcd for its database size and alarms (kiln_etcd_* metrics, the warning of `kiln agents`).", valueName: "seconds"))
    var etcdHealthInterval: Double = 10

    @Option(name: .long, help: ArgumentHelp("""
        Share of an etcd member's quota in use from which this scheduler compacts etcd's history         itself, keeping the last --etcd-keep-history seconds, so that a farm writing logs faster         than etcd's own periodic compaction empties it never reaches NOSPACE (0: never;         docs/etcd-operations.md).
        """, valueName: "share"))
    var etcdCompactAt: Double = 0.5

    @Option(name: .long, help: ArgumentHelp("History kept by the compactions of --etcd-compact-at: a watch further behind is told to read again.", valueName: "seconds"))
    var etcdKeepHistory: Double = 30

    @Option(name: .long, help: ArgumentHelp("How often the leader checks the live version of every deployed app: an instance failing its health check leaves its domains, and comes back when it passes (0: never).", valueName: "seconds"))
    var discoveryInterval: Double = 5

    @Option(name: .long, help: ArgumentHelp("How often the leader prunes what retention lets go: builds with their logs past their project's retention, old activity, app versions past their app's number (docs/retention.md). A pass also runs soon after a scheduler becomes the leader (0: never prune).", valueName: "seconds"))
    var pruneInterval: Double = 600

    @Option(name: .long, help: ArgumentHelp("""
        PEM file (mode 0600) with the P-256 key registry tokens are signed with (env \
        KILN_REGISTRY_SIGNING_KEY). Turns on the token service at /auth/token; the registry's \
        auth.token.rootcertbundle must hold its certificate (`kiln up` writes both). Every \
        scheduler of a farm needs the same key. Users log in to the registry with their name and an API token.
        """, valueName: "file"))
    var registrySigningKey: String? = ProcessInfo.processInfo.environment["KILN_REGISTRY_SIGNING_KEY"]

    @Option(name: .long, help: ArgumentHelp("The tokens' issuer: the registry's auth.token.issuer (env KILN_REGISTRY_TOKEN_ISSUER).", valueName: "name"))
    var registryTokenIssuer: String = env("KILN_REGISTRY_TOKEN_ISSUER", "kiln")

    @Option(name: .long, help: ArgumentHelp("The registry's service name: its auth.token.service, the tokens' audience (env KILN_REGISTRY_SERVICE).", valueName: "name"))
    var registryService: String = env("KILN_REGISTRY_SERVICE", "kiln-registry")

    @Option(name: .long, help: ArgumentHelp("""
        File (mode 0600) of the first admin's API token (env KILN_ADMIN_TOKEN_FILE). When etcd \
        has no user yet, this scheduler makes user admin whose token is the one in the file, or \
        a new one it writes there. When users exist, a token in the file must be a valid \
        admin's, or the start is refused. Log in with it: `kiln login --token-file FILE`; it \
        is also admin's registry password.
        """, valueName: "file"))
    var adminTokenFile: String? = ProcessInfo.processInfo.environment["KILN_ADMIN_TOKEN_FILE"]

    @Option(name: .long, help: ArgumentHelp("""
        File (mode 0600) holding the token the registry sends its events with (env \
        KILN_REGISTRY_EVENTS_TOKEN_FILE): serves POST /hooks/registry, where pushes and deletes of \
        images enter their project's activity. The registry's notifications endpoint sends it as \
        `Authorization: Bearer TOKEN` (docs/registry-auth.md).
        """, valueName: "file"))
    var registryEventsTokenFile: String? = ProcessInfo.processInfo.environment["KILN_REGISTRY_EVENTS_TOKEN_FILE"]

    @Option(name: .long, help: ArgumentHelp("""
        File (mode 0600) holding NAME:TOKEN of a deployer machine: the deploy backends pull \
        images with it (local cells through their Docker API, Kubernetes through a pull \
        secret in each app's namespace) (env KILN_REGISTRY_CREDENTIALS). Make one with \
        `kiln machine add NAME --kind deployer --out FILE`.
        """, valueName: "file"))
    var registryCredentials: String? = ProcessInfo.processInfo.environment["KILN_REGISTRY_CREDENTIALS"]

    @Option(name: .long, help: ArgumentHelp("""
        The registry the agents push to, as HOST:PORT (env KILN_REGISTRY): deploys run only \
        images of the build's own project in it, whatever a build record says.
        """, valueName: "host:port"))
    var registry: String? = ProcessInfo.processInfo.environment["KILN_REGISTRY"]

    @Option(name: .long, help: ArgumentHelp("""
        Where the scheduler reaches the registry's HTTP API, for the console's image pages and \
        deleting tags (env KILN_REGISTRY_URL). Default: http://HOST:PORT of --registry on \
        loopback, https:// elsewhere. With --registry-signing-key it signs its own tokens.
        """, valueName: "url"))
    var registryURL: String? = ProcessInfo.processInfo.environment["KILN_REGISTRY_URL"]

    /// `--registry-url`, else one made from `--registry` (plain HTTP only on loopback, as
    /// Docker allows); an `https://` one trusts `--ca-file` besides the system's roots.
    /// The registry's API gets the scheduler's own tokens (every repository, the log archive's
    /// included): only inside TLS off the loopback, and never with user information in the URL.
    static func checkRegistryURL(_ text: String) throws {
        guard let url = URL(string: text), let scheme = url.scheme?.lowercased(), scheme == "http" || scheme == "https",
              let host = url.host, !host.isEmpty else {
            throw ValidationError("--registry-url must be the registry's API address, such as https://registry.example.com:5000, not '\(Validation.withoutPassword(text) ?? text)'")
        }
        guard url.user == nil, url.password == nil else {
            throw ValidationError("--registry-url must hold no user or password (the scheduler signs its own tokens with --registry-signing-key), not '\(Validation.withoutPassword(text) ?? text)'")
        }
        if scheme == "http" && !HostReach.isLoopback(host.trimmingCharacters(in: CharacterSet(charactersIn: "[]"))) {
            throw ValidationError("--registry-url \(text) is plain HTTP off this machine's loopback: the scheduler's registry tokens (which read and write every repository, archived logs included) would cross the network in clear. Use https:// (trust a private CA with --ca-file; docs/tls.md)")
        }
    }

    func registryAPI(ca: TrustedCA?) -> RegistryClient.Configuration? {
        if let registryURL { return RegistryClient.Configuration(url: registryURL, ca: ca) }
        guard let registry else { return nil }
        let loopback = ["127.0.0.1", "localhost", "[::1]"].contains { registry == $0 || registry.hasPrefix($0 + ":") }
        return RegistryClient.Configuration(url: (loopback ? "http://" : "https://") + registry, ca: ca)
    }

    @Option(name: .long, help: ArgumentHelp("""
        PEM certificate chain to serve the API, the console and the webhooks over HTTPS with \
        on --listen (env KILN_TLS_CERT; needs --tls-key): the server's certificate first, naming \
        every host name and address agents and people reach this scheduler by (docs/tls.md). \
        Makes the console's cookies Secure.
        """, valueName: "file"))
    var tlsCert: String? = ProcessInfo.processInfo.environment["KILN_TLS_CERT"].flatMap { $0.isEmpty ? nil : $0 }

    @Option(name: .long, help: ArgumentHelp("The private key of --tls-cert, PEM, mode 0600 (env KILN_TLS_KEY).", valueName: "file"))
    var tlsKey: String? = ProcessInfo.processInfo.environment["KILN_TLS_KEY"].flatMap { $0.isEmpty ? nil : $0 }

    /// `--ca-file`: the CA of the registry's certificate (an `https://` --registry-url), besides the system's roots.
    @OptionGroup var ca: CAFileOption

    /// `--tls-cert` and `--tls-key`, checked and read; nil for plain HTTP.
    func serverTLS() throws -> SchedulerTLS? {
        switch (tlsCert, tlsKey) {
        case (nil, nil): return nil
        case (let cert?, let key?):
            do { return try SchedulerTLS(certificateFile: cert, keyFile: key) } catch let error as KilnError { throw ValidationError(error.message) }
        default: throw ValidationError("--tls-cert and --tls-key go together: give the certificate and its key, or neither for plain HTTP")
        }
    }

    @Option(name: .long, help: ArgumentHelp("""
        A URL prefix the notify plugin may POST to (repeatable; env KILN_NOTIFY_ALLOW, \
        comma-separated), for example https://hooks.example.com/services/. Matched on scheme, \
        host, port and whole path segments: https://hooks.example.com/a allows \
        https://hooks.example.com/a/b, not https://hooks.example.com/ab or \
        https://hooks.example.com.evil/. Without one, notify steps fail: the requests leave from \
        this host, where etcd and the registry answer.
        """, valueName: "prefix"))
    var notifyAllow: [String] = env("KILN_NOTIFY_ALLOW", "").split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }

    @Flag(name: .long, help: ArgumentHelp("""
        Mark the web console's session cookies Secure (the browser sends them over HTTPS only) \
        on every request (env KILN_CONSOLE_SECURE_COOKIES=1). With --tls-cert, or behind a TLS \
        proxy that sends X-Forwarded-Proto: https, the cookies are Secure anyway, so use this \
        for a proxy that does not, and never when browsers reach the scheduler over \
        plain HTTP (they would not send the cookie back, and no one could log in).
        """))
    var consoleSecureCookies = env("KILN_CONSOLE_SECURE_COOKIES", "0") == "1"

    @Option(name: .long, help: ArgumentHelp("""
        File (mode 0600) of the keys that seal secrets and credentials in etcd (env \
        KILN_SECRETS_KEY_FILE; docs/secrets.md): one `v1 <base64>` line per key; the first \
        seals, every one opens. Every scheduler of a farm needs the same file; agents never \
        get it (they ask a scheduler for one build's secrets). Make one with `kiln secrets key \
        new --file FILE`; kiln up keeps it in <data-dir>/credentials/secrets-key. The start is \
        refused, saying what to do, when etcd holds secrets the file does not open. Without \
        it, secrets cannot be set or given to builds (those routes answer 503).
        """, valueName: "file"))
    var secretsKeyFile: String? = ProcessInfo.processInfo.environment["KILN_SECRETS_KEY_FILE"]

    @Option(name: .long, help: ArgumentHelp("Folder for this scheduler's files: the log archive, unless --log-archive names another (env KILN_DATA_DIR).", valueName: "dir"))
    var dataDir: String = env("KILN_DATA_DIR", "./kiln-data/scheduler")

    @Option(name: .long, help: ArgumentHelp("""
        The log archive (env KILN_LOG_ARCHIVE; default <data-dir>/log-archive; docs/logs.md): \
        a folder, or `registry` (or registry:REPO, REPO beginning kiln_; default \
        kiln_logs/archive) for the farm's registry at --registry-url, reached with \
        --registry-signing-key. When a build and its pipeline run have ended, the leader moves \
        its log out of etcd into one gzip per build there, and every scheduler reads it from \
        there: a folder serves schedulers on one machine (or one folder they all mount, NFS), \
        the registry schedulers on any host. A folder named registry is ./registry. Back it up \
        like etcd. While it cannot be written, logs stay in etcd and are moved once it works \
        again; builds never wait for it.
        """, valueName: "dir|registry[:REPO]"))
    var logArchive: String? = ProcessInfo.processInfo.environment["KILN_LOG_ARCHIVE"]

    /// The log archive's folder: `--log-archive`, else `<data-dir>/log-archive`.
    var logArchiveFolder: URL {
        logArchive.map { URL(fileURLWithPath: $0) } ?? URL(fileURLWithPath: dataDir).appendingPathComponent("log-archive")
    }

    func validate() throws {
        switch (registrySigningKey, adminTokenFile) {
        case (nil, nil): break
        case (let key?, let admin?):
            do { _ = try TokenSigningKey(pem: try CredentialFile.read(key)) } catch { throw ValidationError("--registry-signing-key: \(error)") }
            if FileManager.default.fileExists(atPath: admin) {
                do { _ = try CredentialFile.read(admin) } catch { throw ValidationError("--admin-token-file: \(error)") }
            }
        case (_?, nil):
            do { _ = try TokenSigningKey(pem: try CredentialFile.read(registrySigningKey!)) } catch { throw ValidationError("--registry-signing-key: \(error)") }
        case (nil, let admin?):
            if FileManager.default.fileExists(atPath: admin) {
                do { _ = try CredentialFile.read(admin) } catch { throw ValidationError("--admin-token-file: \(error)") }
            }
        }
        guard !registryTokenIssuer.isEmpty, !registryService.isEmpty else { throw ValidationError("--registry-token-issuer and --registry-service must not be empty") }
        if let path = registryCredentials {
            do { _ = try UserPassword.read(path) } catch { throw ValidationError("--registry-credentials: \(error)") }
        }
        do { _ = try NotifyAllowList(notifyAllow) } catch { throw ValidationError("--notify-allow: \(error)") }
        if let etcdQuotaBytes, etcdQuotaBytes < 1 << 20 {
            throw ValidationError("--etcd-quota-bytes is in bytes: \(etcdQuotaBytes) is less than a MiB; etcd's default is 2147483648 (2 GiB)")
        }
        if let text = ProcessInfo.processInfo.environment["KILN_ETCD_QUOTA_BYTES"], !text.isEmpty, Int64(text) == nil {
            throw ValidationError("KILN_ETCD_QUOTA_BYTES must be a number of bytes such as 2147483648, not '\(text)'")
        }
        guard etcdCompactAt >= 0, etcdCompactAt < 1 else { throw ValidationError("--etcd-compact-at is a share of the quota between 0 (never) and 1, such as 0.5, not \(etcdCompactAt)") }
        guard etcdKeepHistory >= 5 else { throw ValidationError("--etcd-keep-history must be at least 5 seconds (30 is the usual choice): less would cut Kiln's own watches short") }
        guard etcdHealthInterval >= 1 else { throw ValidationError("--etcd-health-interval must be at least 1 second (10 is the usual choice)") }
        guard leaderTTL >= 2 else { throw ValidationError("--leader-ttl must be at least 2 seconds") }
        guard pruneInterval >= 0 else { throw ValidationError("--prune-interval must be 0 (never prune) or more seconds; 600 is the usual choice") }
        guard discoveryInterval >= 0 else { throw ValidationError("--discovery-interval must be 0 (off) or more seconds") }
        guard !id.isEmpty, !id.contains("\n") else { throw ValidationError("--id must be a non-empty name on one line") }
        guard HostPort(listen) != nil else { throw ValidationError("--listen must be HOST:PORT, for example 127.0.0.1:7070, not '\(listen)'") }
        guard maxAttempts >= 1 else { throw ValidationError("--max-attempts must be at least 1") }
        guard loadFactor >= 1 else { throw ValidationError("--load-factor must be at least 1 (1.25 is the usual choice)") }
        if let text = ProcessInfo.processInfo.environment["KILN_WARM_WAIT"], !text.isEmpty, Double(text) == nil {
            throw ValidationError("KILN_WARM_WAIT must be a number of seconds such as 1 or 0.5, not '\(text)'")
        }
        guard warmWait.isFinite, warmWait >= 0, warmWait <= 600 else {
            throw ValidationError("--warm-wait is seconds from 0 (no wait) to 600, such as \(Dispatcher.Configuration.defaultWarmWait), not \(warmWait)")
        }
        guard !dataDir.isEmpty, logArchive?.isEmpty != true else { throw ValidationError("--data-dir and --log-archive must name a folder") }
        _ = try serverTLS()
        if let registryURL { try Self.checkRegistryURL(registryURL) }
        try validateLogArchive()
    }

    func run() async throws {
        let logger = KilnLogging.bootstrap(etcd.logLevel)
        let hp = HostPort(listen)!
        let tls = try serverTLS()
        if tls == nil, let warning = SchedulerTLS.plainHTTPWarning(listen: hp.host) { logger.warning("\(warning)") }
        // The post-build plugins: deploys run from the leader, through the cells in etcd.
        // Kubernetes cells' credentials, and the values of a version's secretEnv, are in the
        // sealed store (nil without a key file).
        let sealed = try secretsKeyFile.map { try SecretStore(etcd: try etcd.client(logger: logger), keys: Keys(prefix: etcd.prefix), keyFile: $0) }
        var deploy = DeployEnvironment(
            store: AppStore(etcd: try etcd.client(logger: logger), keys: Keys(prefix: etcd.prefix)),
            deployers: DeployEnvironment.standardDeployers(
                secrets: sealed,
                registryCredentials: try registryCredentials.map(RegistryCredentials.read)))
        deploy.registry = registry
        deploy.notifyAllow = try NotifyAllowList(notifyAllow)
        var configuration = SchedulerConfiguration(
            host: hp.host, port: hp.port, etcdEndpoint: etcd.etcd, keyPrefix: etcd.prefix,
            dispatcher: .init(maxAttempts: maxAttempts, loadFactor: loadFactor, warmWait: warmWait, id: id, leaderTTLSeconds: Int64(leaderTTL)),
            plugins: deploy.plugins)
        // Any scheduler scales (POST /api/v1/apps/{app}/scale), through the same backends.
        configuration.scaler = AppScaler(env: deploy, secrets: sealed)
        // The first admin before anything serves: its token file is what the token service reads.
        let identity = SchedulerStore(etcd: try etcd.client(logger: logger), keys: Keys(prefix: etcd.prefix))
        let bootstrap = try await identity.ensureFirstAdmin(tokenFile: adminTokenFile)
        logger.notice("\(bootstrap)")
        if let registry, let warning = HostReach.warning(option: "--registry", address: registry, readers: "cells, which pull the images deployed by this name",
                                                         etcd: etcd.etcd, fix: "Give the registry's name every builder, cell and scheduler host resolves, the same as the agents' --registry (docs/hosts.md).") {
            logger.warning("\(warning)")
        }
        if let warning = HostReach.warning(option: "--listen", address: listen, readers: "agents (secrets), people, GitLab and the registry (tokens, events)", etcd: etcd.etcd,
                                           fix: "Listen on an address other hosts reach (this host's address, or 0.0.0.0:PORT) with --tls-cert/--tls-key (docs/hosts.md, docs/tls.md), or put a TLS proxy on this host in front of it.", listening: true) {
            logger.warning("\(warning)")
        }
        if let key = registrySigningKey {
            configuration.registryTokens = .init(
                signingKey: try TokenSigningKey(pem: try CredentialFile.read(key)), issuer: registryTokenIssuer,
                service: registryService)
        }
        configuration.registryEventsToken = try registryEventsTokenFile.map(CredentialFile.read)
        configuration.registryAPI = registryAPI(ca: try ca.trusted())
        configuration.tls = tls
        configuration.consoleSecureCookies = consoleSecureCookies
        configuration.secretsKeyFile = secretsKeyFile
        configuration.logArchive = try makeLogArchive(tokens: configuration.registryTokens, logger: logger)
        configuration.etcdCredentials = try etcd.access.readCredentials()
        configuration.etcdTLS = etcd.access.tls
        configuration.retention = pruneInterval > 0 ? .init(interval: .milliseconds(Int64(pruneInterval * 1000))) : nil
        configuration.etcdQuotaBytes = etcdQuotaBytes
        configuration.etcdHealthInterval = .milliseconds(Int64(etcdHealthInterval * 1000))
        configuration.etcdCompactAt = etcdCompactAt
        configuration.etcdKeepHistory = .milliseconds(Int64(etcdKeepHistory * 1000))
        if discoveryInterval > 0 {
            let monitor = DiscoveryMonitor(env: deploy, interval: .milliseconds(Int64(discoveryInterval * 1000)), logger: logger)
            configuration.leaderTasks = [{ await monitor.run() }]
        }
        let app = buildSchedulerApplication(
            configuration: configuration,
            logger: logger,
            onServerRunning: { port in
                let names = tls.map { "; certificate \($0.certificateFile) for \($0.names.joined(separator: ", "))" } ?? ""
                logger.notice("kiln scheduler listening on \(tls == nil ? "http" : "https")://\(hp.host):\(port), etcd \(etcd.etcd)\(names)")
            })
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
