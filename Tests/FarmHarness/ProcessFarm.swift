import Etcd
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A farm of real processes on free loopback ports: one etcd, `kiln scheduler` processes and
/// `kiln agent --simulate` processes (the real agent: registration, leases, task watch and
/// guarded writes; the build steps are a wait). Used by `FarmTests` and by `kiln-bench farm`.
///
/// Every process is a child of this one and is stopped by PID: gracefully by `stop()`, and at
/// once (SIGKILL) when the farm goes away, so a test that fails halfway leaves nothing behind.
/// Data and logs are under `dir` (`etcd/`, `agents/<id>/`, `logs/<name>.log`); a farm made
/// with a `TempDir` removes it when it goes away. The methods may be called from any task.
///
/// etcd has authentication on unless the farm is made with `etcdAuth: false` (the latency
/// benchmark's other half): each scheduler and agent then runs as its own etcd user with its
/// role's grants (``EtcdAccess``), its credential file in `credentials/`; `etcd`, the
/// harness's own client, is root.
///
/// With `etcdMembers` above 1 etcd is a cluster of that many members on loopback
/// (``EtcdCluster``): every process gets all their URLs (`--etcd URL,URL,URL`, the first
/// listed first) and `etcdServer` is the first member, the one they all use until it fails.
public final class ProcessFarm: Sendable {
    /// A scheduler process and the base URL of its API.
    public struct SchedulerProcess: Sendable {
        public let process: ManagedProcess
        public let api: String
    }

    /// The options of `kiln agent --simulate`.
    public struct AgentOptions: Sendable {
        public var capacity: Int
        /// Lease TTL, seconds.
        public var ttl: Int
        /// Seconds each build takes: a number, or a range such as `0.2-0.6` drawn per build.
        public var simulate: String
        /// More options of `kiln agent` (for example `--simulate-log 10K-4M`).
        public var extra: [String]

        public init(capacity: Int = 2, ttl: Int = 3, simulate: String = "0.2-0.6", extra: [String] = []) {
            self.capacity = capacity
            self.ttl = ttl
            self.simulate = simulate
            self.extra = extra
        }
    }

    public let dir: URL
    /// The `kiln` executable of the schedulers and agents.
    public let kiln: String
    /// `--log-level` of the schedulers and agents.
    public let logLevel: String
    public let etcdServer: EtcdServer
    /// The cluster, when the farm was made with more than one member.
    public let etcdCluster: EtcdCluster?
    /// What every process gets as `--etcd`: the server's URL, or every member's.
    public var etcdEndpoint: String { etcdCluster?.endpoint ?? etcdServer.endpoint }
    /// The users and their credential files; nil when authentication is off.
    public let etcdUsers: EtcdUsers?
    public let etcd: EtcdClient
    public let keys = Keys()
    /// The first admin's API token: every scheduler gets its file as `--admin-token-file`
    /// (the first to start makes user admin with it).
    public let adminToken: String
    public var adminTokenFile: String { dir.appendingPathComponent("credentials/admin-token").path }
    /// The log archive every scheduler of the farm shares (`--log-archive`; docs/logs.md).
    public var logArchive: URL { dir.appendingPathComponent("log-archive") }
    /// The secrets key file every scheduler gets as `--secrets-key-file` (made with the farm,
    /// as `kiln up` makes its own).
    public var secretsKeyFile: String { dir.appendingPathComponent("credentials/\(LocalSecretsKey.fileName)").path }
    /// `Authorization` for the API as the first admin.
    public var adminHeaders: [(String, String)] { [("Authorization", "Bearer \(adminToken)")] }
    private let temporary: TempDir?

    private struct Children {
        var schedulers: [String: SchedulerProcess] = [:]
        var agents: [String: ManagedProcess] = [:]
        var nextAgent = 1
    }

    private let children = Mutex(Children())

    /// Starts etcd with its data in `dir`; schedulers and agents are started one by one.
    /// Throws if `kiln` is not an executable file, saying how to build it (`missing`).
    public convenience init(dir: URL, kiln: String, logLevel: String = "info", etcdAuth: Bool = true, etcdMembers: Int = 1,
                            etcdMaintenance: EtcdServer.Maintenance = .standard, missing: String) async throws {
        try await self.init(dir: dir, temporary: nil, kiln: kiln, logLevel: logLevel, etcdAuth: etcdAuth, etcdMembers: etcdMembers,
                            etcdMaintenance: etcdMaintenance, missing: missing)
    }

    /// The same in a fresh temporary folder, removed when the farm goes away.
    public convenience init(_ label: String, kiln: String, logLevel: String = "info", etcdAuth: Bool = true, etcdMembers: Int = 1, missing: String) async throws {
        let temporary = try TempDir(label)
        try await self.init(dir: temporary.url, temporary: temporary, kiln: kiln, logLevel: logLevel, etcdAuth: etcdAuth, etcdMembers: etcdMembers,
                            etcdMaintenance: .standard, missing: missing)
    }

    private init(dir: URL, temporary: TempDir?, kiln: String, logLevel: String, etcdAuth: Bool, etcdMembers: Int,
                 etcdMaintenance: EtcdServer.Maintenance, missing: String) async throws {
        guard FileManager.default.isExecutableFile(atPath: kiln) else {
            throw FarmError("\(kiln) is missing: \(missing)")
        }
        self.dir = dir
        self.temporary = temporary
        self.kiln = kiln
        self.logLevel = logLevel
        let tokenFile = dir.appendingPathComponent("credentials/admin-token").path
        adminToken = try CredentialFile.readOrCreate(tokenFile) { "kiln_" + Secret.random() }
        try LocalSecretsKey.ensure(credentialsDir: dir.appendingPathComponent("credentials"))
        if etcdMembers > 1 {
            let cluster = try await EtcdCluster.start(dir: dir.appendingPathComponent("etcd"), count: etcdMembers)
            etcdCluster = cluster
            etcdServer = cluster.members[0]
        } else {
            etcdCluster = nil
            etcdServer = try await EtcdServer.start(dataDir: dir.appendingPathComponent("etcd"), maintenance: etcdMaintenance)
        }
        let endpoint = etcdCluster?.endpoint ?? etcdServer.endpoint
        if etcdAuth {
            let users = try await EtcdUsers.enable(endpoint: endpoint, credentialsDir: dir.appendingPathComponent("credentials"))
            etcdUsers = users
            etcd = users.rootClient
        } else {
            etcdUsers = nil
            etcd = EtcdClient(endpoint: endpoint)
        }
    }

    deinit {
        let all = children.withLock { $0 }
        for s in all.schedulers.values { s.process.killNow() }
        for a in all.agents.values { a.killNow() }
        etcdCluster?.kill()
        etcdServer.kill()
    }

    public var schedulers: [String: SchedulerProcess] { children.withLock { $0.schedulers } }
    public var agents: [String: ManagedProcess] { children.withLock { $0.agents } }

    /// The ids of the agents started and not stopped or killed, `agent-2` before `agent-10`.
    public var agentIDs: [String] {
        agents.keys.sorted { ($0.count, $0) < ($1.count, $1) }
    }

    /// Starts `kiln scheduler --id <id>` on a free port with `options` (for example
    /// `--leader-ttl 2`) and waits until its API answers.
    @discardableResult
    public func startScheduler(_ id: String, options: [String] = []) async throws -> SchedulerProcess {
        var lastError: (any Error)?
        let access = try await credentials(.scheduler)
        for _ in 0..<3 {
            let port = try FreePort.next()
            let p = try spawn(id, ["scheduler", "--listen", "127.0.0.1:\(port)", "--etcd", etcdEndpoint, "--id", id,
                                   "--log-level", logLevel, "--admin-token-file", adminTokenFile, "--secrets-key-file", secretsKeyFile,
                                   "--log-archive", logArchive.path] + access + options)
            let scheduler = SchedulerProcess(process: p, api: "http://127.0.0.1:\(port)")
            do {
                // Ready when this very scheduler answers with our admin token: the port was only
                // free a moment ago, and another test's scheduler may have taken it meanwhile.
                try await p.waitUntilReady(timeout: 30) {
                    guard let reply = try? await FarmHTTP.send("GET", "\(scheduler.api)/api/v1/scheduler", headers: self.adminHeaders), reply.status == 200,
                          let status = try? KilnJSON.decode(SchedulerStatus.self, from: reply.body) else { return false }
                    return status.id == id
                }
                children.withLock { $0.schedulers[id] = scheduler }
                return scheduler
            } catch {
                stop([p])
                lastError = error  // most likely the port was taken meanwhile: pick another
            }
        }
        throw lastError!
    }

    /// Starts one simulated agent, `id` or else `agent-<n>` with the next unused n; it
    /// registers on its own (see `waitForAgents`). Returns its id.
    @discardableResult
    public func startAgent(_ options: AgentOptions, id: String? = nil) async throws -> String {
        let id = id ?? children.withLock { c in
            defer { c.nextAgent += 1 }
            return "agent-\(c.nextAgent)"
        }
        let access = try await credentials(.agent(id))
        let p = try spawn(id, ["agent", "--simulate", options.simulate, "--id", id, "--capacity", String(options.capacity),
                               "--ttl", String(options.ttl), "--data-dir", dir.appendingPathComponent("agents/\(id)").path,
                               "--etcd", etcdEndpoint, "--log-level", logLevel] + options.extra + access)
        children.withLock { $0.agents[id] = p }
        return id
    }

    /// `--etcd-credentials FILE` of `access`'s user, made first; none without authentication.
    private func credentials(_ access: EtcdAccess) async throws -> [String] {
        guard let etcdUsers else { return [] }
        return ["--etcd-credentials", try await etcdUsers.ensure(access).path]
    }

    private func spawn(_ name: String, _ arguments: [String]) throws -> ManagedProcess {
        try ManagedProcess(name: name, executable: kiln, arguments: arguments, logFile: dir.appendingPathComponent("logs/\(name).log"))
    }

    /// Waits until every agent in `ids` (by default all started) is registered in etcd; fails
    /// at once if one of them exits. Polls: a process that is starting has no event to wait on.
    public func waitForAgents(_ ids: [String]? = nil, timeout: Duration = .seconds(120)) async throws {
        let ids = ids ?? agentIDs
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            let processes = agents
            for id in ids {
                guard let p = processes[id], !p.isRunning else { continue }
                throw FarmError("\(id) exited while starting; its log (\(p.logFile.path)) ends with:\n\(p.logTail())")
            }
            let registered = Set(try await etcd.range(prefix: keys.agents).kvs.map(\.key))
            if ids.allSatisfy({ registered.contains(keys.agent($0)) }) { return }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw FarmError("agents \(ids.joined(separator: ", ")) did not all register within \(timeout); logs in \(dir.appendingPathComponent("logs").path)")
    }

    /// Kills an agent with SIGKILL, as a crash would; returns when it has been reaped.
    public func killAgent(_ id: String) {
        children.withLock { $0.agents.removeValue(forKey: id) }?.killNow()
    }

    /// Stops every agent (SIGTERM: each revokes its lease) and waits until none is registered.
    public func stopAgents() async throws {
        stop(children.withLock { c in
            defer { c.agents.removeAll() }
            return Array(c.agents.values)
        })
        while try await !etcd.range(prefix: keys.agents).kvs.isEmpty { try await Task.sleep(for: .milliseconds(50)) }
    }

    /// Stops the agents and the schedulers (SIGTERM to all at once); etcd goes on.
    public func stopProcesses() {
        stop(children.withLock { c in
            defer { c.agents.removeAll(); c.schedulers.removeAll() }
            return Array(c.agents.values) + c.schedulers.values.map(\.process)
        })
    }

    /// Stops the agents and the schedulers, then etcd.
    public func stop() {
        stopProcesses()
        etcdCluster?.stop()
        etcdServer.stop()
    }

    /// SIGTERM to all of `processes` at once, then waits for each (SIGKILL past 10 s).
    public func stop(_ processes: [ManagedProcess]) {
        for p in processes where p.isRunning { kill(p.pid, SIGTERM) }
        for p in processes { p.stop(grace: 10) }
    }

    /// The last `lines` lines of each process's log, for a failing expectation.
    public func logs(lines: Int = 15) -> String {
        let c = children.withLock { $0 }
        return (c.schedulers.map { ($0.key, $0.value.process) } + c.agents.map { ($0.key, $0.value) })
            .map { "--- \($0.0)\n\($0.1.logTail(lines: lines))" }.joined(separator: "\n")
    }

    /// Every build record, by id.
    public func builds() async throws -> [String: Build] {
        var all: [String: Build] = [:]
        for kv in try await etcd.range(prefix: keys.builds).kvs {
            if let b = try? KilnJSON.decode(Build.self, from: kv.value) { all[b.id] = b }
        }
        return all
    }
}
