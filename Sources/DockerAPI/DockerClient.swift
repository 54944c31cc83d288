import AsyncHTTPClient
import Foundation
import NIOCore
#if canImport(Glibc)
import Glibc
#endif

/// A client of the Docker Engine API (v1.41) over a unix socket: podman's compatible service
/// (`podman system service`) or dockerd.
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
    public static let httpClient: HTTPClient = {
        var configuration = HTTPClient.Configuration(
            timeout: .init(connect: .seconds(5), read: nil),
            connectionPool: .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: 64)
        )
        configuration.decompression = .disabled
        return HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: configuration)
    }()

    /// The unix socket the API listens on.
    public let socketPath: String
    let client: HTTPClient

    public init(socketPath: String, httpClient: HTTPClient = DockerClient.httpClient) {
        self.socketPath = socketPath
        self.client = httpClient
    }

    // MARK: system

    /// Succeeds when the API answers `GET /_ping` with 200.
    public func ping() async throws {
        let response = try await send(.GET, "/_ping", operation: "ping")
        _ = try await expect(response, [200], "ping")
    }
}
