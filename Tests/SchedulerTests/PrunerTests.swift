import Etcd
import Foundation
import KilnCore
import KilnTestSupport
import Logging
@testable import Scheduler
import Testing

/// A log archive in a folder, one file per build: a stand-in for part B's `LocalLogArchive`,
/// which is not on main yet (issue 14). It keeps the protocol's rules: a store is a whole
/// file (written aside, then renamed), a delete of a build without one is no error.
struct FolderLogArchive: LogArchive {
    let folder: URL

    func file(_ build: String) -> URL { folder.appendingPathComponent("\(build).log") }

    func store(build: String, lines: [String]) async throws -> String? {
        let temp = folder.appendingPathComponent(".\(build).\(UUID().uuidString)")
        try Data(lines.map { $0 + "\n" }.joined().utf8).write(to: temp)
        guard rename(temp.path, file(build).path) == 0 else { throw CocoaError(.fileWriteUnknown) }
        return nil
    }

    func read(build: String) async throws -> [String]? {
        guard let data = FileManager.default.contents(atPath: file(build).path) else { return nil }
        return String(decoding: data, as: UTF8.self).split(separator: "\n").map(String.init)
    }

    func delete(build: String) async throws {
        if FileManager.default.fileExists(atPath: file(build).path) { try FileManager.default.removeItem(at: file(build)) }
    }

    var builds: Set<String> {
        Set(((try? FileManager.default.contentsOfDirectory(atPath: folder.path)) ?? []).filter { $0.hasSuffix(".log") }.map { String($0.dropLast(4)) })
    }
}

/// What the tests write into etcd the way the farm writes it: project records, build records
/// with their index entry (part C writes it at enqueue; written here by hand), log chunks, an
/// archived log, apps and activity.
struct RetentionFarm: Sendable {
    let etcd: EtcdClient
    let archive: FolderLogArchive
    let keys = Keys()
    let now = Date()

    func pruner(batchSize: Int = 100) -> Pruner {
        var logger = Logger(label: "pruner-test")
        logger.logLevel = .warning
        return Pruner(etcd: etcd, keys: keys, archive: archive,
                      configuration: .init(interval: .seconds(3600), firstPassDelay: .zero, batchSize: batchSize, pause: .milliseconds(1)), logger: logger)
    }

    func project(_ name: String, _ retention: BuildRetention? = nil) async throws {
        var p = Project(name: name, repository: "http://127.0.0.1:1/\(name).git", buildImage: "a:1", buildCommand: "make")
        p.retention = retention
        try await etcd.put(keys.project(name), try KilnJSON.encode(p))
    }

    /// A build made `age` days ago, with two log chunks and an archived log.
    @discardableResult
    func build(_ project: String, age: Double, _ status: BuildStatus = .succeeded, deploy: PipelineStatus? = nil) async throws -> String {
        let created = now.addingTimeInterval(-age * 86_400)
        var b = Build(id: BuildID.generate(now: created), project: project, ref: "main", createdAt: created)
        b.status = status
        if let deploy {
            var run = PipelineRun(run: 1, pipeline: [PipelineStep(plugin: "deploy")], trigger: "build succeeded")
            run.status = deploy
            b.deploy = run
        }
        let chunk = try KilnJSON.encode(LogChunk(seq: 0, lines: ["line of \(b.id)"]))
        _ = try await etcd.txn(Txn(success: [
            .put(keys.build(b.id), try KilnJSON.encode(b)), .put(keys.buildIndexEntry(project: project, build: b.id), ""),
            .put(keys.logChunk(build: b.id, attempt: 1, seq: 0), chunk), .put(keys.logChunk(build: b.id, attempt: 1, seq: 1), chunk),
        ]))
        try await archive.store(build: b.id, lines: ["line of \(b.id)"])
        return b.id
    }

    func version(_ n: Int, _ build: String, _ state: VersionState) -> AppVersion {
        AppVersion(number: n, build: build, project: "shop", image: "r/shop@sha256:x", backend: "local", cells: ["c1"], settings: DeploySettings(port: 8080), state: state)
    }

    /// What is left of a build: record, index entry, log chunks, archive.
    func left(_ project: String, _ id: String) async throws -> [String] {
        var parts: [String] = []
        if try await etcd.get(keys.build(id)) != nil { parts.append("record") }
        if try await etcd.get(keys.buildIndexEntry(project: project, build: id)) != nil { parts.append("index") }
        if try await etcd.range(prefix: keys.logs(of: id)).count > 0 { parts.append("logs") }
        if archive.builds.contains(id) { parts.append("archive") }
        return parts
    }

    func indexed(_ project: String) async throws -> [String] {
        try await etcd.range(prefix: keys.buildIndex(project: project)).kvs.compactMap { Keys.name(of: $0.key, under: keys.buildIndex(project: project)) }
    }
}

func withRetentionFarm(_ body: @escaping @Sendable (RetentionFarm) async throws -> Void) async throws {
    try await withEtcd { _, etcd in
        let folder = try TempDir("log-archive")
        defer { withExtendedLifetime(folder) {} }
        try await body(RetentionFarm(etcd: etcd, archive: FolderLogArchive(folder: folder.url)))
    }
}

let whole = ["record", "index", "logs", "archive"]

@Suite("Retention's pruner against a real etcd", .serialized)
struct PrunerTests {
    @Test func oldBuildsGoWithTheirIndexLogsAndArchiveAndTheLastAndYoungStay() async throws {
        try await withRetentionFarm { farm in
            try await farm.project("shop", BuildRetention(keepBuilds: 3, keepDays: 30))
            var old: [String] = []
            for i in 0..<6 { old.append(try await farm.build("shop", age: 100 - Double(i))) }
            let young = [try await farm.build("shop", age: 2), try await farm.build("shop", age: 1)]
            // A project whose name starts the same is its own.
            try await farm.project("shop-a", BuildRetention(keepBuilds: 500, keepDays: 1))
            let neighbour = try await farm.build("shop-a", age: 100)

            let report = try await farm.pruner().pass(fence: [])
            #expect(report.builds == 5 && report.archiveFailures == 0 && report.changedMeanwhile == 0, "\(report)")
            for id in old.prefix(5) { #expect(try await farm.left("shop", id) == [], "\(id)") }
            // The last three: the newest old one and the two young ones; every part of them stays.
            for id in [old[5]] + young { #expect(try await farm.left("shop", id) == whole, "\(id)") }
            #expect(try await farm.indexed("shop") == [old[5]] + young)
            #expect(try await farm.left("shop-a", neighbour) == whole)
            // The next pass finds nothing more.
            #expect(try await farm.pruner().pass(fence: []).builds == 0)
        }
    }

    @Test func neitherAnAppsVersionsNorWhatRunsIsPrunedPastEveryLimit() async throws {
        try await withRetentionFarm { farm in
            try await farm.project("shop", BuildRetention(keepBuilds: 0, keepDays: 1))
            let rollBack = try await farm.build("shop", age: 900)
            let live = try await farm.build("shop", age: 800)
            let running = try await farm.build("shop", age: 700, .running)
            let queued = try await farm.build("shop", age: 700, .queued)
            let deploying = try await farm.build("shop", age: 600, deploy: .running)
            let plain = try await farm.build("shop", age: 500, .failed)
            try await farm.etcd.put(farm.keys.app("shop"), try KilnJSON.encode(App(name: "shop", versions: [
                farm.version(1, rollBack, .retired), farm.version(2, live, .live)], project: "shop")))

            let first = try await farm.pruner().pass(fence: [])
            #expect(first.builds == 1)
            #expect(try await farm.left("shop", plain) == [])
            for id in [rollBack, live, running, queued, deploying] { #expect(try await farm.left("shop", id) == whole, "\(id)") }

            // A new version goes live, the old live one is retired, and the app keeps two: the
            // oldest version leaves the record, and its build is no longer a roll-back candidate.
            let newest = try await farm.build("shop", age: 0.1)
            var app = App(name: "shop", versions: [farm.version(1, rollBack, .retired), farm.version(2, live, .retired), farm.version(3, newest, .live)], project: "shop")
            app.keepVersions = 2
            try await farm.etcd.put(farm.keys.app("shop"), try KilnJSON.encode(app))
            let second = try await farm.pruner().pass(fence: [])
            #expect(second.appVersions == 1 && second.builds == 1, "\(second)")
            #expect(try await farm.left("shop", rollBack) == [])
            #expect(try await farm.left("shop", live) == whole)
            let stored = try KilnJSON.decode(App.self, from: try #require(try await farm.etcd.get(farm.keys.app("shop"))).value)
            #expect(stored.versions.map(\.number) == [2, 3])
        }
    }

    @Test func eachProjectHasItsOwnSettingsAndADeletedProjectsBuildsGoByAge() async throws {
        try await withRetentionFarm { farm in
            try await farm.project("tight", BuildRetention(keepBuilds: 1, keepDays: 1))
            try await farm.project("roomy")
            var tight: [String] = [], roomy: [String] = [], gone: [String] = []
            for i in 0..<4 {
                tight.append(try await farm.build("tight", age: 100 - Double(i)))
                roomy.append(try await farm.build("roomy", age: 100 - Double(i)))
            }
            // "gone" has builds in the index but no record any more.
            for i in 0..<3 { gone.append(try await farm.build("gone", age: 200 - Double(i))) }
            let goneRecent = try await farm.build("gone", age: 10)
            // A project record that does not decode is not taken for deleted: its builds stay.
            try await farm.etcd.put(farm.keys.project("broken"), "{not json")
            let broken = try await farm.build("broken", age: 900)
            // An index entry whose record names another project: left to a person.
            try await farm.project("elsewhere")
            let stray = try await farm.build("elsewhere", age: 500)
            try await farm.etcd.put(farm.keys.buildIndexEntry(project: "gone", build: stray), "")

            let report = try await farm.pruner().pass(fence: [])
            #expect(report.builds == 6, "\(report)")
            #expect(try await farm.indexed("tight") == [tight[3]])
            #expect(try await farm.indexed("roomy") == roomy)
            #expect(try await farm.indexed("gone") == [stray, goneRecent])
            #expect(try await farm.left("elsewhere", stray) == whole)
            for id in gone { #expect(try await farm.left("gone", id) == []) }
            #expect(try await farm.left("broken", broken) == whole)
        }
    }

    @Test func aRecordWrittenBetweenTheReadAndTheDeleteIsNotLost() async throws {
        try await withRetentionFarm { farm in
            try await farm.project("shop", BuildRetention(keepBuilds: 0, keepDays: 1))
            let id = try await farm.build("shop", age: 100)
            let pruner = farm.pruner()
            let plan = try await pruner.plan(project: "shop", ids: [id], before: 0, total: 1, retention: BuildRetention(keepBuilds: 0, keepDays: 1), now: farm.now)
            #expect(plan.page.pruned == [id])

            // Between the read and the delete, the build's record is written again (an agent's
            // end record retried late; a person asking for a roll back to it).
            var b = try KilnJSON.decode(Build.self, from: try #require(try await farm.etcd.get(farm.keys.build(id))).value)
            b.deploy = PipelineRun(run: 1, pipeline: [PipelineStep(plugin: "deploy")], trigger: "api by mia")
            try await farm.etcd.put(farm.keys.build(id), try KilnJSON.encode(b))

            #expect(try await pruner.delete(build: id, project: "shop", modRevision: try #require(plan.revisions[id]), fence: []) == .changed)
            #expect(try await farm.left("shop", id) == whole)
            let kept = try KilnJSON.decode(Build.self, from: try #require(try await farm.etcd.get(farm.keys.build(id))).value)
            #expect(kept.deploy?.trigger == "api by mia")
            // And the next pass judges it again: its run waits, so it stays.
            #expect(try await pruner.pass(fence: []).builds == 0)

            // An index entry whose record was missing, and the record appears before the delete.
            let late = BuildID.generate(now: farm.now.addingTimeInterval(-100 * 86_400))
            try await farm.etcd.put(farm.keys.buildIndexEntry(project: "shop", build: late), "")
            let plan2 = try await pruner.plan(project: "shop", ids: [late], before: 0, total: 2, retention: BuildRetention(keepBuilds: 0, keepDays: 1), now: farm.now)
            #expect(plan2.page.pruned == [late] && plan2.revisions[late] == 0)
            try await farm.etcd.put(farm.keys.build(late), try KilnJSON.encode(Build(id: late, project: "shop", ref: "main")))
            #expect(try await pruner.delete(build: late, project: "shop", modRevision: 0, fence: []) == .changed)
            #expect(try await farm.etcd.get(farm.keys.build(late)) != nil)
            // Gone again, the stale entry is removed.
            try await farm.etcd.delete(farm.keys.build(late))
            #expect(try await pruner.delete(build: late, project: "shop", modRevision: 0, fence: []) == .deleted(archived: true))
            #expect(try await farm.indexed("shop") == [id])
        }
    }

    @Test func aDeposedLeadersPassChangesNothing() async throws {
        try await withRetentionFarm { farm in
            try await farm.project("shop", BuildRetention(keepBuilds: 0, keepDays: 1))
            let id = try await farm.build("shop", age: 100)
            try await farm.etcd.put(farm.keys.activityEvent(.project, "shop", at: farm.now.addingTimeInterval(-400 * 86_400), id: "aaaa"), "{}")
            var app = App(name: "shop", versions: (1...3).map { farm.version($0, "b\($0)", .retired) })
            app.keepVersions = 1
            try await farm.etcd.put(farm.keys.app("shop"), try KilnJSON.encode(app))
            let rev = try await farm.etcd.put(farm.keys.leader, "me")
            let before = try await farm.etcd.range(prefix: "/").kvs.map { "\($0.key)@\($0.modRevision)" }

            // Its pass stops at the first build it tries to delete; the app it tried first is unchanged.
            await #expect(throws: Pruner.TermEnded.self) { try await farm.pruner().pass(fence: [.createRevision(farm.keys.leader, .equal, rev - 1)]) }
            let activity = try await farm.pruner().pruneActivity(projects: [:], apps: [], fence: [.createRevision(farm.keys.leader, .equal, rev - 1)], now: farm.now)
            #expect(activity == 0)
            #expect(try await farm.etcd.range(prefix: "/").kvs.map { "\($0.key)@\($0.modRevision)" } == before)
            #expect(farm.archive.builds.contains(id))

            // The term that holds: all three go.
            let current = try await farm.pruner().pass(fence: [.createRevision(farm.keys.leader, .equal, rev)])
            #expect(current.builds == 1 && current.activityEvents == 1 && current.appVersions == 2, "\(current)")
        }
    }

    @Test func activityGoesPastItsResourcesAge() async throws {
        try await withRetentionFarm { farm in
            try await farm.project("shop", BuildRetention(keepBuilds: 500, keepDays: 10))
            try await farm.etcd.put(farm.keys.app("shop-app"), try KilnJSON.encode(App(name: "shop-app", project: "shop")))
            func event(_ kind: ResourceKind, _ name: String, age: Double) async throws -> String {
                let key = farm.keys.activityEvent(kind, name, at: farm.now.addingTimeInterval(-age * 86_400), id: Secret.random(bytes: 4))
                try await farm.etcd.put(key, try KilnJSON.encode(ActivityEvent(user: "mia", action: "settings changed")))
                return key
            }
            // The project's own age, the app's owner's, the default (90 days) for a group and
            // for an app without a project.
            let goes = [try await event(.project, "shop", age: 11), try await event(.app, "shop-app", age: 11),
                        try await event(.group, "team", age: 91), try await event(.app, "orphan", age: 91), try await event(.project, "gone", age: 91)]
            let stays = [try await event(.project, "shop", age: 9), try await event(.app, "shop-app", age: 9),
                         try await event(.group, "team", age: 89), try await event(.app, "orphan", age: 89), try await event(.project, "gone", age: 89)]
            let report = try await farm.pruner(batchSize: 1).pass(fence: [])
            #expect(report.activityEvents == goes.count)
            for key in goes { #expect(try await farm.etcd.get(key) == nil, "\(key)") }
            for key in stays { #expect(try await farm.etcd.get(key) != nil, "\(key)") }
        }
    }

    @Test func aLongFirstPassGoesPageByPage() async throws {
        try await withRetentionFarm { farm in
            try await farm.project("busy", BuildRetention(keepBuilds: 5, keepDays: 1))
            var ids: [String] = []
            for i in 0..<45 { ids.append(try await farm.build("busy", age: 400 - Double(i))) }
            let started = try await farm.etcd.status()
            let report = try await farm.pruner(batchSize: 7).pass(fence: [])
            #expect(report.builds == 40)
            #expect(try await farm.indexed("busy") == Array(ids.suffix(5)))
            #expect(farm.archive.builds == Set(ids.suffix(5)))
            // One transaction per build: nothing bigger than a build at a time.
            #expect(try await farm.etcd.status() - started == 40)
        }
    }

    @Test func theLeaderPrunesFromTheStartOfItsTermAndAFollowerNever() async throws {
        try await withRetentionFarm { farm in
            try await farm.project("shop", BuildRetention(keepBuilds: 0, keepDays: 1))
            let id = try await farm.build("shop", age: 100)
            try await farm.etcd.put(farm.keys.leader, "someone-else")
            // Not this scheduler's term: returns without a pass.
            try await withTimeout(.seconds(10)) { await farm.pruner().lead(schedulerID: "me") }
            #expect(try await farm.left("shop", id) == whole)

            try await farm.etcd.put(farm.keys.leader, "me")
            let leading = Task { await farm.pruner().lead(schedulerID: "me") }
            defer { leading.cancel() }
            try await waitUntil(farm.etcd, prefix: farm.keys.buildIndex(project: "shop")) { $0.isEmpty }
            #expect(try await farm.left("shop", id) == [])
        }
    }
}
