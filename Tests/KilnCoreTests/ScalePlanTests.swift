import Foundation
import KilnCore
import Testing

/// ScalePlan's rules, in the order its doc comment lists them, and the per-cell counts of a
/// version's settings.
@Suite struct ScalePlanTests {
    static let now = Date(timeIntervalSince1970: 1_800_000_000)

    static func instance(_ cell: String, _ index: Int, healthy: Bool = true) -> Instance {
        Instance(id: "id-\(cell)-\(index)", name: "kiln-demo-v2-\(cell)-\(index)", cell: cell, address: "127.0.0.1:\(20000 + index)", healthy: healthy)
    }

    static func app(live instances: [Instance] = [instance("a", 0), instance("b", 0)], cells: [String] = ["a", "b"],
                    settings: DeploySettings = DeploySettings(port: 8080), extra: [AppVersion] = [], lb: Bool = true) -> App {
        var v1 = AppVersion(number: 1, build: "b1", project: "demo", image: "r/demo@sha256:1", backend: "local", cells: cells, settings: settings, state: .retired)
        v1.instances = []
        var v2 = AppVersion(number: 2, build: "b2", project: "demo", image: "r/demo@sha256:2", backend: "local", cells: cells, settings: settings, state: .live)
        v2.instances = instances
        return App(name: "demo", versions: [v1, v2] + extra, lb: lb ? [LBBinding(group: "web", domain: "demo.localhost")] : [])
    }

    static func plan(_ app: App, _ request: ScaleRequest, cells: Set<String> = ["a", "b", "c"]) throws -> ScalePlan {
        try ScalePlan.make(app: app, request: request, cellExists: { cells.contains($0) }, now: now)
    }

    static func refusal(_ app: App, _ request: ScaleRequest) -> KilnError? {
        do { _ = try plan(app, request); return nil } catch { return error as? KilnError }
    }

    @Test func outInEveryCellAddsAndRecordsOneCount() throws {
        let p = try Self.plan(Self.app(), ScaleRequest(replicas: 3))
        #expect(p.version == 2)
        #expect(p.cells.map(\.cell) == ["a", "b"])
        #expect(p.cells.map(\.adding) == [2, 2] && p.cells.allSatisfy { $0.stopping.isEmpty })
        #expect(p.settings.replicas == 3 && p.settings.cellReplicas == nil)
    }

    @Test func inStopsUnhealthyOnesFirstThenTheNewest() throws {
        let a = [Self.instance("a", 0), Self.instance("a", 1, healthy: false), Self.instance("a", 2), Self.instance("a", 10)]
        let p = try Self.plan(Self.app(live: a + [Self.instance("b", 0)]), ScaleRequest(replicas: 2, cell: "a"))
        #expect(p.cells.count == 1)
        // Unhealthy a-1 first, then a-10 (10 > 2 as a number, not as text).
        #expect(p.cells[0].stopping.map(\.name) == ["kiln-demo-v2-a-1", "kiln-demo-v2-a-10"])
        #expect(p.cells[0].keeping.map(\.name) == ["kiln-demo-v2-a-0", "kiln-demo-v2-a-2"])
        #expect(p.cells[0].adding == 0)
        #expect(p.settings.replicas == 1 && p.settings.cellReplicas == ["a": 2], "cell a differs from the others")
    }

    @Test func oneCellToZeroIsFineEveryCellToZeroWithADomainIsNot() throws {
        let p = try Self.plan(Self.app(), ScaleRequest(replicas: 0, cell: "b"))
        #expect(p.cells[0].stopping.map(\.cell) == ["b"])
        #expect(p.settings.cellReplicas == ["b": 0])
        let e = Self.refusal(Self.app(), ScaleRequest(replicas: 0))
        #expect(e?.httpStatus == 409 && e?.message.contains("no servers") == true, "\(String(describing: e))")
        // Without a domain, an app may be emptied.
        #expect(try Self.plan(Self.app(lb: false), ScaleRequest(replicas: 0)).settings.replicas == 0)
    }

    @Test func badInputIsRefusedWithItsStatus() {
        #expect(Self.refusal(Self.app(), ScaleRequest(replicas: -1))?.httpStatus == 400)
        #expect(Self.refusal(Self.app(), ScaleRequest(replicas: DeploySettings.maxReplicas + 1))?.message.contains("0 to 100") == true)
        #expect(Self.refusal(Self.app(), ScaleRequest(replicas: 1, cell: "Bad Cell"))?.httpStatus == 400)
        #expect(Self.refusal(Self.app(), ScaleRequest(replicas: 1, drainSeconds: 301))?.httpStatus == 400)
        #expect(Self.refusal(Self.app(), ScaleRequest(replicas: 1, healthTimeoutSeconds: 0))?.httpStatus == 400)
        #expect(Self.refusal(Self.app(), ScaleRequest(replicas: 1, cell: "nowhere"))?.httpStatus == 404)
        let notThere = Self.refusal(Self.app(), ScaleRequest(replicas: 1, cell: "c"))
        #expect(notThere?.httpStatus == 400 && notThere?.message.contains("runs in a, b, not in cell c") == true, "\(String(describing: notThere))")
    }

    @Test func aDeployUnderWayAnotherScalingOrNoLiveVersionIsAConflict() {
        let deploying = AppVersion(number: 3, build: "b3", project: "demo", image: "i", backend: "local", cells: ["a", "b"], settings: DeploySettings(port: 8080), state: .deploying)
        let e = Self.refusal(Self.app(extra: [deploying]), ScaleRequest(replicas: 2))
        #expect(e?.httpStatus == 409 && e?.message.contains("version 3 is deploying") == true, "\(String(describing: e))")

        var held = Self.app()
        held.scaling = ScaleOperation(id: "x", version: 2, replicas: 4, cell: nil, by: "alice", startedAt: Self.now, expiresAt: Self.now.addingTimeInterval(60))
        let busy = Self.refusal(held, ScaleRequest(replicas: 2))
        #expect(busy?.httpStatus == 409 && busy?.message.contains("being scaled by alice") == true, "\(String(describing: busy))")
        // A claim past its time (its scheduler died) no longer counts.
        held.scaling?.expiresAt = Self.now.addingTimeInterval(-1)
        #expect(Self.refusal(held, ScaleRequest(replicas: 2)) == nil)

        var none = Self.app()
        none.versions[1].state = .ready
        #expect(Self.refusal(none, ScaleRequest(replicas: 2))?.message.contains("no live version") == true)
    }

    @Test func settingsKeepOneCountWhenTheCellsAgreeAgain() {
        let s = DeploySettings(port: 8080, replicas: 2)
        let split = s.withReplicas(["a": 5], cells: ["a", "b"])
        #expect(split.replicas == 2 && split.cellReplicas == ["a": 5])
        #expect(split.replicas(in: "a") == 5 && split.replicas(in: "b") == 2 && split.replicas(in: "new") == 2)
        let again = split.withReplicas(["b": 5], cells: ["a", "b"])
        #expect(again.replicas == 5 && again.cellReplicas == nil)
        #expect(split.withReplicas(["a": 2], cells: ["a", "b"]) == s)
    }

    @Test func recordsWithoutTheNewFieldsStillDecode() throws {
        let old = #"{"port":8080,"replicas":2,"env":{},"healthPath":"/health"}"#
        let s = try KilnJSON.decode(DeploySettings.self, from: old)
        #expect(s.cellReplicas == nil && s.replicas(in: "a") == 2)
    }
}
