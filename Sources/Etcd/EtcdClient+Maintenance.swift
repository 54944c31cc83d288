import AsyncHTTPClient
import NIOCore

/// One member's answer to `POST /v3/maintenance/status`: the size of its database and who
/// leads. Sizes are the member's own (each member has its database file; defragmenting one
/// shrinks only it).
public struct EtcdMemberStatus: Sendable, Equatable {
    /// The client URL that answered.
    public var endpoint: String
    /// etcd's id of the member (a 64-bit number in decimal).
    public var memberID: String
    /// The id of the member that leads the cluster now; empty while there is no leader.
    public var leaderID: String
    public var version: String
    /// The database file's size: what etcd compares with its quota (`--quota-backend-bytes`).
    public var dbSizeBytes: Int64
    /// The part of the file in use; the rest is free pages that compaction left, reused by
    /// later writes and given back to the disk only by defragmentation.
    public var dbSizeInUseBytes: Int64
    public var revision: Int64
    /// The alarms the member reports (`"memberID:… alarm:NOSPACE "`), as etcd writes them.
    public var errors: [String]

    public var isLeader: Bool { !memberID.isEmpty && memberID == leaderID }

    public init(endpoint: String, memberID: String, leaderID: String, version: String, dbSizeBytes: Int64,
                dbSizeInUseBytes: Int64, revision: Int64, errors: [String] = []) {
        self.endpoint = endpoint
        self.memberID = memberID
        self.leaderID = leaderID
        self.version = version
        self.dbSizeBytes = dbSizeBytes
        self.dbSizeInUseBytes = dbSizeInUseBytes
        self.revision = revision
        self.errors = errors
    }
}

/// An alarm a member raised: `NOSPACE` (its database reached the quota: the whole cluster
/// refuses writes until it is disarmed) or `CORRUPT` (its data differs from the others').
/// An alarm is the cluster's: any member lists every member's alarms.
public struct EtcdAlarm: Sendable, Hashable, CustomStringConvertible {
    public var memberID: String
    /// `NOSPACE` or `CORRUPT`.
    public var kind: String

    public init(memberID: String, kind: String) {
        self.memberID = memberID
        self.kind = kind
    }

    public var description: String { "\(kind) on member \(memberID)" }
}

extension EtcdClient {
    /// The status of the member at `endpoint` (one of ``endpoints``), asked of it alone.
    /// Anyone may ask, with or without authentication.
    public func memberStatus(of endpoint: String) async throws -> EtcdMemberStatus {
        let answer = try await call("/v3/maintenance/status", Wire.Empty(), as: Wire.StatusResponse.self, member: endpoint)
        return EtcdMemberStatus(endpoint: endpoint, memberID: answer.memberID, leaderID: answer.leader, version: answer.version,
                                dbSizeBytes: answer.dbSize, dbSizeInUseBytes: answer.dbSizeInUse, revision: answer.revision,
                                errors: answer.errors)
    }

    /// The alarms raised in the cluster (any member answers for all). Anyone may ask.
    public func alarms() async throws -> [EtcdAlarm] {
        try await call("/v3/maintenance/alarm", Wire.AlarmRequest(action: "GET"), as: Wire.AlarmResponse.self, idempotent: true).alarms
    }

    /// Clears `alarm` and returns the alarms it cleared. A NOSPACE alarm disarmed while the
    /// database is still over its quota comes back with the next write: free space first
    /// (compaction, then ``defragment(member:)`` of every member). etcd 3.4 lets any client
    /// do this, even with authentication on (docs/etcd-operations.md).
    @discardableResult
    public func disarm(_ alarm: EtcdAlarm) async throws -> [EtcdAlarm] {
        try await call("/v3/maintenance/alarm", Wire.AlarmRequest(action: "DEACTIVATE", memberID: alarm.memberID, alarm: alarm.kind),
                       as: Wire.AlarmResponse.self, access: "disarm alarms").alarms
    }

    /// Rewrites the database file of the member at `endpoint` without its free pages, giving
    /// the space back to the disk. The member answers nothing else while it runs (seconds per
    /// hundreds of megabytes): defragment one member at a time, never all at once. Needs
    /// etcd's root role. Waits up to `timeout`.
    public func defragment(member endpoint: String, timeout: TimeAmount = .minutes(10)) async throws {
        _ = try await call("/v3/maintenance/defragment", Wire.Empty(), as: Wire.Ignored.self, member: endpoint, timeout: timeout,
                           access: "defragment (etcd's root role only)")
    }

    /// The member's space quota in bytes, from its Prometheus metrics
    /// (`etcd_server_quota_backend_bytes`, etcd 3.4 and later), or nil when the member does
    /// not export it. The status API does not report the quota; `/metrics` needs no
    /// authentication.
    public func quotaBytes(of endpoint: String) async throws -> Int64? {
        if let configurationError { throw configurationError }
        var request = HTTPClientRequest(url: endpoint + "/metrics")
        request.method = .GET
        let text: String
        do {
            let response = try await httpClient.execute(request, timeout: requestTimeout, logger: logger)
            guard response.status.code == 200 else { return nil }
            text = String(buffer: try await response.body.collect(upTo: 16 << 20))
        } catch {
            try Task.checkCancellation()
            throw EtcdError.unreachable(endpoint, "/metrics: \(error)")
        }
        return Self.quotaBytes(metrics: text)
    }

    /// `etcd_server_quota_backend_bytes` in a Prometheus text page (`2.147483648e+09`), or nil.
    static func quotaBytes(metrics text: String) -> Int64? {
        for line in text.split(separator: "\n") where line.hasPrefix("etcd_server_quota_backend_bytes ") {
            guard let value = Double(line.split(separator: " ").last ?? ""), value > 0, value < 9e18 else { return nil }
            return Int64(value)
        }
        return nil
    }
}

extension Wire {
    /// An answer whose content does not matter (defragment answers `{}`).
    struct Ignored: Decodable {}

    struct AlarmRequest: Encodable {
        var action: String
        var memberID: String?
        var alarm: String?
    }

    struct AlarmResponse: Decodable {
        var alarms: [EtcdAlarm]
        init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: AnyKey.self)
            alarms = try (c.decodeIfPresent([Member].self, forKey: "alarms") ?? []).map {
                EtcdAlarm(memberID: $0.memberID ?? "", kind: $0.alarm ?? "NONE")
            }
        }
        struct Member: Decodable {
            var memberID: String?
            var alarm: String?
        }
    }

    struct StatusResponse: Decodable {
        var memberID: String
        var leader: String
        var version: String
        var dbSize: Int64
        var dbSizeInUse: Int64
        var revision: Int64
        var errors: [String]
        init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: AnyKey.self)
            let header = try c.nestedContainer(keyedBy: AnyKey.self, forKey: "header")
            // The decoder converts snake case: "member_id" arrives as "memberId".
            memberID = try header.decodeIfPresent(String.self, forKey: "memberId") ?? ""
            revision = try header.int64("revision")
            leader = try c.decodeIfPresent(String.self, forKey: "leader") ?? ""
            version = try c.decodeIfPresent(String.self, forKey: "version") ?? ""
            dbSize = try c.int64("dbSize")
            dbSizeInUse = try c.int64("dbSizeInUse")
            errors = try c.decodeIfPresent([String].self, forKey: "errors") ?? []
        }
    }
}

