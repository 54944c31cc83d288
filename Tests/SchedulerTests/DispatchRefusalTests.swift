import Etcd
import Foundation
import KilnCore
@testable import Scheduler
import Testing

/// Rule 5 of `DispatchState`: an agent short of disk space refuses new builds.
extension DispatchStateTests {
    static let short = "short of disk space: 1.2 GiB free on the filesystem of /var/lib/kiln"

    mutating func agent(_ id: String, capacity: Int = 2, refusing: String?) -> KeyValue {
        let disk = AgentDisk(free: 1 << 30, budget: 10 << 30, used: 3 << 30, minFree: 2 << 30, refusing: refusing)
        return kv(keys.agent(id), AgentInfo(id: id, capacity: capacity, labels: [], version: "t", disk: disk), next())
    }

    @Test mutating func anAgentThatRefusesGetsNoNewBuildsAndKeepsItsTasks() {
        let p = project("p")
        let t1 = task("a1", "b0", p)
        var s = state(agents: [agent("a1", capacity: 4, refusing: Self.short), agent("a2", capacity: 4, refusing: nil)],
                      queue: (1...4).map { queued("b\($0)", "p", at: Double($0)) }, tasks: [t1], projects: [p])
        let actions = s.decide()
        // Its running build is not taken away; all four new ones go to a2, which the bounds
        // (shares of the agents that take work) let hold them.
        #expect(!actions.contains { if case .requeue = $0 { true } else { false } })
        #expect(assignments(actions) == ["b1": "a2", "b2": "a2", "b3": "a2", "b4": "a2"])
        for a in actions { succeed(a, in: &s) }
        #expect(s.tasks.values.contains { $0.key == t1.key })
    }

    @Test mutating func whenEveryAgentRefusesABuildWaitsAndSaysWhy() {
        let p = project("p")
        var s = state(agents: [agent("a1", refusing: Self.short)], queue: [queued("b1", "p")], projects: [p])
        let actions = s.decide()
        #expect(actions == [.noteWaiting(build: "b1", reason: "every live agent refuses new builds (a1: \(Self.short))")])
        succeed(actions[0], in: &s)
        #expect(s.decide().isEmpty, "the reason is written once")
        // Space is back: the agent publishes its registration without the refusal.
        s.apply(.agents, events: [.init(kind: .put, kv: agent("a1", refusing: nil))], revision: revision)
        #expect(assignments(s.decide()) == ["b1": "a1"])
    }

    @Test mutating func labelsOfOnlyRefusingAgentsNameThemInTheReason() {
        let p = project("gpu", labels: ["gpu"])
        var gpu = agent("g1", refusing: Self.short)
        var info = try! KilnJSON.decode(AgentInfo.self, from: gpu.value)
        info.labels = ["gpu"]
        gpu = kv(keys.agent("g1"), info, next())
        var s = state(agents: [gpu, agent("a1", refusing: nil)], queue: [queued("b1", "gpu")], projects: [p])
        #expect(s.decide() == [.noteWaiting(build: "b1", reason: "every live agent with the labels gpu refuses new builds (g1: \(Self.short))")])
    }

    @Test mutating func aRefusingHomeSendsItsProjectsAlongTheRingUntilItTakesWorkAgain() {
        let p = project("p")
        let home = HashRing(members: [.init(id: "a1", weight: 2), .init(id: "a2", weight: 2)]).home(of: "p")!
        let other = home == "a1" ? "a2" : "a1"
        var s = state(agents: [agent(home, refusing: Self.short), agent(other, refusing: nil)], queue: [queued("b1", "p")], projects: [p])
        let first = s.decide()
        #expect(assignments(first) == ["b1": other])
        for a in first { succeed(a, in: &s) }
        // The home takes work again: the next build of p goes home, where its caches are.
        s.apply(.agents, events: [.init(kind: .put, kv: agent(home, refusing: nil))], revision: revision)
        s.apply(.queue, events: [.init(kind: .put, kv: queued("b2", "p", at: 2))], revision: revision)
        #expect(assignments(s.decide()) == ["b2": home])
    }

    @Test mutating func aRefusingAgentThatLeavesHasItsTasksRequeuedAsAnyOther() {
        let p = project("p")
        let a1 = agent("a1", refusing: Self.short)
        var s = state(agents: [a1], tasks: [task("a1", "b1", p)], projects: [p])
        #expect(s.decide().isEmpty)
        s.apply(.agents, events: [.init(kind: .delete, kv: KeyValue(key: a1.key, value: []))], revision: next())
        let actions = s.decide()
        guard case .requeue(let t) = actions.first, actions.count == 1 else { Issue.record("expected a requeue, got \(actions)"); return }
        #expect(t.build == "b1")
    }
}
