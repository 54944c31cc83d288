import AsyncHTTPClient
import Foundation
import KilnTestSupport
import NIOCore

/// HTTP for a farm under load: a client with room for many concurrent requests to one host
/// (`HTTPClient.shared` allows 8 connections per host, which would make the benchmark's
/// clients wait on the pool instead of the scheduler).
public enum FarmHTTP {
    /// Never shut down, like `HTTPClient.shared`.
    public static let client: HTTPClient = {
        var configuration = HTTPClient.Configuration()
        configuration.timeout = .init(connect: .seconds(3), read: .seconds(60))
        configuration.connectionPool = .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: 256)
        configuration.connectionPool.retryConnectionEstablishment = false
        return HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }()

    /// One request through `client` (KilnTestSupport's `httpRequest`): the status and the
    /// whole answer. Any status is returned; only a failed exchange throws.
    public static func send(_ method: String, _ url: String, body: String? = nil, headers: [(String, String)] = [],
                            client: HTTPClient = FarmHTTP.client, timeout: TimeAmount = .seconds(60)) async throws -> (status: Int, body: String) {
        let reply = try await httpRequest(.init(rawValue: method), url, body: body, headers: headers, client: client, timeout: timeout)
        return (reply.status, reply.body)
    }
}
