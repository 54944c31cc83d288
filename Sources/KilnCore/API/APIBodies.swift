/// The bodies of the scheduler's HTTP API (`/api/v1/…`) that exist only on the wire: what
/// the CLI sends and reads, and the scheduler decodes and answers. They live here, beside
/// the records both sides also keep in etcd (`Project`, `Build`, `AgentInfo`, `App`,
/// `Cell`, `ActivityEntry`), so a client needs KilnCore and not the Scheduler module.
///
/// Rule for changes: a field added here must be optional (or decoded with a default), so an
/// older CLI and a newer scheduler still understand each other.

/// `POST /api/v1/projects/{name}/builds`: what a client asks for when it requests a build.
/// An empty body is the same as `{}`.
public struct BuildRequest: Codable, Sendable {
    public var ref: String?
    public var commit: String?
    public var tag: String?
    public var mvncache: Bool?
    public var trigger: String?
    /// Higher goes first (default 0); within one priority, projects take turns.
    public var priority: Int?
    /// Build for real even when an earlier successful build had the same inputs (docs/reuse.md).
    public var rebuild: Bool?

    public init(ref: String? = nil, commit: String? = nil, tag: String? = nil, mvncache: Bool? = nil, trigger: String? = nil, priority: Int? = nil,
                rebuild: Bool? = nil) {
        self.ref = ref
        self.commit = commit
        self.tag = tag
        self.mvncache = mvncache
        self.trigger = trigger
        self.priority = priority
        self.rebuild = rebuild
    }

    /// The priorities a request may ask for.
    public static let priorityRange = -1000...1000

    /// Each field's problem (JSON names), checked on its own; the store queues nothing while
    /// there is one, and answers the first. A missing ref is the project's default branch.
    public func problems() -> [FieldProblem] {
        [
            FieldProblem.check("ref") { if let ref { try Validation.ref(ref) } },
            FieldProblem.check("commit") { if let commit { try Validation.commit(commit) } },
            FieldProblem.check("tag") { if let tag { try Validation.tag(tag) } },
            FieldProblem.check("priority") {
                if let p = priority, !Self.priorityRange.contains(p) { throw KilnError.invalid("priority \(p) is out of range: use -1000 to 1000 (higher goes first)") }
            },
        ].compactMap { $0 }
    }
}

/// `GET /api/v1/scheduler`: which scheduler answers and which one dispatches.
public struct SchedulerStatus: Codable, Sendable {
    public var id: String
    /// The scheduler that dispatches; nil while none is elected.
    public var leader: String?
    public var isLeader: Bool

    public init(id: String, leader: String?, isLeader: Bool) {
        self.id = id
        self.leader = leader
        self.isLeader = isLeader
    }
}

/// What `GET /api/v1/apps/{app}` answers: the app, and its domains as the lb-agents serve them.
public struct AppStatus: Codable, Sendable {
    public var app: App
    public var domains: [DomainStatus]

    public init(app: App, domains: [DomainStatus]) {
        self.app = app
        self.domains = domains
    }

    /// As someone below `master` sees it: the versions' environment values masked.
    public var maskedForViewers: AppStatus {
        var s = self
        s.app = s.app.maskedForViewers
        return s
    }

    public struct DomainStatus: Codable, Sendable {
        public var group: String
        public var domain: String
        public var servers: [String]
        public var version: Int?
        /// Every lb-agent of the group: the revision it applied, and whether it serves this
        /// domain's latest config (false while it lags, or if nginx refused it).
        public var agents: [AgentStatus]

        public init(group: String, domain: String, servers: [String], version: Int?, agents: [AgentStatus]) {
            self.group = group
            self.domain = domain
            self.servers = servers
            self.version = version
            self.agents = agents
        }
    }

    public struct AgentStatus: Codable, Sendable {
        public var id: String
        public var listen: String?
        public var appliedRevision: Int64
        public var current: Bool
        public var rejected: String?

        public init(id: String, listen: String?, appliedRevision: Int64, current: Bool, rejected: String?) {
            self.id = id
            self.listen = listen
            self.appliedRevision = appliedRevision
            self.current = current
            self.rejected = rejected
        }
    }
}

/// The body of every API answer with a 4xx or 5xx status: `{"error": "…"}`, a sentence for
/// the user that says what was wrong and, where it can, what to do instead.
public struct APIErrorBody: Codable, Sendable, Equatable {
    public var error: String

    public init(error: String) {
        self.error = error
    }
}
