import Foundation
import KilnCore
import Testing

/// The rules of a build's life (`Build+Lifecycle.swift`), without etcd or a clock: each test
/// passes its own `now` and checks every field the transition writes.
@Suite("Build lifecycle")
struct BuildLifecycleTests {
    let created = Date(timeIntervalSince1970: 1_790_000_000)
    let now = Date(timeIntervalSince1970: 1_790_000_100)

    func queued() -> Build {
        Build(id: "b1", project: "demo", ref: "main", createdAt: created)
    }

    /// A build running attempt `attempt` on `a1`, its fetch done and its compile under way.
    func running(attempt: Int = 1) -> Build {
        var b = queued()
        for _ in 0..<attempt { b.assign(to: "a1") }
        b.start(agent: "a1", attempt: attempt, at: created.addingTimeInterval(1))
        b.steps[0].status = .succeeded
        b.steps[1].status = .running
        return b
    }

    func statuses(_ b: Build) -> [StepStatus] { b.steps.map(\.status) }

    // MARK: rules 1 and 2

    @Test("assigning counts the attempt and clears why the build waited")
    func assign() {
        var b = queued()
        b.waiting = "no live agent has the labels [gpu]"
        b.assign(to: "a1")
        #expect(b.status == .assigned)
        #expect(b.agent == "a1")
        #expect(b.attempt == 1)
        #expect(b.waiting == nil)
        b.assign(to: "a2")
        #expect(b.attempt == 2)
        #expect(b.agent == "a2")
    }

    @Test("starting takes the task's attempt and drops the previous attempt's end, error and steps")
    func start() {
        var b = queued()
        b.assign(to: "a1")
        b.error = "agent 'a0' stopped renewing its lease during attempt 1"
        b.finishedAt = created
        b.steps[0] = BuildStep(name: .fetch, status: .failed, durationMs: 5, error: "fetch: no route")
        b.start(agent: "a1", attempt: 2, at: now)
        #expect(b.status == .running)
        #expect(b.agent == "a1")
        #expect(b.attempt == 2)
        #expect(b.startedAt == now)
        #expect(b.finishedAt == nil)
        #expect(b.error == nil)
        #expect(b.steps == StepName.allCases.map { BuildStep(name: $0) })
    }

    // MARK: rule 3

    @Test("the agent's end: status, error and finishedAt; only pending steps change, to skipped")
    func endByAgent() {
        var b = running()
        b.steps[1].status = .failed
        b.end(.failed, error: "compile: the build command exited with status 2", at: now)
        #expect(b.status == .failed)
        #expect(b.error == "compile: the build command exited with status 2")
        #expect(b.finishedAt == now)
        #expect(statuses(b) == [.succeeded, .failed, .skipped, .skipped])

        var c = running()
        c.steps[1].status = .cancelled
        c.end(.cancelled, error: "cancelled during compile", at: now)
        #expect(c.status == .cancelled)
        #expect(statuses(c) == [.succeeded, .cancelled, .skipped, .skipped])

        var s = running()
        for i in s.steps.indices { s.steps[i].status = .succeeded }
        s.error = "left over"
        s.end(.succeeded, error: nil, at: now)
        #expect(s.status == .succeeded)
        #expect(s.error == nil)
        #expect(s.finishedAt == now)
        #expect(statuses(s) == [.succeeded, .succeeded, .succeeded, .succeeded])
        #expect(s.durationMs == 99_000)

        // The simulated runner runs no step: all four end skipped, a success too.
        var sim = queued()
        sim.start(agent: "sim-1", attempt: 1, at: created)
        sim.end(.succeeded, error: nil, at: now)
        #expect(statuses(sim) == [.skipped, .skipped, .skipped, .skipped])
    }

    // MARK: rule 4

    @Test("an agent lost before the last attempt: back to the queue, steps pending again, attempt kept, log not ended")
    func agentLostRequeues() {
        var b = running(attempt: 1)
        let startedAt = b.startedAt
        #expect(b.agentLost("a1", maxAttempts: 3, at: now) == .requeued(
            Build.LogEnd(attempt: 1, line: "kiln: agent 'a1' stopped renewing its lease during attempt 1; the build goes back to the queue", end: false)))
        #expect(b.status == .queued)
        #expect(b.agent == nil)
        #expect(b.attempt == 1)
        #expect(b.error == "agent 'a1' stopped renewing its lease during attempt 1")
        #expect(b.steps == StepName.allCases.map { BuildStep(name: $0) })
        #expect(b.finishedAt == nil)
        #expect(b.startedAt == startedAt)
        // Encoded as an explicit `false`: the line is not the end of the log.
        #expect(Build.LogEnd(attempt: 1, line: "x", end: false).chunk == LogChunk(seq: 0, lines: ["x"], end: false))
    }

    @Test("an agent lost in the last attempt: failed, the running step failed, the pending ones skipped, the log ended")
    func agentLostGivesUp() {
        var b = running(attempt: 3)
        #expect(b.agentLost("a1", maxAttempts: 3, at: now) == .ended(
            Build.LogEnd(attempt: 3, line: "kiln: agent 'a1' stopped renewing its lease during attempt 3; gave up after 3 attempts", end: true)))
        #expect(b.status == .failed)
        #expect(b.error == "agent 'a1' stopped renewing its lease during attempt 3; gave up after 3 attempts")
        #expect(b.finishedAt == now)
        #expect(b.agent == "a1")
        #expect(statuses(b) == [.succeeded, .failed, .skipped, .skipped])
    }

    @Test("each assignment counts one attempt; the build gives up after maxAttempts lost agents")
    func attemptsCountUpToTheLimit() {
        var b = queued()
        var outcomes: [Build.AgentLoss] = []
        for agent in ["a1", "a2", "a3"] {
            b.assign(to: agent)
            b.start(agent: agent, attempt: b.attempt, at: now)
            outcomes.append(b.agentLost(agent, maxAttempts: 3, at: now))
        }
        #expect(outcomes == [
            .requeued(Build.LogEnd(attempt: 1, line: "kiln: agent 'a1' stopped renewing its lease during attempt 1; the build goes back to the queue", end: false)),
            .requeued(Build.LogEnd(attempt: 2, line: "kiln: agent 'a2' stopped renewing its lease during attempt 2; the build goes back to the queue", end: false)),
            .ended(Build.LogEnd(attempt: 3, line: "kiln: agent 'a3' stopped renewing its lease during attempt 3; gave up after 3 attempts", end: true)),
        ])
        #expect(b.status == .failed)
        #expect(b.attempt == 3)
    }

    @Test("an agent lost while a cancel was asked for: cancelled, whatever the attempt")
    func agentLostWhileCancelling() throws {
        var b = running(attempt: 1)
        #expect(try b.cancel(reason: nil, at: now) == .requested)
        #expect(b.agentLost("a1", maxAttempts: 3, at: now) == .ended(
            Build.LogEnd(attempt: 1, line: "kiln: cancelled; agent 'a1' stopped renewing its lease during attempt 1", end: true)))
        #expect(b.status == .cancelled)
        #expect(b.error == "cancelled; agent 'a1' stopped renewing its lease during attempt 1")
        #expect(b.finishedAt == now)
        #expect(statuses(b) == [.succeeded, .failed, .skipped, .skipped])
    }

    @Test("an agent lost after the build ended changes nothing: only its task was left behind")
    func agentLostAfterTheEnd() {
        var b = running()
        b.end(.succeeded, error: nil, at: created)
        let before = b
        #expect(b.agentLost("a1", maxAttempts: 1, at: now) == .alreadyFinal)
        #expect(b == before)
    }

    // MARK: rules 5 and 6

    @Test("a queued build whose project is gone fails: every step skipped, the log of attempt 1 ended")
    func failBeforeStart() {
        var b = queued()
        b.steps[0].status = .running  // whatever a queued record says, it ran nothing
        let end = b.failBeforeStart("project 'demo' was deleted", at: now)
        #expect(end == Build.LogEnd(attempt: 1, line: "kiln: project 'demo' was deleted", end: true))
        #expect(b.status == .failed)
        #expect(b.error == "project 'demo' was deleted")
        #expect(b.finishedAt == now)
        #expect(statuses(b) == [.skipped, .skipped, .skipped, .skipped])
        #expect(b.cancelRequested == nil)

        // A build requeued after attempt 2 closes the log of attempt 2.
        var r = queued()
        r.attempt = 2
        #expect(r.failBeforeStart("gone", at: now).attempt == 2)
    }

    @Test("cancelling a queued build ends it at once, with the reason if there is one")
    func cancelQueued() throws {
        var b = queued()
        #expect(try b.cancel(reason: nil, at: now) == .ended(Build.LogEnd(attempt: 1, line: "build cancelled before it started", end: true)))
        #expect(b.status == .cancelled)
        #expect(b.error == "cancelled before it started")
        #expect(b.cancelRequested == true)
        #expect(b.finishedAt == now)
        #expect(statuses(b) == [.skipped, .skipped, .skipped, .skipped])

        var s = queued()
        #expect(try s.cancel(reason: "superseded by build b2", at: now)
            == .ended(Build.LogEnd(attempt: 1, line: "build cancelled before it started: superseded by build b2", end: true)))
        #expect(s.error == "cancelled before it started: superseded by build b2")
    }

    @Test("cancelling an assigned or running build only marks it: its agent ends it")
    func cancelRunning() throws {
        var assigned = queued()
        assigned.assign(to: "a1")
        for b in [assigned, running()] {
            var c = b
            #expect(try c.cancel(reason: "superseded by build b2", at: now) == .requested)
            // Nothing but the mark: status, end and steps stay for the agent to write.
            var marked = b
            marked.cancelRequested = true
            #expect(c == marked)
        }
    }

    @Test("a build that has ended cannot be cancelled", arguments: [BuildStatus.succeeded, .failed, .cancelled])
    func cancelFinal(_ status: BuildStatus) {
        var b = running()
        b.end(status, error: nil, at: created)
        let before = b
        let error = #expect(throws: KilnError.self) { try b.cancel(reason: nil, at: now) }
        #expect(error?.message == "build 'b1' already \(status.rawValue)")
        #expect(error?.httpStatus == 409)
        #expect(b == before)
    }

    // MARK: rule 7

    @Test("the scheduler's log end comes after every chunk its agent can write, before the next attempt's")
    func logEndKey() {
        let k = Keys()
        #expect(k.logEnd(build: "b", attempt: 2) == k.logChunk(build: "b", attempt: 2, seq: 99_999_999))
        #expect(k.logChunk(build: "b", attempt: 2, seq: 12_345) < k.logEnd(build: "b", attempt: 2))
        #expect(k.logEnd(build: "b", attempt: 2) < k.logChunk(build: "b", attempt: 3, seq: 0))
        #expect(k.logEnd(build: "b", attempt: 999) < k.pipelineLogChunk(build: "b", run: 1, seq: 0))
        #expect(k.logEnd(build: "b", attempt: 1).hasPrefix(k.logs(of: "b")))
    }
}
