import AsyncHTTPClient
import Foundation
import NIOCore
import Synchronization

/// One etcd 3.4 member on loopback ports with a data dir of its own, started as a child
/// process: the coordination store of a one-machine farm (`kiln up`) and of the tests.
///
/// `start` returns once etcd answers `GET /health` with `{"health":"true"}`. Stop it with
/// `stop()` (or `kill()`); it is also killed when the last reference goes away, so a test
/// that fails halfway leaves no etcd behind. `restart()` keeps the ports and the data.
public final class EtcdServer: Sendable {
    public let dataDir: URL
    public let clientPort: Int
    public let peerPort: Int
    public let logFile: URL
    /// `http://127.0.0.1:<clientPort>`, what an `EtcdClient` connects to.
    public var endpoint: String { "http://127.0.0.1:\(clientPort)" }
    /// The running etcd process (a new one after `restart()`).
    public var process: ManagedProcess { current.withLock { $0 } }

    private let current: Mutex<ManagedProcess>

    private init(dataDir: URL, clientPort: Int, peerPort: Int, logFile: URL, process: ManagedProcess) {
        self.dataDir = dataDir
        self.clientPort = clientPort
        self.peerPort = peerPort
        self.logFile = logFile
        self.current = Mutex(process)
    }

    deinit {
        current.withLock { $0.killNow() }
    }

    /// Starts etcd with its data in `dataDir` (created if missing) and waits until it is healthy.
    /// Ports left nil are picked free on 127.0.0.1. Its output goes to `logFile`, by default
    /// `<dataDir>.log` beside the data dir (etcd warns about foreign files inside it).
    public static func start(
        dataDir: URL,
        clientPort: Int? = nil,
        peerPort: Int? = nil,
        logFile: URL? = nil
    ) async throws -> EtcdServer {
        guard ManagedProcess.which("etcd") != nil else {
            throw FarmError("etcd is not installed: run scripts/install-deps.sh (Debian package etcd-server)")
        }
        for port in [clientPort, peerPort].compactMap({ $0 }) where FreePort.isInUse(port) {
            throw FarmError("etcd: port \(port) on 127.0.0.1 is already in use (another etcd?); stop what listens there or pick another port")
        }
        try FileManager.default.createDirectory(at: dataDir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let logFile = logFile ?? dataDir.deletingLastPathComponent().appendingPathComponent(dataDir.lastPathComponent + ".log")

        // A free port may be taken by someone else between FreePort.next() and etcd's bind:
        // when we picked the ports, pick again and retry.
        let attempts = clientPort == nil || peerPort == nil ? 3 : 1
        var lastError: (any Error)?
        for _ in 0..<attempts {
            let client = try clientPort ?? FreePort.next()
            var peer = try peerPort ?? FreePort.next()
            while peer == client { peer = try FreePort.next() }
            let process = try launch(dataDir: dataDir, clientPort: client, peerPort: peer, logFile: logFile)
            do {
                try await waitUntilHealthy(process, clientPort: client)
                return EtcdServer(dataDir: dataDir, clientPort: client, peerPort: peer, logFile: logFile, process: process)
            } catch {
                process.killNow()
                lastError = error
                if Task.isCancelled || !process.logTail(lines: 5).contains("address already in use") { break }
            }
        }
        throw lastError ?? FarmError("etcd did not start")
    }

    /// Stops etcd gracefully (SIGTERM, then SIGKILL after 5 s). Calling it twice is harmless.
    public func stop() {
        current.withLock { $0.stop() }
    }

    /// Kills etcd at once (SIGKILL), as a crash would.
    public func kill() {
        current.withLock { $0.killNow() }
    }

    /// Stops etcd if it runs and starts it again on the same ports with the same data.
    public func restart() async throws {
        stop()
        let process = try Self.launch(dataDir: dataDir, clientPort: clientPort, peerPort: peerPort, logFile: logFile)
        current.withLock { $0 = process }
        try await Self.waitUntilHealthy(process, clientPort: clientPort)
    }

    private static func launch(dataDir: URL, clientPort: Int, peerPort: Int, logFile: URL) throws -> ManagedProcess {
        let client = "http://127.0.0.1:\(clientPort)"
        let peer = "http://127.0.0.1:\(peerPort)"
        return try ManagedProcess(
            name: "etcd",
            executable: "etcd",
            arguments: [
                "--name", "kiln",
                "--data-dir", dataDir.path,
                "--listen-client-urls", client,
                "--advertise-client-urls", client,
                "--listen-peer-urls", peer,
                "--initial-advertise-peer-urls", peer,
                "--initial-cluster", "kiln=\(peer)",
                "--logger", "zap",
                "--log-outputs", "stderr",
                "--log-level", "warn",
            ],
            logFile: logFile
        )
    }

    private static func waitUntilHealthy(_ process: ManagedProcess, clientPort: Int) async throws {
        let url = "http://127.0.0.1:\(clientPort)/health"
        try await process.waitUntilReady(timeout: 20) {
            do {
                let response = try await HTTPClient.shared.execute(HTTPClientRequest(url: url), timeout: .seconds(1))
                let body = try await response.body.collect(upTo: 4096)
                return response.status.code == 200 && String(buffer: body).contains(#""health":"true""#)
            } catch {
                return false
            }
        }
    }
}
