import Deploy
import DockerAPI
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
import Logging
import Testing

/// `KubernetesDeployer` against `FakeKubernetesAPIServer` (no real API server runs here):
/// the exact calls and objects it sends, and what it makes of the answers.
@Suite struct KubernetesDeployerTests {
    static let image = "registry.example:5000/demo:abc1234"
    static let logger: Logger = {
        var l = Logger(label: "kiln.deploy.kubernetes.test")
        l.logLevel = .warning
        return l
    }()
    /// Each request may take 30 s: the fake answers in milliseconds, but at the start of a full
    /// run (every suite at once, TLS keys and handshakes in many of them) 5 s was not enough
    /// for sixteen of these tests at once. The start's own limit stays short: one test waits it out.
    static let fast = KubernetesDeployer.Configuration(requestTimeout: .seconds(30), startTimeout: .seconds(5), pollInterval: .milliseconds(50))
    /// The cell's service account token, as the fakes expect it unless a test says otherwise.
    static let token = "kiln-deployer-token-1"

    static func spec(version: Int = 1, image: String = image, replicas: Int = 2, cpu: Double? = nil, memoryMB: Int? = nil,
                     env: [String: String] = [:], healthPath: String = "/health") -> VersionSpec {
        VersionSpec(app: "demo", version: version, image: image,
                    settings: DeploySettings(port: 8080, replicas: replicas, cpu: cpu, memoryMB: memoryMB, env: env, healthPath: healthPath))
    }

    /// A deployer that reaches `fake` (as cell k1) with the fake's own credential: its CA and token.
    static func deployer(_ fake: FakeKubernetesAPIServer, configuration: KubernetesDeployer.Configuration = fast,
                         registryCredentials: RegistryCredentials? = nil) -> KubernetesDeployer {
        KubernetesDeployer(secrets: FixedPipelineSecrets(cells: ["k1": fake.credential]), registryCredentials: registryCredentials,
                           configuration: configuration, logger: logger)
    }

    /// Runs `body` with a fresh fake (TLS under a CA of its own, the token `Self.token` unless
    /// `access` says otherwise) and a cell k1 pointing at it; stops the fake after.
    func withFake(access: FakeKubernetesAPIServer.Access = .token(token), _ body: (FakeKubernetesAPIServer, Cell) async throws -> Void) async throws {
        let fake = try await FakeKubernetesAPIServer.start(ca: try TestCA(name: "cluster CA"), access: access)
        let cell = Cell(name: "k1", backend: "kubernetes", endpoint: fake.url)
        try cell.validate()
        do {
            try await body(fake, cell)
        } catch {
            await fake.stop()
            throw error
        }
        await fake.stop()
    }

    @Test func startCreatesNamespaceServiceAndDeploymentAndReturnsThePods() async throws {
        try await withFake { fake, cell in
            let deployer = Self.deployer(fake)
            let spec = Self.spec(replicas: 2, cpu: 0.5, memoryMB: 256, env: ["B_VAR": "2", "A_VAR": "one"], healthPath: "/healthz")
            let instances = try await deployer.start(spec, in: cell)

            #expect(fake.requests.map(\.description) == [
                "GET /api/v1/namespaces/kiln-demo",
                "POST /api/v1/namespaces",
                "GET /api/v1/namespaces/kiln-demo/services/demo",
                "POST /api/v1/namespaces/kiln-demo/services",
                "POST /apis/apps/v1/namespaces/kiln-demo/deployments",
                "GET /api/v1/namespaces/kiln-demo/pods?labelSelector=kiln.dev/app=demo,kiln.dev/version=1",
            ])
            #expect(fake.requests.allSatisfy { $0.authorization == "Bearer \(Self.token)" && $0.clientCertificate == nil })

            let ns = try #require(fake.requests("POST", "/api/v1/namespaces").first?.json)
            #expect(ns["kind"] as? String == "Namespace")
            #expect((ns["metadata"] as? [String: Any])?["name"] as? String == "kiln-demo")

            let svc = try #require(fake.requests("POST", "/api/v1/namespaces/kiln-demo/services").first?.json)
            #expect(svc["kind"] as? String == "Service")
            #expect((svc["metadata"] as? [String: Any])?["name"] as? String == "demo")
            let svcSpec = try #require(svc["spec"] as? [String: Any])
            #expect(svcSpec["selector"] as? [String: String] == ["kiln.dev/app": "demo"])
            let svcPort = try #require((svcSpec["ports"] as? [[String: Any]])?.first)
            #expect(svcPort["port"] as? Int == 8080)
            #expect(svcPort["targetPort"] as? Int == 8080)

            let d = try #require(fake.requests("POST", "/apis/apps/v1/namespaces/kiln-demo/deployments").first?.json)
            #expect(d["apiVersion"] as? String == "apps/v1")
            #expect(d["kind"] as? String == "Deployment")
            let meta = try #require(d["metadata"] as? [String: Any])
            let labels = ["app.kubernetes.io/name": "demo", "kiln.dev/app": "demo", "kiln.dev/version": "1"]
            #expect(meta["name"] as? String == "demo-v1")
            #expect(meta["namespace"] as? String == "kiln-demo")
            #expect(meta["labels"] as? [String: String] == labels)
            let dSpec = try #require(d["spec"] as? [String: Any])
            #expect(dSpec["replicas"] as? Int == 2)
            #expect((dSpec["selector"] as? [String: Any])?["matchLabels"] as? [String: String] == ["kiln.dev/app": "demo", "kiln.dev/version": "1"])
            let template = try #require(dSpec["template"] as? [String: Any])
            #expect((template["metadata"] as? [String: Any])?["labels"] as? [String: String] == labels)
            let containers = try #require((template["spec"] as? [String: Any])?["containers"] as? [[String: Any]])
            #expect(containers.count == 1)
            let c = containers[0]
            #expect(c["image"] as? String == Self.image)
            #expect((c["ports"] as? [[String: Any]])?.first?["containerPort"] as? Int == 8080)
            #expect(c["env"] as? [[String: String]] == [["name": "A_VAR", "value": "one"], ["name": "B_VAR", "value": "2"]])
            let resources = try #require(c["resources"] as? [String: Any])
            #expect(resources["requests"] as? [String: String] == ["cpu": "500m", "memory": "256Mi"])
            #expect(resources["limits"] as? [String: String] == ["cpu": "500m", "memory": "256Mi"])
            let probe = try #require(c["readinessProbe"] as? [String: Any])
            let httpGet = try #require(probe["httpGet"] as? [String: Any])
            #expect(httpGet["path"] as? String == "/healthz")
            #expect(httpGet["port"] as? Int == 8080)
            #expect(probe["periodSeconds"] as? Int == 2)
            #expect(probe["failureThreshold"] as? Int == 3)

            // The pods the fake made for the Deployment, as instances.
            let pods = fake.pods(in: "kiln-demo")
            #expect(pods.count == 2)
            #expect(Set(instances.map(\.id)) == Set(pods.map(\.name)))
            #expect(Set(instances.map(\.address)) == Set(pods.compactMap { $0.ip.map { "\($0):8080" } }))
            for i in instances {
                #expect(i.name == i.id)
                #expect(i.id.hasPrefix("demo-v1-"))
                #expect(i.cell == "k1")
                #expect(i.address.hasPrefix("10.244."))
                try Validation.serverAddress(i.address)
            }
        }
    }

    @Test func noResourcesNoEnvLeavesThemOut() async throws {
        try await withFake { fake, cell in
            _ = try await Self.deployer(fake).start(Self.spec(replicas: 1), in: cell)
            let d = try #require(fake.requests("POST", "/apis/apps/v1/namespaces/kiln-demo/deployments").first?.json)
            let c = try #require((((d["spec"] as? [String: Any])?["template"] as? [String: Any])?["spec"] as? [String: Any])?["containers"] as? [[String: Any]])
            #expect(c[0]["resources"] == nil)
            #expect(c[0]["env"] == nil)

            // An endpoint given with a trailing '/' makes the same paths.
            fake.clearRequests()
            let slashed = Cell(name: "k1", backend: "kubernetes", endpoint: fake.url + "/")
            #expect(try await Self.deployer(fake).instances(of: "demo", in: slashed)[1]?.count == 1)
            #expect(fake.requests.map(\.path) == ["/api/v1/namespaces/kiln-demo/pods"])
        }
    }

    @Test func aLaterVersionReusesTheNamespaceAndTheService() async throws {
        try await withFake { fake, cell in
            let deployer = Self.deployer(fake)
            _ = try await deployer.start(Self.spec(version: 1, replicas: 1), in: cell)
            fake.clearRequests()
            let v2 = try await deployer.start(Self.spec(version: 2, image: "registry.example:5000/demo:def5678", replicas: 1), in: cell)
            #expect(fake.requests.map(\.description) == [
                "GET /api/v1/namespaces/kiln-demo",
                "GET /api/v1/namespaces/kiln-demo/services/demo",
                "POST /apis/apps/v1/namespaces/kiln-demo/deployments",
                "GET /api/v1/namespaces/kiln-demo/pods?labelSelector=kiln.dev/app=demo,kiln.dev/version=2",
            ])
            #expect(fake.deployments(in: "kiln-demo") == ["demo-v1", "demo-v2"])
            #expect(fake.services(in: "kiln-demo") == ["demo"])
            #expect(v2.count == 1 && v2[0].id.hasPrefix("demo-v2-"))
        }
    }

    @Test func startAgainIsTakenAsStarted() async throws {
        try await withFake { fake, cell in
            let deployer = Self.deployer(fake)
            let first = try await deployer.start(Self.spec(replicas: 2), in: cell)
            fake.clearRequests()
            let again = try await deployer.start(Self.spec(replicas: 2), in: cell)
            #expect(Set(again.map(\.id)) == Set(first.map(\.id)))
            #expect(fake.pods(in: "kiln-demo").count == 2)
            #expect(fake.deployments(in: "kiln-demo") == ["demo-v1"])
            // The 409 on create, then a read of the Deployment to compare its image.
            #expect(fake.requests("POST", "/apis/apps/v1/namespaces/kiln-demo/deployments").count == 1)
            #expect(fake.requests("GET", "/apis/apps/v1/namespaces/kiln-demo/deployments/demo-v1").count == 1)
            #expect(fake.requests("DELETE", "/apis/apps/v1/namespaces/kiln-demo/deployments/demo-v1").isEmpty)

            // The same version from another image is a clash, and the running one is kept.
            let e = await #expect(throws: KilnError.self) {
                _ = try await deployer.start(Self.spec(image: "registry.example:5000/demo:other"), in: cell)
            }
            #expect(e?.httpStatus == 409)
            #expect(e?.message.contains("cell k1: Deployment demo-v1 in namespace kiln-demo already exists with image \(Self.image)") == true, "\(e?.message ?? "")")
            #expect(fake.pods(in: "kiln-demo").count == 2)
        }
    }

    @Test func checkFollowsTheReadyCondition() async throws {
        try await withFake { fake, cell in
            let deployer = Self.deployer(fake)
            let readySpec = Self.spec(version: 1, replicas: 1)
            let ready = try await deployer.start(readySpec, in: cell)
            let r = await deployer.check(ready[0], of: readySpec, in: cell)
            #expect(r.healthy)
            #expect(r.detail.hasPrefix("Ready"))
            #expect(fake.requests.last?.description == "GET /api/v1/namespaces/kiln-demo/pods/\(ready[0].id)")

            let slowImage = "registry.example:5000/demo:never"
            fake.setBehaviour(.neverReady, forImage: slowImage)
            let slowSpec = Self.spec(version: 2, image: slowImage, replicas: 1, healthPath: "/up")
            let slow = try await deployer.start(slowSpec, in: cell)
            let s = await deployer.check(slow[0], of: slowSpec, in: cell)
            #expect(!s.healthy)
            #expect(s.detail == "readiness probe on /up not passing yet (ContainersNotReady: containers with unready status: [demo])")

            let badImage = "registry.example:5000/demo:missing"
            fake.setBehaviour(.imagePullBackOff, forImage: badImage)
            let badSpec = Self.spec(version: 3, image: badImage, replicas: 1)
            let bad = try await deployer.start(badSpec, in: cell)
            #expect(bad.count == 1, "a pod waiting for its image already has an IP")
            let b = await deployer.check(bad[0], of: badSpec, in: cell)
            #expect(!b.healthy)
            #expect(b.detail == "ImagePullBackOff: Back-off pulling image \"\(badImage)\"")

            try await deployer.stop(ready, of: readySpec, in: cell)
            let gone = await deployer.check(ready[0], of: readySpec, in: cell)
            #expect(!gone.healthy)
            #expect(gone.detail == "pod gone")
        }
    }

    @Test func stopDeletesTheVersionsDeployment() async throws {
        try await withFake { fake, cell in
            let deployer = Self.deployer(fake)
            let v1 = try await deployer.start(Self.spec(version: 1), in: cell)
            _ = try await deployer.start(Self.spec(version: 2), in: cell)
            fake.clearRequests()
            try await deployer.stop(v1, of: Self.spec(version: 1), in: cell)

            #expect(fake.requests.map(\.description) == ["DELETE /apis/apps/v1/namespaces/kiln-demo/deployments/demo-v1"])
            let options = try #require(fake.requests.first?.json)
            #expect(options["kind"] as? String == "DeleteOptions")
            #expect(options["propagationPolicy"] as? String == "Background")
            #expect(fake.deployments(in: "kiln-demo") == ["demo-v2"])
            #expect(fake.pods(in: "kiln-demo").allSatisfy { $0.deployment == "demo-v2" })
            #expect(fake.pods(in: "kiln-demo").count == 2)
            #expect(fake.services(in: "kiln-demo") == ["demo"], "the app's Service outlives its versions")

            // Already gone: not an error.
            try await deployer.stop(v1, of: Self.spec(version: 1), in: cell)
            #expect(fake.requests.count == 2)
        }
    }

    @Test func instancesByVersion() async throws {
        try await withFake { fake, cell in
            let deployer = Self.deployer(fake)
            #expect(try await deployer.instances(of: "demo", in: cell).isEmpty)

            let v1 = try await deployer.start(Self.spec(version: 1, replicas: 1), in: cell)
            let v2 = try await deployer.start(Self.spec(version: 2, replicas: 2), in: cell)
            let slowImage = "registry.example:5000/demo:never"
            fake.setBehaviour(.neverReady, forImage: slowImage)
            let v3 = try await deployer.start(Self.spec(version: 3, image: slowImage, replicas: 1), in: cell)
            fake.clearRequests()

            let seen = try await deployer.instances(of: "demo", in: cell)
            #expect(fake.requests.map(\.description) == ["GET /api/v1/namespaces/kiln-demo/pods?labelSelector=kiln.dev/app=demo"])
            #expect(seen.keys.sorted() == [1, 2, 3])
            #expect(seen[1]?.map(\.id) == v1.map(\.id))
            #expect(Set(seen[2]?.map(\.address) ?? []) == Set(v2.map(\.address)))
            #expect(seen[3]?.map(\.id) == v3.map(\.id))
            #expect(seen[1]?.allSatisfy { $0.healthy && $0.cell == "k1" } == true)
            #expect(seen[2]?.allSatisfy(\.healthy) == true)
            #expect(seen[3]?.first?.healthy == false)
            #expect(seen[3]?.first?.detail == "ContainersNotReady: containers with unready status: [demo]")
        }
    }

    @Test func anUnreachableAPIServerIsNamed() async throws {
        let refusing = try FreePort.refusing()  // bound, never listening: refused
        defer { withExtendedLifetime(refusing) {} }  // held until the test ends
        let port = refusing.port
        let cell = Cell(name: "k1", backend: "kubernetes", endpoint: "https://127.0.0.1:\(port)")
        let credential = CellCredential(token: Self.token, certificateAuthority: try TestCA(name: "cluster CA").pem)
        let deployer = KubernetesDeployer(secrets: FixedPipelineSecrets(cells: ["k1": credential]), configuration: .init(requestTimeout: .seconds(1)), logger: Self.logger)
        let e = try await withTimeout(.seconds(20), waitingFor: "start against nothing") {
            await #expect(throws: KilnError.self) { _ = try await deployer.start(Self.spec(), in: cell) }
        }
        #expect(e?.httpStatus == 503)
        #expect(e?.message == "cell k1: the Kubernetes API server at https://127.0.0.1:\(port) cannot be reached: connection refused (trying to read namespace kiln-demo)")

        let c = try await withTimeout(.seconds(20)) {
            await deployer.check(Instance(id: "demo-v1-abc", name: "demo-v1-abc", cell: "k1", address: "10.244.0.2:8080"), of: Self.spec(), in: cell)
        }
        #expect(!c.healthy)
        #expect(c.detail == "cell k1: the Kubernetes API server at https://127.0.0.1:\(port) cannot be reached: connection refused (trying to read pod demo-v1-abc in namespace kiln-demo)")
    }

    @Test func theAPIServersStatusMessageIsSurfaced() async throws {
        try await withFake { fake, cell in
            let deployer = Self.deployer(fake)
            let forbidden = "deployments.apps is forbidden: User \"system:serviceaccount:kiln:deployer\" cannot create resource \"deployments\" in API group \"apps\" in the namespace \"kiln-demo\""
            fake.failNext("POST", "/apis/apps/v1/namespaces/kiln-demo/deployments", status: 403, reason: "Forbidden", message: forbidden)
            let e = await #expect(throws: KilnError.self) { _ = try await deployer.start(Self.spec(), in: cell) }
            #expect(e?.message.hasPrefix("cell k1: create Deployment demo-v1 in namespace kiln-demo failed: \(forbidden) (Forbidden, HTTP 403); the Role bound to the cell's credential must allow it") == true, "\(e?.message ?? "")")
            #expect(fake.deployments(in: "kiln-demo").isEmpty)

            // A 403 that is not RBAC's gets no hint about Roles.
            let terminating = "unable to create new content in namespace kiln-demo because it is being terminated"
            fake.failNext("POST", "/apis/apps/v1/namespaces/kiln-demo/deployments", status: 403, reason: "Forbidden", message: terminating)
            let t = await #expect(throws: KilnError.self) { _ = try await deployer.start(Self.spec(), in: cell) }
            #expect(t?.message == "cell k1: create Deployment demo-v1 in namespace kiln-demo failed: \(terminating) (Forbidden, HTTP 403)")

            // The API server's own validation.
            let invalid = await #expect(throws: KilnError.self) { _ = try await deployer.start(Self.spec(replicas: -1), in: cell) }
            #expect(invalid?.isInvalid == true)
            #expect(invalid?.message.contains("Deployment.apps \"demo-v1\" is invalid: spec.replicas: Invalid value: -1") == true, "\(invalid?.message ?? "")")
            #expect(invalid?.message.contains("(Invalid, HTTP 422)") == true)
        }
    }

    @Test func aRefusedTokenSaysWhatToSet() async throws {
        try await withFake(access: .token("the-right-token")) { fake, cell in
            let secrets = FixedPipelineSecrets(cells: ["k1": CellCredential(token: "a-wrong-token", certificateAuthority: fake.ca.pem)])
            let e = await #expect(throws: KilnError.self) {
                _ = try await KubernetesDeployer(secrets: secrets, configuration: Self.fast, logger: Self.logger).start(Self.spec(), in: cell)
            }
            #expect(e?.message.contains("cell k1: read namespace kiln-demo failed: Unauthorized (Unauthorized, HTTP 401)") == true, "\(e?.message ?? "")")
            #expect(e?.message.contains("does not accept the cell's credentials") == true, "\(e?.message ?? "")")
            #expect(e?.message.contains("kiln cell credential set k1") == true, "\(e?.message ?? "")")
            #expect(e?.message.contains("a-wrong-token") == false)
            #expect(fake.requests.map(\.description) == ["GET /api/v1/namespaces/kiln-demo"], "nothing after the refusal")
            #expect(fake.namespaces.isEmpty)
        }
    }

    @Test func podsThatAreNeverPlacedFailTheStartAndAreRemoved() async throws {
        try await withFake { fake, cell in
            let image = "registry.example:5000/demo:huge"
            fake.setBehaviour(.unschedulable, forImage: image)
            let deployer = Self.deployer(fake, configuration: .init(startTimeout: .milliseconds(300), pollInterval: .milliseconds(50)))
            let e = await #expect(throws: KilnError.self) { _ = try await deployer.start(Self.spec(image: image, replicas: 1, cpu: 64), in: cell) }
            let message = e?.message ?? ""
            #expect(message.hasPrefix("cell k1: version 1 of demo: 0 of 1 pods of Deployment demo-v1 were placed on a node within"), "\(message)")
            #expect(message.contains("Unschedulable: 0/1 nodes are available: 1 Insufficient cpu."), "\(message)")
            #expect(message.hasSuffix("the Deployment is removed"))
            #expect(fake.requests("DELETE", "/apis/apps/v1/namespaces/kiln-demo/deployments/demo-v1").count == 1)
            #expect(fake.deployments(in: "kiln-demo").isEmpty)
            #expect(fake.pods(in: "kiln-demo").isEmpty)
        }
    }

    @Test func aCancelledStartStillRemovesItsDeployment() async throws {
        try await withFake { fake, cell in
            let image = "registry.example:5000/demo:huge"
            fake.setBehaviour(.unschedulable, forImage: image)
            let deployer = Self.deployer(fake, configuration: .init(startTimeout: .seconds(600), pollInterval: .milliseconds(50)))
            let start = Task { try await deployer.start(Self.spec(image: image, replicas: 1), in: cell) }
            // Once it lists the pods, it is waiting for them to be placed (never, here).
            try await withTimeout(.seconds(20), waitingFor: "the pods to be listed") {
                await fake.answered("GET", "/api/v1/namespaces/kiln-demo/pods")
            }
            #expect(fake.deployments(in: "kiln-demo") == ["demo-v1"])
            start.cancel()
            await #expect(throws: CancellationError.self) { _ = try await start.value }
            #expect(fake.requests("DELETE", "/apis/apps/v1/namespaces/kiln-demo/deployments/demo-v1").count == 1)
            #expect(fake.deployments(in: "kiln-demo").isEmpty)
        }
    }

    @Test func anAppNameTooLongForANamespaceIsRefusedBeforeAnyCall() async throws {
        try await withFake { fake, cell in
            var spec = Self.spec()
            spec.app = String(repeating: "a", count: 60)
            let e = await #expect(throws: KilnError.self) { _ = try await Self.deployer(fake).start(spec, in: cell) }
            #expect(e?.isInvalid == true)
            #expect(e?.message.contains("more than 63") == true)
            #expect(fake.requests.isEmpty)
        }
    }
}
