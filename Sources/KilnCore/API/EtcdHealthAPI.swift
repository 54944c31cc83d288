import Foundation

/// etcd's health as the scheduler that answers last saw it: every member's database size
/// against its quota, the alarms, and what a person should do. Part of
/// `GET /api/v1/agents?with=etcd` (``AgentsListing``); `kiln agents` and the console's agents
/// page show its `warning`.
public struct EtcdHealthStatus: Codable, Sendable, Equatable {
    public enum Level: String, Codable, Sendable, Comparable {
        /// Not looked yet, or no member answered.
        case unknown
        case ok
        /// A member is past 80 % of its quota, or does not answer.
        case warning
        /// An alarm is raised: with NOSPACE etcd refuses every write and the farm stands still.
        case error

        private var rank: Int { [.ok: 0, .unknown: 1, .warning: 2, .error: 3][self]! }
        public static func < (a: Level, b: Level) -> Bool { a.rank < b.rank }
    }

    /// One member as the last look found it.
    public struct Member: Codable, Sendable, Equatable {
        public var endpoint: String
        /// Its database file's size (what the quota limits); nil if it did not answer.
        public var dbBytes: Int64?
        /// The part of the file in use (the rest is free pages only defragmentation returns).
        public var dbInUseBytes: Int64?
        /// Its `--quota-backend-bytes`, as its metrics report it or as configured.
        public var quotaBytes: Int64
        public var isLeader: Bool?
        /// Why it did not answer.
        public var error: String?

        public init(endpoint: String, dbBytes: Int64? = nil, dbInUseBytes: Int64? = nil, quotaBytes: Int64, isLeader: Bool? = nil, error: String? = nil) {
            self.endpoint = endpoint
            self.dbBytes = dbBytes
            self.dbInUseBytes = dbInUseBytes
            self.quotaBytes = quotaBytes
            self.isLeader = isLeader
            self.error = error
        }
    }

    public var level: Level
    /// What is wrong and what to do, for a person; nil when all is well.
    public var warning: String?
    public var members: [Member]
    /// Raised alarms, `NOSPACE` or `CORRUPT`, each once.
    public var alarms: [String]
    /// When the scheduler last looked; nil before its first look.
    public var checkedAt: Date?

    public init(level: Level = .unknown, warning: String? = nil, members: [Member] = [], alarms: [String] = [], checkedAt: Date? = nil) {
        self.level = level
        self.warning = warning
        self.members = members
        self.alarms = alarms
        self.checkedAt = checkedAt
    }
}

/// `GET /api/v1/agents?with=etcd`: the live agents and etcd's health beside them. Without
/// `with=etcd` the route answers the bare list of agents, as it always did, so older clients
/// still read it.
public struct AgentsListing: Codable, Sendable {
    public var agents: [AgentInfo]
    /// nil when the scheduler does not watch etcd's health.
    public var etcd: EtcdHealthStatus?

    public init(agents: [AgentInfo], etcd: EtcdHealthStatus?) {
        self.agents = agents
        self.etcd = etcd
    }

    private enum CodingKeys: String, CodingKey { case agents, etcd }

    /// Also reads the bare list of a scheduler from before `with=etcd` (it ignores the query).
    public init(from decoder: any Decoder) throws {
        if let list = try? decoder.singleValueContainer().decode([AgentInfo].self) {
            self.init(agents: list, etcd: nil)
            return
        }
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init(agents: try c.decode([AgentInfo].self, forKey: .agents), etcd: try c.decodeIfPresent(EtcdHealthStatus.self, forKey: .etcd))
    }
}
