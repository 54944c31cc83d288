import BuildAgent
import Etcd
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
import Logging
import Testing

/// The agent's end of a build with a pipeline puts the run's entry in the pipeline index, as
/// its own etcd user (the grant of `EtcdAccess.agent`), in the same transaction as the record.
@Suite("Pipeline index entries from the agent")
struct PipelineIndexEntryTests {
    @Test func aBuildThatSucceedsWithAPipelineIndexesItsRunAndOneWithoutDoesNot() async throws {
        try await withEtcd(timeout: nil) { server, _ in
            let dir = try TempDir("pipeline-index-agent")
            let users = try await EtcdUsers.enable(endpoint: server.endpoint, credentialsDir: dir.path("credentials"))
            try await users.ensure(.agent("sim-1"))
            let etcd = users.rootClient, keys = Keys()
            let logger = { var l = Logger(label: "test"); l.logLevel = .critical; return l }()
            var agent = AgentConfiguration(id: "sim-1", capacity: 2, ttlSeconds: 4, dataDir: dir.path("agent"), etcdEndpoint: server.endpoint,
                                           dockerSocket: dir.path("no-such.sock").path, simulate: SimulatedDuration(seconds: 0.1))
            agent.etcdCredentials = try users.credentials(.agent("sim-1"))
            let config = agent
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await AgentService(configuration: config, logger: logger).run() }
                defer { group.cancelAll() }
                try await waitUntil(etcd, prefix: keys.agent("sim-1")) { !$0.isEmpty }
                var ids: [String] = []
                for pipeline in [[PipelineStep(plugin: "notify", settings: ["url": .string("http://127.0.0.1:9/x")])], nil] {
                    var project = Project(name: "sim", repository: "http://127.0.0.1:1/sim.git", buildImage: "a:1", buildCommand: "make")
                    project.pipeline = pipeline
                    var build = Build(id: BuildID.generate(), project: project.name, ref: "main")
                    build.status = .assigned
                    build.agent = "sim-1"
                    build.attempt = 1
                    let task = BuildTask(build: build.id, project: project, ref: "main", commit: nil, tag: nil, mvncache: true, attempt: 1, cancel: false)
                    try await etcd.put(keys.build(build.id), try KilnJSON.encode(build))
                    try await etcd.put(keys.task(agent: "sim-1", build: build.id), try KilnJSON.encode(task))
                    try await waitUntil(etcd, prefix: keys.build(build.id)) { kvs in
                        kvs.first.flatMap { try? KilnJSON.decode(Build.self, from: $0.value) }?.status.isFinal ?? false
                    }
                    ids.append(build.id)
                }
                let withRun = try KilnJSON.decode(Build.self, from: try #require(try await etcd.get(keys.build(ids[0]))).value)
                #expect(withRun.status == .succeeded && withRun.deploy?.status == .pending)
                let entries = try await etcd.range(prefix: keys.pipelineIndex).kvs.map(\.key)
                #expect(entries == [keys.pipelineIndexEntry(build: ids[0])], "only the build with a pipeline waits for a run")
            }
        }
    }
}
