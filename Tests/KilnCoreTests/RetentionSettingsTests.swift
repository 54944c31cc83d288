import Foundation
import KilnCore
import Testing

/// Retention's settings (`Models/Retention.swift`): a project's `BuildRetention`, an app's
/// `keepVersions` and which versions go, build ids' times. Pure.
@Suite("Retention settings")
struct RetentionSettingsTests {
    @Test func missingFieldsTakeTheDefaultsAndAProjectWithoutSettingsKeepsThem() throws {
        #expect(try KilnJSON.decode(BuildRetention.self, from: "{}") == BuildRetention(keepBuilds: 500, keepDays: 90))
        #expect(try KilnJSON.decode(BuildRetention.self, from: #"{"keepDays":30}"#) == BuildRetention(keepBuilds: 500, keepDays: 30))
        #expect(try KilnJSON.decode(BuildRetention.self, from: #"{"keepBuilds":0}"#) == BuildRetention(keepBuilds: 0, keepDays: 90))

        var p = Project(name: "demo", repository: "http://127.0.0.1:1/demo.git", buildImage: "a:1", buildCommand: "make")
        #expect(p.effectiveRetention == .defaults)
        #expect(!(try KilnJSON.encode(p)).contains("retention"))
        p.retention = BuildRetention(keepBuilds: 20, keepDays: 7)
        let back = try KilnJSON.decode(Project.self, from: try KilnJSON.encode(p))
        #expect(back.retention == BuildRetention(keepBuilds: 20, keepDays: 7))
        #expect(back.effectiveRetention.summary == "the last 20 builds and every build of the last 7 days")
        #expect(BuildRetention(keepBuilds: 1, keepDays: 1).summary == "the last 1 build and every build of the last 1 day")
    }

    @Test func boundsAreCheckedWithTheFieldAndWhatToUse() throws {
        for ok in [BuildRetention(keepBuilds: 0, keepDays: 1), BuildRetention(keepBuilds: 100_000, keepDays: 3650), .defaults] {
            try ok.validate()
        }
        let bad: [(BuildRetention, String)] = [
            (BuildRetention(keepBuilds: -1, keepDays: 90), "retention.keepBuilds -1 is out of range: keep 0 to 100000"),
            (BuildRetention(keepBuilds: 100_001, keepDays: 90), "retention.keepBuilds 100001"),
            (BuildRetention(keepBuilds: 5, keepDays: 0), "retention.keepDays 0 is out of range: keep every build of the last 1 to 3650 days"),
            (BuildRetention(keepBuilds: 5, keepDays: 3651), "retention.keepDays 3651"),
        ]
        for (r, message) in bad {
            #expect(throws: KilnError.self) { try r.validate() }
            do { try r.validate() } catch let e as KilnError {
                #expect(e.httpStatus == 400 && e.message.hasPrefix(message), "\(e.message)")
            }
            // A project carrying it is refused by its own validation (what every save runs).
            var p = Project(name: "demo", repository: "http://127.0.0.1:1/demo.git", buildImage: "a:1", buildCommand: "make")
            p.retention = r
            #expect(throws: KilnError.self) { try p.validate() }
        }
    }

    @Test func aBuildIdSaysWhenItWasMade() {
        let now = Date(timeIntervalSince1970: 1_790_000_123.456)
        let id = BuildID.generate(now: now)
        #expect(BuildID.createdAt(of: id).map { abs($0.timeIntervalSince(now)) < 0.001 } == true)
        #expect(BuildID.createdAt(of: BuildID.generate(now: Date(timeIntervalSince1970: 0))) == Date(timeIntervalSince1970: 0))
        // Ids made otherwise (tests, hand-made) have no time: the records decide.
        for other in ["b1", "b000test-000001", "x0mj4x2k9q1-3fa2c1d0e9b8", "b0mj4x2k9q1_3fa2c1d0e9b8", ""] {
            #expect(BuildID.createdAt(of: other) == nil, "\(other)")
        }
        // Their order is their time's.
        let earlier = BuildID.generate(now: now.addingTimeInterval(-86_400 * 400)), later = BuildID.generate(now: now)
        #expect(earlier < later)
    }

    func version(_ n: Int, _ state: VersionState) -> AppVersion {
        AppVersion(number: n, build: "b\(n)", project: "shop", image: "r/shop@sha256:x", backend: "local", cells: ["c1"], settings: DeploySettings(port: 8080), state: state)
    }

    @Test func anAppKeepsItsNumberOfVersionsButNeverARunningOneNorItsNewest() {
        // 14 versions: 1-9 retired, 10 failed, 11 retiring, 12 ready, 13 live, 14 failed.
        var app = App(name: "shop", versions: (1...9).map { version($0, .retired) } + [version(10, .failed), version(11, .retiring), version(12, .ready), version(13, .live), version(14, .failed)])
        let (kept, removed) = app.prunedVersions()
        #expect(removed.map(\.number) == [1, 2, 3, 4])
        #expect(kept.versions.map(\.number) == Array(5...14))
        #expect(kept.prunedVersions().removed.isEmpty)

        app.keepVersions = 2
        let (few, gone) = app.prunedVersions()
        // Running versions (11, 12, 13) and the newest (14, failed) stay past the number.
        #expect(few.versions.map(\.number) == [11, 12, 13, 14])
        #expect(gone.map(\.number) == Array(1...10))
        // The next version's number still follows the newest.
        #expect(few.nextNumber == 15)

        // All stopped: the newest stays, whatever the number.
        var stopped = App(name: "s", versions: (1...3).map { version($0, .retired) })
        stopped.keepVersions = 1
        #expect(stopped.prunedVersions().app.versions.map(\.number) == [3])
        #expect(App(name: "e").prunedVersions().removed.isEmpty)
    }

    @Test func aSettingBelowTheRunningVersionsIsRefusedWithThem() throws {
        let app = App(name: "shop", versions: [version(1, .retired), version(2, .retiring), version(3, .ready), version(4, .live)])
        do {
            try app.checkKeepVersions(2)
            Issue.record("2 was accepted below 3 running versions")
        } catch let e as KilnError {
            #expect(e.httpStatus == 409)
            #expect(e.message.contains("below the 3 versions of app shop that run (v4 live, v3 ready, v2 retiring)"), "\(e.message)")
            #expect(e.message.contains("keep at least 3"))
        }
        try app.checkKeepVersions(3)
        for n in [0, 101, -5] {
            do { try app.checkKeepVersions(n); Issue.record("\(n) accepted") } catch let e as KilnError {
                #expect(e.httpStatus == 400 && e.message.contains("keep 1 to 100 versions"), "\(e.message)")
            }
        }
        #expect(app.effectiveKeepVersions == 10)
        // A record from before the setting decodes without it.
        let old = #"{"name":"shop","versions":[],"lb":[],"updatedAt":"2026-01-01T00:00:00.000Z"}"#
        #expect(try KilnJSON.decode(App.self, from: old).keepVersions == nil)
    }
}
