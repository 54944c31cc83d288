import Etcd
import FarmHarness
import Foundation
import KilnCore
import Testing

/// The "no build lost, none run twice" check on made-up histories, without etcd.
@Suite("Run-once check (pure)")
struct RunOnceCheckTests {
    let keys = Keys()

    /// A history written one revision at a time; `txn` puts several changes in one revision.
    struct History {
        let keys: Keys
        var events: [FarmEvent] = []
        var revision: Int64 = 1
        var versions: [String: Int64] = [:]

        mutating func txn(_ changes: [(WatchEvent.Kind, String, Build?)]) {
            revision += 1
            for (kind, key, record) in changes {
                let version: Int64 = kind == .put ? (versions[key] ?? 0) + 1 : 0
                versions[key] = kind == .put ? version : nil
                events.append(FarmEvent(kind: kind, key: key, revision: revision, version: version, record: record))
            }
        }

        func record(_ id: String, _ status: BuildStatus, agent: String? = nil, attempt: Int = 1, error: String? = nil) -> Build {
            var b = Build(id: id, project: "p", ref: "main")
            b.status = status
            b.agent = agent
            b.attempt = attempt
            b.error = error
            return b
        }

        /// Queued, assigned to `agent`, running, then ended with the task removed.
        mutating func run(_ id: String, on agent: String, ending status: BuildStatus = .succeeded, attempt: Int = 1, error: String? = nil) {
            txn([(.put, keys.build(id), record(id, .queued)), (.put, keys.queued(id), nil)])
            assign(id, to: agent, attempt: attempt)
            txn([(.put, keys.build(id), record(id, .running, agent: agent, attempt: attempt))])
            end(id, on: agent, status, attempt: attempt, error: error)
        }

        mutating func assign(_ id: String, to agent: String, attempt: Int = 1) {
            txn([(.delete, keys.queued(id), nil), (.put, keys.task(agent: agent, build: id), nil),
                 (.put, keys.build(id), record(id, .assigned, agent: agent, attempt: attempt))])
        }

        mutating func end(_ id: String, on agent: String, _ status: BuildStatus, attempt: Int = 1, error: String? = nil) {
            txn([(.put, keys.build(id), record(id, status, agent: agent, attempt: attempt, error: error)),
                 (.delete, keys.task(agent: agent, build: id), nil)])
        }
    }

    @Test("builds run once each, one of them after a requeue: nothing lost, nothing run twice")
    func clean() {
        var h = History(keys: keys)
        h.run("b1", on: "agent-1")
        h.run("b2", on: "agent-2")
        // b3: agent-1 dies; the scheduler requeues it (task deleted, back in the queue) and agent-2 runs attempt 2.
        h.txn([(.put, keys.build("b3"), h.record("b3", .queued)), (.put, keys.queued("b3"), nil)])
        h.assign("b3", to: "agent-1")
        h.txn([(.put, keys.build("b3"), h.record("b3", .running, agent: "agent-1"))])
        h.txn([(.delete, keys.task(agent: "agent-1", build: "b3"), nil), (.put, keys.queued("b3"), nil),
               (.put, keys.build("b3"), h.record("b3", .queued, attempt: 2))])
        h.assign("b3", to: "agent-2", attempt: 2)
        h.txn([(.put, keys.build("b3"), h.record("b3", .running, agent: "agent-2", attempt: 2))])
        h.end("b3", on: "agent-2", .succeeded, attempt: 2)

        let check = RunOnceCheck(h.events, keys: keys)
        #expect(check.assignments == ["b1": 1, "b2": 1, "b3": 2])
        #expect(check.runTwice.isEmpty, "\(check.runTwice)")
        #expect(check.doubleDispatch.isEmpty && check.overlappingRunning.isEmpty && check.succeededTwice.isEmpty)
        let o = check.outcome(of: ["b1", "b2", "b3"])
        #expect(o.lost.isEmpty && o.attemptsExhausted.isEmpty)
        #expect(o.ended == 3 && o.succeeded == 3 && o.retried == 1 && o.maxAttempt == 2)
    }

    @Test("two task keys of one build alive at once are a double dispatch; a cancel mark is no assignment")
    func doubleDispatch() {
        var h = History(keys: keys)
        h.txn([(.put, keys.build("b1"), h.record("b1", .queued)), (.put, keys.queued("b1"), nil)])
        h.assign("b1", to: "agent-1")
        h.txn([(.put, keys.task(agent: "agent-1", build: "b1"), nil)])  // a cancel mark: version 2
        h.assign("b1", to: "agent-2")
        let check = RunOnceCheck(h.events, keys: keys)
        #expect(check.assignments == ["b1": 2])
        #expect(check.doubleDispatch == ["b1"])
        #expect(check.runTwice.count == 1 && check.runTwice[0].contains("agent-1 and agent-2"), "\(check.runTwice)")
    }

    @Test("running on a second agent while the first still holds its task, and succeeding twice, are runs twice")
    func overlapAndTwoSuccesses() {
        var h = History(keys: keys)
        h.run("b1", on: "agent-1")
        // b2: agent-2 sets it running while agent-1's attempt still holds its task key.
        h.txn([(.put, keys.build("b2"), h.record("b2", .queued)), (.put, keys.queued("b2"), nil)])
        h.assign("b2", to: "agent-1")
        h.txn([(.put, keys.build("b2"), h.record("b2", .running, agent: "agent-1"))])
        h.txn([(.put, keys.build("b2"), h.record("b2", .running, agent: "agent-2"))])
        h.end("b2", on: "agent-1", .succeeded)
        // b1 finished succeeded a second time, by another transaction that removed a task.
        h.assign("b1", to: "agent-3")
        h.end("b1", on: "agent-3", .succeeded)

        let check = RunOnceCheck(h.events, keys: keys)
        #expect(check.overlappingRunning == ["b2"])
        #expect(check.succeededTwice == ["b1"])
        #expect(check.doubleDispatch.isEmpty)
        #expect(check.runTwice.count == 2, "\(check.runTwice)")
    }

    @Test("a build that never ended or failed is lost; one that ran out of attempts is counted apart")
    func lost() {
        var h = History(keys: keys)
        h.run("ok", on: "agent-1")
        h.run("broken", on: "agent-1", ending: .failed, error: "compile: exit status 1")
        h.run("tired", on: "agent-2", ending: .failed, attempt: 3, error: "gave up after 3 attempts: agent-2 stopped renewing its lease")
        h.txn([(.put, keys.build("stuck"), h.record("stuck", .queued)), (.put, keys.queued("stuck"), nil)])

        let o = RunOnceCheck(h.events, keys: keys).outcome(of: ["ok", "broken", "tired", "stuck", "never-seen"])
        #expect(o.notEnded == ["never-seen", "stuck"])
        #expect(o.failedOther == ["broken failed: compile: exit status 1"])
        #expect(o.attemptsExhausted == ["tired"])
        #expect(o.lost == ["never-seen never ended", "stuck never ended", "broken failed: compile: exit status 1"])
        #expect(o.ended == 3 && o.succeeded == 1 && o.maxAttempt == 3 && o.retried == 1)
    }
}
