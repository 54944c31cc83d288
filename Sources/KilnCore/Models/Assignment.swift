import Foundation

// What the dispatcher and the agents exchange through etcd: the queue entry, the task, and
// the log chunks an agent writes.

/// A build waiting for a builder, at `/kiln/queue/{build}`.
public struct QueueEntry: Codable, Sendable, Equatable {
    public var build: String
    public var project: String
    public var queuedAt: Date
    public var priority: Int?
    /// The build's record as written in the same transaction as this entry. Every write to a
    /// queued build's record also writes its entry, so while the record's mod revision equals
    /// the entry's, this is the record: the dispatcher assigns without reading it again.
    public var record: Build?

    public init(build: String, project: String, queuedAt: Date = Date(), priority: Int? = nil, record: Build? = nil) {
        self.build = build
        self.project = project
        self.queuedAt = queuedAt
        self.priority = priority
        self.record = record
    }

    /// The entry of a build (re)queued with this record.
    public init(queuing record: Build) {
        self.init(build: record.id, project: record.project, queuedAt: record.createdAt, priority: record.priority, record: record)
    }
}

/// The assignment of one build to one agent, at `/kiln/tasks/{agent}/{build}`.
///
/// It carries a copy of the project as it was when the build was queued, so a build is
/// not changed by a later edit of its project. The agent's writes for the build are
/// guarded by this key's create revision: once the key is gone or recreated, they fail.
public struct BuildTask: Codable, Sendable, Equatable {
    public var build: String
    public var project: Project
    public var ref: String
    public var commit: String?
    public var tag: String?
    public var mvncache: Bool
    public var attempt: Int
    public var assignedAt: Date
    /// Set by the scheduler to ask the agent to stop the build.
    public var cancel: Bool

    public init(build: String, project: Project, ref: String, commit: String?, tag: String?, mvncache: Bool, attempt: Int, assignedAt: Date = Date(), cancel: Bool = false) {
        self.build = build
        self.project = project
        self.ref = ref
        self.commit = commit
        self.tag = tag
        self.mvncache = mvncache
        self.attempt = attempt
        self.assignedAt = assignedAt
        self.cancel = cancel
    }
}

/// One chunk of a build's log, at `/kiln/logs/{build}/{seq}`.
public struct LogChunk: Codable, Sendable, Equatable {
    public var seq: Int
    public var lines: [String]
    /// True on the last chunk of an attempt's log: nothing more will come.
    public var end: Bool?

    public init(seq: Int, lines: [String], end: Bool? = nil) {
        self.seq = seq
        self.lines = lines
        self.end = end
    }
}

/// What the dispatcher grants an agent for one build, at `/kiln/grants/{agent}/{build}`
/// (only schedulers write there): the repository it may push (the registry's token service)
/// and the ref it was assigned, which decides whether the build may have the project's
/// protected-only secrets. An agent can rewrite its build's record and task, not this.
public struct BuildGrant: Codable, Sendable, Equatable {
    public var repository: String
    /// Nil in a grant written before refs were granted: such a build is treated as of no
    /// protected ref.
    public var ref: String?

    public init(repository: String, ref: String?) {
        self.repository = repository
        self.ref = ref
    }

    /// The grant a key's value holds: JSON, or (written before issue 13) the bare repository.
    public init(value: String) {
        if value.hasPrefix("{"), let g = try? KilnJSON.decode(BuildGrant.self, from: value) {
            self = g
        } else {
            self.init(repository: value, ref: nil)
        }
    }

    public var value: String { (try? KilnJSON.encode(self)) ?? repository }
}
