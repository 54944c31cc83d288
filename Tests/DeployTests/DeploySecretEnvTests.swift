@testable import Deploy
import Etcd
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
import Plugins
import Testing

/// The deploy step's `secretEnv` end to end but for the cluster: a real etcd holds the app's
/// record, two fake Kubernetes API servers are the cells, `FixedPipelineSecrets` the store.
/// The value reaches the cells; etcd never holds it; a missing or withheld secret fails the
/// step naming the secret.
@Suite("deploy's secretEnv")
struct DeploySecretEnvTests {
    static let value = "postgres://app:Xq9-very-secret@db:5432/app"

    func context(ref: String = "main", secrets: FixedPipelineSecrets?, settings: [String: JSONValue] = [:]) -> PluginContext {
        var b = Build(id: "b000test-000007", project: "shop", ref: ref, commit: "4399c1c0e8dd")
        b.status = .succeeded
        b.image = "127.0.0.1:5000/shop:v1"
        b.digest = "sha256:" + String(repeating: "c", count: 64)
        let p = Project(name: "shop", repository: "http://127.0.0.1:1/x.git", buildImage: "i", buildCommand: "true")
        var all: [String: JSONValue] = ["app": .string("shop"), "backend": .string("kubernetes"), "port": .number(8080),
                                        "secretEnv": .array([.string("DATABASE_URL")]), "healthTimeoutSeconds": .number(10)]
        all.merge(settings) { _, new in new }
        return PluginContext(build: b, project: p, settings: all, run: 1, secrets: secrets, log: { _ in })
    }

    /// Runs `body` with etcd, two fake clusters as cells k1 and k2, and the deploy plugin.
    func withCells(_ body: @escaping @Sendable (EtcdClient, [FakeKubernetesAPIServer], FixedPipelineSecrets, any PostBuildPlugin) async throws -> Void) async throws {
        try await withEtcd(timeout: .seconds(60)) { _, etcd in
            var fakes: [FakeKubernetesAPIServer] = []
            for _ in 0..<2 { fakes.append(try await FakeKubernetesAPIServer.start(ca: try TestCA(name: "cluster CA"), access: .token("deployer-token-xyz"))) }
            let secrets = FixedPipelineSecrets(cells: ["k1": fakes[0].credential, "k2": fakes[1].credential])
            for (name, fake) in zip(["k1", "k2"], fakes) {
                try await etcd.put(Keys().cell(name), try KilnJSON.encode(Cell(name: name, backend: "kubernetes", endpoint: fake.url)))
            }
            var env = DeployEnvironment(store: AppStore(etcd: etcd), deployers: DeployEnvironment.standardDeployers(secrets: secrets))
            env.registry = "127.0.0.1:5000"
            env.healthInterval = .milliseconds(50)
            let deploy = env.plugins.first { $0.spec.name == "deploy" }!
            do {
                try await body(etcd, fakes, secrets, deploy)
            } catch {
                for f in fakes { await f.stop() }
                throw error
            }
            for f in fakes { await f.stop() }
        }
    }

    @Test func theValueReachesTheCellsAndNeverEtcd() async throws {
        try await withCells { etcd, fakes, secrets, deploy in
            secrets.set("DATABASE_URL", Self.value, project: "shop")
            let result = try await deploy.run(context(secrets: secrets))
            #expect(result.summary.hasPrefix("version 1 of shop: 2 instances healthy in 2 cells"), "\(result.summary)")
            for fake in fakes {
                #expect(fake.secretValue("shop-v1-env", key: "DATABASE_URL", in: "kiln-shop") == Self.value)
            }
            let app = try #require(try await AppStore(etcd: etcd).app("shop"))
            #expect(app.versions.last?.settings.secretEnv == ["DATABASE_URL"])
            #expect(!"\(result)".contains(Self.value))
            // Every key Kiln wrote (the app, its activity, the cells): no value in clear.
            let all = try await etcd.range(prefix: "/").kvs
            #expect(all.contains { $0.key == Keys().app("shop") })
            for kv in all { #expect(!String(decoding: kv.value, as: UTF8.self).contains(Self.value), "\(kv.key)") }
            #expect(!all.contains { String(decoding: $0.value, as: UTF8.self).contains(Data(Self.value.utf8).base64EncodedString()) })
        }
    }

    /// Another project allowed into the app deploys without naming secrets: the app's secret
    /// names do not carry over to its version (they would be looked up in that project's
    /// secrets and hand its values of those names to an app another team owns).
    @Test func secretNamesCarryOverOnlyWithinOneProject() async throws {
        try await withCells { etcd, fakes, secrets, deploy in
            secrets.set("DATABASE_URL", Self.value, project: "shop")
            secrets.set("DATABASE_URL", "billing-secret-value", project: "billing")
            _ = try await deploy.run(context(secrets: secrets))
            var members = Members(users: [:])
            members.projects = ["billing": .master]
            try await etcd.put(Keys().members(.app, "shop"), try KilnJSON.encode(members))
            var ctx = context(secrets: secrets)
            ctx.settings["secretEnv"] = nil
            ctx.build.project = "billing"
            ctx.build.id = "b000test-000008"
            ctx.build.image = "127.0.0.1:5000/billing:v1"
            ctx.build.digest = "sha256:" + String(repeating: "d", count: 64)
            ctx.project.name = "billing"
            let result = try await deploy.run(ctx)
            #expect(result.summary.hasPrefix("version 2 of shop"), "\(result.summary)")
            let app = try #require(try await AppStore(etcd: etcd).app("shop"))
            #expect(app.versions.last?.project == "billing" && app.versions.last?.settings.secretEnv == nil, "\(String(describing: app.versions.last))")
            for fake in fakes { #expect(fake.secretValue("shop-v2-env", key: "DATABASE_URL", in: "kiln-shop") == nil) }
        }
    }

    @Test func aMissingOrWithheldSecretFailsTheStepNamingIt() async throws {
        try await withCells { etcd, fakes, secrets, deploy in
            let missing = await #expect(throws: KilnError.self) { _ = try await deploy.run(context(secrets: secrets)) }
            #expect(missing?.message == "deploy's secretEnv: secret DATABASE_URL is not set for project shop: set it with `kiln secret set DATABASE_URL --project shop`",
                    "\(missing?.message ?? "")")
            let app = try #require(try await AppStore(etcd: etcd).app("shop"))
            #expect(app.versions.last?.state == .failed)
            #expect(app.versions.last?.error?.contains("secret DATABASE_URL is not set") == true)

            secrets.set("DATABASE_URL", Self.value, project: "shop", protectedOnly: true)
            let withheld = await #expect(throws: KilnError.self) { _ = try await deploy.run(context(ref: "feature/x", secrets: secrets)) }
            #expect(withheld?.message.contains("secret DATABASE_URL is for protected refs only, and feature/x is not protected in project shop") == true,
                    "\(withheld?.message ?? "")")
            #expect(withheld?.message.contains(Self.value) == false)

            let storeless = await #expect(throws: KilnError.self) { _ = try await deploy.run(context(secrets: nil)) }
            #expect(storeless?.message.contains("this scheduler has no secret store") == true, "\(storeless?.message ?? "")")
            // Nothing was made in the clusters (the clean-up only listed pods): the values are
            // looked up before any cell is called.
            for fake in fakes {
                #expect(fake.namespaces.isEmpty)
                #expect(fake.requests.allSatisfy { $0.method == "GET" }, "\(fake.requests)")
            }
        }
    }

    @Test func theLocalBackendNeedsEveryValueAndMergesThemIntoEnv() throws {
        var spec = VersionSpec(app: "shop", version: 1, image: "i", settings: DeploySettings(port: 8080, env: ["MODE": "prod"], secretEnv: ["DATABASE_URL"]))
        let cell = Cell(name: "a", endpoint: "unix:///nonexistent.sock")
        #expect(throws: KilnError.self) { _ = try LocalDeployer.environment(of: spec, in: cell) }
        spec.secretValues["DATABASE_URL"] = Self.value
        #expect(try LocalDeployer.environment(of: spec, in: cell) == ["MODE": "prod", "DATABASE_URL": Self.value])
    }
}

/// The local backend with a real podman and registry: the secret values reach the
/// container's Env, and only there.
@Suite("local backend's secret env")
struct LocalSecretEnvTests {
    @Test func theContainersEnvHoldsTheValues() async throws {
        let dir = try TempDir("local-secret-env")
        let registry = try await RegistryServer.start(root: dir.path("registry"))
        defer { registry.stop() }
        try await withPodman { service, docker in
            let repository = "\(registry.address)/shop/app"
            #expect(try service.podmanCommand(["tag", busyboxImage, "\(repository):1"]).status == 0)
            _ = try await docker.push(image: repository, tag: "1", insecure: true) { _ in }
            try await docker.removeImage("\(repository):1", force: true)

            let port = try FreePort.next()
            let cell = Cell(name: "a", endpoint: "unix://\(service.socketPath)", firstPort: port, lastPort: port)
            var spec = VersionSpec(app: "shop", version: 1, image: "\(repository):1",
                                   settings: DeploySettings(port: 8080, env: ["MODE": "prod"], secretEnv: ["DATABASE_URL"]))
            spec.secretValues["DATABASE_URL"] = DeploySecretEnvTests.value
            let deployer = LocalDeployer()
            let instances = try await deployer.start(spec, in: cell)
            #expect(instances.count == 1)
            let env = try service.podmanCommand(["inspect", "--format", "{{range .Config.Env}}{{.}}\n{{end}}", instances[0].id]).output
            let labelsAndCommand = try service.podmanCommand(["inspect", "--format", "{{json .Config.Labels}} {{json .Config.Cmd}} {{.Name}}", instances[0].id]).output
            try await deployer.stop(instances, of: spec, in: cell)
            let lines = env.split(separator: "\n").map(String.init)
            #expect(lines.contains("DATABASE_URL=\(DeploySecretEnvTests.value)"), "\(env)")
            #expect(lines.contains("MODE=prod"), "\(env)")
            // Not in the container's labels, command or name (what `kiln apps` and discovery read).
            #expect(labelsAndCommand.contains("kiln.app") && !labelsAndCommand.contains(DeploySecretEnvTests.value), "\(labelsAndCommand)")
        }
    }
}
