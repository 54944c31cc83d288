import Etcd
import Foundation
import KilnCore
import KilnTestSupport
import Logging
import NIOHTTP1
import Synchronization
@testable import Scheduler
import Testing

/// The repository index the webhook reads, and the one-time migration of records from before
/// the indexes, against a scheduler over a real etcd.
@Suite("Indexes: repositories and the migration")
struct IndexTests {
    static let quiet = { var l = Logger(label: "test"); l.logLevel = .critical; return l }()

    func entries(_ h: SchedulerHarness, _ prefix: String) async throws -> [String] {
        try await h.etcd.range(prefix: prefix, options: .init(keysOnly: true)).kvs.map { String($0.key.dropFirst(prefix.count)) }
    }

    @Test func theRepositoryIndexFollowsTheProjectsSaveAndFeedsTheWebhook() async throws {
        try await withScheduler { h in
            let body = #"{"name":"shop","repository":"https://deploy@Git.Example.com/group/shop.git/","buildImage":"a:1","buildCommand":"make","webhookSecret":"t0ken"}"#
            #expect(try await h.request(.POST, "/api/v1/projects", body: body).status == 201)
            // Keyed as the webhook compares: no user, host in lower case, no `.git` or `/`; one key component.
            #expect(try await entries(h, h.keys.repoIndex) == ["https%3A%2F%2Fgit.example.com%2Fgroup%2Fshop/shop"])
            let push = try WebhookTests.push(["project": #"{"git_http_url":"https://git.example.com/group/shop","git_ssh_url":"git@git.example.com:group/shop.git"}"#, "ref": #""refs/heads/main""#])
            func deliver() async throws -> HTTPReply {
                try await httpRequest(.POST, h.api + "/hooks/gitlab", body: push, headers: [("X-Gitlab-Event", "Push Hook"), ("X-Gitlab-Token", "t0ken")])
            }
            #expect(try await deliver().status == 201)

            // Another repository moves the entry in the save's transaction.
            let moved = body.replacingOccurrences(of: "https://deploy@Git.Example.com/group/shop.git/", with: "git@git.example.com:group/shop-v2.git")
            #expect(try await h.request(.POST, "/api/v1/projects", body: moved).status == 200)
            #expect(try await entries(h, h.keys.repoIndex) == ["ssh%3A%2F%2Fgit.example.com%2Fgroup%2Fshop-v2/shop"])
            #expect(try await deliver().status == 401, "the old repository no longer builds shop")

            // An entry whose record says otherwise (changed by hand, outside a save) finds nothing.
            try await h.etcd.put(h.keys.repoIndexEntry(url: SchedulerStore.repositoryIndexName("https://git.example.com/group/shop"), project: "shop"), "")
            #expect(try await deliver().status == 401)
            let store = SchedulerStore(etcd: h.etcd)
            #expect(try await store.projects(withRepositoryIn: ["ssh://git.example.com/group/shop-v2"]).map(\.name) == ["shop"])
            #expect(try await store.projects(withRepositoryIn: ["https://git.example.com/group/shop"]).isEmpty)
        }
    }

    /// Records as a farm from before the indexes left them: no entry of any index, no marker.
    static func legacyFarm(_ etcd: EtcdClient, keys: Keys = Keys()) async throws -> [Build] {
        var builds: [Build] = []
        for (i, name) in ["old-a", "old-b"].enumerated() {
            let p = Project(name: name, repository: "http://git.example.com/g/\(name).git", buildImage: "a:1", buildCommand: "make")
            try await etcd.put(keys.project(name), try KilnJSON.encode(p))
            for j in 0..<(60 + i) {
                var b = Build(id: BuildID.generate(), project: name, ref: "main")
                if j == 3 {
                    b.status = .succeeded
                    b.deploy = PipelineRun(run: 1, pipeline: [PipelineStep(plugin: "notify")], trigger: "build succeeded")
                } else if j == 4 {
                    b.status = .succeeded
                    var run = PipelineRun(run: 1, pipeline: [PipelineStep(plugin: "notify")], trigger: "build succeeded")
                    run.status = .succeeded
                    b.deploy = run
                }
                try await etcd.put(keys.build(b.id), try KilnJSON.encode(b))
                builds.append(b)
            }
        }
        // What the migration must not trip on: a record that is not a build, a stale repository entry.
        try await etcd.put(keys.builds + "not-a-build", "{")
        try await etcd.put(keys.repoIndexEntry(url: "stale", project: "old-a"), "")
        return builds
    }

    @Test func aSchedulersStartIndexesTheRecordsFromBeforeOnce() async throws {
        let made = Mutex<[Build]>([])
        try await withScheduler(prepare: { etcd in let b = try await Self.legacyFarm(etcd); made.withLock { $0 = b } }) { h in
            let builds = made.withLock { $0 }
            #expect(try await h.etcd.get(h.keys.indexSchema)?.string == "1")
            for p in ["old-a", "old-b"] {
                #expect(try await entries(h, h.keys.buildIndex(project: p)) == builds.filter { $0.project == p }.map(\.id).sorted())
            }
            // Only the run that waits is in the pipeline index.
            #expect(try await entries(h, h.keys.pipelineIndex) == builds.filter { $0.deploy?.status == .pending }.map(\.id).sorted())
            #expect(try await entries(h, h.keys.repoIndex).sorted() == ["http%3A%2F%2Fgit.example.com%2Fg%2Fold-a/old-a", "http%3A%2F%2Fgit.example.com%2Fg%2Fold-b/old-b"])
            // The listing of a project now finds its old builds through the index.
            let page = try KilnJSON.decode([Build].self, from: try await h.request(.GET, "/api/v1/builds?project=old-b&limit=1000").body)
            #expect(page.count == 61)

            // A later start skips it; two at once (no marker) do no harm.
            let migration = IndexMigration(store: SchedulerStore(etcd: h.etcd), logger: Self.quiet)
            #expect(try await migration.runIfNeeded() == false)
            let before = try await entries(h, h.keys.index)
            try await h.etcd.delete(h.keys.indexSchema)
            async let one = migration.runIfNeeded()
            async let two = migration.runIfNeeded()
            #expect(try await [one, two] == [true, true])
            #expect(try await entries(h, h.keys.index) == before)
            #expect(try await h.etcd.get(h.keys.indexSchema)?.string == "1")
            // A newer schema's marker is not overwritten.
            try await h.etcd.put(h.keys.indexSchema, "7")
            #expect(try await migration.runIfNeeded() == false)
            #expect(try await h.etcd.get(h.keys.indexSchema)?.string == "7")
        }
    }

    @Test func aBuildDeletedOrChangedWhileItsPageIsIndexedGetsNoStaleEntry() async throws {
        try await withScheduler { h in
            let builds = try await Self.legacyFarm(h.etcd).sorted { $0.id < $1.id }
            try await h.etcd.delete(h.keys.indexSchema)
            // Between the read of the first page and its write, retention deletes one build of
            // it and an agent changes another: the page's compare fails, each build is done alone.
            let gone = builds[10], changed = builds[20]
            var migration = IndexMigration(store: SchedulerStore(etcd: h.etcd), logger: Self.quiet)
            let etcd = h.etcd, keys = h.keys
            migration.afterPageRead = { ids in
                guard ids.contains(gone.id) else { return }
                try await etcd.delete(keys.build(gone.id))
                var c = changed
                c.waiting = "changed meanwhile"
                try await etcd.put(keys.build(c.id), try KilnJSON.encode(c))
            }
            #expect(try await migration.runIfNeeded())
            #expect(try await h.etcd.get(h.keys.buildIndexEntry(project: gone.project, build: gone.id)) == nil)
            #expect(try await h.etcd.get(h.keys.buildIndexEntry(project: changed.project, build: changed.id)) != nil)
            #expect(try await h.etcd.count(prefix: h.keys.index + "builds/") == Int64(builds.count - 1))
        }
    }
}
