import Etcd
import Foundation
import KilnCore
import Logging

/// Stands in for the build steps in benchmarks and chaos tests (`kiln agent --simulate`):
/// it does not build. Nothing is fetched, compiled, imaged or pushed, and it needs no
/// container API, registry or Maven mirror.
///
/// Everything around the steps is the real agent's: the task arrives through the same watch,
/// and every write goes through the same `BuildReporter`, guarded by the task key's create
/// revision. The record turns `running` with this agent and `startedAt` (the moment the
/// agent started the build); the runner then waits the simulated duration and finishes
/// `succeeded` (end of log, final record and the task's deletion in one transaction).
/// Stopping behaves as with a real build: a requested cancel finishes `cancelled`; a lost
/// task or the agent's shutdown writes nothing more.
struct SimulatedBuildRunner: TaskRunner {
    let agentID: String
    let duration: SimulatedDuration
    let etcd: EtcdClient
    let keys: Keys
    let logger: Logger
    /// How long the reporter tries each write (`AgentConfiguration.etcdRetryLimit`).
    var retryLimit: Duration = .seconds(600)
    /// Takes over the ends it cannot write, as for real builds.
    var pendingEnds: PendingEnds? = nil

    func prepare() async throws {}

    func run(task: BuildTask, taskKey: String, taskCreateRevision: Int64, control: BuildControl) async {
        // The build starts when its task reaches this agent; reading the record is its work.
        let began = Date()
        let reporter = BuildReporter(task: task, taskKey: taskKey, taskCreateRevision: taskCreateRevision, etcd: etcd, keys: keys, agentLogger: logger,
                                     retryLimit: retryLimit)
        let log = reporter.logger
        // Reads and writes run in tasks of their own: stopping a build cancels its task,
        // which must interrupt only the wait, never a write half done.
        do {
            guard var build = try await outlivingCancellation({ try await reporter.currentBuild() }) else { return }
            if build.status.isFinal {
                let ending = build
                try await outlivingCancellation { try await reporter.finish(ending) }
                return
            }
            let length = duration.draw()
            let started = ContinuousClock.now
            if control.reason == nil {
                build.start(agent: agentID, attempt: task.attempt, at: began)
                let running = build
                // The first line goes out with the running record, as a real build's would.
                reporter.log("kiln: simulated build \(build.id) of \(task.project.name), attempt \(task.attempt), on agent \(agentID) (kiln agent --simulate \(duration)): nothing is built; waiting \(length.secondsDescription)")
                try await outlivingCancellation { try await reporter.update(running) }
                try? await Task.sleep(for: length)
            }
            switch control.reason {
            case .taskLost:
                throw TaskLostError(build: task.build)  // no longer ours: write nothing, say so
            case .shutdown:
                return  // the build goes back to the queue: write nothing
            case .requested, nil:
                break
            }
            let cancelled = control.reason == .requested
            // No step ran: all four end `skipped`, a success too.
            build.end(cancelled ? .cancelled : .succeeded, error: cancelled ? "cancelled during the simulated build" : nil, at: Date())
            reporter.log("kiln: simulated build \(build.status.rawValue) after \((ContinuousClock.now - started).secondsDescription)")
            let ending = build
            try await outlivingCancellation { try await reporter.finish(ending) }
            log.info("simulated build \(ending.status.rawValue)")
        } catch is TaskLostError {
            log.warning("build taken away from this agent; abandoning it")
        } catch {
            await giveUp(error, reporter: reporter, control: control, pendingEnds: pendingEnds, logger: log)
        }
    }
}
