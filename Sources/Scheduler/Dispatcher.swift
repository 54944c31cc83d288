import Etcd
import Foundation
import KilnCore
import Logging
import ServiceLifecycle
import Synchronization

/// Assigns queued builds to live agents.
///
/// Driven by watches on `/kiln/agents/`, `/kiln/queue/` and `/kiln/tasks/`: any change
/// wakes one reconcile pass, and changes that arrive during a pass coalesce into the next.
/// A pass reads the three prefixes, gives the tasks of agents that are gone back to the
/// queue (counting the attempt), and assigns each queued build, oldest first, to the first
/// agent with room along the hash ring from its project. Every assignment is one
/// transaction that fails if the agent, the queue entry or the build changed meanwhile.
public struct Dispatcher: Service {
    public struct Configuration: Sendable {
        /// After this many attempts (each ended by its agent dying) a build fails.
        public var maxAttempts: Int
        public var virtualNodes: Int
        /// `c` of bounded loads: no agent runs more than ceil(c × average) builds.
        public var loadFactor: Double
        public init(maxAttempts: Int = 3, virtualNodes: Int = 64, loadFactor: Double = 1.25) {
            self.maxAttempts = maxAttempts
            self.virtualNodes = virtualNodes
            self.loadFactor = loadFactor
        }
    }

    let store: SchedulerStore
    let configuration: Configuration
    let logger: Logger
    /// When each project last got a build assigned, for fair turns (kept in memory: a new
    /// leader starts with none, which only makes its first turns by age).
    let lastServed = ServedTimes()

    public init(store: SchedulerStore, configuration: Configuration = .init(), logger: Logger) {
        self.store = store
        self.configuration = configuration
        self.logger = logger
    }

    var etcd: EtcdClient { store.etcd }
    var keys: Keys { store.keys }

    public func run() async throws {
        let (signals, continuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        continuation.yield()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for prefix in [keys.agents, keys.queue, keys.tasks] {
                group.addTask {
                    while !Task.isCancelled {
                        do {
                            for try await _ in etcd.watch(prefix: prefix) { continuation.yield() }
                        } catch is CancellationError {
                            return
                        } catch {
                            logger.warning("watch of \(prefix) ended: \(error); watching again")
                            try? await Task.sleep(for: .milliseconds(500))
                        }
                    }
                }
            }
            group.addTask {
                for await _ in signals.cancelOnGracefulShutdown() {
                    do {
                        try await reconcile()
                    } catch is CancellationError {
                        return
                    } catch {
                        logger.warning("dispatch pass failed: \(error); trying again")
                        try? await Task.sleep(for: .milliseconds(500))
                        continuation.yield()
                    }
                }
            }
            // The dispatch loop ends on graceful shutdown; then stop the watches.
            try await group.next()
            group.cancelAll()
            continuation.finish()
        }
    }

    /// One pass: requeue the work of dead agents, then assign what is queued.
    public func reconcile() async throws {
        let agentKVs = try await etcd.range(prefix: keys.agents).kvs
        var agents: [String: (info: AgentInfo, createRevision: Int64)] = [:]
        for kv in agentKVs {
            if let info = try? KilnJSON.decode(AgentInfo.self, from: kv.value) { agents[info.id] = (info, kv.createRevision) }
        }
        var load: [String: Int] = [:]
        for kv in try await etcd.range(prefix: keys.tasks).kvs {
            guard let owner = keys.taskOwner(kv.key) else { continue }
            if agents[owner.agent] == nil {
                try await requeue(taskKV: kv, agent: owner.agent, build: owner.build)
            } else {
                load[owner.agent, default: 0] += 1
            }
        }

        var entries: [String: (QueueEntry, KeyValue)] = [:]
        for kv in try await etcd.range(prefix: keys.queue).kvs {
            if let e = try? KilnJSON.decode(QueueEntry.self, from: kv.value) { entries[e.build] = (e, kv) }
        }
        let queue = FairQueue.order(entries.values.map { .init(build: $0.0.build, project: $0.0.project, priority: $0.0.priority ?? 0, queuedAt: $0.0.queuedAt) },
                                    lastServed: lastServed.snapshot)
            .compactMap { entries[$0.build] }
        guard !queue.isEmpty, !agents.isEmpty else { return }

        let ring = HashRing(members: agents.values.map { .init(id: $0.info.id, weight: $0.info.capacity) }, virtualNodes: configuration.virtualNodes)
        // One read of the projects serves every assignment of this pass.
        var projects: [String: Project] = [:]
        for kv in try await etcd.range(prefix: keys.projects).kvs {
            if let p = try? KilnJSON.decode(Project.self, from: kv.value) { projects[p.name] = p }
        }
        let labelSets = agents.mapValues { Set($0.info.labels) }
        for (entry, queueKV) in queue {
            let wanted = projects[entry.project]?.labels ?? []
            let carries: (String) -> Bool = { id in wanted.allSatisfy { labelSets[id]?.contains($0) == true } }
            if !wanted.isEmpty && !agents.keys.contains(where: carries) {
                try await noteWaiting(entry.build, "no live agent has the labels \(wanted.joined(separator: ","))")
                continue
            }
            guard let agent = ring.pick(entry.project, loads: load, c: configuration.loadFactor, eligible: carries) else {
                continue  // every eligible agent is at its bound; a finishing build wakes us
            }
            if try await assign(entry: entry, queueKV: queueKV, project: projects[entry.project], agent: agent,
                                agentCreateRevision: agents[agent]!.createRevision) {
                load[agent, default: 0] += 1
                lastServed.mark(entry.project)
            }
        }
    }

    /// Records why a queued build waits, once (only when the reason changes).
    func noteWaiting(_ id: String, _ reason: String) async throws {
        guard let kv = try await etcd.get(keys.build(id)), var build = try? KilnJSON.decode(Build.self, from: kv.value),
              build.status == .queued, build.waiting != reason else { return }
        build.waiting = reason
        _ = try await etcd.txn(Txn(compare: [.modRevision(kv.key, .equal, kv.modRevision)], success: [.put(kv.key, try KilnJSON.encode(build))]))
        logger.notice("build waits", metadata: ["build.id": "\(id)", "reason": "\(reason)"])
    }

    /// Moves one build from the queue to an agent, with `project` as read in this pass (nil:
    /// it no longer exists). False if anything changed meanwhile (the next pass sees the new
    /// state).
    func assign(entry: QueueEntry, queueKV: KeyValue, project: Project?, agent: String, agentCreateRevision: Int64) async throws -> Bool {
        guard let buildKV = try await etcd.get(keys.build(entry.build)),
              var build = try? KilnJSON.decode(Build.self, from: buildKV.value) else {
            // A queue entry without a record cannot be built: drop it, guarded by its revision.
            _ = try await etcd.txn(Txn(compare: [.modRevision(queueKV.key, .equal, queueKV.modRevision)], success: [.delete(queueKV.key)]))
            logger.warning("dropped queue entry \(entry.build): its build record is missing")
            return false
        }
        guard let project else {
            build.status = .failed
            build.error = "project '\(entry.project)' no longer exists"
            build.finishedAt = Date()
            _ = try await etcd.txn(Txn(
                compare: [.modRevision(queueKV.key, .equal, queueKV.modRevision), .modRevision(buildKV.key, .equal, buildKV.modRevision)],
                success: [.delete(queueKV.key), .put(buildKV.key, try KilnJSON.encode(build))]))
            return false
        }
        build.status = .assigned
        build.waiting = nil
        build.agent = agent
        build.attempt += 1
        let task = BuildTask(build: build.id, project: project, ref: build.ref, commit: build.commit, tag: build.tag,
                             mvncache: build.mvncache, attempt: build.attempt)
        let taskKey = keys.task(agent: agent, build: build.id)
        let r = try await etcd.txn(Txn(
            compare: [
                .createRevision(keys.agent(agent), .equal, agentCreateRevision),
                .modRevision(queueKV.key, .equal, queueKV.modRevision),
                .modRevision(buildKV.key, .equal, buildKV.modRevision),
                .createRevision(taskKey, .equal, 0),
            ],
            success: [.put(taskKey, try KilnJSON.encode(task)), .delete(queueKV.key), .put(buildKV.key, try KilnJSON.encode(build))]))
        if r.succeeded {
            logger.info("assigned", metadata: ["build.id": "\(build.id)", "project": "\(entry.project)", "agent.id": "\(agent)", "attempt": "\(build.attempt)"])
        }
        return r.succeeded
    }

    /// Gives a dead agent's build back to the queue, or fails it after `maxAttempts`.
    func requeue(taskKV: KeyValue, agent: String, build id: String) async throws {
        guard let buildKV = try await etcd.get(keys.build(id)),
              var build = try? KilnJSON.decode(Build.self, from: buildKV.value) else {
            _ = try await etcd.txn(Txn(compare: [.modRevision(taskKV.key, .equal, taskKV.modRevision)], success: [.delete(taskKV.key)]))
            return
        }
        var ops: [TxnOp] = [.delete(taskKV.key)]
        let reason = "agent '\(agent)' stopped renewing its lease during attempt \(build.attempt)"
        if build.status.isFinal {
            // Finished already; only the task key was left behind.
        } else if build.cancelRequested == true || build.attempt >= configuration.maxAttempts {
            build.status = build.cancelRequested == true ? .cancelled : .failed
            build.error = build.cancelRequested == true ? "cancelled; \(reason)" : "\(reason); gave up after \(build.attempt) attempts"
            build.finishedAt = Date()
            for i in build.steps.indices where build.steps[i].status == .running || build.steps[i].status == .pending {
                build.steps[i].status = build.steps[i].status == .running ? .failed : .skipped
            }
            let end = LogChunk(seq: 0, lines: ["kiln: \(build.error!)"], end: true)
            ops.append(.put(keys.build(id), try KilnJSON.encode(build)))
            ops.append(.put(keys.logChunk(build: id, attempt: build.attempt, seq: 99_999_999), try KilnJSON.encode(end)))
        } else {
            build.status = .queued
            build.agent = nil
            build.error = reason
            build.steps = StepName.allCases.map { BuildStep(name: $0) }
            let line = LogChunk(seq: 0, lines: ["kiln: \(reason); the build goes back to the queue"], end: false)
            ops.append(.put(keys.build(id), try KilnJSON.encode(build)))
            ops.append(.put(keys.queued(id), try KilnJSON.encode(QueueEntry(build: id, project: build.project, queuedAt: build.createdAt, priority: build.priority))))
            ops.append(.put(keys.logChunk(build: id, attempt: build.attempt, seq: 99_999_999), try KilnJSON.encode(line)))
        }
        let r = try await etcd.txn(Txn(
            compare: [.modRevision(taskKV.key, .equal, taskKV.modRevision), .modRevision(buildKV.key, .equal, buildKV.modRevision)],
            success: ops))
        if r.succeeded {
            logger.warning("requeued", metadata: ["build.id": "\(id)", "agent.id": "\(agent)", "status": "\(build.status.rawValue)"])
        }
    }
}

/// When the dispatcher last served each project (a class, so the `Dispatcher` value can
/// be copied into its tasks and still share it).
final class ServedTimes: Sendable {
    private let times = Mutex<[String: Date]>([:])
    var snapshot: [String: Date] { times.withLock { $0 } }
    func mark(_ project: String) { times.withLock { $0[project] = Date() } }
}
