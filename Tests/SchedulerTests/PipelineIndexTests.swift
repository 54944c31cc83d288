import Etcd
import Foundation
import KilnCore
import KilnTestSupport
import NIOHTTP1
import Plugins
@testable import Scheduler
import Synchronization
import Testing

/// A plugin that counts its runs (named `notify`, so a project's pipeline can name it), and
/// does `during` (with the build's id) while it runs.
final class CountingPlugin: PostBuildPlugin {
    let runs = Mutex<[String]>([])
    let during: (@Sendable (String) async throws -> Void)?
    init(during: (@Sendable (String) async throws -> Void)? = nil) { self.during = during }
    var spec: PluginSpec { PluginCatalog.spec("notify")! }
    func run(_ context: PluginContext) async throws -> PluginResult {
        runs.withLock { $0.append("\(context.build.id)#\(context.run)") }
        try await during?(context.build.id)
        return PluginResult(summary: "counted")
    }
}

/// The pipeline index the leader follows, against a scheduler over a real etcd.
@Suite("Pipeline runs through the pipeline index")
struct PipelineIndexTests {
    static let project = #"{"name":"app","repository":"http://127.0.0.1:1/app.git","buildImage":"a:1","buildCommand":"make","pipeline":[{"plugin":"notify","settings":{"url":"http://127.0.0.1:9/x"}}]}"#

    /// The end of a build as its agent writes it (`BuildReporter.finish`): record succeeded
    /// with its first run pending, and the run's index entry, in one transaction.
    static func succeed(_ etcd: EtcdClient, project: String, run: Bool = true, indexed: Bool = true) async throws -> String {
        var b = Build(id: BuildID.generate(), project: project, ref: "main")
        b.status = .succeeded
        b.image = "registry/app:1"
        if run { b.deploy = PipelineRun(run: 1, pipeline: [PipelineStep(plugin: "notify", settings: ["url": .string("http://127.0.0.1:9/x")])], trigger: "build succeeded") }
        let keys = Keys()
        var ops: [TxnOp] = [.put(keys.build(b.id), try KilnJSON.encode(b))]
        if indexed { ops.append(.put(keys.pipelineIndexEntry(build: b.id), "")) }
        _ = try await etcd.txn(Txn(success: ops))
        return b.id
    }

    func run(of id: String, _ h: SchedulerHarness) async throws -> PipelineRun? {
        try await h.build(id).deploy
    }

    @Test func theLeaderRunsWhatTheIndexHoldsAndEmptiesIt() async throws {
        let plugin = CountingPlugin()
        try await withScheduler(plugins: [plugin]) { h in
            #expect(try await h.request(.POST, "/api/v1/projects", body: Self.project).status == 201)
            let id = try await Self.succeed(h.etcd, project: "app")
            try await h.waitFor(prefix: h.keys.pipelineIndex) { $0.isEmpty }
            #expect(try await run(of: id, h)?.status == .succeeded)
            #expect(plugin.runs.withLock { $0 } == ["\(id)#1"])

            // Run again (a roll back): the API writes the entry with the run; it runs and leaves.
            let again = try await h.request(.POST, "/api/v1/builds/\(id)/deploy")
            #expect(again.status == 202, "\(again.body)")
            try await h.waitFor(prefix: h.keys.build(id)) { kvs in
                kvs.first.flatMap { try? KilnJSON.decode(Build.self, from: $0.value) }.map { $0.deploy?.run == 2 && $0.deploy?.status == .succeeded } ?? false
            }
            try await h.waitFor(prefix: h.keys.pipelineIndex) { $0.isEmpty }
            #expect(plugin.runs.withLock { $0 } == ["\(id)#1", "\(id)#2"])

            // Entries with nothing to run (an ended run, a build that is gone) are removed.
            try await h.etcd.put(h.keys.pipelineIndexEntry(build: id), "")
            try await h.etcd.put(h.keys.pipelineIndexEntry(build: BuildID.generate()), "")
            try await h.waitFor(prefix: h.keys.pipelineIndex) { $0.isEmpty }
            #expect(plugin.runs.withLock { $0 }.count == 2)

            // A pending run without an entry (a record from before the index, not migrated) is
            // not found by the leader: it reads the index, not every record. The entry written
            // after it shows the leader got that far.
            let unindexed = try await Self.succeed(h.etcd, project: "app", indexed: false)
            try await h.etcd.put(h.keys.pipelineIndexEntry(build: BuildID.generate()), "")
            try await h.waitFor(prefix: h.keys.pipelineIndex) { $0.isEmpty }
            #expect(try await run(of: unindexed, h)?.status == .pending)
            // Its entry makes it run.
            try await h.etcd.put(h.keys.pipelineIndexEntry(build: unindexed), "")
            try await h.waitFor(prefix: h.keys.pipelineIndex) { $0.isEmpty }
            #expect(try await run(of: unindexed, h)?.status == .succeeded)
        }
    }

    @Test func aRunSurvivesAnotherFieldOfItsRecordChangingMeanwhile() async throws {
        // While the step runs, another writer changes another field of the record (part of
        // the log archived, say): the run's next writes read it again and keep that field.
        let root = Mutex<EtcdClient?>(nil)
        let plugin = CountingPlugin { id in
            let etcd = root.withLock { $0 }!, keys = Keys()
            var b = try KilnJSON.decode(Build.self, from: try await etcd.get(keys.build(id))!.value)
            b.waiting = "touched during the run"
            try await etcd.put(keys.build(id), try KilnJSON.encode(b))
        }
        try await withScheduler(plugins: [plugin]) { h in
            root.withLock { $0 = h.etcd }
            #expect(try await h.request(.POST, "/api/v1/projects", body: Self.project).status == 201)
            let id = try await Self.succeed(h.etcd, project: "app")
            try await h.waitFor(prefix: h.keys.pipelineIndex) { $0.isEmpty }
            let b = try await h.build(id)
            #expect(b.deploy?.status == .succeeded, "\(b.deploy?.error ?? "")")
            #expect(b.deploy?.steps.first?.summary == "counted")
            #expect(b.waiting == "touched during the run")
        }
    }
}
