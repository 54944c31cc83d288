import Hummingbird
import LocalFarm
import Logging

/// A Hummingbird application serving `router` on 127.0.0.1 and a free port: the HTTP peer of
/// a test (a stand-in for a server the code under test calls). Stop it with `stop()`.
public final class TestHTTPServer: Sendable {
    public let port: Int
    private let task: Task<Void, Error>

    /// `http://127.0.0.1:<port>`.
    public var url: String { "http://127.0.0.1:\(port)" }

    private init(port: Int, task: Task<Void, Error>) {
        self.port = port
        self.task = task
    }

    /// Starts the server and returns once it listens.
    public static func start(_ router: Router<BasicRequestContext>, label: String = "test-server") async throws -> TestHTTPServer {
        var logger = Logger(label: label)
        logger.logLevel = .critical
        let (ports, continuation) = AsyncStream.makeStream(of: Int.self)
        let app = Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)),
                              onServerRunning: { continuation.yield($0.localAddress?.port ?? 0) }, logger: logger)
        let task = Task { try await app.run() }
        for await port in ports { return TestHTTPServer(port: port, task: task) }
        task.cancel()
        throw FarmError("\(label) did not start")
    }

    /// Stops the server and waits until it has.
    public func stop() async {
        task.cancel()
        _ = try? await task.value
    }
}
