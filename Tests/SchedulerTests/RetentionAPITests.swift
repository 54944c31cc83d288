import Etcd
import Foundation
import KilnCore
import KilnTestSupport
import Scheduler
import Testing

/// The retention settings through the real API (docs/retention.md); who may read and change
/// them is in `IdentityTests`' role tables.
@Suite("Retention settings through the API", .serialized)
struct RetentionAPITests {
    @Test func aProjectsRetentionIsSavedCheckedShownAndChangedAlone() async throws {
        try await withScheduler { h in
            let project = #"{"name":"shop","repository":"http://127.0.0.1:1/shop.git","buildImage":"a:1","buildCommand":"make","retention":{"keepBuilds":20,"keepDays":7}}"#
            let saved = try await h.request(.POST, "/api/v1/projects", body: project)
            #expect(saved.status == 201, "\(saved.body)")
            #expect(try KilnJSON.decode(Project.self, from: saved.body).retention == BuildRetention(keepBuilds: 20, keepDays: 7))
            #expect(try KilnJSON.decode(BuildRetention.self, from: try await h.request(.GET, "/api/v1/projects/shop/retention").body) == BuildRetention(keepBuilds: 20, keepDays: 7))

            let bad = try await h.request(.POST, "/api/v1/projects", body: project.replacingOccurrences(of: #""keepDays":7"#, with: #""keepDays":0"#))
            #expect(bad.status == 400 && bad.body.contains("retention.keepDays 0 is out of range"), "\(bad.body)")

            // A PUT changes the retention only; a field left out takes its default.
            let changed = try await h.request(.PUT, "/api/v1/projects/shop/retention", body: #"{"keepDays":30}"#)
            #expect(changed.status == 200, "\(changed.body)")
            let stored = try KilnJSON.decode(Project.self, from: try #require(try await h.etcd.get(h.keys.project("shop"))).value)
            #expect(stored.retention == BuildRetention(keepBuilds: 500, keepDays: 30))
            #expect(stored.buildCommand == "make" && stored.repository == "http://127.0.0.1:1/shop.git")
            let activity = try await h.request(.GET, "/api/v1/projects/shop/activity").body
            #expect(activity.contains("retention: keeps the last 500 builds and every build of the last 30 days"), "\(activity)")

            for (body, message) in [(#"{"keepBuilds":-1}"#, "retention.keepBuilds -1 is out of range"), (#"{"keepDays":4000}"#, "retention.keepDays 4000"),
                                    (#"{"keepDays":"thirty"}"#, "field 'keepDays' has the wrong type"), ("", "the request body is empty")] {
                let r = try await h.request(.PUT, "/api/v1/projects/shop/retention", body: body)
                #expect(r.status == 400 && r.body.contains(message), "\(body): \(r.status) \(r.body)")
            }
            #expect(try KilnJSON.decode(Project.self, from: try #require(try await h.etcd.get(h.keys.project("shop"))).value).retention == BuildRetention(keepBuilds: 500, keepDays: 30))
            #expect(try await h.request(.PUT, "/api/v1/projects/nothing/retention", body: "{}").status == 404)
            #expect(try await h.request(.GET, "/api/v1/projects/nothing/retention").status == 404)

            // A project saved without the setting keeps the defaults, and says so.
            let plain = try await h.request(.POST, "/api/v1/projects", body: SchedulerHarness.demoProject)
            #expect(plain.status == 201)
            #expect(try KilnJSON.decode(BuildRetention.self, from: try await h.request(.GET, "/api/v1/projects/demo/retention").body) == .defaults)
        }
    }

    @Test func anAppsNumberOfVersionsIsRefusedBelowTheRunningOnesAndPrunesAtOnce() async throws {
        try await withScheduler { h in
            func v(_ n: Int, _ state: VersionState) -> AppVersion {
                AppVersion(number: n, build: "b\(n)", project: "shop", image: "r/shop@sha256:x", backend: "local", cells: ["c1"], settings: DeploySettings(port: 8080), state: state)
            }
            try await h.etcd.put(h.keys.app("shop"), try KilnJSON.encode(App(name: "shop", versions: [v(1, .retired), v(2, .failed), v(3, .retiring), v(4, .live)], project: "shop")))
            let shown = try KilnJSON.decode(AppRetention.self, from: try await h.request(.GET, "/api/v1/apps/shop/retention").body)
            #expect(shown == AppRetention(keepVersions: 10, versions: [1, 2, 3, 4]))

            let below = try await h.request(.PUT, "/api/v1/apps/shop/retention", body: #"{"keepVersions":1}"#)
            #expect(below.status == 409, "\(below.body)")
            #expect(below.body.contains("below the 2 versions of app shop that run (v4 live, v3 retiring)"), "\(below.body)")
            #expect(try KilnJSON.decode(App.self, from: try #require(try await h.etcd.get(h.keys.app("shop"))).value).keepVersions == nil)
            for body in [#"{"keepVersions":0}"#, #"{"keepVersions":101}"#, "{}"] {
                #expect(try await h.request(.PUT, "/api/v1/apps/shop/retention", body: body).status == 400, "\(body)")
            }

            let set = try await h.request(.PUT, "/api/v1/apps/shop/retention", body: #"{"keepVersions":2}"#)
            #expect(set.status == 200, "\(set.body)")
            #expect(try KilnJSON.decode(AppRetention.self, from: set.body) == AppRetention(keepVersions: 2, versions: [3, 4], pruned: [1, 2]))
            let stored = try KilnJSON.decode(App.self, from: try #require(try await h.etcd.get(h.keys.app("shop"))).value)
            #expect(stored.keepVersions == 2 && stored.versions.map(\.number) == [3, 4])
            #expect(try await h.request(.GET, "/api/v1/apps/shop/activity").body.contains("keeps 2 versions; pruned v1, v2"))
            #expect(try await h.request(.PUT, "/api/v1/apps/nothing/retention", body: #"{"keepVersions":2}"#).status == 404)
        }
    }
}
