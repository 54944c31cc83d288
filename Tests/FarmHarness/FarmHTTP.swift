import AsyncHTTPClient
import Foundation
import NIOCore
import NIOFoundationCompat

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

    /// One request, with a JSON body if `body` is given; the status and the whole answer (up
    /// to 16 MiB). Any status is returned; only a failed exchange throws.
    public static func send(_ method: String, _ url: String, body: String? = nil, headers: [(String, String)] = [],
                            client: HTTPClient = FarmHTTP.client, timeout: TimeAmount = .seconds(60)) async throws -> (status: Int, body: String) {
        var request = HTTPClientRequest(url: url)
        request.method = .init(rawValue: method)
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(string: body))
        }
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        let response = try await client.execute(request, timeout: timeout)
        return (Int(response.status.code), String(buffer: try await response.body.collect(upTo: 16 << 20)))
    }
}
