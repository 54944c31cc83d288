import Etcd
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
import Logging
@testable import Scheduler
import Testing

@Suite("Assignment transaction against a real etcd")
struct AssignTests {
    /// No dispatcher runs here: `assign` is called by hand, as if its pass had read a state
    /// that changed before its transaction.
    @Test func anAssignmentToAnAgentThatIsGoneOrReRegisteredWritesNothing() async throws {
        try await withEtcd(timeout: nil) { _, etcd in
            let store = SchedulerStore(etcd: etcd)
            let keys = store.keys
            let project = Project(name: "demo", repository: "http://127.0.0.1:1/d.git", buildImage: "a:1", buildCommand: "make")
            try await store.saveProject(project)
            let build = try await store.enqueue(project: "demo", request: BuildRequest())
            let queueKV = try #require(try await etcd.get(keys.queued(build.id)))
            let entry = try KilnJSON.decode(QueueEntry.self, from: queueKV.value)
            let lease = try await etcd.grantLease(ttl: 300)
            try await etcd.put(keys.agent("a1"), try KilnJSON.encode(AgentInfo(id: "a1", capacity: 1, labels: [], version: "t")), lease: lease)
            let seen = try #require(try await etcd.get(keys.agent("a1"))).createRevision
            let dispatcher = Dispatcher(store: store, logger: Logger(label: "test"))
            func assign(_ agentCreateRevision: Int64, fence: [Compare] = []) async -> Bool {
                let a = DispatchState.Assignment(queued: .init(entry: entry, key: queueKV.key, modRevision: queueKV.modRevision),
                                                 project: project, agent: "a1", agentCreateRevision: agentCreateRevision)
                if case .done = await dispatcher.perform(.assign(a), fence: fence) { return true }
                return false
            }

            func nothingWritten() async throws {
                #expect(try await etcd.get(keys.queued(build.id)) != nil)
                #expect(try await etcd.range(prefix: keys.tasks).kvs.isEmpty)
                let record = try await store.build(build.id)
                #expect(record.status == .queued && record.agent == nil && record.attempt == 0)
            }

            // The agent registered again since the pass read it (a new create revision).
            try await etcd.put(keys.agent("a1"), try KilnJSON.encode(AgentInfo(id: "a1", capacity: 1, labels: [], version: "t2")), lease: lease)
            _ = try await etcd.delete(keys.agent("a1"))
            try await etcd.put(keys.agent("a1"), try KilnJSON.encode(AgentInfo(id: "a1", capacity: 1, labels: [], version: "t3")), lease: lease)
            #expect(await !assign(seen))
            try await nothingWritten()

            // The agent is gone.
            let current = try #require(try await etcd.get(keys.agent("a1"))).createRevision
            try await etcd.revokeLease(lease)
            #expect(await !assign(current))
            try await nothingWritten()

            // A leader whose term ended (the leader key was created again since) writes nothing.
            let election = dispatcher.election
            let firstTerm = try await election.campaign()
            await election.resign(firstTerm)
            let secondTerm = try await election.campaign()
            let revokedAgain = try await etcd.grantLease(ttl: 300)
            try await etcd.put(keys.agent("a1"), try KilnJSON.encode(AgentInfo(id: "a1", capacity: 1, labels: [], version: "t3b")), lease: revokedAgain)
            let live = try #require(try await etcd.get(keys.agent("a1"))).createRevision
            #expect(await !assign(live, fence: [election.fence(firstTerm)]))
            try await nothingWritten()
            await election.resign(secondTerm)
            try await etcd.revokeLease(revokedAgain)

            // With the state as read, the same call assigns.
            let back = try await etcd.grantLease(ttl: 300)
            try await etcd.put(keys.agent("a1"), try KilnJSON.encode(AgentInfo(id: "a1", capacity: 1, labels: [], version: "t4")), lease: back)
            let now = try #require(try await etcd.get(keys.agent("a1"))).createRevision
            #expect(await assign(now))
            #expect(try await etcd.get(keys.task(agent: "a1", build: build.id)) != nil)
            #expect(try await store.build(build.id).status == .assigned)
            // A second assignment of the same queue entry (a second dispatcher) is refused.
            #expect(await !assign(now))
            #expect(try await etcd.range(prefix: keys.tasks).kvs.count == 1)
        }
    }

    /// An agent ends a build by deleting its task key only; the leader's sweep then removes the
    /// push grant, so re-creating the task key later gives no push on that project.
    @Test func theSweepRemovesGrantsWhoseTaskEndedAndKeepsTheOthers() async throws {
        try await withEtcd(timeout: nil) { _, etcd in
            let store = SchedulerStore(etcd: etcd)
            let keys = store.keys
            let dispatcher = Dispatcher(store: store, logger: Logger(label: "test"))
            try await etcd.put(keys.task(agent: "a1", build: "live"), "{}")
            try await etcd.put(keys.grant(agent: "a1", build: "live"), "demo")
            try await etcd.put(keys.grant(agent: "a1", build: "ended"), "demo")
            try await etcd.put(keys.grant(agent: "a2", build: "ended"), "other")
            try await etcd.put(keys.grants + "malformed", "x")
            #expect(try await dispatcher.sweepGrants(fence: []) == 2)
            #expect(try await etcd.range(prefix: keys.grants).kvs.map(\.key).sorted()
                    == [keys.grant(agent: "a1", build: "live"), keys.grants + "malformed"])
            // A leader whose term ended removes nothing.
            let election = dispatcher.election
            let old = try await election.campaign()
            await election.resign(old)
            let current = try await election.campaign()
            _ = try await etcd.delete(keys.task(agent: "a1", build: "live"))
            #expect(try await dispatcher.sweepGrants(fence: [election.fence(old)]) == 0)
            #expect(try await etcd.get(keys.grant(agent: "a1", build: "live")) != nil)
            #expect(try await dispatcher.sweepGrants(fence: [election.fence(current)]) == 1)
            #expect(try await etcd.get(keys.grant(agent: "a1", build: "live")) == nil)
            await election.resign(current)
        }
    }
}
