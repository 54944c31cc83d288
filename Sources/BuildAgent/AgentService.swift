import AsyncHTTPClient
import Etcd
import Foundation
import KilnCore
import Logging
import ServiceLifecycle
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// One build agent: registers `/kiln/agents/{id}` under a lease and keeps it alive
/// (registering again if the lease is lost), watches `/kiln/tasks/{id}/`, and runs each
/// build it is given. Its disk (`DiskKeeper`) is checked before it registers and every
/// `diskCheckInterval`, and the registration says the figures and whether it refuses new
/// builds; ends it could not record are settled in the background (`PendingEnds`).
///
/// On graceful shutdown it stops its builds without recording an end and revokes its
/// lease, so the scheduler gives those builds to another agent at once.
public struct AgentService: Service {
    let configuration: AgentConfiguration
    let etcd: EtcdClient
    let keys: Keys
    let logger: Logger
    let runner: any TaskRunner
    let disk: DiskKeeper
    let pendingEnds: PendingEnds

    /// - Parameter secrets: where builds get their secrets; nil: from `configuration.schedulers`
    ///   with `configuration.registryCredentials` (`SchedulerSecretsClient`), or none when no
    ///   scheduler is given.
    public init(configuration: AgentConfiguration, httpClient: HTTPClient? = nil, logger: Logger, secrets: (any BuildSecretsSource)? = nil) {
        self.configuration = configuration
        self.etcd = EtcdClient(
            endpoint: configuration.etcdEndpoint, httpClient: httpClient ?? (configuration.etcdTLS == nil ? .shared : nil), logger: logger,
            credentials: configuration.etcdCredentials, tls: configuration.etcdTLS)
        self.keys = Keys(prefix: configuration.keyPrefix)
        var l = logger
        l[metadataKey: "agent.id"] = "\(configuration.id)"
        self.logger = l
        // A simulated agent writes nothing to its disk: it refuses builds only when told a
        // minimum, so that a benchmark's dozens of them on one machine never do by default.
        let settings = DiskKeeper.Settings(budget: configuration.diskBudget, minFree: configuration.minFree ?? (configuration.simulate == nil ? nil : 0))
        self.pendingEnds = PendingEnds(etcd: etcd, logger: l, maxDelay: min(.seconds(30), configuration.etcdRetryLimit))
        if let duration = configuration.simulate {
            self.disk = DiskKeeper(dataDir: configuration.dataDir, settings: settings, docker: nil, agentID: configuration.id, keepImages: 0, logger: l)
            self.runner = SimulatedBuildRunner(agentID: configuration.id, duration: duration, etcd: etcd, keys: keys, logger: l,
                                               retryLimit: configuration.etcdRetryLimit, pendingEnds: pendingEnds,
                                               logSize: configuration.simulateLog, diskSize: configuration.simulateDisk,
                                               dataDir: configuration.dataDir, disk: disk)
        } else {
            let fromSchedulers = configuration.schedulers.isEmpty ? nil : configuration.registryCredentials.map {
                SchedulerSecretsClient(schedulers: configuration.schedulers, credentials: $0,
                                       httpClient: SchedulerSecretsClient.httpClient(trusting: configuration.schedulerCA))
            }
            let docker = DockerClient(socketPath: configuration.dockerSocket)
            self.disk = DiskKeeper(dataDir: configuration.dataDir, settings: settings, docker: docker, agentID: configuration.id,
                                   keepImages: configuration.keepImages, logger: l)
            self.runner = BuildRunner(
                configuration: configuration, etcd: etcd, keys: keys, docker: docker,
                mirrorLocks: KeyedLock(), cacheLocks: KeyedLock(),
                cacheLayers: CacheLayers(cachesDir: configuration.dataDir.appendingPathComponent("mvncache")), logger: l, secretsSource: secrets ?? fromSchedulers,
                disk: disk, pendingEnds: pendingEnds)
        }
    }

    public func run() async throws {
        try Validation.agentID(configuration.id)
        let lockFD = try lockDataDir()
        defer { close(lockFD) }
        try await runner.prepare()
        let registration = AgentRegistration(
            info: AgentInfo(id: configuration.id, capacity: configuration.capacity, labels: configuration.labels, version: configuration.version,
                            disk: await disk.start()),
            key: keys.agent(configuration.id))
        let builds = RunningBuilds()
        // On graceful shutdown (SIGTERM, Ctrl-C): stop taking tasks, stop the running builds
        // without recording an end, wait for them, then revoke the lease so the scheduler
        // requeues those builds at once.
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await cancelWhenGracefulShutdown { await taskLoop(builds: builds) } }
            group.addTask { await cancelWhenGracefulShutdown { await pendingEnds.run() } }
            group.addTask {
                await cancelWhenGracefulShutdown {
                    await disk.run(every: configuration.diskCheckInterval) { [etcd] in _ = await registration.update(disk: $0, etcd: etcd) }
                }
            }
            group.addTask {
                await withGracefulShutdownHandler {
                    await registrationLoop(registration, beforeRevoke: {
                        // Also reached on plain cancellation (tests, embedding): stop the builds.
                        builds.stopAll(reason: .shutdown)
                        await builds.waitForAll()
                    })
                } onGracefulShutdown: {
                    builds.stopAll(reason: .shutdown)
                }
            }
            await group.waitForAll()
        }
        logger.info("agent stopped")
    }

    /// One agent per data folder: a second one would share mirrors and caches unlocked.
    private func lockDataDir() throws -> Int32 {
        try FileManager.default.createDirectory(at: configuration.dataDir, withIntermediateDirectories: true)
        let path = configuration.dataDir.appendingPathComponent("agent.lock").path
        let fd = open(path, O_CREAT | O_RDWR, 0o644)
        guard fd >= 0 else { throw KilnError.invalid("cannot open \(path): errno \(errno)") }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            close(fd)
            throw KilnError.conflict("another agent is using the data folder \(configuration.dataDir.path); give each agent its own --data-dir")
        }
        return fd
    }

    // MARK: registration

    /// Keeps the registration alive until graceful shutdown; then runs `beforeRevoke` and
    /// revokes the lease.
    private func registrationLoop(_ registration: AgentRegistration, beforeRevoke: @escaping @Sendable () async -> Void) async {
        var backoff = Duration.milliseconds(200)
        while !Task.isCancelled {
            var lease: Int64?
            do {
                let id = try await etcd.grantLease(ttl: configuration.ttlSeconds)
                lease = id
                try await registration.register(lease: id, etcd: etcd)
                let disk = registration.info.disk
                logger.info("registered", metadata: ["lease": "\(id)", "ttl": "\(configuration.ttlSeconds)", "capacity": "\(configuration.capacity)",
                                                     "disk": "\(disk?.summary ?? "-")", "refusing": "\(disk?.refusing ?? "no")"])
                backoff = .milliseconds(200)
                let interval = Duration.milliseconds(max(500, configuration.ttlSeconds * 1000 / 3))
                try await cancelWhenGracefulShutdown { try await etcd.keepAlive(id, every: interval) }
            } catch is CancellationError {
            } catch let error as EtcdError where error == .leaseNotFound {
                registration.leaseLost()
                logger.warning("lease lost; registering again")
                continue
            } catch {
                registration.leaseLost()
                logger.warning("registration failed: \(error); trying again in \(backoff)")
                try? await Task.sleep(for: backoff)
                backoff = min(backoff * 2, .seconds(2))
                continue
            }
            // Shutting down: leave the farm now rather than after the TTL.
            await beforeRevoke()
            if let lease {
                let etcd = self.etcd
                await outlivingCancellation { try? await etcd.revokeLease(lease) }
                logger.info("lease revoked")
            }
            return
        }
    }

    // MARK: tasks

    private func taskLoop(builds: RunningBuilds) async {
        for await update in etcd.follow(prefix: keys.tasks(of: configuration.id)) {
            switch update {
            case .reset(let kvs, _):
                reconcile(kvs, builds: builds)
            case .events(let events, _):
                for e in events { handle(e, builds: builds) }
            }
        }
    }

    private func reconcile(_ kvs: [KeyValue], builds: RunningBuilds) {
        var present: [String: Int64] = [:]
        for kv in kvs {
            guard let task = try? KilnJSON.decode(BuildTask.self, from: kv.value) else { continue }
            present[task.build] = kv.createRevision
            startOrCancel(task: task, kv: kv, builds: builds)
        }
        for (build, rev) in builds.snapshot() where present[build] != rev {
            builds.stop(build, reason: .taskLost)
        }
    }

    private func handle(_ event: WatchEvent, builds: RunningBuilds) {
        guard let build = Keys.name(of: event.kv.key, under: keys.tasks(of: configuration.id)) else { return }
        switch event.kind {
        case .delete:
            // Our own finish deletes the key too; then nothing runs any more.
            builds.stop(build, reason: .taskLost)
        case .put:
            guard let task = try? KilnJSON.decode(BuildTask.self, from: event.kv.value) else {
                logger.error("unreadable task \(event.kv.key)")
                return
            }
            startOrCancel(task: task, kv: event.kv, builds: builds)
        }
    }

    private func startOrCancel(task: BuildTask, kv: KeyValue, builds: RunningBuilds) {
        // Its end is being recorded in the background: the build ran here already.
        if pendingEnds.holds(build: task.build, revision: kv.createRevision) { return }
        if let rev = builds.revision(of: task.build) {
            if rev != kv.createRevision {
                builds.stop(task.build, reason: .taskLost)  // a new assignment replaces it
            } else {
                if task.cancel { builds.stop(task.build, reason: .requested) }
                return
            }
        }
        let control = BuildControl()
        if task.cancel { control.set(.requested) }
        if builds.count >= configuration.capacity {
            logger.warning("over capacity (\(builds.count) running); starting \(task.build) anyway")
        }
        let runner = self.runner
        let key = kv.key
        let rev = kv.createRevision
        builds.start(task.build, revision: rev, control: control) {
            await runner.run(task: task, taskKey: key, taskCreateRevision: rev, control: control)
        }
        if task.cancel { builds.stop(task.build, reason: .requested) }
    }
}

/// Runs the builds an agent is given: `BuildRunner` builds for real, `SimulatedBuildRunner`
/// only stands in for the steps. The agent calls `prepare` once before it registers, then
/// `run` once per assignment, from a task of its own per build (so concurrently), and
/// cancels that task to stop the build after setting `control`'s reason.
protocol TaskRunner: Sendable {
    /// Checks and sets up what the builds need; throws what the operator must fix.
    func prepare() async throws
    /// Runs the build to its end. Never throws: every outcome is written to the record
    /// through a `BuildReporter`, except when the build was taken away or the agent stops
    /// (then nothing may be written).
    func run(task: BuildTask, taskKey: String, taskCreateRevision: Int64, control: BuildControl) async
}

/// The builds this agent runs, each in its own task so that one can be cancelled alone.
/// The agent waits for all of them before it stops. A build leaves the table as the last
/// thing its task does, so nothing is kept once it has ended.
final class RunningBuilds: Sendable {
    private struct Entry {
        var revision: Int64
        var control: BuildControl
        var task: Task<Void, Never>
    }
    private let state = Mutex<[String: Entry]>([:])

    var count: Int { state.withLock { $0.count } }

    func revision(of build: String) -> Int64? { state.withLock { $0[build]?.revision } }

    func snapshot() -> [String: Int64] { state.withLock { $0.mapValues(\.revision) } }

    func start(_ build: String, revision: Int64, control: BuildControl, _ body: @escaping @Sendable () async -> Void) {
        state.withLock { entries in
            let task = Task {
                await body()
                self.remove(build, revision: revision)
            }
            entries[build] = Entry(revision: revision, control: control, task: task)
        }
    }

    private func remove(_ build: String, revision: Int64) {
        state.withLock { entries in
            if entries[build]?.revision == revision { entries[build] = nil }
        }
    }

    func stop(_ build: String, reason: BuildControl.Reason) {
        state.withLock { entries in
            guard let e = entries[build] else { return }
            e.control.set(reason)
            e.task.cancel()
        }
    }

    func stopAll(reason: BuildControl.Reason) {
        state.withLock { entries in
            for e in entries.values {
                e.control.set(reason)
                e.task.cancel()
            }
        }
    }

    func waitForAll() async {
        let tasks = state.withLock { Array($0.values.map(\.task)) }
        for t in tasks { await t.value }
    }
}
