import Deploy
import Foundation
import KilnCore
import KilnTestSupport
import Testing

/// A Kubernetes cell's own credential (issue 13): https only, the cluster's CA as the only
/// trust root, a bearer token or a client certificate; against the fake API server over TLS.
extension KubernetesDeployerTests {
    @Test("a client certificate signed by the cluster's client CA logs in, with no token sent")
    func clientCertificate() async throws {
        let clientCA = try TestCA(name: "client CA")
        try await withFake(access: .init(clientCA: clientCA, clientUser: "kiln-deployer")) { fake, cell in
            let (certificate, key) = try clientCA.issue(commonName: "kiln-deployer", server: false)
            let secrets = FixedPipelineSecrets(cells: ["k1": CellCredential(clientCertificate: certificate, clientKey: key, certificateAuthority: fake.ca.pem)])
            let deployer = KubernetesDeployer(secrets: secrets, configuration: Self.fast, logger: Self.logger)
            let instances = try await deployer.start(Self.spec(replicas: 1), in: cell)
            #expect(instances.count == 1)
            #expect(!fake.requests.isEmpty)
            #expect(fake.requests.allSatisfy { $0.clientCertificate == "CN=kiln-deployer" && $0.authorization == nil })

            // A certificate of the right CA for another user: authenticated by TLS, refused by the server.
            let (other, otherKey) = try clientCA.issue(commonName: "someone-else", server: false)
            secrets.setCell("k1", CellCredential(clientCertificate: other, clientKey: otherKey, certificateAuthority: fake.ca.pem))
            let e = await #expect(throws: KilnError.self) { _ = try await deployer.instances(of: "demo", in: cell) }
            #expect(e?.message.contains("Unauthorized (Unauthorized, HTTP 401)") == true, "\(e?.message ?? "")")
        }
    }

    @Test("a client certificate from a CA the server does not trust fails the handshake: no request reaches it")
    func clientCertificateOfAnotherCA() async throws {
        let clientCA = try TestCA(name: "client CA")
        try await withFake(access: .init(clientCA: clientCA, clientUser: "kiln-deployer")) { fake, cell in
            let (certificate, key) = try TestCA(name: "someone else's CA").issue(commonName: "kiln-deployer", server: false)
            let secrets = FixedPipelineSecrets(cells: ["k1": CellCredential(clientCertificate: certificate, clientKey: key, certificateAuthority: fake.ca.pem)])
            let e = await #expect(throws: KilnError.self) {
                _ = try await KubernetesDeployer(secrets: secrets, configuration: Self.fast, logger: Self.logger).start(Self.spec(), in: cell)
            }
            #expect(e?.message.contains("cell k1: the Kubernetes API server at \(fake.url) cannot be reached: the TLS handshake failed (TLSV1_ALERT_UNKNOWN_CA): the server refused Kiln's client certificate") == true,
                    "\(e?.message ?? "")")
            #expect(fake.requests.isEmpty)
            #expect(fake.namespaces.isEmpty)
        }
    }

    @Test("a server whose certificate does not chain to the cell's CA is refused before the token is sent")
    func serverOfAnotherCA() async throws {
        try await withFake { fake, cell in
            let impostorCA = try TestCA(name: "not the cluster's CA")
            let secrets = FixedPipelineSecrets(cells: ["k1": CellCredential(token: Self.token, certificateAuthority: impostorCA.pem)])
            let deployer = KubernetesDeployer(secrets: secrets, configuration: Self.fast, logger: Self.logger)
            let e = await #expect(throws: KilnError.self) { _ = try await deployer.start(Self.spec(), in: cell) }
            let message = e?.message ?? ""
            #expect(message.hasPrefix("cell k1: the Kubernetes API server at \(fake.url) cannot be reached: the TLS handshake failed"), "\(message)")
            #expect(message.contains("the TLS handshake failed (CERTIFICATE_VERIFY_FAILED): the server's certificate is not signed by the CA in the cell's credential"), "\(message)")
            #expect(!message.contains(Self.token))
            #expect(e?.httpStatus == 503)
            // The fake would have recorded any request, with its Authorization header.
            #expect(fake.requests.isEmpty)
            #expect(!fake.requests.contains { $0.authorization?.contains(Self.token) == true })

            // The check (discovery) says the same and sends nothing either.
            let c = await deployer.check(Instance(id: "demo-v1-x", name: "demo-v1-x", cell: "k1", address: "10.244.0.2:8080"), of: Self.spec(), in: cell)
            #expect(!c.healthy && c.detail.contains("TLS handshake failed"), "\(c.detail)")
            #expect(fake.requests.isEmpty)

            // The cluster's CA set with `kiln cell credential set`: the next call rebuilds its
            // client with it and gets through.
            secrets.setCell("k1", fake.credential)
            #expect(try await deployer.start(Self.spec(replicas: 1), in: cell).count == 1)
            #expect(fake.requests.allSatisfy { $0.authorization == "Bearer \(Self.token)" })
        }
    }

    @Test("an http:// cell is refused: by Cell.validate, and by the deployer before it sends anything")
    func plainHTTPCell() async throws {
        let fake = try await FakeKubernetesAPIServer.start(ca: try TestCA(name: "cluster CA"), access: .token(Self.token), plainHTTP: true)
        defer { Task { await fake.stop() } }
        let cell = Cell(name: "k1", backend: "kubernetes", endpoint: fake.url)
        #expect(fake.url.hasPrefix("http://"))
        let refused = #expect(throws: KilnError.self) { try cell.validate() }
        #expect(refused?.message.contains("is plain HTTP; a Kubernetes cell must use https://host:port") == true, "\(refused?.message ?? "")")
        #expect(throws: KilnError.self) { try Cell(name: "k1", backend: "kubernetes", endpoint: "https://user:pw@127.0.0.1:6443").validate() }
        try Cell(name: "k1", backend: "kubernetes", endpoint: "https://127.0.0.1:6443").validate()

        // A record made before the rule (or by hand in etcd): the deployer refuses it too.
        let deployer = Self.deployer(fake)
        let e = await #expect(throws: KilnError.self) { _ = try await deployer.start(Self.spec(), in: cell) }
        #expect(e?.message.contains("is not https; Kiln sends a Kubernetes cell's credential over https only") == true, "\(e?.message ?? "")")
        await #expect(throws: KilnError.self) { _ = try await deployer.instances(of: "demo", in: cell) }
        await #expect(throws: KilnError.self) { try await deployer.stop([], of: Self.spec(), in: cell) }
        #expect(!(await deployer.check(Instance(id: "p", name: "p", cell: "k1", address: "10.244.0.2:8080"), of: Self.spec(), in: cell)).healthy)
        #expect(fake.requests.isEmpty)
    }

    @Test("a cell without credentials, or a deployer without a secret store, is refused with what to do")
    func noCredential() async throws {
        try await withFake { fake, cell in
            let none = KubernetesDeployer(secrets: FixedPipelineSecrets(), configuration: Self.fast, logger: Self.logger)
            let e = await #expect(throws: KilnError.self) { _ = try await none.start(Self.spec(), in: cell) }
            #expect(e?.message.hasPrefix("cell k1 has no credentials: set them with `kiln cell credential set k1 …`") == true, "\(e?.message ?? "")")

            let storeless = KubernetesDeployer(secrets: nil, configuration: Self.fast, logger: Self.logger)
            let s = await #expect(throws: KilnError.self) { _ = try await storeless.instances(of: "demo", in: cell) }
            #expect(s?.message.contains("--secrets-key-file") == true, "\(s?.message ?? "")")
            #expect(fake.requests.isEmpty)
        }
    }

    @Test("a rotated token is used from the next call on")
    func rotatedToken() async throws {
        try await withFake(access: .token("token-after-rotation")) { fake, cell in
            let secrets = FixedPipelineSecrets(cells: ["k1": CellCredential(token: "token-before-rotation", certificateAuthority: fake.ca.pem)])
            let deployer = KubernetesDeployer(secrets: secrets, configuration: Self.fast, logger: Self.logger)
            await #expect(throws: KilnError.self) { _ = try await deployer.instances(of: "demo", in: cell) }
            secrets.setCell("k1", CellCredential(token: "token-after-rotation", certificateAuthority: fake.ca.pem))
            let found = try await deployer.instances(of: "demo", in: cell)
            #expect(found.isEmpty)
            #expect(fake.requests.map(\.authorization) == ["Bearer token-before-rotation", "Bearer token-after-rotation"])
        }
    }
}
