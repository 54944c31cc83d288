import AsyncHTTPClient
import Foundation
import KilnCore

/// A Docker Distribution 2.8 registry (`docker-registry serve`) on 127.0.0.1, plain HTTP,
/// storing its blobs under `root`: where the farm's builders push images.
///
/// `start` returns once `GET /v2/` answers 200. Stop it with `stop()`; it is also stopped when
/// the last reference goes away, so a test that fails halfway leaves no registry behind.
/// Deleting manifests is enabled (old versions can be cleaned). With `TokenAuth` every client
/// needs a token from Kiln's token service (the scheduler's `/auth/token`); without it anyone
/// on loopback may push and pull (for tests of the Docker API client only).
public final class RegistryServer: Sendable {
    /// Docker's token authentication: the registry sends clients to `realm` for a token and
    /// accepts only tokens signed by a key whose certificate is in `rootCertBundle`, issued by
    /// `issuer` for `service`.
    public struct TokenAuth: Sendable, Equatable {
        /// The token service's URL, `http://127.0.0.1:7070/auth/token`.
        public var realm: String
        /// The JWT's `aud` the registry expects (`kiln scheduler --registry-service`).
        public var service: String
        /// The JWT's `iss` the registry expects (`kiln scheduler --registry-token-issuer`).
        public var issuer: String
        /// PEM certificate(s) of the signing key(s).
        public var rootCertBundle: URL
        /// Where the registry reports pushes and deletes (the scheduler's `/hooks/registry`),
        /// with the token it sends as `Authorization: Bearer`; nil: no reports.
        public var events: (url: String, token: String)?

        public init(realm: String, service: String = "kiln-registry", issuer: String = "kiln", rootCertBundle: URL, events: (url: String, token: String)? = nil) {
            self.realm = realm
            self.service = service
            self.issuer = issuer
            self.rootCertBundle = rootCertBundle
            self.events = events
        }

        public static func == (a: TokenAuth, b: TokenAuth) -> Bool {
            a.realm == b.realm && a.service == b.service && a.issuer == b.issuer && a.rootCertBundle == b.rootCertBundle
                && a.events?.url == b.events?.url && a.events?.token == b.events?.token
        }
    }

    public let root: URL
    public let port: Int
    public let logFile: URL
    public let process: ManagedProcess
    /// Where it runs (``Placement/local``: this machine's loopback).
    public let placement: Placement
    /// Whether it serves TLS (`start`'s `tls`).
    public let servesTLS: Bool

    /// "127.0.0.1:<port>" (the placement's advertised name): the registry part of image names pushed here.
    public var address: String { "\(placement.advertise):\(port)" }
    /// "http://127.0.0.1:<port>" (https with TLS).
    public var url: String { "\(servesTLS ? "https" : "http")://\(address)" }

    private init(root: URL, port: Int, logFile: URL, process: ManagedProcess, placement: Placement, servesTLS: Bool) {
        self.root = root
        self.port = port
        self.logFile = logFile
        self.process = process
        self.placement = placement
        self.servesTLS = servesTLS
    }

    deinit {
        process.stop(grace: 2)
    }

    /// Starts a registry storing under `root` (created if missing; `<root>/config.yml` and
    /// `<root>/data`). With `port` nil a free port is picked; a given port that is taken is a
    /// `FarmError`. Its output goes to `logFile`, by default `<root>/registry.log`.
    ///
    /// `htpasswd` (a file of `user:bcrypt-hash` lines, `htpasswd -Bbn USER PASSWORD`) turns on
    /// Distribution's HTTP Basic authentication instead: a registry of someone else's, as a
    /// project's `pushTo` or a private base image's registry would be.
    /// `deletes`: whether the registry deletes manifests (Kiln's console deletes tags; off
    /// only for a test of a registry that refuses).
    ///
    /// `tls` (PEM certificate and key files) serves HTTPS; `placement` puts it on another
    /// host (then `port` is required: that host's port space is its own).
    public static func start(root: URL, port: Int? = nil, logFile: URL? = nil, auth: TokenAuth? = nil, htpasswd: URL? = nil,
                             deletes: Bool = true, tls: (certificate: String, key: String)? = nil,
                             placement: Placement = .local) async throws -> RegistryServer {
        guard ManagedProcess.which("docker-registry") != nil else {
            throw FarmError("docker-registry is not installed: run scripts/install-deps.sh (Debian package docker-registry)")
        }
        if !placement.isLocal, port == nil { throw FarmError("registry: a registry on another host needs its port") }
        if placement.isLocal, let port, FreePort.isInUse(port) {
            throw FarmError("registry: port \(port) on 127.0.0.1 is already in use (another registry?); stop what listens there or pick another port")
        }
        try FileManager.default.createDirectory(at: root.appendingPathComponent("data"), withIntermediateDirectories: true)
        let logFile = logFile ?? root.appendingPathComponent("registry.log")

        // A free port may be taken between FreePort.next() and the registry's bind: retry then.
        let attempts = port == nil ? 3 : 1
        var lastError: (any Error)?
        for _ in 0..<attempts {
            let chosen = try port ?? FreePort.next()
            let config = root.appendingPathComponent("config.yml")
            // Mode 0600: it may hold the token the registry reports events with.
            try CredentialFile.write(configuration(root: root, port: chosen, auth: auth, htpasswd: htpasswd, deletes: deletes,
                                                   bindHost: placement.bindHost, tls: tls), to: config.path)
            let command = try placement.command("docker-registry", ["serve", config.path])
            let process = try ManagedProcess(
                name: "registry", executable: command.executable, arguments: command.arguments, logFile: logFile)
            let probe = "\(tls == nil ? "http" : "https")://\(placement.probeHost):\(chosen)/v2/"
            do {
                try await process.waitUntilReady(timeout: 20) {
                    await answers(probe, client: placement.probeClient, challenge: auth != nil ? "Bearer " : htpasswd != nil ? "Basic " : nil)
                }
                return RegistryServer(root: root, port: chosen, logFile: logFile, process: process, placement: placement, servesTLS: tls != nil)
            } catch {
                process.killNow()
                lastError = error
                if Task.isCancelled || !process.logTail(lines: 5).contains("address already in use") { break }
            }
        }
        throw lastError ?? FarmError("the registry did not start")
    }

    /// Stops the registry (SIGTERM, then SIGKILL after 5 s). Calling it twice is harmless.
    public func stop() {
        process.stop()
    }

    /// The registry's configuration file.
    static func configuration(root: URL, port: Int, auth: TokenAuth? = nil, htpasswd: URL? = nil, deletes: Bool = true,
                              bindHost: String = "127.0.0.1", tls: (certificate: String, key: String)? = nil) -> String {
        var text = """
        version: 0.1
        log:
          level: warn
          accesslog:
            disabled: true
        storage:
          filesystem:
            rootdirectory: "\(root.appendingPathComponent("data").path)"
          delete:
            enabled: \(deletes)
        http:
          addr: \(bindHost):\(port)
        \(tls.map { "  tls:\n    certificate: \"\($0.certificate)\"\n    key: \"\($0.key)\"\n" } ?? "")health:
          storagedriver:
            enabled: false

        """
        if let htpasswd, auth == nil {
            text += """
            auth:
              htpasswd:
                realm: "kiln-test"
                path: "\(htpasswd.path)"

            """
        }
        if let auth {
            // Quoted: YAML would read a bare URL fine, but a path or name with ': ' would not.
            text += """
            auth:
              token:
                realm: "\(auth.realm)"
                service: "\(auth.service)"
                issuer: "\(auth.issuer)"
                rootcertbundle: "\(auth.rootCertBundle.path)"

            """
            if let events = auth.events {
                // Manifests only (a push of a tag, a delete): layers are ignored by media type.
                text += """
                notifications:
                  endpoints:
                    - name: kiln
                      url: "\(events.url)"
                      headers:
                        Authorization: ["Bearer \(events.token)"]
                      timeout: 2s
                      threshold: 5
                      backoff: 2s
                      ignoredmediatypes: ["application/octet-stream", "application/vnd.docker.image.rootfs.diff.tar.gzip", "application/vnd.oci.image.layer.v1.tar+gzip", "application/vnd.docker.container.image.v1+json", "application/vnd.oci.image.config.v1+json"]
                      ignore:
                        actions: ["pull", "mount"]

                """
            }
        }
        return text
    }

    /// `GET /v2/` answers 200, or 401 with `challenge` (`Bearer `, `Basic `) when auth is on.
    private static func answers(_ url: String, client: HTTPClient, challenge: String?) async -> Bool {
        let request = HTTPClientRequest(url: url)
        guard let response = try? await client.execute(request, timeout: .seconds(2)) else { return false }
        _ = try? await response.body.collect(upTo: 1 << 16)
        if let challenge {
            return response.status.code == 401 && response.headers.first(name: "Www-Authenticate")?.hasPrefix(challenge) == true
        }
        return response.status.code == 200
    }
}
