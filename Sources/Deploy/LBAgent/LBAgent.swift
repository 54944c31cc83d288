import Etcd
import Foundation
import KilnCore
import Logging
import Processes
import ServiceLifecycle
import Synchronization

/// How one lb-agent runs: its nginx group, its name, where nginx listens and keeps its files.
public struct LBAgentConfiguration: Sendable {
    /// The nginx group it serves: it renders `/slb/{group}/domains/`.
    public var group: String
    /// Its name among the group's agents, the last part of `/slb/{group}/agents/{id}`.
    public var id: String
    /// `host:port` nginx listens on.
    public var listen: String
    /// nginx's prefix folder: `nginx.conf`, `domains/`, `staging/`, `logs/`, `temp/`, the pid file.
    /// One agent per folder.
    public var directory: URL
    public var keys: SLBKeys
    /// TTL of the lease its report is bound to: a dead agent's report disappears within it.
    public var leaseTTL: Int64
    /// Changes arriving within this time of each other are applied together (one reload).
    public var debounce: Duration
    /// The nginx program (a name on PATH or a path).
    public var nginx: String
    /// How a change of a domain's servers alone reaches nginx.
    public var serverUpdates: LBServerUpdates
    /// The folder of nginx's dynamic modules that holds the Lua module; nil: the one `nginx -V`
    /// names (`--modules-path`).
    public var nginxModules: URL?

    public init(group: String, id: String, listen: String = "127.0.0.1:8088", directory: URL, keys: SLBKeys = SLBKeys(),
                leaseTTL: Int64 = 10, debounce: Duration = .milliseconds(50), nginx: String = "nginx",
                serverUpdates: LBServerUpdates = .lua, nginxModules: URL? = nil) {
        self.group = group
        self.id = id
        self.listen = listen
        self.directory = directory
        self.keys = keys
        self.leaseTTL = leaseTTL
        self.debounce = debounce
        self.nginx = nginx
        self.serverUpdates = serverUpdates
        self.nginxModules = nginxModules
    }

    /// The default folder of a group's agent.
    public static func defaultDirectory(group: String) -> URL {
        URL(fileURLWithPath: "/var/lib/kiln/lb").appendingPathComponent(group)
    }

    /// Throws a `KilnError` naming the first field that is wrong and what to give instead.
    public func validate() throws {
        try Validation.groupName(group)
        do { try Validation.agentID(id) } catch { throw KilnError.invalid("lb-agent id '\(Validation.printable(id))' is invalid: use letters, digits, '-', '_' and '.'") }
        do { try Validation.serverAddress(listen) } catch {
            throw KilnError.invalid("listen address '\(Validation.printable(listen))' is invalid: use host:port, such as 127.0.0.1:8088 or 0.0.0.0:80")
        }
        guard leaseTTL >= 2 else { throw KilnError.invalid("lease TTL \(leaseTTL) s is too short: use at least 2 seconds") }
    }
}

/// How an lb-agent makes nginx serve a domain's new servers when nothing else of the group
/// changed. Any other change (a domain added or removed, its settings) always reloads.
public enum LBServerUpdates: String, Sendable, CaseIterable {
    /// Through the Lua module (a shared dict the balancer reads, set over the agent's control
    /// socket: no reload, so no kept-alive client connection is closed), when nginx can load
    /// it; else by reload.
    case lua
    /// Every change reloads nginx.
    case reload
}

/// The agent beside one nginx: keeps nginx serving what `/slb/{group}/domains/` says.
///
/// `run()` starts nginx (its own child process, stopped by PID when `run()` ends), reads the
/// domains, then follows their watch. Each change is checked, rendered into the domain's own
/// file, tested with `nginx -t` and applied with a graceful reload (old workers finish their
/// requests); a change of servers alone goes through the Lua module without a reload, when
/// nginx has it (`LBServerUpdates`). A domain whose value is invalid or that nginx refuses keeps its last good
/// config, and the reason is reported. After every apply it writes an `SLBAgentReport` at
/// `/slb/{group}/agents/{id}`, bound to a lease, so a caller can wait until every agent of the
/// group serves a revision (`LBAgents.waitApplied`).
///
/// A `Service`: `run()` returns on graceful shutdown or when its task is cancelled, after
/// stopping nginx (SIGQUIT, then SIGKILL) and revoking the lease. It throws when it cannot go
/// on: nginx would not start or died, or a reload failed. Run one agent per `directory`;
/// several agents of a group (on other machines, or on other ports) each run their own nginx.
public struct LBAgent: Service {
    public let configuration: LBAgentConfiguration
    public let etcd: EtcdClient
    public let logger: Logger

    public init(configuration: LBAgentConfiguration, etcd: EtcdClient, logger: Logger = Logger(label: "kiln.lb-agent")) {
        self.configuration = configuration
        self.etcd = etcd
        var logger = logger
        logger[metadataKey: "lb.group"] = .string(configuration.group)
        logger[metadataKey: "lb.agent"] = .string(configuration.id)
        self.logger = logger
    }

    var dir: URL { configuration.directory }
    var liveDomains: URL { dir.appendingPathComponent("domains") }
    var stagingDomains: URL { dir.appendingPathComponent("staging/domains") }
    var stagingConfig: URL { dir.appendingPathComponent("staging/nginx.conf") }
    var controlFolder: URL { dir.appendingPathComponent("control") }
    func nginxConfig(lua: NginxLua?) -> NginxConfig {
        NginxConfig(group: configuration.group, listen: configuration.listen, directory: dir, lua: lua)
    }

    /// Serves the group until graceful shutdown or the task is cancelled.
    public func run() async throws {
        try await cancelWhenGracefulShutdown { try await serveUntilCancelled() }
    }

    private func serveUntilCancelled() async throws {
        try configuration.validate()
        guard let nginxPath = ManagedProcess.which(configuration.nginx) else {
            throw KilnError.unavailable("nginx is not installed ('\(configuration.nginx)' is not on PATH): apt-get install nginx-light")
        }
        var kept: [String: String]
        let lua: NginxLua?
        do {
            try createFolders()
            lua = try await luaIfAvailable(nginxPath: nginxPath)
            kept = try prepareFiles(lua: lua)
        } catch {
            throw KilnError.unavailable("cannot prepare nginx's folder \(dir.path): \(error); give a folder this user may write with --dir")
        }
        let mainFile = dir.appendingPathComponent("nginx.conf")
        if !kept.isEmpty, let refused = try await Nginx.test(executable: nginxPath, directory: dir, configFile: mainFile) {
            logger.warning("the domain files of the last run do not pass nginx -t (\(refused)); starting without them")
            try write([:], to: liveDomains)
            kept = [:]
        }
        if let refused = try await Nginx.test(executable: nginxPath, directory: dir, configFile: mainFile) {
            throw KilnError.invalid("nginx refuses the lb-agent's main config (listen \(configuration.listen)): \(refused)")
        }
        let nginx = try await Nginx.start(executable: nginxPath, directory: dir)
        if !kept.isEmpty { logger.notice("serving the \(kept.count) domains of the last run until etcd answers") }
        logger.notice("nginx (pid \(nginx.process.pid)) listens on \(configuration.listen); following \(configuration.keys.domains(configuration.group))")
        let lease = Locked<Int64?>(nil)
        do {
            try await serve(nginx: nginx, nginxPath: nginxPath, lua: lua, live: kept, lease: lease)
        } catch {
            await shutdown(nginx: nginx, lease: lease.value)
            if Task.isCancelled { return }
            throw error
        }
        await shutdown(nginx: nginx, lease: lease.value)
    }

    private func createFolders() throws {
        let fm = FileManager.default
        for sub in ["logs", "temp", "domains", "staging/domains", "staging/lua-check", "lua"] {
            try fm.createDirectory(at: dir.appendingPathComponent(sub), withIntermediateDirectories: true)
        }
        // The control socket lets whoever reaches it pick any domain's servers: only this user may.
        try fm.createDirectory(at: controlFolder, withIntermediateDirectories: true)
        try fm.setAttributes([.posixPermissions: 0o700], ofItemAtPath: controlFolder.path)
        // nginx cannot listen on a socket file a killed nginx left behind.
        for name in try fm.contentsOfDirectory(atPath: controlFolder.path) {
            try fm.removeItem(at: controlFolder.appendingPathComponent(name))
        }
    }

    /// The Lua module's setup if `serverUpdates` asks for it and nginx accepts it (`nginx -t`
    /// of the main file and a domain file with its balancer); logs which way servers change.
    private func luaIfAvailable(nginxPath: String) async throws -> NginxLua? {
        guard configuration.serverUpdates == .lua else {
            logger.notice("every change reloads nginx (server updates: reload)")
            return nil
        }
        let (found, why) = await NginxLua.find(nginxPath: nginxPath, modulesDirectory: configuration.nginxModules, directory: dir)
        guard let lua = found else {
            logger.notice("every change reloads nginx: \(why)")
            return nil
        }
        try NginxLua.source.write(to: lua.script, atomically: true, encoding: .utf8)
        let check = dir.appendingPathComponent("staging/lua-check")
        let config = nginxConfig(lua: lua)
        let sample = SLBDomain(domain: "lua-check.localhost", servers: [SLBServer(address: "127.0.0.1:1")])
        try write(["lua-check.localhost": try config.domainFile(domain: sample.domain, value: Array(try KilnJSON.encode(sample).utf8), revision: 1).get()], to: check)
        let main = dir.appendingPathComponent("staging/lua-check.conf")
        try config.mainFile(domainsFolder: check).write(to: main, atomically: true, encoding: .utf8)
        if let refused = try await Nginx.test(executable: nginxPath, directory: dir, configFile: main) {
            logger.warning("every change reloads nginx: it refuses the Lua module (\(lua.modules.map(\.path).joined(separator: ", "))): \(refused)")
            return nil
        }
        logger.notice("a change of servers alone needs no reload: the Lua module (\(lua.modules.last!.path)) balances, the agent sets servers through \(lua.controlSocket.path)")
        return lua
    }

    /// Writes the main files, and returns the domain files an earlier run left in `domains/`
    /// for the same listen address (each passed `nginx -t` then): nginx starts with them, so a
    /// restarted agent serves on while it reads etcd, and the first apply replaces them with
    /// what etcd says. Any other file there is removed.
    private func prepareFiles(lua: NginxLua?) throws -> [String: String] {
        let fm = FileManager.default
        var kept: [String: String] = [:]
        for name in try fm.contentsOfDirectory(atPath: liveDomains.path) {
            let file = liveDomains.appendingPathComponent(name)
            let domain = name.hasSuffix(".conf") ? String(name.dropLast(5)) : ""
            // A file written for another listen address would serve there, not here.
            if (try? Validation.domain(domain)) != nil, let text = try? String(contentsOf: file, encoding: .utf8),
               text.contains("\n    listen \(configuration.listen);\n") {
                kept[domain] = text
            } else {
                try fm.removeItem(at: file)
            }
        }
        let config = nginxConfig(lua: lua)
        try config.mainFile(domainsFolder: liveDomains).write(to: dir.appendingPathComponent("nginx.conf"), atomically: true, encoding: .utf8)
        try config.mainFile(domainsFolder: stagingDomains).write(to: stagingConfig, atomically: true, encoding: .utf8)
        return kept
    }

    private func serve(nginx: Nginx, nginxPath: String, lua: NginxLua?, live: [String: String], lease: Locked<Int64?>) async throws {
        let view = LatestView()
        let (reports, reportsContinuation) = AsyncStream.makeStream(of: ReporterInput.self)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await follow(into: view) }
            group.addTask { try await publish(reports, continuation: reportsContinuation, lease: lease) }
            group.addTask {
                // nginx says nothing when it dies; the agent must not go on reporting for it.
                while true {
                    try await Task.sleep(for: .milliseconds(500))
                    if let status = nginx.process.status {
                        throw KilnError.unavailable("nginx (pid \(nginx.process.pid)) exited with status \(status); \(nginx.errorLog.path) ends with:\n\(nginx.logTail())")
                    }
                }
            }
            group.addTask {
                var applier = Applier(agent: self, nginx: nginx, nginxPath: nginxPath, config: nginxConfig(lua: lua),
                                      control: lua.map { ServerControl(socket: $0.controlSocket) }, live: live)
                for await _ in view.changed {
                    try await Task.sleep(for: configuration.debounce)
                    let snapshot = view.snapshot()
                    let report = try await applier.apply(snapshot)
                    reportsContinuation.yield(.report(report))
                }
            }
            try await group.next()
            group.cancelAll()
        }
    }

    /// Follows the domains into `view`: all of them first, again after a failure or a
    /// compaction (etcd crashed, or was unreachable for long), and every change between.
    private func follow(into view: LatestView) async {
        for await update in etcd.follow(prefix: configuration.keys.domains(configuration.group)) {
            view.apply(update)
        }
    }

    enum ReporterInput: Sendable {
        case report(SLBAgentReport)
        case leaseLost(Int64)
    }

    /// Writes each new report at `/slb/{group}/agents/{id}` under a lease it keeps alive; when
    /// the lease is lost (etcd was unreachable for a TTL) it takes a new one and writes again.
    private func publish(_ inputs: AsyncStream<ReporterInput>, continuation: AsyncStream<ReporterInput>.Continuation, lease: Locked<Int64?>) async throws {
        let key = configuration.keys.agent(group: configuration.group, configuration.id)
        let ttl = configuration.leaseTTL
        try await withThrowingTaskGroup(of: Void.self) { group in
            var latest: SLBAgentReport?
            var current: Int64?
            var warnedAbout: Int64?
            for await input in inputs {
                switch input {
                case .report(let r): latest = r
                case .leaseLost(let id): if current == id { current = nil } else { continue }
                }
                guard let report = latest else { continue }
                while !Task.isCancelled {
                    do {
                        if current == nil {
                            let id = try await etcd.grantLease(ttl: ttl)
                            current = id
                            lease.value = id
                            group.addTask {
                                do { try await etcd.keepAlive(id, every: .seconds(ttl) / 3) } catch {
                                    logger.warning("lease of the report lost: \(error); taking a new one")
                                }
                                continuation.yield(.leaseLost(id))
                            }
                        }
                        if let other = try await write(report, at: key, lease: current!) {
                            if other != warnedAbout {
                                logger.warning("another lb-agent reports as \(configuration.id) in group \(configuration.group) (lease \(other)): waiting until its report goes; give each agent its own --id")
                                warnedAbout = other
                            }
                            try? await Task.sleep(for: .seconds(1))
                            continue
                        }
                        warnedAbout = nil
                        break
                    } catch {
                        if Task.isCancelled { break }
                        if case EtcdError.leaseNotFound = error { current = nil }
                        logger.warning("writing the report at \(key) failed: \(error); retrying")
                        try? await Task.sleep(for: .milliseconds(500))
                    }
                }
            }
            group.cancelAll()
        }
    }

    /// Writes the report if the key is this agent's (bound to `lease`) or free. Returns the
    /// lease of another agent that holds the key, so two agents given the same id cannot
    /// overwrite each other's report and make `LBAgents.waitApplied` believe the wrong one.
    private func write(_ report: SLBAgentReport, at key: String, lease: Int64) async throws -> Int64? {
        let json = try KilnJSON.encode(report)
        if try await etcd.txn(Txn(compare: [.lease(key, .equal, lease)], success: [.put(key, json, lease: lease)])).succeeded { return nil }
        let created = try await etcd.txn(Txn(compare: [.createRevision(key, .equal, 0)], success: [.put(key, json, lease: lease)], failure: [.get(key)]))
        if created.succeeded { return nil }
        return created.responses.first?.kvs.first?.lease ?? 0
    }

    /// Revokes the report's lease (its key goes at once), then stops nginx gracefully.
    private func shutdown(nginx: Nginx, lease: Int64?) async {
        if let lease {
            // The run's task is cancelled, and a cancelled task's requests end at once.
            let etcd = self.etcd
            let revoked = await outlivingCancellation { try? await etcd.revokeLease(lease) }
            if revoked == nil { logger.warning("could not revoke the report's lease \(lease); the report goes when it expires") }
        }
        nginx.stop()
        logger.notice("nginx stopped")
    }
}

/// The domains as etcd has them now, shared by the watch (which writes) and the applier
/// (which reads); `changed` wakes the applier, once for any number of changes.
final class LatestView: Sendable {
    private let state = Mutex(PrefixView())
    private let continuation: AsyncStream<Void>.Continuation
    let changed: AsyncStream<Void>

    init() {
        (changed, continuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    func apply(_ update: WatchUpdate) {
        state.withLock { $0.apply(update) }
        continuation.yield()
    }

    func snapshot() -> PrefixView { state.withLock { $0 } }
}
