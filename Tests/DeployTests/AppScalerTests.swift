import Deploy
import Etcd
import Foundation
import KilnCore
import KilnTestSupport
import Testing

/// `AppScaler` with a real etcd and the Kubernetes backend against `FakeKubernetesAPIServer`
/// (no API server runs here): the record, the domain and the pods agree after each scaling,
/// a scale-out whose pods never pass changes nothing, and every scaling is in the activity.
/// The group's lb-agent is stood in for by a report that has applied every revision (the
/// podman and nginx version of this is `EndToEndTests/ScalingTests`).
@Suite struct AppScalerTests {
    static let domainKey = SLBKeys().domain(group: "web", "demo.localhost")

    /// v1 of app demo live in cell k1 with `replicas` pods, in domain demo.localhost.
    func withLiveApp(replicas: Int = 2, _ body: @escaping @Sendable (AppScaler, EtcdClient, FakeKubernetesAPIServer) async throws -> Void) async throws {
        try await withEtcd(timeout: .seconds(90)) { _, etcd in
            try await KubernetesDeployerTests().withFake { fake, cell in
                let deployer = KubernetesDeployerTests.deployer(fake)
                var env = DeployEnvironment(store: AppStore(etcd: etcd), deployers: ["kubernetes": deployer])
                env.lbTimeout = .seconds(10)
                env.healthInterval = .milliseconds(50)
                try await etcd.put(Keys().cell("k1"), try KilnJSON.encode(cell))
                let spec = KubernetesDeployerTests.spec(replicas: replicas)
                var v1 = AppVersion(number: 1, build: "b1", project: "demo", image: spec.image, backend: "kubernetes", cells: ["k1"], settings: spec.settings, state: .live)
                v1.instances = try await deployer.start(spec, in: cell).map { var i = $0; i.healthy = true; return i }
                try await etcd.put(Keys().app("demo"), try KilnJSON.encode(App(name: "demo", versions: [v1], lb: [LBBinding(group: "web", domain: "demo.localhost")], project: "demo")))
                try await etcd.put(Self.domainKey, try KilnJSON.encode(SLBDomain(domain: "demo.localhost", servers: v1.instances.map { SLBServer(address: $0.address) }, app: "demo", version: 1)))
                try await etcd.put(SLBKeys().agent(group: "web", "stand-in"), try KilnJSON.encode(SLBAgentReport(id: "stand-in", appliedRevision: 1 << 40)))
                try await body(AppScaler(env: env, secrets: nil), etcd, fake)
            }
        }
    }

    static func state(_ etcd: EtcdClient) async throws -> (App, SLBDomain) {
        let app = try KilnJSON.decode(App.self, from: try #require(try await etcd.get(Keys().app("demo"))).value)
        let domain = try KilnJSON.decode(SLBDomain.self, from: try #require(try await etcd.get(domainKey)).value)
        return (app, domain)
    }

    /// The record's live instances, the domain's servers and the fake's pods are the same `count`.
    static func expectAgreeing(_ etcd: EtcdClient, _ fake: FakeKubernetesAPIServer, count: Int) async throws {
        let (app, domain) = try await state(etcd)
        let live = try #require(app.live)
        #expect(live.instances.count == count && live.instances.allSatisfy { $0.healthy })
        #expect(Set(domain.servers.map(\.address)) == Set(live.instances.map(\.address)))
        #expect(Set(fake.pods(in: "kiln-demo").map(\.name)) == Set(live.instances.map(\.id)))
        #expect(live.scalingInstances == nil && app.scaling == nil)
    }

    static func activity(_ etcd: EtcdClient) async throws -> [ActivityEvent] {
        try await etcd.range(prefix: Keys().activity(.app, "demo")).kvs.map { try KilnJSON.decode(ActivityEvent.self, from: $0.value) }
    }

    @Test func outThenInKeepsRecordDomainAndPodsAgreeing() async throws {
        try await withLiveApp { scaler, etcd, fake in
            let out = try await scaler.scale(app: "demo", ScaleRequest(replicas: 4, drainSeconds: 0), by: "alice")
            #expect(out.cells == [.init(cell: "k1", before: 2, after: 4)] && out.started.count == 2)
            try await Self.expectAgreeing(etcd, fake, count: 4)
            #expect(try await Self.state(etcd).0.live?.settings.replicas == 4)

            let inward = try await scaler.scale(app: "demo", ScaleRequest(replicas: 1, cell: "k1", drainSeconds: 0), by: "alice")
            #expect(inward.cells == [.init(cell: "k1", before: 4, after: 1)] && inward.stopped.count == 3)
            try await Self.expectAgreeing(etcd, fake, count: 1)
            let events = try await Self.activity(etcd)
            #expect(events.map(\.action) == ["scaled", "scaled"] && events.allSatisfy { $0.user == "alice" })
            #expect(events.last?.detail == "version 1 of demo: k1 4 → 1")
        }
    }

    @Test func aScaleOutWhosePodsNeverPassChangesNothing() async throws {
        try await withLiveApp { scaler, etcd, fake in
            let (before, domainBefore) = try await Self.state(etcd)
            fake.setBehaviour(.neverReady, forImage: KubernetesDeployerTests.image)
            do {
                _ = try await scaler.scale(app: "demo", ScaleRequest(replicas: 4, healthTimeoutSeconds: 1), by: "alice")
                Issue.record("pods that never pass joined")
            } catch let e as KilnError {
                #expect(e.httpStatus == 503 && e.message.contains("0 of 2 new instances") && e.message.contains("app runs as before"), "\(e.message)")
            }
            let (after, domainAfter) = try await Self.state(etcd)
            #expect(after.live?.instances.map(\.id) == before.live?.instances.map(\.id))
            #expect(after.live?.settings == before.live?.settings)
            #expect(domainAfter.servers == domainBefore.servers)
            try await Self.expectAgreeing(etcd, fake, count: 2)
            let failed = try await Self.activity(etcd)
            #expect(failed.map(\.action) == ["scaling failed"] && failed.first?.detail?.contains("0 of 2 new instances") == true)
        }
    }

    @Test func refusalsWriteNothing() async throws {
        try await withLiveApp { scaler, etcd, _ in
            let before = try await etcd.range(prefix: "/").kvs.map { "\($0.key)@\($0.modRevision)" }
            for (request, status) in [(ScaleRequest(replicas: 0), 409), (ScaleRequest(replicas: 2, cell: "gone"), 404), (ScaleRequest(replicas: 500), 400)] {
                do {
                    _ = try await scaler.scale(app: "demo", request, by: "alice")
                    Issue.record("\(request) was not refused")
                } catch let e as KilnError {
                    #expect(e.httpStatus == status, "\(request): \(e.message)")
                }
            }
            do {
                _ = try await scaler.scale(app: "nosuch", ScaleRequest(replicas: 1), by: "alice")
                Issue.record("an unknown app was scaled")
            } catch let e as KilnError {
                #expect(e.httpStatus == 404)
            }
            #expect(try await etcd.range(prefix: "/").kvs.map { "\($0.key)@\($0.modRevision)" } == before)
        }
    }
}
