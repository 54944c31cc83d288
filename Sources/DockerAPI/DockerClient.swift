import AsyncHTTPClient
import Foundation
import NIOCore
#if canImport(Glibc)
import Glibc
#endif

/// A client of the Docker Engine API (v1.41): podman's compatible service (`podman system
/// service`) or dockerd, over a unix socket, plain HTTP on this machine's loopback, or HTTPS
/// with a client certificate (`DockerEndpoint`, `DockerTLS`).
///
/// Call order for one container: `createContainer` → `start` → `logs(follow: true)` and
/// `wait` side by side → `remove`. `stop` and `remove` may be called any number of times, also
/// on a container that is gone: a second call does not fail. Every method may run concurrently
/// with any other. Cancelling the calling task cancels the HTTP request (the container keeps
/// running: stop it).
///
/// `wait`, `logs(follow:)`, `build` and `push` keep one request open for as long as the
/// container or the build runs, silent stretches included, so the `HTTPClient` given must have
/// no read timeout: `DockerClient.httpClient` (the default) has none; `HTTPClient.shared`
/// gives up after 90 s of silence (`wait` copes by asking again; the others fail).
public struct DockerClient: Sendable {
    /// The API version in every path.
    public static let apiVersion = "v1.41"

    /// The HTTP client `DockerClient` uses unless given another: no read timeout, a 5 s
    /// connect timeout (AsyncHTTPClient retries a refused connection until then) and room for
    /// 64 open requests to one socket (each running build holds two: `logs` and `wait`).
    /// Never shut down.
    /// Also for `http://` endpoints on the loopback; an `https://` endpoint needs a client made
    /// with its TLS material (`DockerTLS.makeHTTPClient`).
    public static let httpClient: HTTPClient = HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: httpClientConfiguration())

    static func httpClientConfiguration() -> HTTPClient.Configuration {
        var configuration = HTTPClient.Configuration(
            timeout: .init(connect: .seconds(5), read: nil),
            connectionPool: .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: 64)
        )
        configuration.decompression = .disabled
        return configuration
    }

    /// Where the API listens.
    public let endpoint: DockerEndpoint
    let client: HTTPClient

    /// The unix socket the API listens on; nil for a TCP endpoint.
    public var socketPath: String? { endpoint.socketPath }

    public init(socketPath: String, httpClient: HTTPClient = DockerClient.httpClient) {
        self.endpoint = .unixSocket(socketPath)
        self.client = httpClient
    }

    /// A client of `endpoint` through `httpClient`. For an `https://` endpoint give a client
    /// made with the endpoint's TLS material (`DockerTLS.makeHTTPClient`), and keep it for as
    /// long as the endpoint is used: one per distinct material, not one per call.
    public init(endpoint: DockerEndpoint, httpClient: HTTPClient = DockerClient.httpClient) {
        self.endpoint = endpoint
        self.client = httpClient
    }

    // MARK: system

    /// Succeeds when the API answers `GET /_ping` with 200.
    public func ping() async throws {
        let response = try await send(.GET, "/_ping", operation: "ping")
        _ = try await expect(response, [200], "ping")
    }

    /// The engine's version and the highest API version it speaks (`GET /version`).
    public func version() async throws -> EngineVersion {
        let response = try await send(.GET, "/version", operation: "version")
        let data = try await expect(response, [200], "version")
        do {
            return try JSONDecoder().decode(EngineVersion.self, from: data)
        } catch {
            throw DockerError("version", 200, "the answer is not the API's version object: \(String(decoding: data.prefix(200), as: UTF8.self))")
        }
    }
}

/// What `GET /version` says of the engine.
public struct EngineVersion: Decodable, Sendable, Equatable {
    /// The engine's own version (podman's, with podman).
    public let version: String
    /// The highest Docker Engine API version it speaks, such as "1.41".
    public let apiVersion: String

    enum CodingKeys: String, CodingKey { case version = "Version", apiVersion = "ApiVersion" }
}
