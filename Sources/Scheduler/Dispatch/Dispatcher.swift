import Etcd
import Foundation
import KilnCore
import Logging
import ServiceLifecycle
import Synchronization

/// Assigns queued builds to live agents, in the one scheduler that leads.
///
/// Every `kiln scheduler` campaigns for `/kiln/leader` (``LeaderElection``); the leader
/// reads `/kiln/agents/`, `/kiln/queue/`, `/kiln/tasks/` and `/kiln/projects/` once, then
/// follows their watches (no polling) into a ``DispatchState``, which decides; this service
/// performs each decision as one etcd transaction guarded by revisions and by the leader's
/// term, and feeds the outcome back. Changes that arrive while decisions are under way are
/// applied together before the next `decide()`. Actions run concurrently, so etcd commits
/// many in one disk sync.
///
/// When leadership is lost (lease not renewed for its TTL, key gone), dispatching stops at
/// once and the process campaigns again; on graceful shutdown the leader resigns so another
/// scheduler takes over without waiting for the TTL.
public struct Dispatcher: Service {
    public struct Configuration: Sendable {
        /// After this many attempts (each ended by its agent dying) a build fails.
        public var maxAttempts: Int
        public var virtualNodes: Int
        /// `c` of bounded loads: no agent runs more than ceil(c × average) builds.
        public var loadFactor: Double
        /// Seconds a build that would go cold waits for its home or an agent warm for its
        /// project to have room (delay scheduling, `DispatchState` rule 4a); 0: no wait. Small
        /// against what a cold build costs (a full clone and an empty dependency cache: 1.6 s
        /// more for the demo's Maven compile alone, minutes for a large project).
        public var warmWait: Double
        /// This scheduler's name in the election.
        public var id: String
        /// Lease TTL of the leader key: a dead leader is replaced within it.
        public var leaderTTLSeconds: Int64
        /// How often the leader sweeps push grants of ended tasks and looks for builds their
        /// agent gave up without recording an end (`Dispatcher+Grants.swift`).
        public var sweepInterval: Duration
        /// How long such an ownerless build is left for its agent's own end to get through
        /// before the leader requeues or fails it (`OwnerlessBuilds`).
        public var ownerlessGrace: Duration

        /// The default of `warmWait`, in seconds.
        public static let defaultWarmWait = 1.0

        public init(maxAttempts: Int = 3, virtualNodes: Int = 64, loadFactor: Double = 1.25,
                    warmWait: Double = Configuration.defaultWarmWait,
                    id: String = Dispatcher.defaultID(), leaderTTLSeconds: Int64 = 10,
                    sweepInterval: Duration = .seconds(60), ownerlessGrace: Duration = .seconds(60)) {
            self.maxAttempts = maxAttempts
            self.virtualNodes = virtualNodes
            self.loadFactor = loadFactor
            self.warmWait = warmWait
            self.id = id
            self.leaderTTLSeconds = leaderTTLSeconds
            self.sweepInterval = sweepInterval
            self.ownerlessGrace = ownerlessGrace
        }
    }

    /// `hostname-pid`: unique among the schedulers of a farm.
    public static func defaultID() -> String {
        "\(ProcessInfo.processInfo.hostName)-\(ProcessInfo.processInfo.processIdentifier)"
    }

    let store: SchedulerStore
    let configuration: Configuration
    let logger: Logger
    public let election: LeaderElection

    /// Runs post-build pipelines while this scheduler leads (nil: none run here).
    let pipelines: PipelineService?
    /// Other work only the leader does (deploy discovery), each run while it leads and
    /// cancelled when the term ends.
    let leaderTasks: [@Sendable () async -> Void]
    /// Moves ended builds' logs into the log archive while this scheduler leads (nil: none).
    let logArchiver: LogArchiver?

    public init(store: SchedulerStore, configuration: Configuration = .init(), pipelines: PipelineService? = nil,
                leaderTasks: [@Sendable () async -> Void] = [], logArchiver: LogArchiver? = nil, logger: Logger) {
        self.store = store
        self.configuration = configuration
        self.pipelines = pipelines
        self.leaderTasks = leaderTasks
        self.logArchiver = logArchiver
        var l = logger
        l[metadataKey: "scheduler.id"] = "\(configuration.id)"
        self.logger = l
        self.election = LeaderElection(etcd: store.etcd, key: store.keys.leader, id: configuration.id,
                                       ttlSeconds: configuration.leaderTTLSeconds, logger: l)
    }

    var etcd: EtcdClient { store.etcd }
    var keys: Keys { store.keys }

    public func run() async throws {
        await cancelWhenGracefulShutdown {
            var backoff = Duration.milliseconds(200)
            while !Task.isCancelled {
                let term: LeaderElection.Term
                do {
                    term = try await election.campaign()
                    backoff = .milliseconds(200)
                } catch {
                    if Task.isCancelled { return }
                    logger.warning("campaign for leader failed: \(error); trying again in \(backoff)")
                    try? await Task.sleep(for: backoff)
                    backoff = min(backoff * 2, .seconds(2))
                    continue
                }
                await lead(term)
                await election.resign(term)
            }
        }
    }

    /// What the dispatch loop is told.
    enum Input: Sendable {
        case reset(DispatchState.Prefix, [KeyValue], revision: Int64)
        case events(DispatchState.Prefix, [WatchEvent], revision: Int64)
        case finished(DispatchState.Action, DispatchState.Outcome)
        case retryRefused
        case wake
        case leadershipLost
    }

    /// Dispatches until the term ends or the task is cancelled.
    func lead(_ term: LeaderElection.Term) async {
        let inbox = Inbox<Input>()
        var state = DispatchState(keys: keys, loadFactor: configuration.loadFactor, virtualNodes: configuration.virtualNodes,
                                  warmWait: configuration.warmWait)
        let fence = [election.fence(term)]
        await withDiscardingTaskGroup { group in
            group.addTask {
                do { try await election.hold(term) } catch { logger.warning("leader lease: \(error)") }
                inbox.push(.leadershipLost)
            }
            if let pipelines {
                group.addTask { await pipelines.lead(term: "\(configuration.id)/\(term.createRevision)", fence: fence) }
            }
            for task in leaderTasks { group.addTask { await task() } }
            if let logArchiver { group.addTask { await logArchiver.lead(fence: fence) } }
            group.addTask { await sweepGrantsWhileLeading(fence: fence) }
            for p in DispatchState.Prefix.allCases {
                let prefix = state.prefix(p)
                group.addTask { await follow(p, prefix: prefix, into: inbox) }
            }
            group.addTask {
                // A safety net for a guard that failed on a change no watch shows; not a poll
                // of etcd: it only lets the state try refused builds again.
                while (try? await Task.sleep(for: .seconds(5))) != nil { inbox.push(.retryRefused) }
            }
            var ready = Set<DispatchState.Prefix>()
            let clock = ContinuousClock(), start = clock.now
            var wakeAt: Double?
            loop: for await inputs in inbox.batches {
                for input in inputs {
                    switch input {
                    case .reset(let p, let kvs, let revision):
                        state.reset(p, kvs: kvs, revision: revision)
                        ready.insert(p)
                    case .events(let p, let events, let revision):
                        state.apply(p, events: events, revision: revision)
                    case .finished(let action, let outcome):
                        state.finished(action, outcome)
                    case .retryRefused:
                        state.retryRefused()
                    case .wake:
                        wakeAt = nil
                    case .leadershipLost:
                        break loop
                    }
                }
                guard ready.count == DispatchState.Prefix.allCases.count else { continue }
                let now = clock.now - start
                for action in state.decide(now: now.inSeconds) {
                    group.addTask {
                        let outcome = await perform(action, fence: fence)
                        inbox.push(.finished(action, outcome))
                    }
                }
                if let wake = state.nextWake, wake < (wakeAt ?? .infinity) {
                    // A held build's time runs out then (a lagging view, or a wait for a warm
                    // agent): decide again even if nothing arrives.
                    wakeAt = wake
                    group.addTask {
                        try? await Task.sleep(until: start + .milliseconds(Int64((wake * 1000).rounded(.up)) + 1), clock: clock)
                        inbox.push(.wake)
                    }
                }
            }
            group.cancelAll()
        }
    }

    /// Follows `prefix` into `inbox` (a reset first, and again whenever the follow reads anew).
    private func follow(_ p: DispatchState.Prefix, prefix: String, into inbox: Inbox<Input>) async {
        for await update in etcd.follow(prefix: prefix) {
            switch update {
            case .events(let events, let revision): inbox.push(.events(p, events, revision: revision))
            case .reset(let kvs, let revision): inbox.push(.reset(p, kvs, revision: revision))
            }
        }
    }

    // MARK: actions

    /// Performs one decision. Never throws: an etcd error is `.failed`, after a short pause
    /// so that a farm with etcd down does not spin.
    public func perform(_ action: DispatchState.Action, fence: [Compare]) async -> DispatchState.Outcome {
        do {
            switch action {
            case .assign(let a): return try await assign(a, fence: fence)
            case .requeue(let t): return try await requeue(t, fence: fence)
            case .noteWaiting(let build, let reason): return try await noteWaiting(build, reason, fence: fence)
            case .fail(let q, let reason): return try await fail(q, reason: reason, fence: fence)
            }
        } catch {
            if !Task.isCancelled {
                logger.warning("dispatch action failed: \(error)", metadata: ["build.id": "\(action.build)"])
                try? await Task.sleep(for: .milliseconds(500))
            }
            return .failed
        }
    }

    /// Moves one build from the queue to an agent in one transaction, which writes nothing
    /// if the agent registered again or left, the queue entry or the record changed, the
    /// build already has a task there, or this scheduler no longer leads.
    func assign(_ a: DispatchState.Assignment, fence: [Compare]) async throws -> DispatchState.Outcome {
        let id = a.queued.entry.build
        // The entry carries the record as it was queued: no read on the way to the agent. The
        // transaction checks that the record has not changed since (same mod revision as the
        // entry). An entry without one (queued by an older Kiln) reads the record.
        var build: Build
        let buildModRevision: Int64
        if let record = a.queued.entry.record {
            build = record
            buildModRevision = a.queued.modRevision
        } else if let buildKV = try await etcd.get(keys.build(id)), let record = try? KilnJSON.decode(Build.self, from: buildKV.value) {
            build = record
            buildModRevision = buildKV.modRevision
        } else {
            // A queue entry without a record cannot be built: drop it, guarded by its revision.
            let r = try await etcd.txn(Txn(compare: fence + [.modRevision(a.queued.key, .equal, a.queued.modRevision)], success: [.delete(a.queued.key)]))
            logger.warning("dropped queue entry \(id): its build record is missing")
            return r.succeeded ? .done(revision: r.revision, effects: [.init(kind: .delete, kv: .init(key: a.queued.key, value: [], modRevision: r.revision))]) : .refused
        }
        build.assign(to: a.agent)
        let task = BuildTask(build: build.id, project: a.project.forTask, ref: build.ref, commit: build.commit, tag: build.tag,
                             mvncache: build.mvncache, attempt: build.attempt)
        let taskKey = keys.task(agent: a.agent, build: build.id)
        let taskValue = try KilnJSON.encode(task)
        let r = try await etcd.txn(Txn(
            compare: fence + [
                .createRevision(keys.agent(a.agent), .equal, a.agentCreateRevision),
                .modRevision(a.queued.key, .equal, a.queued.modRevision),
                .modRevision(keys.build(id), .equal, buildModRevision),
                .createRevision(taskKey, .equal, 0),
            ],
            success: [.put(taskKey, taskValue), .delete(a.queued.key), .put(keys.build(id), try KilnJSON.encode(build)),
                      .put(keys.grant(agent: a.agent, build: build.id), BuildGrant(repository: a.project.repositoryName, ref: build.protectionRef).value)]))
        guard r.succeeded else {
            if a.queued.entry.record != nil {
                // Perhaps only the carried record was stale (written by something that does not
                // keep the entry in step): try once more with the record as it is.
                var reading = a
                reading.queued.entry.record = nil
                return try await assign(reading, fence: fence)
            }
            return .refused
        }
        logger.info("assigned", metadata: ["build.id": "\(build.id)", "project": "\(a.project.name)", "agent.id": "\(a.agent)", "attempt": "\(build.attempt)"])
        return .done(revision: r.revision, effects: [
            .init(kind: .put, kv: .init(key: taskKey, value: Array(taskValue.utf8), createRevision: r.revision, modRevision: r.revision, version: 1)),
            .init(kind: .delete, kv: .init(key: a.queued.key, value: [], modRevision: r.revision)),
        ])
    }

    /// Gives a dead agent's build back to the queue, or fails it after `maxAttempts`.
    func requeue(_ t: DispatchState.TaskEntry, fence: [Compare]) async throws -> DispatchState.Outcome {
        let id = t.build
        let deleteTask = WatchEvent(kind: .delete, kv: .init(key: t.key, value: []))
        guard let buildKV = try await etcd.get(keys.build(id)),
              var build = try? KilnJSON.decode(Build.self, from: buildKV.value) else {
            let r = try await etcd.txn(Txn(compare: fence + [.modRevision(t.key, .equal, t.modRevision), .createRevision(keys.agent(t.agent), .equal, 0)],
                                           success: [.delete(t.key), .delete(keys.grant(agent: t.agent, build: id))]))
            return r.succeeded ? .done(revision: r.revision, effects: [deleteTask]) : .refused
        }
        var ops: [TxnOp] = [.delete(t.key), .delete(keys.grant(agent: t.agent, build: id))]
        var queueEntry: (key: String, value: String)?
        switch build.agentLost(t.agent, maxAttempts: configuration.maxAttempts, at: Date()) {
        case .alreadyFinal:
            break  // only the task key was left behind
        case .ended(let end):
            ops += [.put(keys.build(id), try KilnJSON.encode(build)), try store.putLogEnd(end, of: id)]
        case .requeued(let line):
            let entry = (key: keys.queued(id), value: try KilnJSON.encode(QueueEntry(queuing: build)))
            queueEntry = entry
            ops += [.put(keys.build(id), try KilnJSON.encode(build)), .put(entry.key, entry.value), try store.putLogEnd(line, of: id)]
        }
        // The agent must really be gone: each prefix has its own watch, so the view of the
        // agents may lag behind that of the tasks (a task for an agent this view has not seen
        // register yet).
        let r = try await etcd.txn(Txn(
            compare: fence + [.modRevision(t.key, .equal, t.modRevision), .modRevision(buildKV.key, .equal, buildKV.modRevision),
                              .createRevision(keys.agent(t.agent), .equal, 0)],
            success: ops))
        guard r.succeeded else { return .refused }
        logger.warning("requeued", metadata: ["build.id": "\(id)", "agent.id": "\(t.agent)", "status": "\(build.status.rawValue)"])
        var effects = [deleteTask]
        if let queueEntry {
            effects.append(.init(kind: .put, kv: .init(key: queueEntry.key, value: Array(queueEntry.value.utf8), createRevision: r.revision, modRevision: r.revision, version: 1)))
        }
        return .done(revision: r.revision, effects: effects)
    }

    /// Records why a queued build waits (only if it still waits, for another reason).
    /// The record and the queue entry are written together (the entry carries the record).
    func noteWaiting(_ id: String, _ reason: String, fence: [Compare]) async throws -> DispatchState.Outcome {
        guard let kv = try await etcd.get(keys.build(id)), var build = try? KilnJSON.decode(Build.self, from: kv.value),
              build.status == .queued, build.waiting != reason,
              let queueKV = try await etcd.get(keys.queued(id)) else { return .refused }
        build.waiting = reason
        let entry = try KilnJSON.encode(QueueEntry(queuing: build))
        let r = try await etcd.txn(Txn(
            compare: fence + [.modRevision(kv.key, .equal, kv.modRevision), .modRevision(queueKV.key, .equal, queueKV.modRevision)],
            success: [.put(kv.key, try KilnJSON.encode(build)), .put(queueKV.key, entry)]))
        guard r.succeeded else { return .refused }
        logger.notice("build waits", metadata: ["build.id": "\(id)", "reason": "\(reason)"])
        return .done(revision: r.revision, effects: [
            .init(kind: .put, kv: .init(key: queueKV.key, value: Array(entry.utf8), createRevision: queueKV.createRevision, modRevision: r.revision, version: queueKV.version + 1)),
        ])
    }

    /// Ends a queued build that cannot run.
    func fail(_ q: DispatchState.Queued, reason: String, fence: [Compare]) async throws -> DispatchState.Outcome {
        let dropQueue = WatchEvent(kind: .delete, kv: .init(key: q.key, value: []))
        guard let buildKV = try await etcd.get(keys.build(q.entry.build)),
              var build = try? KilnJSON.decode(Build.self, from: buildKV.value) else {
            let r = try await etcd.txn(Txn(compare: fence + [.modRevision(q.key, .equal, q.modRevision)], success: [.delete(q.key)]))
            return r.succeeded ? .done(revision: r.revision, effects: [dropQueue]) : .refused
        }
        let end = build.failBeforeStart(reason, at: Date())
        // The project must really be gone: the view of the projects may lag behind that of the
        // queue (a build queued right after its project was added).
        let r = try await etcd.txn(Txn(
            compare: fence + [.modRevision(q.key, .equal, q.modRevision), .modRevision(buildKV.key, .equal, buildKV.modRevision),
                              .version(keys.project(q.entry.project), .equal, 0)],
            success: [.delete(q.key), .put(buildKV.key, try KilnJSON.encode(build)),
                      try store.putLogEnd(end, of: build.id)]))
        guard r.succeeded else { return .refused }
        logger.warning("failed before it started", metadata: ["build.id": "\(build.id)", "reason": "\(reason)"])
        return .done(revision: r.revision, effects: [dropQueue])
    }
}

/// A mailbox many tasks push into and one loop drains: each batch is everything pushed
/// since the last one, so a burst of changes makes one decision, not one per change.
final class Inbox<Element: Sendable>: Sendable {
    private let items = Mutex<[Element]>([])
    private let signal: AsyncStream<Void>
    private let continuation: AsyncStream<Void>.Continuation

    init() {
        (signal, continuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    func push(_ element: Element) {
        items.withLock { $0.append(element) }
        continuation.yield()
    }

    /// Batches until the consuming task is cancelled.
    var batches: AsyncCompactMapSequence<AsyncStream<Void>, [Element]> {
        signal.compactMap { [self] in
            let batch = take()
            return batch.isEmpty ? nil : batch
        }
    }

    private func take() -> [Element] {
        items.withLock { all in
            let b = all
            all.removeAll(keepingCapacity: true)
            return b
        }
    }
}
