import Deploy
import Foundation
import KilnCore
import Testing

/// Secret environment variables on Kubernetes: a Secret per version, referenced by the pods'
/// `env`, so the Deployment (and Kiln's app record) never holds a value.
extension KubernetesDeployerTests {
    static let apiKey = "sk_live_4f1a9c3e7b2d"

    static func secretSpec(version: Int = 1) -> VersionSpec {
        VersionSpec(app: "demo", version: version, image: image,
                    settings: DeploySettings(port: 8080, replicas: 1, env: ["MODE": "prod"], secretEnv: ["API_KEY"]),
                    secretValues: SecretValues(["API_KEY": apiKey]))
    }

    @Test("secretEnv: a Secret demo-v1-env holds the value, the pods refer to it, stop removes it")
    func secretEnvOnKubernetes() async throws {
        try await withFake { fake, cell in
            let deployer = Self.deployer(fake)
            let spec = Self.secretSpec()
            let instances = try await deployer.start(spec, in: cell)
            #expect(fake.requests.map(\.description).contains("POST /api/v1/namespaces/kiln-demo/secrets"))
            #expect(fake.secretValue("demo-v1-env", key: "API_KEY", in: "kiln-demo") == Self.apiKey)
            #expect(fake.secret("demo-v1-env", in: "kiln-demo")?["type"] as? String == "Opaque")

            let d = try #require(fake.requests("POST", "/apis/apps/v1/namespaces/kiln-demo/deployments").first)
            #expect(!String(decoding: d.body ?? Data(), as: UTF8.self).contains(Self.apiKey), "the Deployment never holds the value")
            let container = try #require((((d.json?["spec"] as? [String: Any])?["template"] as? [String: Any])?["spec"] as? [String: Any])?["containers"] as? [[String: Any]])[0]
            let env = try #require(container["env"] as? [[String: Any]])
            #expect(env.count == 2)
            #expect(env[0]["name"] as? String == "API_KEY" && env[0]["value"] == nil)
            let ref = (env[0]["valueFrom"] as? [String: Any])?["secretKeyRef"] as? [String: String]
            #expect(ref == ["name": "demo-v1-env", "key": "API_KEY"])
            #expect(env[1]["name"] as? String == "MODE" && env[1]["value"] as? String == "prod")
            // The fake's kubelet found the Secret and its key: the pod is ready.
            let (healthy, detail) = await deployer.check(instances[0], of: spec, in: cell)
            #expect(healthy, "\(detail)")

            // A re-run replaces the Secret with the values as they are now.
            var again = spec
            again.secretValues["API_KEY"] = "sk_live_rotated_0001"
            _ = try await deployer.start(again, in: cell)
            #expect(fake.requests("PUT", "/api/v1/namespaces/kiln-demo/secrets/demo-v1-env").count == 1)
            #expect(fake.secretValue("demo-v1-env", key: "API_KEY", in: "kiln-demo") == "sk_live_rotated_0001")

            try await deployer.stop(instances, of: VersionSpec(app: "demo", version: 1, image: Self.image, settings: spec.settings), in: cell)
            #expect(fake.deployments(in: "kiln-demo").isEmpty)
            #expect(fake.secret("demo-v1-env", in: "kiln-demo") == nil)
        }
    }

    @Test("a failed start removes the version's Secret too; a value the step did not look up is refused before any Secret is made")
    func secretEnvCleanUp() async throws {
        try await withFake { fake, cell in
            let deployer = Self.deployer(fake)
            fake.failNext("POST", "/apis/apps/v1/namespaces/kiln-demo/deployments", status: 422, reason: "Invalid", message: "Deployment.apps \"demo-v1\" is invalid")
            await #expect(throws: KilnError.self) { _ = try await deployer.start(Self.secretSpec(), in: cell) }
            #expect(fake.requests("DELETE", "/api/v1/namespaces/kiln-demo/secrets/demo-v1-env").count == 1)
            #expect(fake.secret("demo-v1-env", in: "kiln-demo") == nil)

            var unresolved = Self.secretSpec(version: 2)
            unresolved.secretValues = SecretValues()
            fake.clearRequests()
            let e = await #expect(throws: KilnError.self) { _ = try await deployer.start(unresolved, in: cell) }
            #expect(e?.message.contains("names secret API_KEY in secretEnv, but no value was looked up for it") == true, "\(e?.message ?? "")")
            #expect(!fake.requests.contains { $0.path.contains("/secrets") || $0.path.contains("/deployments") })
        }
    }

    @Test("a VersionSpec printed or dumped shows the secrets' names, never their values")
    func secretValuesAreNotPrinted() {
        let spec = Self.secretSpec()
        var dumped = ""
        dump(spec, to: &dumped)
        for text in ["\(spec)", String(reflecting: spec), dumped] {
            #expect(!text.contains(Self.apiKey), "\(text)")
        }
        #expect("\(spec.secretValues)" == "secret values of [API_KEY]")
    }
}
