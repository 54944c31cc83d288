import Foundation
import KilnCore
import Plugins
import Synchronization
import Testing

/// A plugin for the runner's tests: does what its settings say (wait, fail, hand on a value).
struct ScriptedPlugin: PostBuildPlugin {
    let spec: PluginSpec
    let calls: Calls

    final class Calls: Sendable {
        let names = Mutex<[String]>([])
        let cancelledCleanly = Mutex(false)
    }

    init(_ name: String, calls: Calls, timeout: Int = 5) {
        spec = PluginSpec(name: name, summary: "test", settings: [], defaultTimeoutSeconds: timeout)
        self.calls = calls
    }

    func run(_ ctx: PluginContext) async throws -> PluginResult {
        calls.names.withLock { $0.append(spec.name) }
        if case .number(let s)? = ctx.settings["sleep"] {
            do {
                try await Task.sleep(for: .seconds(s))
            } catch {
                calls.cancelledCleanly.withLock { $0 = true }
                throw error
            }
        }
        if case .string(let why)? = ctx.settings["fail"] { throw KilnError.invalid(why) }
        let seen = ctx.outputs["first"]?["token"]
        var outputs: [String: JSONValue] = ["token": .string(spec.name), "saw": seen ?? .null]
        if case .string(let name)? = ctx.settings["secret"] {
            outputs["secretLength"] = .number(Double(try await ctx.secretValue(name, for: "step \(spec.name)").count))
        }
        return PluginResult(summary: "\(spec.name) done", outputs: outputs)
    }
}

/// One protected-only secret `TOKEN` and nothing else: enough to see the runner hand its
/// store to the steps (the real store's rules are tested in SealingTests).
struct OneProtectedSecret: PipelineSecrets {
    func secret(_ name: String, of project: Project, ref: String?) async throws -> SecretLookup {
        guard name == "TOKEN" else { return .missing }
        return (ref.map(project.isProtected(ref:)) ?? false) ? .value("twelve chars") : .withheld
    }
    func cellCredential(_ cell: String) async throws -> CellCredential? { nil }
}

@Suite struct PipelineRunnerTests {
    let build = Build(id: "b1", project: "p", ref: "main")
    let project = Project(name: "p", repository: "file:///x", buildImage: "i", buildCommand: "true")

    func runner(_ calls: ScriptedPlugin.Calls) -> PipelineRunner {
        PipelineRunner(plugins: ["first", "second", "third"].map { ScriptedPlugin($0, calls: calls) })
    }

    func execute(_ steps: [PipelineStep], resume: PipelineRun? = nil, calls: ScriptedPlugin.Calls) async throws -> (PipelineRun, [PipelineRun], [String]) {
        let records = Mutex<[PipelineRun]>([]), lines = Mutex<[String]>([])
        let run = resume ?? PipelineRun(run: 1, pipeline: steps, trigger: "test")
        let ended = try await runner(calls).run(run, build: build, project: project,
                                                log: { line in lines.withLock { $0.append(line) } },
                                                record: { r in records.withLock { $0.append(r) } })
        return (ended, records.withLock { $0 }, lines.withLock { $0 })
    }

    @Test func stepsRunInOrderAndHandOnTheirOutputs() async throws {
        let calls = ScriptedPlugin.Calls()
        let (run, records, lines) = try await execute([.init(plugin: "first"), .init(plugin: "second"), .init(plugin: "third")], calls: calls)
        #expect(calls.names.withLock { $0 } == ["first", "second", "third"])
        #expect(run.status == .succeeded)
        #expect(run.steps.map(\.status) == [.succeeded, .succeeded, .succeeded])
        let timed = run.steps.filter { s in s.durationMs != nil && s.startedAt != nil && s.finishedAt != nil }
        #expect(timed.count == 3, "every step has its start, end and duration")
        #expect(run.steps[1].outputs?["saw"] == .string("first"), "a later step sees an earlier one's outputs")
        #expect(run.steps[2].summary == "third done")
        // Recorded: started, then each step's start and end, then the end.
        #expect(records.count == 8)
        #expect(records.first?.status == .running && records.last?.status == .succeeded)
        #expect(lines.contains { $0.contains("==> second succeeded in") })
    }

    @Test func theFirstFailureStopsTheRunWithItsReason() async throws {
        let calls = ScriptedPlugin.Calls()
        let (run, _, lines) = try await execute([.init(plugin: "first"), .init(plugin: "second", settings: ["fail": .string("image not found")]), .init(plugin: "third")], calls: calls)
        #expect(calls.names.withLock { $0 } == ["first", "second"])
        #expect(run.status == .failed)
        #expect(run.error == "second: image not found")
        #expect(run.steps.map(\.status) == [.succeeded, .failed, .skipped])
        #expect(run.steps[1].error == "image not found")
        #expect(lines.contains { $0.contains("==> second failed after") && $0.contains("image not found") })
    }

    @Test func aStepPastItsTimeLimitIsStoppedAndFailsTheRun() async throws {
        let calls = ScriptedPlugin.Calls()
        let clock = ContinuousClock(), start = clock.now
        let (run, _, _) = try await execute([.init(plugin: "first", settings: ["sleep": .number(600)], timeoutSeconds: 1), .init(plugin: "second")], calls: calls)
        // The step would sleep 600 s; the bound is far from both (a loaded CI machine took 10.05 s).
        #expect(clock.now - start < .seconds(120), "the step was stopped at its limit, not waited for")
        #expect(calls.cancelledCleanly.withLock { $0 }, "the step saw its cancellation (to clean up)")
        #expect(run.status == .failed)
        #expect(run.steps[0].error?.contains("timed out after 1 s") == true, "\(run.steps[0].error ?? "")")
        #expect(run.steps[1].status == .skipped)
    }

    @Test func aResumedRunSkipsWhatSucceededAndKeepsItsOutputs() async throws {
        let calls = ScriptedPlugin.Calls()
        var earlier = PipelineRun(run: 2, pipeline: [.init(plugin: "first"), .init(plugin: "second")], trigger: "test")
        earlier.status = .running
        earlier.steps[0] = PipelineStepResult(plugin: "first", status: .succeeded, durationMs: 5, summary: "first done", outputs: ["token": .string("first")])
        earlier.steps[1].status = .running
        let (run, _, _) = try await execute([], resume: earlier, calls: calls)
        #expect(calls.names.withLock { $0 } == ["second"])
        #expect(run.status == .succeeded)
        #expect(run.steps[1].outputs?["saw"] == .string("first"))
    }

    @Test func everyStepGetsTheRunnersSecrets() async throws {
        let calls = ScriptedPlugin.Calls()
        let runner = PipelineRunner(plugins: ["first", "second"].map { ScriptedPlugin($0, calls: calls) }, secrets: OneProtectedSecret())
        let steps: [PipelineStep] = [.init(plugin: "first", settings: ["secret": .string("TOKEN")]), .init(plugin: "second", settings: ["secret": .string("OTHER")])]
        let run = try await runner.run(PipelineRun(run: 1, pipeline: steps, trigger: "test"), build: build, project: project, log: { _ in }, record: { _ in })
        #expect(run.steps[0].outputs?["secretLength"] == .number(12))
        #expect(run.steps[1].error == "step second: secret OTHER is not set for project p: set it with `kiln secret set OTHER --project p`")

        // A feature branch's run: the protected-only secret is held back, by name.
        let feature = Build(id: "b2", project: "p", ref: "feature/x")
        let held = try await runner.run(PipelineRun(run: 1, pipeline: [steps[0]], trigger: "test"), build: feature, project: project, log: { _ in }, record: { _ in })
        #expect(held.steps[0].error?.hasPrefix("step first: secret TOKEN is for protected refs only, and feature/x is not protected in project p") == true, "\(held.steps[0].error ?? "")")
        #expect(held.error?.contains("twelve chars") == false)

        // Without a store: the step says how to give the scheduler one.
        let bare = try await self.runner(calls).run(PipelineRun(run: 1, pipeline: [steps[0]], trigger: "test"), build: build, project: project, log: { _ in }, record: { _ in })
        #expect(bare.steps[0].error?.contains("this scheduler has no secret store: start it with --secrets-key-file") == true, "\(bare.steps[0].error ?? "")")
    }

    @Test func anUnknownPluginFailsTheRunWithoutRunningIt() async throws {
        let calls = ScriptedPlugin.Calls()
        let (run, _, _) = try await execute([.init(plugin: "first"), .init(plugin: "nope")], calls: calls)
        #expect(run.status == .failed)
        #expect(run.steps[1].error?.contains("no plugin named 'nope'") == true)
    }

    @Test func aRecordThatFailsStopsTheRun() async throws {
        let calls = ScriptedPlugin.Calls()
        let run = PipelineRun(run: 1, pipeline: [.init(plugin: "first"), .init(plugin: "second")], trigger: "test")
        let count = Mutex(0)
        await #expect(throws: KilnError.self) {
            _ = try await runner(calls).run(run, build: build, project: project, log: { _ in }, record: { _ in
                let n = count.withLock { c -> Int in c += 1; return c }
                if n == 3 { throw KilnError.conflict("another scheduler leads") }
            })
        }
        #expect(calls.names.withLock { $0 } == ["first"], "nothing runs after the run was lost")
    }
}
