import Etcd
import FarmHarness
import Foundation
import KilnCore
import KilnTestSupport
import Testing

/// Retention as an operator meets it: a real `kiln scheduler` process whose leader prunes
/// at the start of its term, and `kiln project retention`, `kiln project add --keep-*` and
/// `kiln apps --keep-versions` against it (docs/retention.md).
@Suite("Retention from the CLI and the leader (real processes)", .serialized)
struct RetentionCLITests {
    @Test func theLeaderPrunesAndTheSettingsAreShownSetAndRefused() async throws {
        let farm = try await ProcessFarm("retention-cli")
        var project = Project(name: "shop", repository: "http://127.0.0.1:1/shop.git", buildImage: "a:1", buildCommand: "make")
        project.retention = BuildRetention(keepBuilds: 1, keepDays: 1)
        try await farm.etcd.put(farm.keys.project("shop"), try KilnJSON.encode(project))
        var ids: [String] = []
        for age in [300.0, 200, 100] {
            let created = Date().addingTimeInterval(-age * 86_400)
            var b = Build(id: BuildID.generate(now: created), project: "shop", ref: "main", createdAt: created)
            b.status = .succeeded
            _ = try await farm.etcd.txn(Txn(success: [.put(farm.keys.build(b.id), try KilnJSON.encode(b)),
                                                      .put(farm.keys.buildIndexEntry(project: "shop", build: b.id), "")]))
            ids.append(b.id)
        }
        // The leader's first pass comes soon after its term starts (10 s), before any interval.
        try await farm.startScheduler("sched-1", options: ["--prune-interval", "3600"])
        try await waitUntil(farm.etcd, prefix: farm.keys.buildIndex(project: "shop"), timeout: .seconds(60)) { $0.count == 1 }
        #expect(try await farm.etcd.get(farm.keys.build(ids[2])) != nil)
        for id in ids.prefix(2) { #expect(try await farm.etcd.get(farm.keys.build(id)) == nil) }
        let refused = try await SecretsCLITests.kiln(farm, ["scheduler", "--prune-interval=-1"])
        #expect(refused.status != 0 && refused.output.contains("--prune-interval must be 0 (never prune) or more seconds"), "\(refused.output)")

        var r = try await SecretsCLITests.kiln(farm, ["project", "retention", "shop"])
        #expect(r.status == 0 && r.output.contains("project shop keeps the last 1 build and every build of the last 1 day"), "\(r.output)")
        r = try await SecretsCLITests.kiln(farm, ["project", "retention", "shop", "--keep-builds", "50"])
        #expect(r.status == 0 && r.output.contains("keeps the last 50 builds and every build of the last 1 day"), "\(r.output)")
        r = try await SecretsCLITests.kiln(farm, ["project", "retention", "shop", "--keep-days", "0"])
        #expect(r.status != 0 && r.output.contains("--keep-days 0 is out of range"), "\(r.output)")
        r = try await SecretsCLITests.kiln(farm, ["project", "retention", "nothing-here", "--keep-days", "5"])
        #expect(r.status != 0 && r.output.contains("does not exist"), "\(r.output)")

        r = try await SecretsCLITests.kiln(farm, ["project", "add", "other", "--repository", "http://127.0.0.1:1/other.git", "--build-image", "a:1",
                                                  "--build-command", "make", "--keep-days", "14"])
        #expect(r.status == 0, "\(r.output)")
        r = try await SecretsCLITests.kiln(farm, ["project", "show", "other"])
        #expect(r.output.contains(#""keepBuilds" : 500"#) && r.output.contains(#""keepDays" : 14"#), "\(r.output)")
        // The caches a project declares (issue 16): a list, none, and a path refused with its reason.
        r = try await SecretsCLITests.kiln(farm, ["project", "add", "gradle", "--repository", "http://127.0.0.1:1/g.git", "--build-image", "a:1",
                                                  "--build-command", "gradle build", "--caches", "/root/.m2, /root/.gradle"])
        #expect(r.status == 0, "\(r.output)")
        #expect(try KilnJSON.decode(Project.self, from: try #require(try await farm.etcd.get(farm.keys.project("gradle"))).value).caches == ["/root/.m2", "/root/.gradle"])
        r = try await SecretsCLITests.kiln(farm, ["project", "add", "bare", "--repository", "http://127.0.0.1:1/b.git", "--build-image", "a:1",
                                                  "--build-command", "make", "--caches", "none"])
        #expect(r.status == 0, "\(r.output)")
        #expect(try KilnJSON.decode(Project.self, from: try #require(try await farm.etcd.get(farm.keys.project("bare"))).value).caches == [])
        r = try await SecretsCLITests.kiln(farm, ["project", "add", "bad", "--repository", "http://127.0.0.1:1/b.git", "--build-image", "a:1",
                                                  "--build-command", "make", "--caches", "/root/.m2,/etc/passwd-cache"])
        #expect(r.status != 0 && r.output.contains("/etc"), "\(r.output)")
        #expect(try await farm.etcd.get(farm.keys.project("bad")) == nil)

        func v(_ n: Int, _ state: VersionState) -> AppVersion {
            AppVersion(number: n, build: "b\(n)", project: "shop", image: "r/shop@sha256:x", backend: "local", cells: ["c1"], settings: DeploySettings(port: 8080), state: state)
        }
        try await farm.etcd.put(farm.keys.app("shop"), try KilnJSON.encode(App(name: "shop", versions: [v(1, .retired), v(2, .ready), v(3, .live)], project: "shop")))
        r = try await SecretsCLITests.kiln(farm, ["apps", "shop", "--keep-versions", "1"])
        #expect(r.status != 0 && r.output.contains("below the 2 versions of app shop that run (v3 live, v2 ready)"), "\(r.output)")
        r = try await SecretsCLITests.kiln(farm, ["apps", "shop", "--keep-versions", "2"])
        #expect(r.status == 0 && r.output.contains("app shop keeps 2 versions; pruned v1") && r.output.contains("app shop  (keeps 2 versions)"), "\(r.output)")

        // `kiln apps scale` through the real scheduler's AppScaler (docs/scaling.md; instances
        // move in EndToEndTests/ScalingTests). Cell c1 of v3 holds none and is not in etcd.
        r = try await SecretsCLITests.kiln(farm, ["apps", "scale", "shop", "--replicas=-1"])
        #expect(r.status != 0 && r.output.contains("replicas -1 is out of range"), "\(r.output)")
        r = try await SecretsCLITests.kiln(farm, ["apps", "scale", "shop", "--replicas", "2", "--cell", "nowhere"])
        #expect(r.status != 0 && r.output.contains("cell 'nowhere' does not exist"), "\(r.output)")
        r = try await SecretsCLITests.kiln(farm, ["apps", "scale", "shop", "--replicas", "1"])
        #expect(r.status != 0 && r.output.contains("cell c1 no longer exists"), "\(r.output)")
        r = try await SecretsCLITests.kiln(farm, ["apps", "scale", "shop", "--replicas", "0"])
        #expect(r.status == 0 && r.output.contains("scaled version 3 of shop: c1 0 → 0"), "the failed one released the app: \(r.output)")
        r = try await SecretsCLITests.kiln(farm, ["apps", "shop"])
        #expect(r.output.contains("0 in c1"), "\(r.output)")
    }
}
