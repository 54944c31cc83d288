import Etcd
import Foundation
import KilnCore
@testable import Scheduler
import Testing

/// The dispatcher's decisions, without etcd: inputs are what the watches would deliver.
@Suite("Dispatch state machine")
struct DispatchStateTests {
    let keys = Keys()
    var revision: Int64 = 100

    mutating func next() -> Int64 {
        revision += 1
        return revision
    }

    func kv(_ key: String, _ value: some Encodable, _ rev: Int64) -> KeyValue {
        KeyValue(key: key, value: Array(try! KilnJSON.encode(value).utf8), createRevision: rev, modRevision: rev, version: 1)
    }

    mutating func agent(_ id: String, capacity: Int = 2, labels: [String] = [], warm: [String]? = nil) -> KeyValue {
        let disk = warm.map { AgentDisk(free: 1 << 40, budget: 1 << 30, used: 0, minFree: 0, warm: $0.map { WarmProject(name: $0, bytes: 1) }) }
        return kv(keys.agent(id), AgentInfo(id: id, capacity: capacity, labels: labels, version: "t", disk: disk), next())
    }

    mutating func queued(_ build: String, _ project: String, at seconds: Double = 0, priority: Int? = nil) -> KeyValue {
        kv(keys.queued(build), QueueEntry(build: build, project: project, queuedAt: Date(timeIntervalSince1970: seconds), priority: priority), next())
    }

    func project(_ name: String, labels: [String] = [], maxConcurrent: Int? = nil) -> Project {
        Project(name: name, repository: "http://127.0.0.1:1/\(name).git", buildImage: "a:1", buildCommand: "make",
                labels: labels, maxConcurrent: maxConcurrent)
    }

    mutating func task(_ agent: String, _ build: String, _ project: Project) -> KeyValue {
        kv(keys.task(agent: agent, build: build), BuildTask(build: build, project: project, ref: "main", commit: nil, tag: nil, mvncache: true, attempt: 1), next())
    }

    /// A state with every prefix read.
    mutating func state(agents: [KeyValue] = [], queue: [KeyValue] = [], tasks: [KeyValue] = [], projects: [Project] = [],
                        warmWait: Double = 0) -> DispatchState {
        var s = DispatchState(keys: keys, warmWait: warmWait)
        s.reset(.agents, kvs: agents, revision: revision)
        s.reset(.queue, kvs: queue, revision: revision)
        s.reset(.tasks, kvs: tasks, revision: revision)
        s.reset(.projects, kvs: projects.map { kv(keys.project($0.name), $0, 1) }, revision: revision)
        return s
    }

    /// What etcd would answer for `action`, as the dispatcher reports it.
    mutating func succeed(_ action: DispatchState.Action, in s: inout DispatchState) {
        let rev = next()
        switch action {
        case .assign(let a):
            let t = task(a.agent, a.queued.entry.build, a.project)
            s.finished(action, .done(revision: rev, effects: [
                .init(kind: .put, kv: KeyValue(key: t.key, value: t.value, createRevision: rev, modRevision: rev, version: 1)),
                .init(kind: .delete, kv: KeyValue(key: a.queued.key, value: [], modRevision: rev)),
            ]))
        case .requeue(let t):
            s.finished(action, .done(revision: rev, effects: [.init(kind: .delete, kv: KeyValue(key: t.key, value: []))]))
        case .noteWaiting, .fail:
            s.finished(action, .done(revision: rev, effects: []))
        }
    }

    func assignments(_ actions: [DispatchState.Action]) -> [String: String] {
        var m: [String: String] = [:]
        for case .assign(let a) in actions { m[a.queued.entry.build] = a.agent }
        return m
    }

    @Test mutating func assignsWithinCapacityAndNeverTwice() {
        let p = project("p")
        var s = state(agents: [agent("a1", capacity: 1), agent("a2", capacity: 1)],
                      queue: [queued("b1", "p", at: 1), queued("b2", "p", at: 2), queued("b3", "p", at: 3)], projects: [p])
        let first = s.decide()
        // Two slots, three builds: the two oldest are placed, one per agent.
        #expect(Set(assignments(first).keys) == ["b1", "b2"])
        #expect(Set(assignments(first).values) == ["a1", "a2"])
        // Deciding again while they are under way changes nothing.
        #expect(s.decide().isEmpty)
        for a in first { succeed(a, in: &s) }
        #expect(s.decide().isEmpty, "both agents are full")
        #expect(s.tasks.count == 2 && s.queue.keys.sorted() == ["b3"])
        // A build ends: its agent takes the third.
        let done = s.tasks.values.first { $0.build == "b1" }!
        s.apply(.tasks, events: [.init(kind: .delete, kv: KeyValue(key: done.key, value: []))], revision: next())
        #expect(assignments(s.decide()) == ["b3": done.agent])
    }

    @Test mutating func aGoneAgentsTasksAreRequeuedOnce() {
        let p = project("p")
        let a1 = agent("a1"), a2 = agent("a2")
        let t1 = task("a1", "b1", p), t2 = task("a2", "b2", p)
        var s = state(agents: [a1, a2], tasks: [t1, t2], projects: [p])
        #expect(s.decide().isEmpty)
        s.apply(.agents, events: [.init(kind: .delete, kv: KeyValue(key: a1.key, value: []))], revision: next())
        let actions = s.decide()
        #expect(actions.count == 1)
        guard case .requeue(let t) = actions.first else { Issue.record("expected a requeue, got \(actions)"); return }
        #expect(t.build == "b1" && t.agent == "a1" && t.modRevision == t1.modRevision)
        #expect(s.decide().isEmpty, "the requeue is under way")
        succeed(actions[0], in: &s)
        #expect(s.tasks.count == 1 && s.decide().isEmpty)
    }

    @Test mutating func labelsNobodyCarriesMakeTheBuildWaitAndSayWhyOnce() {
        let p = project("gpu", labels: ["gpu"])
        var s = state(agents: [agent("a1")], queue: [queued("b1", "gpu")], projects: [p])
        let actions = s.decide()
        #expect(actions == [.noteWaiting(build: "b1", reason: "no live agent has the labels gpu")])
        succeed(actions[0], in: &s)
        #expect(s.decide().isEmpty, "the reason is written once")
        // An agent with the label joins: the build goes there, not to a1.
        s.apply(.agents, events: [.init(kind: .put, kv: agent("g1", labels: ["gpu", "x"]))], revision: revision)
        #expect(assignments(s.decide()) == ["b1": "g1"])
    }

    @Test mutating func aProjectsConcurrencyLimitHoldsItsBuildsBack() {
        let p = project("p", maxConcurrent: 1), q = project("q")
        var s = state(agents: [agent("a1", capacity: 4), agent("a2", capacity: 4)],
                      queue: [queued("p1", "p", at: 1), queued("p2", "p", at: 2), queued("q1", "q", at: 3)], projects: [p, q])
        let actions = s.decide()
        #expect(Set(assignments(actions).keys) == ["p1", "q1"])
        #expect(actions.contains(.noteWaiting(build: "p2", reason: "project 'p' already runs its limit of 1 build at once")))
        for a in actions { succeed(a, in: &s) }
        #expect(s.decide().isEmpty)
        // p1 ends: p2 may run.
        let p1 = s.tasks.values.first { $0.build == "p1" }!
        s.apply(.tasks, events: [.init(kind: .delete, kv: KeyValue(key: p1.key, value: []))], revision: next())
        #expect(Set(assignments(s.decide()).keys) == ["p2"])
    }

    @Test mutating func aBuildOfADeletedProjectFails() {
        var s = state(agents: [agent("a1")], queue: [queued("b1", "gone")], projects: [])
        let actions = s.decide()
        guard case .fail(let q, let reason) = actions.first, actions.count == 1 else { Issue.record("expected a fail, got \(actions)"); return }
        #expect(q.entry.build == "b1" && reason == "project 'gone' no longer exists")
        // etcd refused (the project exists: this view of the projects lagged behind the
        // queue's). Nothing is tried again until the projects' watch brings the change.
        s.finished(actions[0], .refused)
        #expect(s.decide().isEmpty)
        s.apply(.projects, events: [.init(kind: .put, kv: kv(keys.project("gone"), project("gone"), next()))], revision: revision)
        #expect(assignments(s.decide()) == ["b1": "a1"])
    }

    @Test mutating func aRefusedAssignmentWaitsForAChange() {
        let p = project("p")
        var s = state(agents: [agent("a1")], queue: [queued("b1", "p")], projects: [p])
        let actions = s.decide()
        #expect(assignments(actions) == ["b1": "a1"])
        s.finished(actions[0], .refused)
        #expect(s.decide().isEmpty, "nothing changed since the refusal")
        s.apply(.agents, events: [.init(kind: .put, kv: agent("a1"))], revision: revision)  // registered again
        let again = s.decide()
        guard case .assign(let a) = again.first else { Issue.record("expected an assignment, got \(again)"); return }
        #expect(a.agentCreateRevision == revision, "the new registration is named")
        // A failed action (etcd unreachable) may be taken again at once.
        s.finished(again[0], .failed)
        #expect(assignments(s.decide()) == ["b1": "a1"])
    }

    @Test mutating func anOutcomeOlderThanTheWatchChangesNothing() {
        // The watch delivered the assignment and the build's end before the outcome arrived:
        // applying the outcome's effects would bring back a task that no longer exists.
        let p = project("p")
        var s = state(agents: [agent("a1", capacity: 1)], queue: [queued("b1", "p"), queued("b2", "p", at: 5)], projects: [p])
        let actions = s.decide()
        #expect(assignments(actions) == ["b1": "a1"])
        guard case .assign(let a) = actions[0] else { return }
        let rev = next()
        let t = task("a1", "b1", p)
        s.apply(.queue, events: [.init(kind: .delete, kv: KeyValue(key: a.queued.key, value: []))], revision: rev)
        s.apply(.tasks, events: [.init(kind: .put, kv: t)], revision: rev)
        s.apply(.tasks, events: [.init(kind: .delete, kv: KeyValue(key: t.key, value: []))], revision: next())
        s.finished(actions[0], .done(revision: rev, effects: [.init(kind: .put, kv: t), .init(kind: .delete, kv: KeyValue(key: a.queued.key, value: []))]))
        #expect(s.tasks.isEmpty)
        #expect(assignments(s.decide()) == ["b2": "a1"])
    }

    @Test mutating func projectsTakeTurnsForASingleSlot() {
        let a = project("a"), b = project("b")
        var q: [KeyValue] = []
        for i in 0..<5 { q.append(queued("a\(i)", "a", at: Double(i))) }
        q.append(queued("b0", "b", at: 100))
        var s = state(agents: [agent("x", capacity: 1)], queue: q, projects: [a, b])
        var served: [String] = []
        for _ in 0..<3 {
            let actions = s.decide()
            #expect(actions.count == 1)
            guard case .assign(let asg) = actions.first else { return }
            served.append(asg.queued.entry.build)
            succeed(actions[0], in: &s)
            let t = s.tasks.values.first!
            s.apply(.tasks, events: [.init(kind: .delete, kv: KeyValue(key: t.key, value: []))], revision: next())
        }
        // b's single build does not wait behind a's hundred: it goes second.
        #expect(served == ["a0", "b0", "a1"])
    }

    @Test mutating func aHotProjectSpillsOverAlongTheRingAtItsBound() {
        let p = project("hot")
        var agents: [KeyValue] = []
        for i in 0..<4 { agents.append(agent("a\(i)", capacity: 4)) }
        var q: [KeyValue] = []
        for i in 0..<8 { q.append(queued("h\(i)", "hot", at: Double(i))) }
        var s = state(agents: agents, queue: q, projects: [p])
        let placed = assignments(s.decide())
        #expect(placed.count == 8)
        var perAgent: [String: Int] = [:]
        for agent in placed.values { perAgent[agent, default: 0] += 1 }
        // ceil(1.25 × 8 / 4) = 3 at most per agent when all eight run; the home takes the most.
        #expect(perAgent.values.allSatisfy { $0 <= 3 }, "\(perAgent)")
        let home = HashRing(members: (0..<4).map { .init(id: "a\($0)", weight: 4) }).home(of: "hot")!
        #expect(perAgent[home] == perAgent.values.max())
    }

    @Test mutating func aFullHomePassesItsBuildToAnAgentThatHoldsTheProjectWarm() {
        let p = project("hot")
        let ids = (0..<5).map { "a\($0)" }
        let order = HashRing(members: ids.map { .init(id: $0, weight: 2) }).preference(for: "hot")
        let (home, following, warm) = (order[0], order[1], order[3])
        // The home runs its two; the agent after it along the ring is cold, a later one warm.
        let running = [task(home, "r0", p), task(home, "r1", p)]
        var s = state(agents: ids.map { agent($0, capacity: 2, warm: $0 == warm ? ["hot", "other"] : ["other"]) },
                      queue: [queued("b1", "hot")], tasks: running, projects: [p])
        #expect(s.warmAgents["hot"] == [warm])
        #expect(assignments(s.decide()) == ["b1": warm])

        // The warm agent's registration no longer lists the project (evicted): the next along the ring.
        s.apply(.agents, events: [.init(kind: .put, kv: agent(warm, capacity: 2, warm: ["other"]))], revision: next())
        #expect(s.warmAgents["hot"] == nil)
        #expect(s.warmAgents["other"] == Set(ids))
        s.apply(.queue, events: [.init(kind: .put, kv: queued("b2", "hot", at: 1))], revision: revision)
        s.apply(.tasks, events: [], revision: next())  // the tasks' view is current: no hold for the home
        #expect(assignments(s.decide()) == ["b2": following])

        // A registration that lists names no project may have, or more than the cap, is read
        // only as far as it is valid.
        var names = ["Bad Name", "-x", "hot"]
        names += (0..<(AgentDisk.maxWarm + 10)).map { "p\($0)" }
        s.apply(.agents, events: [.init(kind: .put, kv: agent(warm, capacity: 2, warm: names))], revision: next())
        #expect(s.agents[warm]?.warm.count == AgentDisk.maxWarm)
        #expect(s.agents[warm]?.warm.contains("hot") == true)
        #expect(s.agents[warm]?.warm.contains("Bad Name") == false)
        // An agent that leaves is no longer warm for anything.
        s.apply(.agents, events: [.init(kind: .delete, kv: KeyValue(key: keys.agent(warm), value: []))], revision: next())
        #expect(s.warmAgents["hot"] == nil)
        #expect(s.warmAgents["p0"] == nil)
    }

    @Test mutating func aResetReplacesTheView() {
        let p = project("p")
        var s = state(agents: [agent("a1")], tasks: [task("a1", "b1", p)], projects: [p])
        // After a compaction the watch re-reads: a1's registration is gone, a2 is there.
        s.reset(.agents, kvs: [agent("a2")], revision: next())
        let actions = s.decide()
        guard case .requeue(let t) = actions.first, actions.count == 1 else { Issue.record("expected a requeue, got \(actions)"); return }
        #expect(t.agent == "a1")
        #expect(s.agents.keys.sorted() == ["a2"])
    }

    @Test mutating func aBuildQueuedRightAfterATaskEndedWaitsBrieflyForItsHomeRatherThanWalkOn() {
        let p = project("p")
        let home = HashRing(members: [.init(id: "a1", weight: 1), .init(id: "a2", weight: 1)]).home(of: "p")!
        let other = home == "a1" ? "a2" : "a1"
        let t = task(home, "b0", p)
        var s = state(agents: [agent("a1", capacity: 1), agent("a2", capacity: 1)], tasks: [t], projects: [p])
        // The queue's watch brings a build queued after b0 ended; the tasks' watch has not yet
        // brought b0's end.
        let endOfB0 = next()
        s.apply(.queue, events: [.init(kind: .put, kv: queued("b1", "p"))], revision: revision)
        #expect(s.decide(now: 0).isEmpty, "held for its home")
        #expect(s.nextWake == s.holdLimit)
        s.apply(.tasks, events: [.init(kind: .delete, kv: KeyValue(key: t.key, value: [], modRevision: endOfB0))], revision: endOfB0)
        #expect(assignments(s.decide(now: 0.005)) == ["b1": home])

        // When the home really is busy, the build walks on once the hold is over.
        var busy = state(agents: [agent("a1", capacity: 1), agent("a2", capacity: 1)], tasks: [task(home, "b0", p)], projects: [p])
        busy.apply(.queue, events: [.init(kind: .put, kv: queued("b2", "p"))], revision: revision)
        #expect(busy.decide(now: 10).isEmpty)
        #expect(busy.decide(now: 10.01).isEmpty)
        #expect(assignments(busy.decide(now: 10.021)) == ["b2": other])
        // A build whose tasks' view is current walks on at once.
        var current = state(agents: [agent("a1", capacity: 1), agent("a2", capacity: 1)], queue: [queued("b3", "p")], tasks: [task(home, "b0", p)], projects: [p])
        #expect(assignments(current.decide(now: 0)) == ["b3": other])
    }

    // MARK: delay scheduling (rule 4a)

    /// Five agents of capacity 2 along the ring from "hot": its home runs two builds of it, a
    /// later agent is warm for it and runs two builds of another project, and the three cold
    /// ones run one each, so the bound is 2 (ceil(1.25 × 8 × 2 / 10)): the home and the warm
    /// agent are at it, the cold ones below.
    struct Crowd {
        var order: [String]
        var home: String { order[0] }
        var cold: String { order[1] }
        var warm: String { order[3] }
        var warmTasks: [KeyValue]
    }

    mutating func crowd(warmWait: Double, queue: [String]) -> (DispatchState, Crowd) {
        let hot = project("hot"), other = project("other")
        let ids = (0..<5).map { "a\($0)" }
        let order = HashRing(members: ids.map { .init(id: $0, weight: 2) }).preference(for: "hot")
        var tasks = [task(order[0], "h0", hot), task(order[0], "h1", hot)]
        let warmTasks = [task(order[3], "o0", other), task(order[3], "o1", other)]
        tasks += warmTasks
        for (i, a) in [order[1], order[2], order[4]].enumerated() { tasks.append(task(a, "c\(i)", other)) }
        let q = queue.enumerated().map { i, b in queued(b, b.hasPrefix("hot") ? "hot" : String(b.prefix(while: { $0 != "." })), at: Double(i)) }
        let names = Set(queue.map { $0.hasPrefix("hot") ? "hot" : String($0.prefix(while: { $0 != "." })) }).union(["hot", "other"])
        let s = state(agents: ids.map { agent($0, capacity: 2, warm: $0 == order[3] ? ["hot", "other"] : ["other"]) },
                      queue: q, tasks: tasks, projects: names.sorted().map { project($0) }, warmWait: warmWait)
        return (s, Crowd(order: order, warmTasks: warmTasks))
    }

    @Test mutating func aBuildThatWouldGoColdWaitsForAWarmAgentAndTakesItWhenASlotFrees() {
        var (s, c) = crowd(warmWait: 1, queue: ["hot.1"])
        #expect(s.decide(now: 0).isEmpty, "home and warm agent at their bound: it waits rather than go cold")
        #expect(s.nextWake == 1)
        #expect(s.decide(now: 0.5).isEmpty)
        #expect(s.nextWake == 1, "the wait counts from the first pass that held it")
        // One of the warm agent's builds ends: the waiting build takes its slot, well within the wait.
        s.apply(.tasks, events: [.init(kind: .delete, kv: KeyValue(key: c.warmTasks[0].key, value: [], modRevision: next()))], revision: revision)
        #expect(assignments(s.decide(now: 0.6)) == ["hot.1": c.warm])
        #expect(s.nextWake == nil)

        // Its home frees first instead: it goes home.
        var (h, hc) = crowd(warmWait: 1, queue: ["hot.2"])
        #expect(h.decide(now: 3).isEmpty)
        h.apply(.tasks, events: [.init(kind: .delete, kv: KeyValue(key: keys.task(agent: hc.home, build: "h0"), value: [], modRevision: next()))], revision: revision)
        #expect(assignments(h.decide(now: 3.2)) == ["hot.2": hc.home])
    }

    @Test mutating func pastTheWaitTheBuildGoesColdUnderTheBound() {
        var (s, c) = crowd(warmWait: 1, queue: ["hot.1"])
        #expect(s.decide(now: 10).isEmpty)
        #expect(s.decide(now: 10.99).isEmpty)
        let placed = s.decide(now: 11)
        #expect(assignments(placed) == ["hot.1": c.cold], "the first agent along the ring with room")
        // The cold agent ran one build: the new one makes two, its bound; none is above it.
        guard case .assign(let a)? = placed.first else { return }
        succeed(.assign(a), in: &s)
        let perAgent = Dictionary(grouping: s.tasks.values, by: \.agent).mapValues(\.count)
        #expect(perAgent.values.allSatisfy { $0 <= 2 }, "\(perAgent)")
        #expect(s.nextWake == nil)
    }

    @Test mutating func aWaitingBuildDoesNotHoldBackLaterBuildsOfOtherProjects() {
        // A project whose home is one of the cold agents (they have room).
        let ring = HashRing(members: (0..<5).map { .init(id: "a\($0)", weight: 2) })
        let order = ring.preference(for: "hot")
        let cold = [order[1], order[2], order[4]]
        let name = (0..<200).map { "q\($0)" }.first { cold.contains(ring.home(of: $0)!) }!
        var (s, c) = crowd(warmWait: 1, queue: ["hot.1", "\(name).1", "hot.2"])
        // The two builds of "hot" wait, the later build of the other project is placed at once
        // on its home, a slot "hot.1" could have taken cold.
        let first = assignments(s.decide(now: 0))
        #expect(first == ["\(name).1": ring.home(of: name)!])
        #expect(s.nextWake == 1)
        // The warm agent frees a slot: the older waiting build takes it.
        for a in s.decide(now: 0.1) { Issue.record("nothing changed, yet \(a)") }
        s.apply(.tasks, events: [.init(kind: .delete, kv: KeyValue(key: c.warmTasks[0].key, value: [], modRevision: next()))], revision: revision)
        #expect(assignments(s.decide(now: 0.2)) == ["hot.1": c.warm])
    }

    @Test mutating func aWaitOfZeroPlacesTheBuildColdAtOnceAsBefore() {
        var (s, c) = crowd(warmWait: 0, queue: ["hot.1"])
        #expect(assignments(s.decide(now: 0)) == ["hot.1": c.cold])
        #expect(s.nextWake == nil)
        // And with a wait, a build that can go to a warm agent at once does.
        var (w, wc) = crowd(warmWait: 5, queue: ["hot.2"])
        w.apply(.tasks, events: [.init(kind: .delete, kv: KeyValue(key: wc.warmTasks[1].key, value: [], modRevision: next()))], revision: revision)
        #expect(assignments(w.decide(now: 0)) == ["hot.2": wc.warm])
    }
}
