import Etcd
import Foundation
import KilnCore

/// What the dispatcher knows of the farm, and the decisions it takes from that: a pure
/// state machine, with no I/O and no clock, so every rule is tested without etcd.
///
/// Inputs are what etcd says: the first read of each watched prefix (`reset`), the watch
/// events that follow (`apply`), and how each action it asked for ended (`finished`).
/// `decide()` returns the actions to take now; the ``Dispatcher`` performs them against etcd
/// (each one a transaction guarded by revisions, so a decision taken on a view that is
/// already stale writes nothing) and feeds the outcome back.
///
/// Rules, in order:
/// 1. A task of an agent that is no longer registered goes back to the queue (`requeue`).
/// 2. Queued builds are offered in ``FairQueue`` order: priority, then projects in turns.
/// 3. A build whose project is gone fails. A build whose project asks for labels that no live
///    agent carries, or whose project already runs its `maxConcurrent` builds, waits, and its
///    record says why (written once per reason).
/// 4. Otherwise, among the agents that carry the labels and are below their bounded load
///    (`ceil(c × average)`, never above capacity), it goes to its project's home (the first
///    such agent along the hash ring from the project) if the home is below its bound; else
///    to the first one along the ring that publishes the project as warm (`AgentDisk.warm`:
///    it holds the project's mirror and caches); else to the first one along the ring, cold.
///    When no agent has room, it waits; a finishing build or a new agent wakes the next pass.
/// 4a. Delay scheduling (Zaharia et al., "Delay Scheduling", EuroSys 2010): a build that would
///    go cold (its home and every agent warm for it are at their bound) waits in the queue up
///    to `warmWait` seconds for one of them to free a slot, and only then goes cold. A waiting
///    build holds no slot, so the builds behind it are placed as if it were not there (no
///    head-of-line blocking), and it is placed only under the same bound (never above it).
///    `warmWait` 0 places it cold at once.
/// 5. An agent that refuses new work (`AgentInfo.refusing`: short of disk space) is off the
///    ring, as if it had left, so its projects walk on to the next agents and come back when
///    it takes work again; but it is live, so its tasks stay with it (rule 1 does not apply).
///    A build that only refusing agents could take waits, and its record says why.
/// A build with an action under way is left alone until that action ends, so one view never
/// produces two actions for the same build.
public struct DispatchState: Sendable {
    /// The prefixes the dispatcher watches.
    public enum Prefix: Sendable, CaseIterable {
        case agents, queue, tasks, projects
    }

    public struct Agent: Sendable, Equatable {
        public var id: String
        public var capacity: Int
        public var labels: Set<String>
        /// Changes when the agent registers again: an assignment names the registration it saw.
        public var createRevision: Int64
        /// Why it takes no new builds (rule 5); nil: it takes them.
        public var refusing: String?
        /// The projects it holds warm (rule 4), as published: valid names, at most `AgentDisk.maxWarm`.
        public var warm: Set<String> = []
    }

    public struct Queued: Sendable, Equatable {
        public var entry: QueueEntry
        public var key: String
        public var modRevision: Int64
    }

    public struct TaskEntry: Sendable, Equatable {
        public var key: String
        public var agent: String
        public var build: String
        /// From the task's project snapshot; nil if the value could not be read.
        public var project: String?
        public var modRevision: Int64
    }

    public struct Assignment: Sendable, Equatable {
        public var queued: Queued
        public var project: Project
        public var agent: String
        public var agentCreateRevision: Int64
    }

    public enum Action: Sendable, Equatable {
        /// Give the build to the agent: put its task, delete the queue entry, mark the record.
        case assign(Assignment)
        /// The task's agent is gone: back to the queue with the attempt counted, or failed
        /// after the last attempt.
        case requeue(TaskEntry)
        /// Write on the queued build's record why it waits.
        case noteWaiting(build: String, reason: String)
        /// The build cannot run (its project was deleted): end it with the reason.
        case fail(Queued, reason: String)

        /// The build the action is about.
        public var build: String {
            switch self {
            case .assign(let a): a.queued.entry.build
            case .requeue(let t): t.build
            case .noteWaiting(let b, _): b
            case .fail(let q, _): q.entry.build
            }
        }
    }

    /// How an action ended.
    public enum Outcome: Sendable, Equatable {
        /// Written at `revision`; `effects` are the changes to watched keys it made, applied
        /// at once unless the watch has already delivered that revision (then they are known).
        case done(revision: Int64, effects: [WatchEvent])
        /// The transaction's guard failed: the view was stale. The build is left alone until
        /// the next change arrives.
        case refused
        /// etcd could not be reached or answered an error; the action may be taken again.
        case failed
    }

    public let keys: Keys
    public var loadFactor: Double
    public var virtualNodes: Int

    public private(set) var agents: [String: Agent] = [:]
    public private(set) var queue: [String: Queued] = [:]
    /// By key.
    public private(set) var tasks: [String: TaskEntry] = [:]
    public private(set) var projects: [String: Project] = [:]

    /// The last revision seen for each prefix (a read or an event).
    private var seen: [Prefix: Int64] = [:]
    /// Builds with an action under way (and, for assignments, the agent they go to).
    private var underWay: [String: Action] = [:]
    /// Builds whose action was refused (the view was stale: one watch lags behind another,
    /// or a write raced), left alone until something changes.
    private var refused: Set<String> = []
    /// The reason last written on each waiting build.
    private var noted: [String: String] = [:]
    /// Fair turns: the number of the last assignment, and the one in which each project was
    /// last served. Kept for the life of this state (a new leader starts with none, which
    /// only makes its first turns go by age).
    private var turn = 0
    private var lastServed: [String: Int] = [:]
    private var ring = HashRing()
    private var ringIsStale = true
    /// The agents that hold each project warm (rule 4): `agents`' `warm`, by project.
    public private(set) var warmAgents: [String: Set<String>] = [:]
    /// Builds held back from walking on past a full home because the view of the tasks may
    /// not yet show that home's slot free (see `decide`), with when that began.
    private var heldSince: [String: Double] = [:]
    /// How long a build is held back at most, in seconds.
    public var holdLimit = 0.02
    /// How long a build that would go cold waits for its home or a warm agent (rule 4a), in
    /// seconds; 0: it goes cold at once.
    public var warmWait: Double
    /// When `decide` should run again even if nothing arrives: a held build's time is up.
    public private(set) var nextWake: Double?

    public init(keys: Keys = Keys(), loadFactor: Double = 1.25, virtualNodes: Int = 64, warmWait: Double = 0) {
        self.keys = keys
        self.loadFactor = loadFactor
        self.virtualNodes = virtualNodes
        self.warmWait = max(0, warmWait)
    }

    public func prefix(_ p: Prefix) -> String {
        switch p {
        case .agents: keys.agents
        case .queue: keys.queue
        case .tasks: keys.tasks
        case .projects: keys.projects
        }
    }

    public func prefix(of key: String) -> Prefix? {
        Prefix.allCases.first { key.hasPrefix(prefix($0)) }
    }

    // MARK: inputs

    /// Replaces everything known under `p` with a full read at `revision`.
    public mutating func reset(_ p: Prefix, kvs: [KeyValue], revision: Int64) {
        switch p {
        case .agents: agents = [:]; warmAgents = [:]; ringIsStale = true
        case .queue: queue = [:]
        case .tasks: tasks = [:]
        case .projects: projects = [:]
        }
        for kv in kvs { put(p, kv) }
        seen[p] = revision
        refused.removeAll()
        forgetNotesOfBuildsNotQueued()
    }

    /// Applies events of the watch on `p`, delivered at `revision`.
    public mutating func apply(_ p: Prefix, events: [WatchEvent], revision: Int64) {
        for e in events {
            switch e.kind {
            case .put: put(p, e.kv)
            case .delete: delete(p, e.kv.key)
            }
        }
        seen[p] = max(seen[p] ?? 0, revision)
        if !events.isEmpty { refused.removeAll() }
        if p == .queue { forgetNotesOfBuildsNotQueued() }
    }

    /// Records how an action returned by `decide()` ended.
    public mutating func finished(_ action: Action, _ outcome: Outcome) {
        underWay[action.build] = nil
        switch outcome {
        case .done(let revision, let effects):
            // Apply what the action wrote unless the watch already brought that revision
            // (then these changes, and perhaps later ones to the same keys, are known).
            for e in effects {
                guard let p = prefix(of: e.kv.key), (seen[p] ?? 0) < revision else { continue }
                switch e.kind {
                case .put: put(p, e.kv)
                case .delete: delete(p, e.kv.key)
                }
            }
            if case .assign(let a) = action {
                turn += 1
                lastServed[a.queued.entry.project] = turn
            }
            if case .noteWaiting(let build, let reason) = action { noted[build] = reason }
        case .refused:
            if case .noteWaiting(let build, let reason) = action {
                noted[build] = reason
            } else {
                refused.insert(action.build)
            }
        case .failed:
            break
        }
    }

    /// Lets refused builds be tried again without a change (a safety net for a guard that
    /// failed on something no watch shows, such as a build record written meanwhile).
    public mutating func retryRefused() {
        refused.removeAll()
    }

    private mutating func put(_ p: Prefix, _ kv: KeyValue) {
        switch p {
        case .agents:
            guard let info = try? KilnJSON.decode(AgentInfo.self, from: kv.value),
                  Keys.name(of: kv.key, under: keys.agents) == info.id else { return }
            let agent = Agent(id: info.id, capacity: max(0, info.capacity), labels: Set(info.labels), createRevision: kv.createRevision,
                              refusing: info.refusing, warm: info.disk?.warmProjects ?? [])
            let old = agents[info.id]
            if old?.capacity != agent.capacity || old == nil || (old?.refusing == nil) != (agent.refusing == nil) { ringIsStale = true }
            agents[info.id] = agent
            index(warm: agent.warm, of: info.id, replacing: old?.warm ?? [])
        case .queue:
            guard let entry = try? KilnJSON.decode(QueueEntry.self, from: kv.value) else { return }
            queue[entry.build] = Queued(entry: entry, key: kv.key, modRevision: kv.modRevision)
        case .tasks:
            guard let owner = keys.taskOwner(kv.key) else { return }
            let project = (try? KilnJSON.decode(BuildTask.self, from: kv.value))?.project.name
            tasks[kv.key] = TaskEntry(key: kv.key, agent: owner.agent, build: owner.build, project: project, modRevision: kv.modRevision)
        case .projects:
            guard let project = try? KilnJSON.decode(Project.self, from: kv.value) else { return }
            projects[project.name] = project
        }
    }

    private mutating func delete(_ p: Prefix, _ key: String) {
        switch p {
        case .agents:
            if let id = Keys.name(of: key, under: keys.agents), let old = agents.removeValue(forKey: id) {
                ringIsStale = true
                index(warm: [], of: id, replacing: old.warm)
            }
        case .queue:
            if let id = Keys.name(of: key, under: keys.queue) { queue[id] = nil }
        case .tasks:
            tasks[key] = nil
        case .projects:
            if let name = Keys.name(of: key, under: keys.projects) { projects[name] = nil }
        }
    }

    private mutating func index(warm: Set<String>, of agent: String, replacing old: Set<String>) {
        guard warm != old else { return }
        for p in old.subtracting(warm) {
            warmAgents[p]?.remove(agent)
            if warmAgents[p]?.isEmpty == true { warmAgents[p] = nil }
        }
        for p in warm.subtracting(old) { warmAgents[p, default: []].insert(agent) }
    }

    private mutating func forgetNotesOfBuildsNotQueued() {
        if noted.isEmpty { return }
        noted = noted.filter { queue[$0.key] != nil }
    }

    // MARK: decisions

    /// The actions to take now. Each build named in them is under way until `finished`.
    ///
    /// `now` is a monotonic time in seconds, used only to hold a build back briefly: each
    /// prefix has its own watch, so a build queued right after a task ended can arrive before
    /// that task's end. When such a build would walk on past its home because the home looks
    /// full, and the view of the tasks is older than the build's queue entry, it is held up to
    /// `holdLimit` for the tasks' watch to catch up, rather than leave its cache behind. A build
    /// that would go cold is held up to `warmWait` (rule 4a). Either hold counts from the first
    /// pass that held the build; `nextWake` says when the next one runs out.
    public mutating func decide(now: Double = 0) -> [Action] {
        var actions: [Action] = []

        // 1. Work of agents that are gone.
        for task in tasks.values where agents[task.agent] == nil && underWay[task.build] == nil && !refused.contains(task.build) {
            actions.append(.requeue(task))
        }

        // Load per agent and running builds per project: tasks of live agents plus
        // assignments under way. `total` counts those on the ring (rule 5), which the bounds
        // are shares of.
        var load: [String: Int] = [:]
        var running: [String: Int] = [:]
        var total = 0
        for task in tasks.values {
            guard let agent = agents[task.agent] else { continue }
            load[task.agent, default: 0] += 1
            if let p = task.project { running[p, default: 0] += 1 }
            if agent.refusing == nil { total += 1 }
        }
        for case .assign(let a) in underWay.values {
            load[a.agent, default: 0] += 1
            running[a.project.name, default: 0] += 1
            total += 1
        }
        var free = agents.values.reduce(0) { $0 + ($1.refusing == nil ? max(0, $1.capacity - load[$1.id, default: 0]) : 0) }

        // 2-5. The queue, in fair order.
        let candidates = queue.values.filter { underWay[$0.entry.build] == nil && !refused.contains($0.entry.build) }
        let order = FairQueue.order(
            candidates.map { .init(build: $0.entry.build, project: $0.entry.project, priority: $0.entry.priority ?? 0, queuedAt: $0.entry.queuedAt) },
            lastServed: lastServed)
        if ringIsStale {
            ring = HashRing(members: agents.values.filter { $0.refusing == nil }.map { .init(id: $0.id, weight: $0.capacity) }, virtualNodes: virtualNodes)
            ringIsStale = false
        }
        let agents = self.agents
        nextWake = nil
        heldSince = heldSince.filter { queue[$0.key] != nil }
        // Projects with a build held in this pass, and the hold's limit (see below).
        var heldThisPass: [String: Double] = [:]
        for item in order {
            guard let queued = queue[item.build] else { continue }
            guard let project = projects[item.project] else {
                actions.append(.fail(queued, reason: "project '\(item.project)' no longer exists"))
                continue
            }
            let wanted = project.labels
            let labelled: (String) -> Bool = { id in
                guard let agent = agents[id] else { return false }
                return wanted.allSatisfy { agent.labels.contains($0) }
            }
            let carries: (String) -> Bool = { id in labelled(id) && agents[id]?.refusing == nil }
            var waiting: String?
            if !wanted.isEmpty && !agents.keys.contains(where: labelled) {
                waiting = "no live agent has the labels \(wanted.joined(separator: ","))"
            } else if !agents.isEmpty && !agents.keys.contains(where: carries) {
                waiting = Self.allRefuse(agents.values.filter { labelled($0.id) }, labels: wanted)
            } else if let limit = project.maxConcurrent, running[project.name, default: 0] >= limit {
                waiting = "project '\(project.name)' already runs its limit of \(limit) build\(limit == 1 ? "" : "s") at once"
            }
            if let waiting {
                if noted[item.build] != waiting { actions.append(.noteWaiting(build: item.build, reason: waiting)) }
                continue
            }
            if free <= 0 { continue }  // every agent is full; only failures and notes remain
            if let limit = heldThisPass[project.name] {
                // An earlier build of its project was held in this pass; loads have only grown
                // since, so this one could go only to the same agent or nowhere: held alike,
                // without a walk of the ring (a burst queues thousands of builds of a project).
                let since = heldSince[item.build] ?? now
                if now - since < limit {
                    heldSince[item.build] = since
                    nextWake = min(nextWake ?? .infinity, since + limit)
                    continue
                }
            }
            guard let agent = ring.pick(project.name, loads: load, c: loadFactor, running: total, warm: warmAgents[project.name] ?? [], eligible: carries),
                  let registration = agents[agent] else {
                continue  // every agent it may use is at its bound
            }
            if agent != ring.pick(project.name, accept: carries) {
                // Past its home: held while the tasks' view may lag (a home slot may be free
                // already), and, when the agent is cold for it, while a warm slot may free (4a).
                var limit = (seen[.tasks] ?? 0) < queued.modRevision ? holdLimit : 0
                if warmWait > 0, warmAgents[project.name]?.contains(agent) != true { limit = max(limit, warmWait) }
                let since = heldSince[item.build] ?? now
                if now - since < limit {
                    heldSince[item.build] = since
                    nextWake = min(nextWake ?? .infinity, since + limit)
                    heldThisPass[project.name] = limit
                    continue
                }
            }
            heldSince[item.build] = nil
            actions.append(.assign(Assignment(queued: queued, project: project, agent: agent, agentCreateRevision: registration.createRevision)))
            load[agent, default: 0] += 1
            running[project.name, default: 0] += 1
            total += 1
            free -= 1
        }
        for a in actions { underWay[a.build] = a }
        return actions
    }

    /// Why a build waits when every agent that could take it refuses new work (rule 5).
    static func allRefuse(_ refusing: [Agent], labels: [String]) -> String {
        let who = refusing.sorted { $0.id < $1.id }.prefix(3).map { "\($0.id): \($0.refusing ?? "refusing")" }
        let more = refusing.count > 3 ? "; and \(refusing.count - 3) more" : ""
        let which = labels.isEmpty ? "every live agent" : "every live agent with the labels \(labels.joined(separator: ","))"
        return "\(which) refuses new builds (\(who.joined(separator: "; "))\(more))"
    }
}
