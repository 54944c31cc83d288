import AsyncHTTPClient
@testable import Deploy
import DockerAPI
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
import NIOSSL
import Processes
import Testing

/// Endpoint rules of the local backend that need no engine: plain HTTP only on the loopback,
/// https only with a client certificate from the cell's credential, all refused before any
/// connection is made.
@Suite struct CellEndpointTests {
    @Test func endpointForms() throws {
        #expect(try DockerEndpoint("unix:///run/podman/podman.sock").socketPath == "/run/podman/podman.sock")
        #expect(try DockerEndpoint("http://127.0.0.1:2375").kind == .http(host: "127.0.0.1", port: 2375))
        #expect(try DockerEndpoint("http://localhost").kind == .http(host: "localhost", port: 2375))
        #expect(try DockerEndpoint("http://[::1]:2380/").kind == .http(host: "::1", port: 2380))
        #expect(try DockerEndpoint("https://Cell-A:2376").kind == .https(host: "cell-a", port: 2376))
        #expect(try DockerEndpoint("https://10.0.0.12").description == "https://10.0.0.12:2376")
        #expect(try DockerEndpoint("https://[fd00::12]:2376").description == "https://[fd00::12]:2376")

        for plain in ["http://10.0.0.12:2375", "http://cell-a:2375", "http://[fd00::1]:2375", "http://128.0.0.1:2375"] {
            let e = #expect(throws: DockerError.self, "\(plain)") { _ = try DockerEndpoint(plain) }
            #expect(e?.message.contains("is not on this machine's loopback") == true, "\(e?.message ?? "")")
            #expect(e?.message.contains("Use https://") == true, "\(e?.message ?? "")")
        }
        let bad: [(String, String)] = [
            ("tcp://127.0.0.1:2375", "is not a Docker Engine API address"),
            ("unix://run/podman.sock", "not a unix socket address"),
            ("https://kiln:secret@cell-a:2376", "holds user information"),
            ("https://cell-a:2376/v1.41", "has a path"),
            ("https://cell-a:99999", "the port must be a number"),
            ("https://cell-a:+80", "the port must be a number"),
            ("https://:2376", "names no host"),
        ]
        for (text, reason) in bad {
            let e = #expect(throws: DockerError.self, "\(text)") { _ = try DockerEndpoint(text) }
            #expect(e?.message.contains(reason) == true, "\(text): \(e?.message ?? "")")
        }
        // A password in the URL never comes back in the message.
        let withPassword = #expect(throws: DockerError.self) { _ = try DockerEndpoint("https://kiln:secret@cell-a:2376") }
        #expect(withPassword?.message.contains("https://***@cell-a:2376") == true, "\(withPassword?.message ?? "")")
        #expect(withPassword?.message.contains("secret") == false)
    }

    @Test func cellValidation() throws {
        try Cell(name: "a", endpoint: "unix:///run/podman.sock").validate()
        try Cell(name: "a", endpoint: "http://127.0.0.1:2375").validate()
        try Cell(name: "a", endpoint: "https://cell-a:2376", advertiseHost: "10.0.0.12").validate()
        let bad: [(Cell, String)] = [
            (Cell(name: "a", endpoint: "http://cell-a:2375"), "plain HTTP off this machine's loopback"),
            (Cell(name: "a", endpoint: "http://10.0.0.12:2375"), "kiln cell credential set a --client-cert-file"),
            (Cell(name: "a", endpoint: "https://u:p@cell-a:2376"), "holds more than the address"),
            (Cell(name: "a", endpoint: "https://cell-a:2376/x"), "holds more than the address"),
            (Cell(name: "a", endpoint: "tcp://cell-a:2375"), "not a Docker Engine API address"),
        ]
        for (cell, reason) in bad {
            let e = #expect(throws: KilnError.self, "\(cell.endpoint)") { try cell.validate() }
            #expect(e?.message.contains(reason) == true, "\(e?.message ?? "no error") should say \(reason)")
            #expect(e?.message.contains("u:p@") == false)
        }
    }

    @Test("a cell on another host without an advertise host is refused; one on this machine needs none")
    func advertiseHostWarning() throws {
        let far = Cell(name: "b", endpoint: "https://cell-b:2376")
        let warning = try #require(far.advertiseHostProblem)
        let refused = #expect(throws: KilnError.self) { try far.validate() }
        #expect(refused?.message == warning)
        #expect(warning.contains("127.0.0.1") && warning.contains("--advertise-host"), "\(warning)")
        #expect(warning.contains("cell-b"))
        #expect(Cell(name: "b", endpoint: "https://10.0.0.12:2376").advertiseHostProblem != nil)
        for quiet in [Cell(name: "b", endpoint: "https://cell-b:2376", advertiseHost: "10.0.0.12"),
                      Cell(name: "a", endpoint: "unix:///run/podman.sock"),
                      Cell(name: "a", endpoint: "http://127.0.0.1:2375"),
                      Cell(name: "a", endpoint: "https://localhost:2376"),
                      Cell(name: "k", backend: "kubernetes", endpoint: "https://10.0.0.1:6443")] {
            #expect(quiet.advertiseHostProblem == nil, "\(quiet.endpoint)")
        }
    }

    @Test("the deployer refuses plain HTTP off the loopback, and an https cell without a usable credential, before connecting")
    func deployerRefusesBeforeConnecting() async throws {
        let spec = VersionSpec(app: "web", version: 1, image: "127.0.0.1:5000/web/app@sha256:" + String(repeating: "a", count: 64), settings: DeploySettings(port: 8080))
        // A record older than Cell.validate's rule: the deployer checks again.
        let plain = Cell(name: "a", endpoint: "http://cell-a:2375")
        let e = await #expect(throws: KilnError.self) { _ = try await LocalDeployer().start(spec, in: plain) }
        #expect(e?.message.hasPrefix("cell a: http://cell-a:2375 is not on this machine's loopback") == true, "\(e?.message ?? "")")
        // The check (discovery) does not reach the engine either, and says nothing false.
        let c = await LocalDeployer().check(Instance(id: "x", name: "x", cell: "a", address: "127.0.0.1:1"), of: spec, in: plain)
        #expect(!c.healthy)

        // Port 1 on the loopback: nothing listens, and nothing is sent to it either way.
        let far = Cell(name: "far", endpoint: "https://127.0.0.1:1", advertiseHost: "127.0.0.1")
        let storeless = await #expect(throws: KilnError.self) { _ = try await LocalDeployer().instances(of: "web", in: far) }
        #expect(storeless?.message.contains("only a scheduler with the farm's secrets key (--secrets-key-file) reaches https cells") == true, "\(storeless?.message ?? "")")

        let secrets = FixedPipelineSecrets()
        let deployer = LocalDeployer(secrets: secrets)
        let none = await #expect(throws: KilnError.self) { _ = try await deployer.start(spec, in: far) }
        #expect(none?.message == "cell far has no credential, and its endpoint https://127.0.0.1:1 is https (TLS with a client certificate): set one with `kiln cell credential set far --client-cert-file CERT --client-key-file KEY --ca-file CA` (the CA that signed the proxy's certificate, and a client certificate its ssl_client_certificate signed; docs/cells.md)",
                "\(none?.message ?? "")")
        #expect(none?.httpStatus == 400)

        let ca = try TestCA(name: "cells CA")
        secrets.setCell("far", CellCredential(token: "a-kubernetes-token", certificateAuthority: ca.pem))
        let token = await #expect(throws: KilnError.self) { _ = try await deployer.start(spec, in: far) }
        #expect(token?.message.contains("its credential is a bearer token, but a local cell's TLS proxy asks for a client certificate") == true, "\(token?.message ?? "")")
        #expect(token?.message.contains("a-kubernetes-token") == false)

        let (certificate, _) = try ca.issue(commonName: "kiln", server: false)
        secrets.setCell("far", CellCredential(clientCertificate: certificate, clientKey: "-----BEGIN PRIVATE KEY-----\nQUJDRA==\n-----END PRIVATE KEY-----\n", certificateAuthority: ca.pem))
        let key = await #expect(throws: KilnError.self) { _ = try await deployer.start(spec, in: far) }
        #expect(key?.message.hasPrefix("cell far: the client key cannot be read as PEM") == true, "\(key?.message ?? "")")
        #expect(key?.message.contains("kiln cell credential set far") == true)
        #expect(key?.message.contains("QUJDRA") == false)
        #expect(deployer.clients.count == 0)
    }
}

/// Local cells on "another host": podman's API on TCP behind nginx with TLS and client
/// certificates (`TLSCellProxy`), reached through `DockerClient` and `LocalDeployer` over https.
@Suite("local cells over TLS", .serialized)
struct TLSCellTests {
    static let cellName = "far"

    static func cell(_ proxy: TLSCellProxy) -> Cell {
        // Below Linux's ephemeral ports (32768 up), which any outgoing connection of the
        // machine may take between the deployer's check and podman's bind; apart from the
        // end-to-end farms' cells (21000-30999).
        let first = 31000 + proxy.tlsPort % 80 * 20
        return Cell(name: cellName, endpoint: proxy.endpoint, firstPort: first, lastPort: first + 19, advertiseHost: "127.0.0.1")
    }

    @Test("the engine answers through TLS with the right client certificate; none, another CA's, or a server another CA vouches for are refused, naming the cell and TLS")
    func trustBothWays() async throws {
        try await withTLSCell(cells: [Self.cellName]) { proxy, _, _ in
            let endpoint = try DockerEndpoint(proxy.endpoint)
            let client = try proxy.tls.makeHTTPClient()
            let docker = DockerClient(endpoint: endpoint, httpClient: client)
            try await docker.ping()
            let version = try await docker.version()
            #expect(version.apiVersion.hasPrefix("1."), "\(version)")
            #expect(await proxy.logged { $0.hasPrefix("200 SUCCESS \"GET /v1.41/version") }, "\(proxy.accessLog)")
            try await client.shutdown()

            // No client certificate: nginx completes the handshake and answers 400 itself.
            var bare = TLSConfiguration.makeClientConfiguration()
            bare.trustRoots = .certificates(try NIOSSLCertificate.fromPEMBytes(Array(proxy.serverCA.pem.utf8)))
            let anonymous = HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: .init(tlsConfiguration: bare))
            let none = await #expect(throws: DockerError.self) { try await DockerClient(endpoint: endpoint, httpClient: anonymous).ping() }
            try await anonymous.shutdown()
            #expect(none?.isTLSFailure == true)
            #expect(none?.statusCode == 400)
            #expect(none?.message.contains("refused the client certificate (400 No required SSL certificate was sent)") == true, "\(none?.message ?? "")")
            #expect(await proxy.logged { $0.hasPrefix("400 NONE \"GET /v1.41/_ping") }, "\(proxy.accessLog)")

            // An https cell is never reached with the shared client (system CAs, no certificate).
            let shared = await #expect(throws: DockerError.self) { try await DockerClient(endpoint: endpoint).ping() }
            #expect(shared?.message.contains("give DockerClient an HTTP client made with the endpoint's CA and client certificate") == true, "\(shared?.message ?? "")")

            // Through the deployer, as the scheduler reaches the cell: a client certificate
            // another CA signed.
            let spec = VersionSpec(app: "web", version: 1, image: "127.0.0.1:1/web/app:1", settings: DeploySettings(port: 8080))
            let cell = Self.cell(proxy)
            let stranger = try proxy.otherCA.issue(commonName: "kiln-scheduler", server: false)
            let secrets = FixedPipelineSecrets(cells: [Self.cellName: CellCredential(clientCertificate: stranger.certificate, clientKey: stranger.key, certificateAuthority: proxy.serverCA.pem)])
            let deployer = LocalDeployer(secrets: secrets)
            let foreign = await #expect(throws: KilnError.self) { _ = try await deployer.start(spec, in: cell) }
            let foreignMessage = foreign?.message ?? ""
            #expect(foreignMessage.hasPrefix("cell far: TLS refused the call to \(proxy.endpoint) (ping): "), "\(foreignMessage)")
            #expect(foreignMessage.contains("refused the client certificate (400 The SSL certificate error)"), "\(foreignMessage)")
            #expect(foreignMessage.contains("kiln cell credential set far --client-cert-file"), "\(foreignMessage)")
            #expect(foreign?.httpStatus == 503)
            #expect(await proxy.logged { $0.hasPrefix("400 FAILED") && $0.contains("/_ping") }, "\(proxy.accessLog)")

            // The right client certificate, but a CA that did not sign the proxy's certificate:
            // the handshake fails on Kiln's side, and nginx answers nothing.
            let answered = proxy.accessLog.count
            secrets.setCell(Self.cellName, CellCredential(clientCertificate: proxy.client.certificate, clientKey: proxy.client.key, certificateAuthority: proxy.otherCA.pem))
            let impostor = await #expect(throws: KilnError.self) { _ = try await deployer.instances(of: "web", in: cell) }
            #expect(impostor?.message.hasPrefix("cell far: TLS refused the call to \(proxy.endpoint) (list containers") == true, "\(impostor?.message ?? "")")
            #expect(impostor?.message.contains("the TLS handshake failed (CERTIFICATE_VERIFY_FAILED): the server's certificate is not signed by the CA given for it") == true,
                    "\(impostor?.message ?? "")")
            let started = await #expect(throws: KilnError.self) { _ = try await deployer.start(spec, in: cell) }
            #expect(started?.message.hasPrefix("cell far: TLS refused the call to \(proxy.endpoint)") == true, "\(started?.message ?? "")")
            #expect(proxy.accessLog.count == answered, "\(proxy.accessLog.suffix(3))")

            // The right credential, set again: the next call makes a client from it and gets
            // through; the replaced clients are gone.
            secrets.setCell(Self.cellName, proxy.credential)
            #expect(try await deployer.instances(of: "web", in: cell).isEmpty)
            #expect(deployer.clients.count == 1)
        }
    }

    @Test("a deploy through the TLS proxy: the image built and pushed through it, then pulled, created, started, health-checked, scaled, its logs read, and removed")
    func deployOverTLS() async throws {
        let dir = try TempDir("tls-cell-deploy")
        let registry = try await RegistryServer.start(root: dir.path("registry"))
        defer { registry.stop() }
        try FileManager.default.createDirectory(at: dir.path("context/www"), withIntermediateDirectories: true)
        try "ok\n".write(to: dir.path("context/www/health"), atomically: true, encoding: .utf8)
        try """
            FROM \(busyboxImage)
            COPY www /www
            CMD ["/bin/sh", "-c", "echo serving web v1 on 8080; exec httpd -f -p 8080 -h /www"]

            """.write(to: dir.path("context/Dockerfile"), atomically: true, encoding: .utf8)

        try await withTLSCell(cells: [Self.cellName]) { proxy, _, _ in
            let client = try proxy.tls.makeHTTPClient()
            let docker = DockerClient(endpoint: try DockerEndpoint(proxy.endpoint), httpClient: client)
            do {
                // The context goes up as a request body and the build's lines come back as a
                // stream, both through nginx.
                let repository = "\(registry.address)/web/app"
                _ = try await docker.build(contextDirectory: dir.path("context"), tag: "\(repository):1") { _ in }
                let pushed = try await docker.push(image: repository, tag: "1", insecure: true) { _ in }
                let digest = try #require(pushed)
                try await docker.removeImage("\(repository):1", force: true)
                #expect(try await docker.imageExists("\(repository):1") == false)

                let secrets = FixedPipelineSecrets(cells: [Self.cellName: proxy.credential])
                let deployer = LocalDeployer(secrets: secrets)
                let cell = Self.cell(proxy)
                let spec = VersionSpec(app: "web", version: 1, image: "\(repository)@\(digest)",
                                       settings: DeploySettings(port: 8080, healthPath: "/health"))
                let instances = try await deployer.start(spec, in: cell)
                #expect(instances.count == 1)
                let first = try #require(instances.first)
                #expect(first.address.hasPrefix("127.0.0.1:"))
                #expect(await proxy.logged { $0.hasPrefix("200 SUCCESS \"POST /v1.41/images/create") }, "the pull went through the proxy")
                #expect(await proxy.logged { $0.hasPrefix("201 SUCCESS \"POST /v1.41/containers/create") }, "\(proxy.accessLog)")

                // Health, as discovery checks it: the app over its published port.
                try await Self.waitHealthy(first, spec, cell, deployer)

                // Its output, followed through the proxy (nginx passes it on unbuffered).
                let line = try await withTimeout(.seconds(60)) {
                    for try await line in docker.logs(first.id, follow: true) { return line }
                    return ""
                }
                #expect(line == "serving web v1 on 8080")

                // Scaling reaches the cell through the same client.
                let added = try await deployer.scaleOut(spec, in: cell, running: instances, adding: 1)
                #expect(added.count == 1)
                try await Self.waitHealthy(try #require(added.first), spec, cell, deployer)
                #expect(try await deployer.instances(of: "web", in: cell)[1]?.count == 2)

                // A stopped container: discovery's check asks the engine, over TLS, why.
                try await docker.stop(try #require(added.first).id, timeoutSeconds: 5)
                let stopped = await deployer.check(try #require(added.first), of: spec, in: cell)
                #expect(!stopped.healthy)
                #expect(stopped.detail.hasPrefix("container exited"), "\(stopped.detail)")

                try await deployer.stop(instances + added, of: spec, in: cell)
                #expect(try await deployer.instances(of: "web", in: cell).isEmpty)
                let gone = await #expect(throws: DockerError.self) { _ = try await docker.state(of: first.id) }
                #expect(gone?.isNotFound == true)
                #expect(deployer.clients.count == 1, "one client for the cell, reused by every call")
                try await client.shutdown()
            } catch {
                try? await client.shutdown()
                throw error
            }
        }
    }

    static func waitHealthy(_ instance: Instance, _ spec: VersionSpec, _ cell: Cell, _ deployer: LocalDeployer) async throws {
        let deadline = ContinuousClock.now + .seconds(60)
        var last = ""
        while ContinuousClock.now < deadline {
            let (healthy, detail) = await deployer.check(instance, of: spec, in: cell)
            if healthy { return }
            last = detail
            try await Task.sleep(for: .milliseconds(200))
        }
        Issue.record("\(instance.name) not healthy within 60 s: \(last)")
        throw CancellationError()
    }
}
