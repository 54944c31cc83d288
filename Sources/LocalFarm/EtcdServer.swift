import AsyncHTTPClient
import Foundation
import KilnCore
import NIOCore
import Synchronization

/// One etcd 3.4 member on loopback ports with a data dir of its own, started as a child
/// process: the coordination store of a one-machine farm (`kiln up`) and of the tests, alone
/// or as one member of an ``EtcdCluster``.
///
/// `start` returns once etcd answers `GET /health` with `{"health":"true"}`. Stop it with
/// `stop()` (or `kill()`); it is also killed when the last reference goes away, so a test
/// that fails halfway leaves no etcd behind. `restart()` keeps the ports and the data.
///
/// It runs with ``Maintenance/standard`` unless told otherwise: history compacted every
/// 5 minutes, so the database does not grow with every write ever made (docs/etcd-operations.md).
public final class EtcdServer: Sendable {
    /// This server's place in a cluster of several members (``EtcdCluster``): its name,
    /// every member's peer URL, and the cluster's token. nil: a cluster of one.
    struct Membership: Sendable {
        var name: String
        /// `name=http://127.0.0.1:PEER` for every member, joined by commas.
        var initialCluster: String
        var token: String
    }

    /// Serve clients over TLS with these PEM files (`--cert-file`, `--key-file`,
    /// `--trusted-ca-file`; with `clientCertificateAuth`, `--client-cert-auth`).
    public struct TLS: Sendable {
        public var certificateFile: String
        public var keyFile: String
        public var caFile: String
        public var clientCertificateAuth: Bool
        public init(certificateFile: String, keyFile: String, caFile: String, clientCertificateAuth: Bool = false) {
            self.certificateFile = certificateFile
            self.keyFile = keyFile
            self.caFile = caFile
            self.clientCertificateAuth = clientCertificateAuth
        }
    }

    public let dataDir: URL
    public let clientPort: Int
    public let peerPort: Int
    public let logFile: URL
    public let tls: TLS?
    /// More of etcd's flags, for example `--auth-token-ttl 2`.
    public let arguments: [String]
    public let maintenance: Maintenance
    let membership: Membership?
    /// Where etcd answers `GET /health` over plain HTTP when clients talk TLS.
    let healthPort: Int?
    /// Where it runs and how this process reaches it (``Placement/local`` by default).
    public let placement: Placement
    /// `http://127.0.0.1:<clientPort>` (`https://` with TLS), what an `EtcdClient` connects to;
    /// with another placement, the advertised name (what other hosts use).
    public var endpoint: String { "\(tls == nil ? "http" : "https")://\(placement.advertise):\(clientPort)" }
    /// The client URL this process reaches it at (`endpoint` for a member on loopback).
    public var probeEndpoint: String { "\(tls == nil ? "http" : "https")://\(placement.probeHost):\(clientPort)" }
    /// The running etcd process (a new one after `restart()`).
    public var process: ManagedProcess { current.withLock { $0 } }

    private let current: Mutex<ManagedProcess>

    /// The member's name in its cluster (`kiln` for a cluster of one).
    public var name: String { membership?.name ?? "kiln" }

    init(dataDir: URL, clientPort: Int, peerPort: Int, logFile: URL, tls: TLS?, arguments: [String], maintenance: Maintenance,
         membership: Membership?, healthPort: Int?, placement: Placement = .local, process: ManagedProcess) {
        self.tls = tls
        self.placement = placement
        self.maintenance = maintenance
        self.membership = membership
        self.arguments = arguments
        self.healthPort = healthPort
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
        logFile: URL? = nil,
        tls: TLS? = nil,
        maintenance: Maintenance = .standard,
        arguments: [String] = []
    ) async throws -> EtcdServer {
        try checkInstalled()
        try maintenance.validate()
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
            var health: Int?
            if tls != nil {
                var port = try FreePort.next()
                while port == client || port == peer { port = try FreePort.next() }
                health = port
            }
            let server = try EtcdServer(dataDir: dataDir, clientPort: client, peerPort: peer, logFile: logFile, tls: tls, arguments: arguments,
                                        maintenance: maintenance, membership: nil, healthPort: health)
            let process = server.process
            do {
                try await server.waitUntilHealthy()
                return server
            } catch {
                process.killNow()
                lastError = error
                if Task.isCancelled || !process.logTail(lines: 5).contains("address already in use") { break }
            }
        }
        throw lastError ?? FarmError("etcd did not start")
    }

    static func checkInstalled() throws {
        guard ManagedProcess.which("etcd") != nil else {
            throw FarmError("etcd is not installed: run scripts/install-deps.sh (Debian package etcd-server)")
        }
    }

    /// Launches the member (not waiting for it to be healthy).
    convenience init(dataDir: URL, clientPort: Int, peerPort: Int, logFile: URL, tls: TLS?, arguments: [String], maintenance: Maintenance,
                     membership: Membership?, healthPort: Int?, placement: Placement = .local) throws {
        let process = try Self.launch(dataDir: dataDir, clientPort: clientPort, peerPort: peerPort, logFile: logFile, tls: tls,
                                      arguments: arguments, maintenance: maintenance, membership: membership, healthPort: healthPort,
                                      placement: placement)
        self.init(dataDir: dataDir, clientPort: clientPort, peerPort: peerPort, logFile: logFile, tls: tls, arguments: arguments,
                  maintenance: maintenance, membership: membership, healthPort: healthPort, placement: placement, process: process)
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
        let process = try Self.launch(dataDir: dataDir, clientPort: clientPort, peerPort: peerPort, logFile: logFile, tls: tls,
                                      arguments: arguments, maintenance: maintenance, membership: membership, healthPort: healthPort,
                                      placement: placement)
        current.withLock { $0 = process }
        try await waitUntilHealthy()
    }

    private static func launch(dataDir: URL, clientPort: Int, peerPort: Int, logFile: URL, tls: TLS?, arguments: [String],
                               maintenance: Maintenance, membership: Membership?, healthPort: Int?, placement: Placement) throws -> ManagedProcess {
        let scheme = tls == nil ? "http" : "https"
        let client = "\(scheme)://\(placement.bindHost):\(clientPort)"
        let peer = "http://\(placement.bindHost):\(peerPort)"
        let advertisedClient = "\(scheme)://\(placement.advertise):\(clientPort)"
        let advertisedPeer = "http://\(placement.advertise):\(peerPort)"
        var tlsArguments: [String] = []
        if let tls {
            tlsArguments = ["--cert-file", tls.certificateFile, "--key-file", tls.keyFile, "--trusted-ca-file", tls.caFile]
            if tls.clientCertificateAuth { tlsArguments.append("--client-cert-auth") }
        }
        if let healthPort { tlsArguments += ["--listen-metrics-urls", "http://\(placement.bindHost):\(healthPort)"] }
        let name = membership?.name ?? "kiln"
        var clusterArguments = ["--initial-cluster", membership?.initialCluster ?? "\(name)=\(advertisedPeer)"]
        if let membership {
            // "new" is read only when the data dir is empty: a restarted member rejoins from its data.
            clusterArguments += ["--initial-cluster-token", membership.token, "--initial-cluster-state", "new"]
        }
        let command = try placement.command("etcd", [
                "--name", name,
                "--data-dir", dataDir.path,
                "--listen-client-urls", client,
                "--advertise-client-urls", advertisedClient,
                "--listen-peer-urls", peer,
                "--initial-advertise-peer-urls", advertisedPeer,
            ] + clusterArguments + [
                "--logger", "zap",
                "--log-outputs", "stderr",
                "--log-level", "warn",
                // Every etcd password Kiln makes is 256 random bits (EtcdUsers), so bcrypt's
                // work factor protects nothing, and at etcd's default of 10 each login costs
                // etcd ~60 ms of CPU: 500 agents starting at once stalled it (docs/scale.md,
                // Benchmarks/etcd-logins.sh: 12.2 s of etcd CPU for 200 logins against 0.4 s).
                "--bcrypt-cost", "4",
            ] + maintenance.arguments + tlsArguments + arguments)
        return try ManagedProcess(name: membership == nil ? "etcd" : "etcd-\(name)", executable: command.executable, arguments: command.arguments, logFile: logFile)
    }

    /// Whether the socket listening on `port` is, as far as /proc can tell, not another etcd's.
    /// False only on positive evidence: the listening socket's inode shows among the fds of
    /// another process named etcd, and not among `pid`'s. Anything /proc cannot tell (no such
    /// tables, inodes that match no process, a sandbox whose /proc numbers sockets its own way)
    /// counts as ours: CI ran where the stricter "pid must hold it" check never held.
    static func listens(pid: Int32, port: Int) -> Bool {
        let tables = ["/proc/net/tcp", "/proc/net/tcp6"].compactMap { ProcFile.text($0) }
        // Any address (etcd may listen on more than loopback), this port, state LISTEN (0A).
        let portSuffix = String(format: ":%04X", port)
        var inodes: Set<String> = []
        for line in tables.flatMap({ $0.split(separator: "\n").dropFirst() }) {
            let f = line.split(separator: " ", omittingEmptySubsequences: true)
            // sl local_address rem_address st tx:rx tr:tm retrnsmt uid timeout inode
            if f.count > 9, f[1].hasSuffix(portSuffix), f[3] == "0A", f[9] != "0" { inodes.insert("socket:[\(f[9])]") }
        }
        guard !inodes.isEmpty else { return true }
        if holds(pid: pid, inodes) { return true }
        let fm = FileManager.default
        let others = ((try? fm.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap(Int32.init).filter { $0 != pid }
        for other in others {
            guard let comm = ProcFile.text("/proc/\(other)/comm"),
                  comm.trimmingCharacters(in: .whitespacesAndNewlines) == "etcd" else { continue }
            if holds(pid: other, inodes) { return false }
        }
        return true
    }

    private static func holds(pid: Int32, _ inodes: Set<String>) -> Bool {
        let fdDir = "/proc/\(pid)/fd"
        guard let fds = try? FileManager.default.contentsOfDirectory(atPath: fdDir) else { return false }
        return fds.contains { fd in
            (try? FileManager.default.destinationOfSymbolicLink(atPath: "\(fdDir)/\(fd)")).map(inodes.contains) ?? false
        }
    }

    /// Waits until the member answers `GET /health` with `{"health":"true"}`: it runs and its
    /// cluster has a leader (a member of a cluster without quorum is not healthy).
    func waitUntilHealthy(timeout: Double = 20) async throws {
        let process = self.process
        let url = "http://\(placement.probeHost):\(healthPort ?? clientPort)/health"
        let placement = self.placement
        try await process.waitUntilReady(timeout: timeout) {
            do {
                let response = try await placement.probeClient.execute(HTTPClientRequest(url: url), timeout: .seconds(1))
                let body = try await response.body.collect(upTo: 4096)
                // A port picked free may be taken by another test's etcd before this one binds
                // it: that etcd would answer the health check. Ready only when this process
                // is the one listening.
                // (Another placement is a network namespace of its own: no one else's ports there.)
                return response.status.code == 200 && String(buffer: body).contains(#""health":"true""#)
                    && (!placement.isLocal || Self.listens(pid: process.pid, port: healthPort ?? clientPort))
            } catch {
                return false
            }
        }
    }
}
