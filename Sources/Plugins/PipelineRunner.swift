import Foundation
import KilnCore

/// Runs a pipeline's steps in order, each under its time limit, and records each step's
/// outcome and duration as it goes.
///
/// - A step that throws or runs out of time ends the run: the run is `failed` with the
///   step's reason, the later steps are `skipped`. The build itself stays `succeeded`.
/// - Steps already `succeeded` in the run given (a run resumed after its scheduler died) are
///   not run again; their outputs are handed on as they were recorded.
/// - `record` is called after every change (run started, step started, step ended, run
///   ended); if it throws, the run stops there (another scheduler owns it now) and the error
///   is thrown.
public struct PipelineRunner: Sendable {
    public let plugins: [String: any PostBuildPlugin]
    /// Handed to every step (`PluginContext.secrets`): the scheduler's secret store.
    public let secrets: (any PipelineSecrets)?

    public init(plugins: [any PostBuildPlugin], secrets: (any PipelineSecrets)? = nil) {
        self.plugins = Dictionary(plugins.map { ($0.spec.name, $0) }, uniquingKeysWith: { _, last in last })
        self.secrets = secrets
    }

    public func run(
        _ run: PipelineRun, build: Build, project: Project,
        log: @escaping @Sendable (String) async -> Void,
        record: @Sendable (PipelineRun) async throws -> Void,
        now: @Sendable () -> Date = { Date() }
    ) async throws -> PipelineRun {
        var run = run
        if run.steps.count != run.pipeline.count {
            run.steps = run.pipeline.map { PipelineStepResult(plugin: $0.plugin) }
        }
        run.status = .running
        run.startedAt = run.startedAt ?? now()
        run.error = nil
        try await record(run)
        await log("==> pipeline run \(run.run) (\(run.trigger)): \(run.pipeline.map(\.plugin).joined(separator: " ▶ "))")
        var outputs: [String: [String: JSONValue]] = [:]
        let started = ContinuousClock.now

        steps: for (i, step) in run.pipeline.enumerated() {
            if run.steps[i].status == .succeeded {
                outputs[step.plugin] = run.steps[i].outputs ?? [:]
                await log("==> \(step.plugin) already succeeded in an earlier attempt of this run: \(run.steps[i].summary ?? "")")
                continue
            }
            guard let plugin = plugins[step.plugin] else {
                fail(&run, at: i, "no plugin named '\(step.plugin)' is installed in this scheduler", now: now())
                break steps
            }
            let limit = step.timeoutSeconds ?? plugin.spec.defaultTimeoutSeconds
            run.steps[i] = PipelineStepResult(plugin: step.plugin, status: .running, startedAt: now())
            try await record(run)
            await log("==> \(step.plugin) started (time limit \(limit) s)")
            let context = PluginContext(build: build, project: project, settings: step.settings, outputs: outputs, run: run.run, secrets: secrets, log: log)
            let stepStart = ContinuousClock.now
            let outcome: Result<PluginResult, any Error>
            do {
                outcome = .success(try await withTimeout(.seconds(limit), acceptingLateValue: true, { KilnError.unavailable("timed out after \(limit) s (the step's timeoutSeconds); it was stopped") }) { try await plugin.run(context) })
            } catch {
                if error is CancellationError && Task.isCancelled { throw error }
                outcome = .failure(error)
            }
            let elapsed = ContinuousClock.now - stepStart
            switch outcome {
            case .success(let result):
                run.steps[i].status = .succeeded
                run.steps[i].finishedAt = now()
                run.steps[i].durationMs = elapsed.inMilliseconds
                run.steps[i].summary = result.summary
                run.steps[i].outputs = result.outputs
                outputs[step.plugin] = result.outputs
                try await record(run)
                await log("==> \(step.plugin) succeeded in \(elapsed.secondsDescription): \(result.summary)")
            case .failure(let error):
                let reason = (error as? KilnError)?.message ?? "\(error)"
                fail(&run, at: i, reason, now: now())
                run.steps[i].durationMs = elapsed.inMilliseconds
                await log("==> \(step.plugin) failed after \(elapsed.secondsDescription): \(reason)")
                break steps
            }
        }
        run.finishedAt = now()
        if run.status != .failed { run.status = .succeeded }
        try await record(run)
        await log("==> pipeline run \(run.run) \(run.status.rawValue) in \((ContinuousClock.now - started).secondsDescription)\(run.error.map { ": \($0)" } ?? "")")
        return run
    }

    private func fail(_ run: inout PipelineRun, at i: Int, _ reason: String, now: Date) {
        run.status = .failed
        run.error = "\(run.pipeline[i].plugin): \(reason)"
        run.steps[i].status = .failed
        run.steps[i].error = reason
        run.steps[i].finishedAt = now
        for j in run.steps.indices where j > i && run.steps[j].status != .succeeded { run.steps[j].status = .skipped }
    }
}
