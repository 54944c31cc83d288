import Foundation

/// A live builder, registered under its lease at `/kiln/agents/{id}`.
public struct AgentInfo: Codable, Sendable, Equatable {
    public var id: String
    public var capacity: Int
    public var labels: [String]
    public var version: String
    public var startedAt: Date
    /// The agent's disk as it last published it (nil: an agent from before issue 14, or one
    /// that has not measured yet). `disk.refusing` set: the dispatcher gives it no new builds.
    public var disk: AgentDisk?
    /// Filled in by the API from `/kiln/tasks/{id}/`, not stored.
    public var running: Int?
    public var tasks: [String]?
    /// Filled in by the API: projects whose home on the ring is this agent.
    public var homedProjects: Int?

    public init(id: String, capacity: Int, labels: [String], version: String, startedAt: Date = Date(), disk: AgentDisk? = nil) {
        self.id = id
        self.capacity = capacity
        self.labels = labels
        self.version = version
        self.startedAt = startedAt
        self.disk = disk
    }

    /// Why the agent takes no new builds, or nil when it takes them.
    public var refusing: String? { disk?.refusing }
}

/// What an agent publishes of its disk in its registration: the free space of its data
/// folder's filesystem (or of the container engine's storage, when that is another
/// filesystem with less free), what its git mirrors and Maven caches hold against their
/// budget, and, when it is short of space even after evicting what it could, why it refuses
/// new builds.
///
/// The agent publishes again only when the figures change meaningfully
/// (``differsMeaningfully(from:)``), so a build writing its cache does not rewrite the
/// registration for every megabyte.
public struct AgentDisk: Codable, Sendable, Equatable {
    /// Bytes free (for an unprivileged writer) on the filesystem that has least.
    public var free: Int64
    /// Bytes the mirrors and caches may hold (`kiln agent --disk-budget`); past it the least
    /// recently used go.
    public var budget: Int64
    /// Bytes the mirrors and caches hold now.
    public var used: Int64
    /// Below this free space the agent refuses new builds (`kiln agent --min-free`).
    public var minFree: Int64
    /// Set while the agent refuses new builds: the reason, for people and the dispatcher.
    public var refusing: String?
    /// The projects whose mirror or caches this agent holds, most recently used first, at
    /// most ``maxWarm`` (nil: an agent from before issue 16). When a project's home agent is
    /// at its bound, the dispatcher sends the build to one of these agents before a cold one.
    public var warm: [WarmProject]?

    /// At most this many warm projects are published: the registration stays small (about
    /// 20 KB), and a project not used in the agent's last 500 is hardly warm any more.
    public static let maxWarm = 500

    public init(free: Int64, budget: Int64, used: Int64, minFree: Int64, refusing: String? = nil, warm: [WarmProject]? = nil) {
        self.free = free
        self.budget = budget
        self.used = used
        self.minFree = minFree
        self.refusing = refusing
        self.warm = warm
    }

    /// The names of the warm projects as a reader may trust them: valid project names only,
    /// the first ``maxWarm`` (a registration is written by the agent, not checked on the way).
    public var warmProjects: Set<String> {
        var names = Set<String>()
        for p in warm ?? [] where names.count < Self.maxWarm && (try? Validation.projectName(p.name)) != nil {
            names.insert(p.name)
        }
        return names
    }

    /// Whether `self` is worth publishing when `old` is what the registration says: the
    /// refusal, the budget, the minimum or the set of warm projects changed, or the free
    /// space or the use moved by at least the larger of 256 MiB and 5 % of the budget. A warm
    /// project's bytes alone do not count: they change with every build.
    public func differsMeaningfully(from old: AgentDisk?) -> Bool {
        guard let old else { return true }
        if refusing != old.refusing || budget != old.budget || minFree != old.minFree { return true }
        if Set((warm ?? []).map(\.name)) != Set((old.warm ?? []).map(\.name)) { return true }
        let step = max(256 << 20, budget / 20)
        return abs(free - old.free) >= step || abs(used - old.used) >= step
    }

    /// "12.5 GiB", "300 MiB", "4 KiB", "512 bytes": for messages, the CLI and the console.
    public static func describe(_ bytes: Int64) -> String {
        let units: [(Int64, String)] = [(1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")]
        for (size, name) in units where abs(bytes) >= size {
            let tenths = (Double(bytes) / Double(size) * 10).rounded()
            return (tenths.truncatingRemainder(dividingBy: 10) == 0 ? String(Int64(tenths / 10)) : String(format: "%.1f", tenths / 10)) + " " + name
        }
        return "\(bytes) bytes"
    }

    /// One line for `kiln agents` and the console: "41.2 GiB free, caches 3.1 GiB of 20 GiB".
    public var summary: String {
        "\(Self.describe(free)) free, caches \(Self.describe(used)) of \(Self.describe(budget))"
    }
}


/// A project whose git mirror or caches an agent holds (``AgentDisk/warm``): its name and the
/// bytes its entries take on the agent's disk.
public struct WarmProject: Codable, Sendable, Equatable {
    public var name: String
    public var bytes: Int64

    public init(name: String, bytes: Int64) {
        self.name = name
        self.bytes = bytes
    }
}
