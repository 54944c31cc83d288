import ArgumentParser
import Deploy
import Etcd
import Foundation
import KilnCore
import ServiceLifecycle

struct LBAgentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lb-agent",
        abstract: "Run nginx for one lb group and keep it serving the group's domains from etcd.",
        discussion: """
        Starts its own nginx (nginx -p DIR -c DIR/nginx.conf), reads /slb/GROUP/domains/ and \
        follows its watch. Each domain gets its own file in DIR/domains/ (an upstream of its \
        servers, and a server block for its name). A change is tested with nginx -t before it \
        is applied with a graceful reload, so requests in flight finish. When only a domain's \
        servers changed and nginx has the Lua module (libnginx-mod-http-lua), the servers are \
        set through the agent's control socket without a reload, so no kept-alive client \
        connection is closed (--server-updates reload turns that off). A domain whose value \
        is invalid, or that nginx refuses, keeps its last good config; the reason is reported.

        After every apply it writes what it serves at /slb/GROUP/agents/ID (applied etcd \
        revision, rejected domains, listen address) under a lease: the lb plugin waits there \
        until every agent of the group serves the new servers. A request whose Host names no \
        domain gets a 404 that says so.

        With etcd authentication on (docs/etcd-auth.md), each lb-agent runs as its own etcd \
        user (--etcd-credentials), made for its group and --id: it reads the group's domains \
        and writes its own report only, so give it a fixed --id.

        Run one lb-agent beside each nginx of the group, each with its own --id and --dir. \
        SIGTERM or Ctrl-C stops nginx gracefully and removes the report.

        Example:
          kiln lb-agent --group web --listen 0.0.0.0:80 --etcd http://127.0.0.1:2379
          etcdctl put /slb/web/domains/demo.localhost \\
            '{"domain":"demo.localhost","servers":[{"address":"127.0.0.1:20001"}]}'
          curl -H 'Host: demo.localhost' http://127.0.0.1/
        """)

    @Option(name: .long, help: EtcdAccessOptions.etcdHelp)
    var etcd: String = env("KILN_ETCD", "http://127.0.0.1:2379")

    @Option(name: .long, help: ArgumentHelp("Log level: trace, debug, info, notice, warning, error (env KILN_LOG_LEVEL).", valueName: "level"))
    var logLevel: String?

    @OptionGroup var etcdAccess: EtcdAccessOptions

    @Option(name: .long, help: ArgumentHelp("The lb group whose domains it serves (env KILN_LB_GROUP).", valueName: "group"))
    var group: String = env("KILN_LB_GROUP", "")

    @Option(name: .long, help: ArgumentHelp("Its name among the group's agents, unique in the group (env KILN_LB_AGENT_ID; default: HOST-PID).", valueName: "name"))
    var id: String?

    @Option(name: .long, help: ArgumentHelp("Address nginx listens on (env KILN_LB_LISTEN).", valueName: "host:port"))
    var listen: String = env("KILN_LB_LISTEN", "127.0.0.1:8088")

    @Option(name: .long, help: ArgumentHelp("nginx's folder: config, domain files, logs, temp files; one agent per folder (env KILN_LB_DIR; default: /var/lib/kiln/lb/GROUP).", valueName: "dir"))
    var dir: String?

    @Option(name: .long, help: ArgumentHelp("Root of the lb keys in etcd (env KILN_SLB_ROOT).", valueName: "prefix"))
    var slbRoot: String = env("KILN_SLB_ROOT", "/slb")

    @Option(name: .long, help: ArgumentHelp("TTL of the lease its report is bound to.", valueName: "seconds"))
    var ttl: Int = 10

    @Option(name: .long, help: ArgumentHelp("The nginx program (env KILN_NGINX).", valueName: "path"))
    var nginx: String = env("KILN_NGINX", "nginx")

    @Option(name: .long, help: ArgumentHelp("How a change of servers alone reaches nginx: lua (without a reload, when nginx can load the Lua module) or reload (env KILN_LB_SERVER_UPDATES; default: lua).", valueName: "lua|reload"))
    var serverUpdates: LBServerUpdates?

    /// The option, else the environment's choice (checked in `validate()`), else lua.
    var serverUpdatesMode: LBServerUpdates {
        serverUpdates ?? LBServerUpdates(rawValue: env("KILN_LB_SERVER_UPDATES", "lua")) ?? .lua
    }

    @Option(name: .long, help: ArgumentHelp("Folder of nginx's dynamic modules holding ngx_http_lua_module.so (env KILN_NGINX_MODULES; default: nginx -V's --modules-path).", valueName: "dir"))
    var nginxModules: String?

    var agentConfiguration: LBAgentConfiguration {
        let folder = dir ?? ProcessInfo.processInfo.environment["KILN_LB_DIR"].flatMap { $0.isEmpty ? nil : $0 }
        let name = id ?? env("KILN_LB_AGENT_ID", "\(ProcessInfo.processInfo.hostName)-\(ProcessInfo.processInfo.processIdentifier)")
        return LBAgentConfiguration(
            group: group, id: name, listen: listen,
            directory: folder.map { URL(fileURLWithPath: $0).standardizedFileURL } ?? LBAgentConfiguration.defaultDirectory(group: group),
            keys: SLBKeys(root: slbRoot), leaseTTL: Int64(ttl), nginx: nginx,
            serverUpdates: serverUpdatesMode,
            nginxModules: (nginxModules ?? ProcessInfo.processInfo.environment["KILN_NGINX_MODULES"]).flatMap { $0.isEmpty ? nil : URL(fileURLWithPath: $0) })
    }

    func validate() throws {
        try etcdAccess.check(endpoint: etcd)
        guard !group.isEmpty else { throw ValidationError("--group is required: the lb group whose domains this nginx serves, for example --group web") }
        if serverUpdates == nil, let raw = ProcessInfo.processInfo.environment["KILN_LB_SERVER_UPDATES"], !raw.isEmpty, LBServerUpdates(rawValue: raw) == nil {
            throw ValidationError("KILN_LB_SERVER_UPDATES must be lua or reload, not '\(raw)'")
        }
        guard slbRoot.hasPrefix("/") else { throw ValidationError("--slb-root must start with '/', for example /slb") }
        do { try agentConfiguration.validate() } catch let e as KilnError { throw ValidationError(e.message) }
    }

    func run() async throws {
        let logger = KilnLogging.bootstrap(logLevel)
        let config = agentConfiguration
        let agent = LBAgent(configuration: config, etcd: try etcdAccess.client(endpoint: etcd, logger: logger), logger: logger)
        logger.notice("kiln lb-agent \(config.id): group \(config.group), nginx on \(config.listen), folder \(config.directory.path), etcd \(etcd)")
        if let warning = HostReach.warning(option: "--listen", address: listen, readers: "clients and the DNS names pointed at this lb host", etcd: etcd,
                                           fix: "Listen on the address clients reach (this host's address, or 0.0.0.0:PORT) with --listen (env KILN_LB_LISTEN; docs/hosts.md).", listening: true) {
            logger.warning("kiln lb-agent \(config.id): \(warning)")
        }
        // Graceful shutdown (SIGTERM, Ctrl-C) stops nginx and revokes the report's lease.
        let group = ServiceGroup(configuration: .init(services: [.init(service: agent)], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
    }
}
