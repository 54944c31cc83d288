import Deploy
import Etcd
import Foundation
import KilnCore
import KilnTestSupport
import Plugins
import Testing

/// An app belongs to the project whose pipeline first deployed it: another project's pipeline
/// may not deploy into it, take its domains or retire it unless the app's members allow that
/// project (docs/roles.md). Against a real etcd; the refusals come before any backend call.
@Suite("App ownership across projects")
struct AppOwnershipTests {
    func context(project: String, settings: [String: JSONValue]) -> PluginContext {
        var b = Build(id: "b000test-000002", project: project, ref: "main", commit: "4399c1c0e8dd")
        b.status = .succeeded
        b.image = "127.0.0.1:5000/\(project):v1"
        b.digest = "sha256:" + String(repeating: "a", count: 64)
        let p = Project(name: project, repository: "http://127.0.0.1:1/x.git", buildImage: "i", buildCommand: "true")
        return PluginContext(build: b, project: p, settings: settings, outputs: [:], run: 1, log: { _ in })
    }

    @Test func anotherProjectsPipelineIsRefusedUntilTheAppsOwnersAllowIt() async throws {
        try await withEtcd(timeout: nil) { _, etcd in
            let store = AppStore(etcd: etcd)
            var env = DeployEnvironment(store: store, deployers: ["local": LocalDeployer()])
            env.registry = "127.0.0.1:5000"
            let plugins = Dictionary(uniqueKeysWithValues: env.plugins.map { ($0.spec.name, $0) })
            try await etcd.put(Keys().cell("c1"), try KilnJSON.encode(Cell(name: "c1", endpoint: "unix:///nonexistent.sock")))
            let live = AppVersion(number: 1, build: "b000test-000001", project: "shop", image: "127.0.0.1:5000/shop@sha256:" + String(repeating: "b", count: 64),
                                  backend: "local", cells: ["c1"], settings: DeploySettings(port: 8080), state: .live)
            try await etcd.put(Keys().app("shop-app"), try KilnJSON.encode(App(name: "shop-app", versions: [live], project: "shop")))
            try await etcd.put(Keys().app("evil-app"), try KilnJSON.encode(App(name: "evil-app", versions: [], project: "evil")))
            try await etcd.put(SLBKeys().domain(group: "g", "shop.example"), try KilnJSON.encode(SLBDomain(domain: "shop.example", servers: [SLBServer(address: "127.0.0.1:1")], app: "shop-app", version: 1)))
            let before = try await etcd.range(prefix: "/").kvs.map { "\($0.key)@\($0.modRevision)" }

            func refused(_ plugin: String, _ settings: [String: JSONValue], by project: String = "evil") async {
                do {
                    _ = try await plugins[plugin]!.run(context(project: project, settings: settings))
                    Issue.record("\(plugin) for project \(project) was not refused")
                } catch {
                    #expect((error as? KilnError)?.httpStatus == 403 && "\(error)".contains("belongs to project 'shop'"), "\(plugin): \(error)")
                }
            }
            await refused("deploy", ["app": .string("shop-app")])
            await refused("lb", ["app": .string("shop-app"), "group": .string("g"), "domain": .string("shop.example")])
            await refused("retire", ["app": .string("shop-app")])
            // Taking shop's domain for an app of its own.
            await refused("lb", ["app": .string("evil-app"), "group": .string("g"), "domain": .string("shop.example")])
            #expect(try await etcd.range(prefix: "/").kvs.map { "\($0.key)@\($0.modRevision)" } == before)

            // Allowed by the app's members: the refusal is gone (the deploy then fails on the
            // cell, which does not exist: past the ownership check).
            try await etcd.put(Keys().members(.app, "shop-app"), try KilnJSON.encode(Members(users: [:], projects: ["evil": .master])))
            do {
                _ = try await plugins["deploy"]!.run(context(project: "evil", settings: ["app": .string("shop-app")]))
            } catch {
                #expect(!"\(error)".contains("belongs to project"), "\(error)")
            }
            // A new app is claimed by the first project that deploys it.
            #expect(App(name: "new").allows(project: "anyone", members: nil))
            #expect(!App(name: "x", project: "shop").allows(project: "evil", members: Members(projects: ["evil": .developer])))
        }
    }
}
