import AsyncHTTPClient
import Foundation
import KilnCore
import TLSTrust

/// A Docker Distribution 2.8 registry (`docker-registry serve`) on 127.0.0.1, plain HTTP
/// (or HTTPS with `TLS`), storing its blobs under `root`: where the farm's builders push images.
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

    /// The registry serving HTTPS (its `http.tls`): the certificate and key it serves, PEM,
    /// and the CA that signed the certificate, which the start's probe trusts.
    public struct TLS: Sendable, Equatable {
        public var certificate: String
        public var key: String
        public var ca: String

        public init(certificate: String, key: String, ca: String) {
            self.certificate = certificate
            self.key = key
            self.ca = ca
        }
    }

    public let root: URL
    public let port: Int
    public let logFile: URL
    public let process: ManagedProcess
    /// nil: plain HTTP.
    public let tls: TLS?
    /// Where it runs (``Placement/local``: this machine's loopback).
    public let placement: Placement

    /// "127.0.0.1:<port>" (the placement's advertised name): the registry part of image names pushed here.
    public var address: String { "\(placement.advertise):\(port)" }
    /// "http://127.0.0.1:<port>", or https:// with `tls`.
    public var url: String { "\(tls == nil ? "http" : "https")://\(address)" }

    private init(root: URL, port: Int, logFile: URL, process: ManagedProcess, tls: TLS?, placement: Placement) {
        self.placement = placement
        self.root = root
        self.port = port
        self.logFile = logFile
        self.process = process
        self.tls = tls
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
    /// only for a test of a registry that refuses). `tls`: serve HTTPS with these files.
    /// `placement` puts it on another host (then `port` is required: that host's port space
    /// is its own).
    public static func start(root: URL, port: Int? = nil, logFile: URL? = nil, auth: TokenAuth? = nil, htpasswd: URL? = nil,
                             deletes: Bool = true, tls: TLS? = nil, placement: Placement = .local) async throws -> RegistryServer {
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
            try CredentialFile.write(configuration(root: root, port: chosen, auth: auth, htpasswd: htpasswd, deletes: deletes, tls: tls,
                                                   bindHost: placement.bindHost), to: config.path)
            let command = try placement.command("docker-registry", ["serve", config.path])
            let process = try ManagedProcess(
                name: "registry", executable: command.executable, arguments: command.arguments, logFile: logFile)
            do {
                try await process.waitUntilReady(timeout: 20) { await answers(host: placement.probeHost, port: chosen, challenge: auth != nil ? "Bearer " : htpasswd != nil ? "Basic " : nil, tls: tls) }
                return RegistryServer(root: root, port: chosen, logFile: logFile, process: process, tls: tls, placement: placement)
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
    static func configuration(root: URL, port: Int, auth: TokenAuth? = nil, htpasswd: URL? = nil, deletes: Bool = true, tls: TLS? = nil,
                              bindHost: String = "127.0.0.1") -> String {
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
        health:
          storagedriver:
            enabled: false

        """
        if let tls {
            // The nested keys of `http:` (a second `http:` block would replace the first).
            text = text.replacingOccurrences(of: "  addr: \(bindHost):\(port)\n", with: """
                  addr: \(bindHost):\(port)
                  tls:
                    certificate: "\(tls.certificate)"
                    key: "\(tls.key)"

                """)
        }
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
    private static func answers(host: String, port: Int, challenge: String?, tls: TLS?) async -> Bool {
        let request = HTTPClientRequest(url: "\(tls == nil ? "http" : "https")://\(host):\(port)/v2/")
        let client: HTTPClient
        if let tls {
            guard let ca = try? TrustedCA(file: tls.ca) else { return false }
            client = OutgoingHTTP.client(.init(connect: .seconds(2), read: .seconds(2), retryConnecting: false), trusting: ca)
        } else {
            client = HTTPClient.shared
        }
        guard let response = try? await client.execute(request, timeout: .seconds(2)) else { return false }
        _ = try? await response.body.collect(upTo: 1 << 16)
        if let challenge {
            return response.status.code == 401 && response.headers.first(name: "Www-Authenticate")?.hasPrefix(challenge) == true
        }
        return response.status.code == 200
    }
}
