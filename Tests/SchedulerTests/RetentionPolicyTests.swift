import Foundation
import KilnCore
@testable import Scheduler
import Testing

/// `RetentionPolicy`: which builds go, without etcd or a clock.
@Suite("Retention policy (pure)")
struct RetentionPolicyTests {
    let now = Date(timeIntervalSince1970: 1_790_000_000)
    func days(_ n: Double) -> Date { now.addingTimeInterval(-n * 86_400) }

    func build(_ id: String, _ status: BuildStatus = .succeeded, age: Double = 200, deploy: PipelineStatus? = nil) -> RetentionPolicy.Entry {
        var b = Build(id: id, project: "shop", ref: "main", createdAt: days(age))
        b.status = status
        if let deploy {
            var run = PipelineRun(run: 1, pipeline: [PipelineStep(plugin: "deploy", settings: [:])], trigger: "build succeeded")
            run.status = deploy
            b.deploy = run
        }
        return .init(id: id, record: .build(b))
    }

    @Test func theRulesInTheirOrder() {
        let r = BuildRetention(keepBuilds: 10, keepDays: 30)
        func verdict(_ e: RetentionPolicy.Entry, newer: Int = 50, refs: [String: String] = [:]) -> RetentionPolicy.Verdict {
            RetentionPolicy.verdict(e, newer: newer, retention: r, now: now, references: refs)
        }
        // An old final build past both rules goes; its age and place are what keep it otherwise.
        #expect(verdict(build("a")) == .prune)
        #expect(verdict(build("a", .failed)) == .prune)
        #expect(verdict(build("a", .cancelled)) == .prune)
        #expect(verdict(build("a"), newer: 9) == .keep(.amongLast(10)))
        #expect(verdict(build("a"), newer: 10) == .prune)
        #expect(verdict(build("a", age: 29.9)) == .keep(.younger(days: 30)))
        #expect(verdict(build("a", age: 30.01)) == .prune)
        // Never while it is not final, whatever its age.
        for s in [BuildStatus.queued, .assigned, .running] {
            #expect(verdict(build("a", s, age: 3000)) == .keep(.notFinal(s)))
        }
        // Never while its pipeline run waits or runs; an ended run does not keep it.
        #expect(verdict(build("a", deploy: .pending)) == .keep(.pipelineRun(.pending)))
        #expect(verdict(build("a", deploy: .running)) == .keep(.pipelineRun(.running)))
        #expect(verdict(build("a", deploy: .failed)) == .prune)
        #expect(verdict(build("a", deploy: .succeeded)) == .prune)
        // A version of an app refers to it: kept before any other rule, a missing record too.
        let refs = ["a": "app shop v3 (live)"]
        #expect(verdict(build("a", age: 5000), refs: refs) == .keep(.referenced("app shop v3 (live)")))
        #expect(verdict(.init(id: "a", record: .missing), refs: refs) == .keep(.referenced("app shop v3 (live)")))
        // An index entry whose record is gone goes; one that does not decode stays.
        #expect(verdict(.init(id: "a", record: .missing)) == .prune)
        #expect(verdict(.init(id: "a", record: .unreadable)) == .keep(.unreadable))
    }

    @Test func aPageStopsAtTheFirstBuildTheCountOrTheAgeKeeps() {
        let r = BuildRetention(keepBuilds: 3, keepDays: 30)
        // Ten old builds: the oldest seven go, the eighth is among the last three and ends the walk.
        let ten = (0..<10).map { build("b\($0)") }
        let all = RetentionPolicy.page(ten, before: 0, total: 10, retention: r, now: now, references: [:])
        #expect(all.pruned == (0..<7).map { "b\($0)" })
        #expect(all.decisions.count == 8 && all.decisions.last == .init("b7", .keep(.amongLast(3))))
        #expect(all.done)

        // Paged by four: the first page does not reach the kept ones and goes on.
        let first = RetentionPolicy.page(Array(ten[0..<4]), before: 0, total: 10, retention: r, now: now, references: [:])
        #expect(first.pruned.count == 4 && !first.done)
        let second = RetentionPolicy.page(Array(ten[4..<8]), before: 4, total: 10, retention: r, now: now, references: [:])
        #expect(second.pruned == ["b4", "b5", "b6"] && second.done)
        // A page that ends exactly where the kept ones start is the last one.
        let exact = RetentionPolicy.page(Array(ten[4..<7]), before: 4, total: 10, retention: r, now: now, references: [:])
        #expect(exact.pruned == ["b4", "b5", "b6"] && exact.done)

        // Young builds end the walk at the first of them; what is kept on the way does not.
        let mixed = [build("m0"), build("m1", .running, age: 400), build("m2", deploy: .pending), build("m3"), build("m4", age: 10), build("m5")]
        let page = RetentionPolicy.page(mixed, before: 0, total: 100, retention: r, now: now, references: ["m3": "app x v1 (retired)"])
        #expect(page.pruned == ["m0"])
        #expect(page.decisions.map(\.id) == ["m0", "m1", "m2", "m3", "m4"])
        #expect(page.done)

        // Fewer builds than the count: nothing to walk.
        let few = RetentionPolicy.page([build("f0")], before: 0, total: 2, retention: r, now: now, references: [:])
        #expect(few.pruned.isEmpty && few.done)
        // keepBuilds 0: by age only.
        let byAge = RetentionPolicy.page(Array(ten[0..<2]), before: 8, total: 10, retention: BuildRetention(keepBuilds: 0, keepDays: 30), now: now, references: [:])
        #expect(byAge.pruned == ["b0", "b1"] && byAge.done)
    }

    @Test func idsSayWhichBuildsAreTooYoungToRead() {
        let r = BuildRetention(keepBuilds: 0, keepDays: 30)
        #expect(RetentionPolicy.isYoung(id: BuildID.generate(now: days(29)), retention: r, now: now))
        #expect(!RetentionPolicy.isYoung(id: BuildID.generate(now: days(31)), retention: r, now: now))
        // An id without a time is read and judged by its record.
        #expect(!RetentionPolicy.isYoung(id: "b000test-000001", retention: r, now: now))
    }

    @Test func everyVersionAnAppKeepsProtectsItsBuild() {
        func v(_ n: Int, _ build: String, _ s: VersionState) -> AppVersion {
            AppVersion(number: n, build: build, project: "shop", image: "i", backend: "local", cells: [], settings: DeploySettings(port: 1), state: s)
        }
        let apps = [App(name: "shop", versions: [v(1, "b1", .retired), v(2, "b2", .failed), v(3, "b3", .live)]),
                    App(name: "shop-canary", versions: [v(1, "b3", .ready)])]
        let refs = RetentionPolicy.references(in: apps)
        #expect(refs == ["b1": "app shop v1 (retired)", "b2": "app shop v2 (failed)", "b3": "app shop v3 (live)"])
    }

    @Test func theActivityCutoffSplitsKeysAtTheirTime() {
        let keys = Keys()
        let cutoff = Date(timeIntervalSince1970: 1_700_000_000.5)
        let end = keys.activity(.project, "shop") + RetentionPolicy.activityCutoffKey(cutoff)
        let before = keys.activityEvent(.project, "shop", at: cutoff.addingTimeInterval(-0.001), id: "ffff")
        let at = keys.activityEvent(.project, "shop", at: cutoff, id: "0000")
        let after = keys.activityEvent(.project, "shop", at: cutoff.addingTimeInterval(0.001), id: "0000")
        #expect(before < end)
        #expect(at > end && after > end)
        #expect(keys.activityEvent(.project, "shop", at: Date(timeIntervalSince1970: 1), id: "z") < end)
    }

    @Test func prefixEndsAndKeyScansStayInsideTheirPrefix() {
        #expect(Pruner.prefixEnd("/kiln/index/builds/shop/") == "/kiln/index/builds/shop0")
        #expect(Pruner.prefixEnd("/kiln/index/builds/") == "/kiln/index/builds0")
        // Another project whose name starts the same lies outside `shop/`'s range.
        for other in ["/kiln/index/builds/shop-a/x", "/kiln/index/builds/shopping/x", "/kiln/index/builds/shop0"] {
            #expect(!(other >= "/kiln/index/builds/shop/" && other < Pruner.prefixEnd("/kiln/index/builds/shop/")), "\(other)")
        }
    }
}
