@testable import BuildAgent
import DockerAPI
import Etcd
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
import Logging
import Testing

/// An agent's disk with real builds (etcd, podman, a registry, git): the images it keeps for
/// layer reuse and the ones it removes, and its mirrors and caches under a budget across many
/// projects (issue 14, point 5).
@Suite("Agent disk with real builds")
struct AgentDiskTests {
    /// A Dockerfile whose RUN step no earlier run of the tests has cached (the podman root is
    /// reused across runs).
    let dockerfile = "FROM localhost/kiln/busybox:1\nRUN echo \(UUID().uuidString) > /one && dd if=/dev/zero of=/pad bs=1k count=64 2>/dev/null\nCOPY version.txt /version.txt\n"

    let logger = { var l = Logger(label: "agent-disk-test"); l.logLevel = .critical; return l }()

    func keeper(_ farm: SecretsFarm, budget: Int64 = 1 << 40, keep: Int) -> DiskKeeper {
        DiskKeeper(dataDir: farm.dataDir, settings: .init(budget: budget, minFree: 0), docker: farm.docker, agentID: SecretsFarm.agentID, keepImages: keep, logger: logger)
    }

    func runner(_ farm: SecretsFarm, _ disk: DiskKeeper, keep: Int) -> BuildRunner {
        var config = farm.configuration()
        config.keepImages = keep
        return BuildRunner(configuration: config, etcd: farm.etcd, keys: farm.keys, docker: farm.docker, mirrorLocks: KeyedLock(), cacheLocks: KeyedLock(),
                           cacheLayers: CacheLayers(cachesDir: config.dataDir.appendingPathComponent("mvncache")),
                           logger: logger, secretsSource: nil, disk: disk)
    }

    /// Runs one build of `project` (with its Maven cache) to its end.
    func build(_ farm: SecretsFarm, _ runner: BuildRunner, _ project: Project) async throws -> SecretsFarm.Built {
        var build = Build(id: BuildID.generate(), project: project.name, ref: "main", mvncache: true)
        build.status = .assigned
        build.agent = SecretsFarm.agentID
        build.attempt = 1
        let task = BuildTask(build: build.id, project: project, ref: "main", commit: nil, tag: nil, mvncache: true, attempt: 1)
        let key = farm.keys.task(agent: SecretsFarm.agentID, build: build.id)
        _ = try await farm.etcd.put(farm.keys.build(build.id), try KilnJSON.encode(build))
        let revision = try await farm.etcd.put(key, try KilnJSON.encode(task))
        await runner.run(task: task, taskKey: key, taskCreateRevision: revision, control: BuildControl())
        return try await farm.result(build.id)
    }

    func project(_ farm: SecretsFarm, _ name: String, command: String = "true", buildImage: String = busyboxImage) -> Project {
        Project(name: name, repository: farm.git.originURL, buildImage: buildImage, buildCommand: command)
    }

    @Test func aPushedImageLeavesItsFarmNameAndTheNewestFewStayForTheirLayers() async throws {
        try await SecretsFarm.with(suite: "disk") { farm in
            let disk = keeper(farm, keep: 2)
            _ = await disk.start()
            let runner = runner(farm, disk, keep: 2)
            try await runner.prepare()
            let app = project(farm, "layers")
            var kept: [[KeptImages.Kept]] = []
            var logs: [String] = []
            for i in 1...3 {
                try farm.git.commit(["Dockerfile": dockerfile, "version.txt": "\(i)\n"])
                let built = try await build(farm, runner, app)
                #expect(built.build.status == .succeeded, "\(built.build.error ?? "")\n\(built.log)")
                let tag = try #require(built.build.tag)
                #expect(try await !farm.docker.imageExists("\(farm.farmRegistry.address)/layers:\(tag)"), "the farm's name leaves the storage")
                #expect(built.log.contains("kept the image in this agent's storage"))
                kept.append(await disk.images!.all().filter { $0.project == "layers" })
                logs.append(built.log)
            }
            #expect(kept.map(\.count) == [1, 2, 2])
            #expect(!kept[2].contains(kept[0][0]), "the oldest went when the third came")
            #expect(try await !farm.docker.imageExists(kept[0][0].name))
            // The second build found the first one's layers: its RUN step came from the cache.
            #expect(!logs[0].contains("Using cache") && logs[1].contains("Using cache"), "\(logs[1])")

            // Another project names a kept image by a prefix of its ID: refused before any container.
            let id = try #require(try await farm.docker.imageID(kept[2][1].name)).replacingOccurrences(of: "sha256:", with: "")
            let thief = try await build(farm, runner, project(farm, "thief", command: "cat /version.txt", buildImage: String(id.prefix(4))))
            #expect(thief.build.status == .failed && thief.build.error?.contains("could be read as an image ID") == true, "\(thief.build.error ?? "")")

            // A build that fails keeps nothing new.
            try farm.git.commit(["Dockerfile": dockerfile + "RUN false\n", "version.txt": "4\n"])
            let failed = try await build(farm, runner, app)
            #expect(failed.build.status == .failed)
            #expect(await disk.images!.all().filter { $0.project == "layers" } == kept[2])

            // An agent started with --keep-images 0 removes what an earlier run kept.
            let none = keeper(farm, keep: 0)
            _ = await none.start()
            #expect(await none.images!.all().isEmpty)
            #expect(try await !farm.docker.imageExists(kept[2][1].name))
        }
    }

    @Test func anAgentBuildingManyProjectsStaysUnderItsBudgetLeastRecentlyUsedFirst() async throws {
        try await SecretsFarm.with(suite: "disk") { farm in
            // About 260 KiB per project (mirror and a 200 KiB Maven cache): three fit in 800 KiB.
            let budget: Int64 = 800 << 10
            let disk = keeper(farm, budget: budget, keep: 1)
            _ = await disk.start()
            let runner = runner(farm, disk, keep: 1)
            try await runner.prepare()
            try farm.git.commit(["Dockerfile": dockerfile, "version.txt": "1\n"])
            let names = (1...7).map { "p\($0)" }
            let fill = "dd if=/dev/urandom of=/root/.m2/blob-$KILN_BUILD bs=1k count=200 2>/dev/null"
            for name in names {
                let built = try await build(farm, runner, project(farm, name, command: fill))
                #expect(built.build.status == .succeeded, "\(name): \(built.build.error ?? "")")
                let held = try du(farm.dataDir.appendingPathComponent("mirrors")) + du(farm.dataDir.appendingPathComponent("mvncache"))
                #expect(held <= budget, "after \(name): \(held) bytes on disk")
                let status = await disk.check()
                #expect(status.used <= budget && status.budget == budget)
            }
            // The last projects are still here, the first ones gone with their kept images.
            let mirrors = Set(try FileManager.default.contentsOfDirectory(atPath: farm.dataDir.appendingPathComponent("mirrors").path))
            #expect(mirrors.contains("p7.git") && mirrors.contains("p6.git") && !mirrors.contains("p1.git"), "\(mirrors.sorted())")
            let keptProjects = Set(await disk.images!.all().map(\.project))
            #expect(keptProjects.isSubset(of: Set(mirrors.map { String($0.dropLast(4)) })) && keptProjects.contains("p7"), "\(keptProjects)")
            // A project built again after its eviction builds as the first time.
            let again = try await build(farm, runner, project(farm, "p1", command: fill))
            #expect(again.build.status == .succeeded)
            #expect(try du(farm.dataDir.appendingPathComponent("mirrors")) + du(farm.dataDir.appendingPathComponent("mvncache")) <= budget)
            // No checkout is left behind.
            #expect(((try? FileManager.default.contentsOfDirectory(atPath: farm.dataDir.appendingPathComponent("workspaces").path)) ?? []).isEmpty)
            // Leave the test root as found: this agent's kept images go.
            let none = keeper(farm, keep: 0)
            _ = await none.start()
            #expect(await none.images!.all().isEmpty)
        }
    }

    /// What `du` says a folder takes (bytes).
    func du(_ url: URL) throws -> Int64 {
        let out = try run("du", ["-s", "-B1", url.path])
        return Int64(out.split(separator: "\t").first ?? "") ?? -1
    }
}
