import Etcd
import Foundation

/// Several etcd members on loopback ports forming one cluster, each a child process with a
/// data dir of its own (`<dir>/m1`, `m2`, …): what Kiln's failover tests run against, and a
/// way to try a cluster on one machine.
///
/// `start` returns once every member answers `GET /health` (it runs and the cluster has a
/// leader). A member may be killed (``EtcdServer/kill()``, by its PID) and started again
/// with its data (``EtcdServer/restart()``): it rejoins. Every member is killed when the
/// cluster goes away, so a test that fails halfway leaves none behind.
public final class EtcdCluster: Sendable {
    public let members: [EtcdServer]

    private init(members: [EtcdServer]) {
        self.members = members
    }

    /// Every member's client URL, in member order.
    public var endpoints: [String] { members.map(\.endpoint) }
    /// The value of `--etcd` for a process that may use any member: the URLs joined by commas.
    public var endpoint: String { endpoints.joined(separator: ",") }

    /// Starts `count` members (3 by default: one may fail and the others keep a quorum) on
    /// free loopback ports, with their data under `dir`, and waits until all are healthy.
    /// With `tls` every member serves its clients over TLS with those files (peers talk
    /// plain HTTP on loopback).
    ///
    /// With `placements` (one per member, `count` is then their number) each member runs
    /// where its placement says, on the fixed ports 2379 (clients), 2380 (peers, plain HTTP)
    /// and, with `tls`, 2381 (health), with its data in `dir/<member>` as usual (the caller
    /// gives each member's host its own folder in `memberDirs`, and its own copy of the TLS
    /// files in `memberTLS`).
    public static func start(
        dir: URL,
        count: Int = 3,
        tls: EtcdServer.TLS? = nil,
        maintenance: EtcdServer.Maintenance = .standard,
        arguments: [String] = [],
        placements: [Placement]? = nil,
        memberDirs: [URL]? = nil,
        memberTLS: [EtcdServer.TLS]? = nil
    ) async throws -> EtcdCluster {
        try EtcdServer.checkInstalled()
        try maintenance.validate()
        if let placements {
            return try await start(placements: placements, dirs: memberDirs ?? placements.indices.map { dir.appendingPathComponent("m\($0 + 1)") },
                                   tls: memberTLS ?? placements.map { _ in tls }, maintenance: maintenance, arguments: arguments)
        }
        guard count >= 1 else { throw FarmError("an etcd cluster needs at least one member") }
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        var lastError: (any Error)?
        // A free port may be taken between picking it and etcd's bind: then pick all again.
        for attempt in 0..<3 {
            // Client, peer and (with TLS) plain-HTTP health port of each member.
            let perMember = tls == nil ? 2 : 3
            var ports = Set<Int>()
            while ports.count < count * perMember { ports.insert(try FreePort.next()) }
            let pairs = Array(ports).chunked(perMember)
            let names = (1...count).map { "m\($0)" }
            let initial = zip(names, pairs).map { "\($0.0)=http://127.0.0.1:\($0.1[1])" }.joined(separator: ",")
            let token = "kiln-\(UUID().uuidString.prefix(8))-\(attempt)"
            var members: [EtcdServer] = []
            do {
                for (name, pair) in zip(names, pairs) {
                    let data = dir.appendingPathComponent(name)
                    // A half-made data dir of a failed attempt would make the member rejoin another cluster.
                    try? FileManager.default.removeItem(at: data)
                    try FileManager.default.createDirectory(at: data, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
                    members.append(try EtcdServer(
                        dataDir: data, clientPort: pair[0], peerPort: pair[1], logFile: dir.appendingPathComponent("\(name).log"),
                        tls: tls, arguments: arguments, maintenance: maintenance,
                        membership: .init(name: name, initialCluster: initial, token: token), healthPort: tls == nil ? nil : pair[2]))
                }
                // None is healthy before a quorum is up: all were launched first.
                for member in members { try await member.waitUntilHealthy(timeout: 30) }
                return EtcdCluster(members: members)
            } catch {
                for member in members { member.kill() }
                lastError = error
                let portTaken = members.contains { $0.process.logTail(lines: 5).contains("address already in use") }
                if Task.isCancelled || !portTaken { break }
            }
        }
        throw lastError ?? FarmError("the etcd cluster did not start")
    }

    /// The members on hosts of their own (see `start`): fixed ports, one attempt.
    private static func start(placements: [Placement], dirs: [URL], tls: [EtcdServer.TLS?], maintenance: EtcdServer.Maintenance,
                              arguments: [String]) async throws -> EtcdCluster {
        guard !placements.isEmpty, dirs.count == placements.count, tls.count == placements.count else { throw FarmError("an etcd cluster needs at least one member, and a folder for each") }
        let names = (1...placements.count).map { "m\($0)" }
        let initial = zip(names, placements).map { "\($0.0)=http://\($0.1.advertise):2380" }.joined(separator: ",")
        let token = "kiln-\(UUID().uuidString.prefix(8))"
        var members: [EtcdServer] = []
        do {
            for (i, (name, placement)) in zip(names, placements).enumerated() {
                let data = dirs[i]
                try FileManager.default.createDirectory(at: data, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
                members.append(try EtcdServer(
                    dataDir: data, clientPort: 2379, peerPort: 2380, logFile: data.deletingLastPathComponent().appendingPathComponent("\(name).log"),
                    tls: tls[i], arguments: arguments, maintenance: maintenance,
                    membership: .init(name: name, initialCluster: initial, token: token), healthPort: tls[i] == nil ? nil : 2381,
                    placement: placement))
            }
            for member in members { try await member.waitUntilHealthy(timeout: 60) }
            return EtcdCluster(members: members)
        } catch {
            for member in members { member.kill() }
            throw error
        }
    }

    /// Every member's client URL as this process reaches it (``endpoints`` on loopback).
    public var probeEndpoints: [String] { members.map(\.probeEndpoint) }

    /// The member that leads now, asked of the members that answer; nil while none leads.
    /// `client`: one that may talk to the members (their TLS), by default an anonymous one
    /// over plain HTTP.
    public func leader(client: EtcdClient? = nil) async -> EtcdServer? {
        let client = client ?? EtcdClient(endpoints: endpoints)
        for member in members where member.process.isRunning {
            guard let status = try? await client.memberStatus(of: member.endpoint), !status.leaderID.isEmpty else { continue }
            for other in members where other.process.isRunning {
                if (try? await client.memberStatus(of: other.endpoint))?.memberID == status.leaderID { return other }
            }
        }
        return nil
    }

    /// Stops every member gracefully.
    public func stop() {
        for member in members { member.stop() }
    }

    /// Kills every member at once (SIGKILL).
    public func kill() {
        for member in members { member.kill() }
    }
}

extension Array {
    fileprivate func chunked(_ size: Int) -> [[Element]] {
        stride(from: 0, to: count, by: size).map { Array(self[$0..<Swift.min($0 + size, count)]) }
    }
}
