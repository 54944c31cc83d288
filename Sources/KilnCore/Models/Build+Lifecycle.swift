import Foundation

/// How a build's record changes over its life: pure functions with no I/O and no clock (the
/// caller passes `now`), so every rule is tested without etcd. The scheduler (dispatcher,
/// store) and the agents (the build runner, the simulated one) only write what they return,
/// each in one transaction guarded by revisions.
///
/// Rules, in order of a build's life:
/// 1. **Assigned**: the dispatcher gives a queued build to an agent. The attempt is counted
///    here, so the attempt an agent runs is the number of times the build was handed out.
/// 2. **Started**: the agent that received the task marks it `running` with its id, the
///    task's attempt and the moment it began; the previous attempt's end, error and steps go.
/// 3. **Ended by its agent**: `succeeded`, `failed` or `cancelled`, with `finishedAt` and the
///    error (nil on success). Steps still `pending` are `skipped`; the runner has already given
///    every step it started its own status. The agent writes its own log end.
/// 4. **Its agent died** (``agentLost(_:maxAttempts:at:reason:)``), or gave the build up without
///    recording its end (it could not write to etcd: the leader's `OwnerlessBuilds`, with a
///    reason of its own): a build already final is left as
///    it is (only its task was left behind). One asked to cancel ends `cancelled`; one that has
///    had `maxAttempts` attempts ends `failed`; in both the step that was running `failed` and
///    the pending ones are `skipped`. Any other goes back to the queue: `queued`, no agent, its
///    steps pending again, the reason kept as its error, the attempt unchanged (rule 1 counts
///    the next one).
/// 5. **Ended before it started** (cancelled while queued, or failed because its project is
///    gone): every step is `skipped`, it ran none.
/// 6. **Cancelled**: a final build cannot be; a queued one ends at once (rule 5); an assigned
///    or running one is only marked `cancelRequested`, and its agent stops it and ends it.
/// 7. Whenever the scheduler, not the agent, ends or requeues a build, it closes the attempt's
///    log with one chunk (``LogEnd``) at ``Keys/logEnd(build:attempt:)``, after any chunk the
///    agent wrote; `end` is true unless the build goes back to the queue.
extension Build {
    /// The chunk the scheduler closes an attempt's log with (rule 7).
    public struct LogEnd: Sendable, Equatable {
        /// The attempt whose log it closes (its key is ``Keys/logEnd(build:attempt:)``).
        public var attempt: Int
        public var chunk: LogChunk

        public init(attempt: Int, line: String, end: Bool) {
            self.attempt = attempt
            self.chunk = LogChunk(seq: 0, lines: [line], end: end)
        }
    }

    /// What became of a build whose agent died (rule 4).
    public enum AgentLoss: Sendable, Equatable {
        /// It was final already: the record is unchanged; only the task key is left to remove.
        case alreadyFinal
        /// Back in the queue: write the record, its queue entry and the log line.
        case requeued(LogEnd)
        /// Ended `cancelled` or `failed`: write the record and the log end.
        case ended(LogEnd)
    }

    /// What a cancel did (rule 6).
    public enum Cancellation: Sendable, Equatable {
        /// The queued build ended: write the record and the log end, delete its queue entry.
        case ended(LogEnd)
        /// The build is only marked: its task must ask the agent to stop it.
        case requested
    }

    /// Rule 1: the dispatcher gives the build to `agent`; the attempt is counted.
    public mutating func assign(to agent: String) {
        status = .assigned
        waiting = nil
        self.agent = agent
        attempt += 1
    }

    /// Rule 2: `agent` starts `attempt` (the task's), begun at `now`.
    public mutating func start(agent: String, attempt: Int, at now: Date) {
        status = .running
        self.agent = agent
        self.attempt = attempt
        startedAt = now
        finishedAt = nil
        error = nil
        steps = StepName.allCases.map { BuildStep(name: $0) }
    }

    /// Rule 3: the agent ends the attempt it ran with `status` (final) and `error`.
    public mutating func end(_ status: BuildStatus, error: String?, at now: Date) {
        precondition(status.isFinal, "a build ends succeeded, failed or cancelled")
        self.status = status
        self.error = error
        finishedAt = now
        for i in steps.indices where steps[i].status == .pending { steps[i].status = .skipped }
    }

    /// Rule 4: the agent holding the build stopped renewing its lease, or (`reason`) gave the
    /// build up otherwise.
    public mutating func agentLost(_ agent: String, maxAttempts: Int, at now: Date, reason: String? = nil) -> AgentLoss {
        if status.isFinal { return .alreadyFinal }
        let reason = reason ?? "agent '\(agent)' stopped renewing its lease during attempt \(attempt)"
        if cancelRequested == true || attempt >= maxAttempts {
            status = cancelRequested == true ? .cancelled : .failed
            error = cancelRequested == true ? "cancelled; \(reason)" : "\(reason); gave up after \(attempt) attempts"
            finishedAt = now
            for i in steps.indices where steps[i].status == .running || steps[i].status == .pending {
                steps[i].status = steps[i].status == .running ? .failed : .skipped
            }
            return .ended(LogEnd(attempt: attempt, line: "kiln: \(error!)", end: true))
        }
        status = .queued
        self.agent = nil
        error = reason
        steps = StepName.allCases.map { BuildStep(name: $0) }
        return .requeued(LogEnd(attempt: attempt, line: "kiln: \(reason); the build goes back to the queue", end: false))
    }

    /// Rule 5: a queued build that cannot run (its project is gone) fails with `reason`.
    public mutating func failBeforeStart(_ reason: String, at now: Date) -> LogEnd {
        endBeforeStart(.failed, error: reason, at: now)
        return LogEnd(attempt: max(1, attempt), line: "kiln: \(reason)", end: true)
    }

    /// Rule 6: cancels the build, for `reason` if given (`superseded by build …`). Throws
    /// `KilnError.conflict` if it has ended already.
    public mutating func cancel(reason: String?, at now: Date) throws -> Cancellation {
        if status.isFinal { throw KilnError.conflict("build '\(id)' already \(status.rawValue)") }
        cancelRequested = true
        guard status == .queued else { return .requested }
        endBeforeStart(.cancelled, error: reason.map { "cancelled before it started: \($0)" } ?? "cancelled before it started", at: now)
        return .ended(LogEnd(attempt: max(1, attempt), line: "build cancelled before it started\(reason.map { ": \($0)" } ?? "")", end: true))
    }

    private mutating func endBeforeStart(_ status: BuildStatus, error: String, at now: Date) {
        self.status = status
        self.error = error
        finishedAt = now
        for i in steps.indices { steps[i].status = .skipped }
    }
}
