import AsyncHTTPClient
import Etcd
import Foundation
import KilnCore
import LocalFarm
import NIOCore
import NIOFoundationCompat
import NIOHTTP1

// Helpers shared by Kiln's test targets. Not part of Kiln.

public struct TimedOut: Error, CustomStringConvertible {
    public let after: Duration
    public let waitingFor: String
    public var description: String { "timed out after \(after)\(waitingFor.isEmpty ? "" : " waiting for \(waitingFor)")" }
}

/// Runs `body`, cancelling it and throwing `TimedOut` if it takes longer than `limit`
/// (KilnCore's `withTimeout`, with the tests' error).
public func withTimeout<T: Sendable>(_ limit: Duration, waitingFor what: String = "", _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await KilnCore.withTimeout(limit, { TimedOut(after: limit, waitingFor: what) }, body)
}

/// Waits until `condition` holds for the keys under `prefix` (sorted by key, as a range read
/// returns them): checks them once, then again on every change (it follows the prefix, never
/// sleeps). Returns the keys that satisfied it.
@discardableResult
public func waitUntil(_ etcd: EtcdClient, prefix: String, timeout: Duration = .seconds(20),
                      _ condition: @escaping @Sendable ([KeyValue]) -> Bool) async throws -> [KeyValue] {
    try await withTimeout(timeout, waitingFor: "a condition on \(prefix)") {
        var view = PrefixView()
        for await update in etcd.follow(prefix: prefix) {
            view.apply(update)
            let kvs = view.sorted
            if condition(kvs) { return kvs }
        }
        throw CancellationError()
    }
}

/// Starts a fresh etcd on free ports in a temporary folder, runs `body` with it and a client
/// of it, and kills etcd and removes the folder afterwards, whether `body` passed, failed or
/// timed out. `body` runs under `timeout` (nil: no limit of its own), so a wait for an event
/// that never comes fails the test. etcd runs with `maintenance` (by default `kiln up`'s).
public func withEtcd<T: Sendable>(
    timeout: Duration? = .seconds(60),
    maintenance: EtcdServer.Maintenance = .standard,
    _ body: @escaping @Sendable (EtcdServer, EtcdClient) async throws -> T
) async throws -> T {
    let dir = try TempDir("etcd")
    let server = try await EtcdServer.start(dataDir: dir.path("data"), maintenance: maintenance)
    defer {
        server.kill()
        withExtendedLifetime(dir) {}
    }
    let client = EtcdClient(endpoint: server.endpoint)
    guard let timeout else { return try await body(server, client) }
    return try await withTimeout(timeout) { try await body(server, client) }
}

/// A fresh temporary folder, removed when the value goes away.
public final class TempDir: Sendable {
    public let url: URL
    public init(_ label: String) throws {
        url = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-\(label)-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(at: url) }
    public func path(_ sub: String) -> URL { url.appendingPathComponent(sub) }
}

/// An HTTP answer, with its JSON error message if it has one.
public struct HTTPReply: Sendable {
    public let status: Int
    public let body: String
    /// The answer's headers, in order.
    public var headers: [(String, String)] = []
    public init(status: Int, body: String, headers: [(String, String)] = []) {
        self.status = status
        self.body = body
        self.headers = headers
    }
    public var json: [String: Any]? { try? JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any] }
    public var error: String? { json?["error"] as? String }
}

/// A client without a read time-out, for a followed log (a step may be silent for minutes on a
/// loaded machine; `HTTPClient.shared` gives up after 90 s of silence). Never shut down.
public let streamingHTTPClient: HTTPClient = {
    var configuration = HTTPClient.Configuration()
    configuration.timeout = .init(connect: .seconds(10), read: nil)
    return HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
}()

/// One request with an optional JSON body; the whole answer (up to 32 MiB). Any status is
/// returned; only a failed exchange throws.
public func httpRequest(_ method: HTTPMethod, _ url: String, body: String? = nil, headers: [(String, String)] = [],
                        client: HTTPClient = .shared, timeout: TimeAmount = .seconds(60)) async throws -> HTTPReply {
    var r = HTTPClientRequest(url: url)
    r.method = method
    if let body {
        r.headers.add(name: "Content-Type", value: "application/json")
        r.body = .bytes(ByteBuffer(string: body))
    }
    for (name, value) in headers { r.headers.add(name: name, value: value) }
    let response = try await client.execute(r, timeout: timeout)
    return HTTPReply(status: Int(response.status.code), body: String(buffer: try await response.body.collect(upTo: 32 << 20)),
                     headers: response.headers.map { ($0.name, $0.value) })
}
