import Deploy
import DockerAPI
import Foundation
import KilnCore
import Testing

extension KubernetesDeployerTests {
    static let pinned = "registry.example:5000/demo@sha256:" + String(repeating: "ab", count: 32)

    @Test("with registry credentials: a dockerconfigjson pull secret in the app's namespace, named by the pods; replaced on the next start")
    func pullSecret() async throws {
        try await withFake { fake, cell in
            let credentials = RegistryCredentials(user: "deployer", password: "pull-only-token")
            fake.requirePullCredentials(host: "registry.example:5000", user: "deployer", password: "pull-only-token")
            let deployer = Self.deployer(fake, registryCredentials: credentials)
            let instances = try await deployer.start(Self.spec(image: Self.pinned, replicas: 1), in: cell)
            #expect(instances.count == 1)
            #expect(fake.requests.map(\.description).contains("POST /api/v1/namespaces/kiln-demo/secrets"))

            let secret = try #require(fake.secret("kiln-registry", in: "kiln-demo"))
            #expect(secret["type"] as? String == "kubernetes.io/dockerconfigjson")
            let encoded = try #require((secret["data"] as? [String: String])?[".dockerconfigjson"])
            let raw = try #require(Data(base64Encoded: encoded))
            let config = try #require(try JSONSerialization.jsonObject(with: raw) as? [String: Any])
            let entry = try #require((config["auths"] as? [String: Any])?["registry.example:5000"] as? [String: String])
            #expect(entry["username"] == "deployer" && entry["password"] == "pull-only-token")
            #expect(entry["auth"] == Data("deployer:pull-only-token".utf8).base64EncodedString())

            let d = try #require(fake.requests("POST", "/apis/apps/v1/namespaces/kiln-demo/deployments").first?.json)
            let podSpec = try #require(((d["spec"] as? [String: Any])?["template"] as? [String: Any])?["spec"] as? [String: Any])
            #expect(podSpec["imagePullSecrets"] as? [[String: String]] == [["name": "kiln-registry"]])
            let container = try #require((podSpec["containers"] as? [[String: Any]])?.first)
            #expect(container["image"] as? String == Self.pinned, "the pod runs the image by digest")
            // The pull worked (the fake's kubelet found the credentials): the pod is ready.
            let (healthy, detail) = await deployer.check(instances[0], of: Self.spec(image: Self.pinned, replicas: 1), in: cell)
            #expect(healthy, "\(detail)")

            // The next version: the secret exists, so it is replaced (a rotated credential reaches it).
            let rotated = Self.deployer(fake, registryCredentials: RegistryCredentials(user: "deployer", password: "rotated"))
            fake.requirePullCredentials(host: "registry.example:5000", user: "deployer", password: "rotated")
            _ = try await rotated.start(Self.spec(version: 2, image: Self.pinned, replicas: 1), in: cell)
            #expect(fake.requests("PUT", "/api/v1/namespaces/kiln-demo/secrets/kiln-registry").count == 1)
            let replaced = try #require(fake.secret("kiln-registry", in: "kiln-demo")?["data"] as? [String: String])
            #expect(String(decoding: Data(base64Encoded: replaced[".dockerconfigjson"]!)!, as: UTF8.self).contains("rotated"))
        }
    }

    @Test("without registry credentials no secret is made, and a registry that needs them leaves the pods in ImagePullBackOff")
    func noPullSecret() async throws {
        try await withFake { fake, cell in
            fake.requirePullCredentials(host: "registry.example:5000", user: "deployer", password: "pull-only-token")
            let deployer = Self.deployer(fake)
            let instances = try await deployer.start(Self.spec(image: Self.pinned, replicas: 1), in: cell)
            #expect(!fake.requests.contains { $0.path.hasSuffix("/secrets") })
            let (healthy, detail) = await deployer.check(instances[0], of: Self.spec(image: Self.pinned, replicas: 1), in: cell)
            #expect(!healthy && detail.contains("ImagePullBackOff"), "\(detail)")
        }
    }
}
