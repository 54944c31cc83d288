import Etcd
import Foundation
import LocalFarm

/// A fresh etcd whose backend quota is `quotaBytes` (`--quota-backend-bytes`), so that a test
/// can fill it until it raises its NOSPACE alarm (`fillUntilNoSpace`) and bring it back
/// (`recoverSpace`). Over its quota etcd refuses every put (and a transaction with one) and
/// every lease grant, and still takes reads, deletes and lease keep-alives (checked on 3.4.23).
public func withSmallEtcd<T: Sendable>(
    quotaBytes: Int = 4 << 20, timeout: Duration = .seconds(180),
    _ body: @escaping @Sendable (EtcdServer, EtcdClient) async throws -> T
) async throws -> T {
    let dir = try TempDir("etcd-quota")
    let server = try await EtcdServer.start(dataDir: dir.path("data"), arguments: ["--quota-backend-bytes=\(quotaBytes)"])
    defer {
        server.kill()
        withExtendedLifetime(dir) {}
    }
    let client = EtcdClient(endpoint: server.endpoint)
    return try await withTimeout(timeout) { try await body(server, client) }
}

/// Where `fillUntilNoSpace` puts its values.
public let etcdFillPrefix = "/kiln-test-fill/"

extension EtcdServer {
    /// Puts values of 1 MB under `etcdFillPrefix` until etcd refuses one for lack of space;
    /// returns how many it put (a handful for the default quota: quick, so that a test can
    /// fill etcd while something runs). Throws if etcd never refuses (the quota is too large).
    @discardableResult
    public func fillUntilNoSpace(_ etcd: EtcdClient, limit: Int = 200) async throws -> Int {
        let value = String(repeating: "x", count: 1_000_000)
        for i in 0..<limit {
            do {
                try await etcd.put("\(etcdFillPrefix)\(i)", value)
            } catch {
                guard try await alarms().contains("NOSPACE") else { throw error }
                return i
            }
        }
        throw FarmError("etcd took \(limit) values of 1 MB without raising NOSPACE")
    }

    /// The alarms etcd has raised ("NOSPACE", …).
    public func alarms() async throws -> [String] {
        let reply = try await httpRequest(.POST, endpoint + "/v3/maintenance/alarm", body: #"{"action":"GET"}"#)
        struct Answer: Decodable {
            struct Alarm: Decodable { let alarm: String? }
            let alarms: [Alarm]?
        }
        return (try JSONDecoder().decode(Answer.self, from: Data(reply.body.utf8)).alarms ?? []).compactMap(\.alarm)
    }

    /// What an operator does about NOSPACE: deletes the filler, compacts, defragments and
    /// disarms the alarm. Writes work again afterwards.
    public func recoverSpace(_ etcd: EtcdClient) async throws {
        _ = try await etcd.delete(prefix: etcdFillPrefix)
        try await etcd.compact(revision: try await etcd.status())
        _ = try await httpRequest(.POST, endpoint + "/v3/maintenance/defragment", body: "{}")
        let reply = try await httpRequest(.POST, endpoint + "/v3/maintenance/alarm", body: #"{"action":"GET"}"#)
        struct Answer: Decodable {
            struct Alarm: Decodable { let memberID: String?; let alarm: String? }
            let alarms: [Alarm]?
        }
        for alarm in try JSONDecoder().decode(Answer.self, from: Data(reply.body.utf8)).alarms ?? [] {
            guard let member = alarm.memberID, let name = alarm.alarm else { continue }
            _ = try await httpRequest(.POST, endpoint + "/v3/maintenance/alarm",
                                      body: #"{"action":"DEACTIVATE","memberID":"\#(member)","alarm":"\#(name)"}"#)
        }
        guard try await alarms().isEmpty else { throw FarmError("etcd still raises an alarm after recovery") }
    }
}
