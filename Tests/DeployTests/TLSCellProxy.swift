@testable import Deploy
import DockerAPI
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
import Processes
#if canImport(Glibc)
import Glibc
#endif

/// A local cell as docs/cells.md sets one up on another host, made here on this machine's
/// loopback: podman's API service on plain TCP (`tcp://127.0.0.1:P`, what would be the cell
/// host's own loopback) and nginx in front of it on `127.0.0.1:Q` with TLS, asking for a client
/// certificate (`ssl_verify_client on`) and streaming both ways.
///
/// Three CAs, so each refusal has one cause: `serverCA` signs nginx's certificate (the CA in
/// Kiln's credential), `clientCA` signs the client certificates nginx accepts
/// (`ssl_client_certificate`), `otherCA` signs nothing either side trusts.
final class TLSCellProxy: Sendable {
    let serverCA: TestCA
    let clientCA: TestCA
    let otherCA: TestCA
    /// A client certificate `clientCA` signed, and its key (PEM).
    let client: (certificate: String, key: String)
    let podmanPort: Int
    let tlsPort: Int
    let folder: TempDir
    private let podman: ManagedProcess
    private let nginx: Nginx

    /// `https://127.0.0.1:Q`, the cell's endpoint.
    var endpoint: String { "https://127.0.0.1:\(tlsPort)" }
    /// What `kiln cell credential set NAME --client-cert-file --client-key-file --ca-file` seals.
    var credential: CellCredential { CellCredential(clientCertificate: client.certificate, clientKey: client.key, certificateAuthority: serverCA.pem) }
    var tls: DockerTLS { DockerTLS(certificateAuthority: serverCA.pem, clientCertificate: client.certificate, clientKey: client.key) }

    private init(serverCA: TestCA, clientCA: TestCA, otherCA: TestCA, client: (certificate: String, key: String), podmanPort: Int, tlsPort: Int,
                 folder: TempDir, podman: ManagedProcess, nginx: Nginx) {
        self.serverCA = serverCA
        self.clientCA = clientCA
        self.otherCA = otherCA
        self.client = client
        self.podmanPort = podmanPort
        self.tlsPort = tlsPort
        self.folder = folder
        self.podman = podman
        self.nginx = nginx
    }

    deinit { stop() }

    /// Starts a second API service of `service`'s storage on TCP, and nginx in front of it.
    static func start(on service: PodmanService) async throws -> TLSCellProxy {
        let folder = try TempDir("tls-cell")
        let dir = folder.url.path
        for sub in ["logs", "temp"] { try FileManager.default.createDirectory(at: folder.path(sub), withIntermediateDirectories: true) }
        let serverCA = try TestCA(name: "cell proxy CA"), clientCA = try TestCA(name: "kiln client CA"), otherCA = try TestCA(name: "another CA")
        let server = try serverCA.issue(commonName: "cell-a", server: true)
        let client = try clientCA.issue(commonName: "kiln-scheduler", server: false)
        try write(folder, "server.crt", server.certificate)
        try write(folder, "server.key", server.key)
        try write(folder, "client-ca.crt", clientCA.pem)

        let podmanPort = try FreePort.next()
        let podman = try ManagedProcess(
            name: "podman service (tcp)", executable: "podman",
            arguments: ["system", "service", "--time=0", "tcp://127.0.0.1:\(podmanPort)"],
            environment: service.environment, workingDirectory: service.root, logFile: folder.path("logs/podman.log"))
        // Plain HTTP on the loopback: the endpoint form for an engine on this machine.
        let plain = DockerClient(endpoint: try DockerEndpoint("http://127.0.0.1:\(podmanPort)"))
        do {
            try await podman.waitUntilReady(timeout: 60) { (try? await plain.ping()) != nil }
        } catch {
            podman.stop(grace: 10)
            throw error
        }

        let tlsPort = try FreePort.next()
        try config(dir: dir, tlsPort: tlsPort, podmanPort: podmanPort).write(to: folder.path("nginx.conf"), atomically: true, encoding: .utf8)
        let nginx: Nginx
        do {
            nginx = try await Nginx.start(executable: "nginx", directory: folder.url, timeout: .seconds(30))
            let deadline = Date().addingTimeInterval(30)
            while !FreePort.isInUse(tlsPort) {
                guard Date() < deadline else { throw FarmError("nginx did not listen on 127.0.0.1:\(tlsPort) within 30 s: \(String(decoding: (try? Data(contentsOf: folder.path("logs/error.log"))) ?? Data(), as: UTF8.self))") }
                try await Task.sleep(for: .milliseconds(50))
            }
        } catch {
            podman.stop(grace: 10)
            throw error
        }
        return TLSCellProxy(serverCA: serverCA, clientCA: clientCA, otherCA: otherCA, client: client, podmanPort: podmanPort, tlsPort: tlsPort,
                            folder: folder, podman: podman, nginx: nginx)
    }

    /// nginx's configuration: the lines docs/cells.md gives, with this test's files and ports.
    static func config(dir: String, tlsPort: Int, podmanPort: Int) -> String {
        NginxTestConfig.wrap(dir: dir, logFormat: "$status $ssl_client_verify \"$request\"", connections: 256, server: """
            server {
                listen 127.0.0.1:\(tlsPort) ssl;
                ssl_certificate \(dir)/server.crt;
                ssl_certificate_key \(dir)/server.key;
                ssl_client_certificate \(dir)/client-ca.crt;
                ssl_verify_client on;
                location / {
                    proxy_pass http://127.0.0.1:\(podmanPort);
                    proxy_http_version 1.1;
                    proxy_buffering off;
                    proxy_request_buffering off;
                    client_max_body_size 0;
                    proxy_read_timeout 600s;
                    proxy_send_timeout 600s;
                }
            }
            """)
    }

    /// nginx's access log so far: one `STATUS VERIFY "REQUEST"` line per request it answered.
    var accessLog: [String] {
        let text = (try? String(contentsOf: folder.path("logs/access.log"), encoding: .utf8)) ?? ""
        return text.split(separator: "\n").map(String.init)
    }

    /// Whether nginx logs a request matching `line` within 10 s (it writes the line as the
    /// request ends, which may be just after the client has read the answer).
    func logged(_ line: @Sendable (String) -> Bool) async -> Bool {
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            if accessLog.contains(where: line) { return true }
            try? await Task.sleep(for: .milliseconds(50))
        }
        return false
    }

    /// Stops nginx and the TCP service by PID; harmless twice.
    func stop() {
        nginx.stop(grace: 5)
        podman.stop(grace: 10)
    }

    private static func write(_ folder: TempDir, _ name: String, _ text: String) throws {
        let path = folder.path(name).path
        guard FileManager.default.createFile(atPath: path, contents: Data(text.utf8), attributes: [.posixPermissions: 0o600]) else {
            throw FarmError("cannot write \(path)")
        }
    }
}

/// Runs `body` with podman's test storage (`withPodman`: the busybox image is there) served on
/// TCP behind a TLS proxy, then removes every container the test left labeled with one of
/// `cells` and stops the proxy and the service.
func withTLSCell<T: Sendable>(
    cells: [String], timeout: Duration = .seconds(300),
    _ body: @escaping @Sendable (TLSCellProxy, PodmanService, DockerClient) async throws -> T
) async throws -> T {
    try await withPodman(timeout: timeout) { service, local in
        let proxy = try await TLSCellProxy.start(on: service)
        func cleanUp() async {
            for cell in cells {
                for c in (try? await local.containers(labeled: ["kiln.cell": cell])) ?? [] { try? await local.remove(c.id, force: true) }
            }
            proxy.stop()
        }
        do {
            let result = try await body(proxy, service, local)
            await cleanUp()
            return result
        } catch {
            await cleanUp()
            throw error
        }
    }
}
