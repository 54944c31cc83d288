import Foundation

/// A project Kiln builds: where its code is and how to turn it into an image.
///
/// Stored at `/kiln/projects/{name}`. `name` is also the image repository's last path
/// component, so it follows the project-name rule (`[a-z0-9-]`).
public struct Project: Codable, Sendable, Equatable {
    public var name: String
    /// Git URL: http(s)://, ssh://, git://, file:// or scp-like `user@host:path`.
    public var repository: String
    /// Image that runs the build command (for example a JDK + Maven image).
    public var buildImage: String
    /// Shell command run in the checkout (`sh -c`), for example `mvn -B -q package`.
    public var buildCommand: String
    /// Dockerfile path, relative to the checkout.
    public var dockerfile: String
    /// Build context directory, relative to the checkout.
    public var context: String
    /// Default branch, used when a build names no ref.
    public var defaultBranch: String
    /// Labels an agent must carry (all of them) to build this project.
    public var labels: [String]
    /// A newer build of a branch cancels older ones of the same branch; nil cancels none.
    public var supersede: Supersede?
    /// At most this many of the project's builds run at once (nil: no limit of its own;
    /// the agents' capacity still applies). The others wait in the queue and say why.
    public var maxConcurrent: Int?
    /// Branches whose pushes build (GitLab webhooks), as patterns where `*` matches any run of
    /// characters, `/` included: `main`, `release/*`. Nil: the default branch only.
    public var branches: [String]?
    /// The secret token GitLab sends in `X-Gitlab-Token` with this project's webhooks. Kept in
    /// etcd, never shown by the API; a project without one cannot be triggered by a webhook.
    public var webhookSecret: String?
    /// What runs after a build succeeds (deploy, lb, retire, notify), checked against the
    /// plugins' settings when the project is saved.
    public var pipeline: [PipelineStep]?
    public var createdAt: Date?

    public init(
        name: String, repository: String, buildImage: String, buildCommand: String,
        dockerfile: String = "Dockerfile", context: String = ".", defaultBranch: String = "main",
        labels: [String] = [], supersede: Supersede? = nil, maxConcurrent: Int? = nil,
        branches: [String]? = nil, webhookSecret: String? = nil, pipeline: [PipelineStep]? = nil, createdAt: Date? = nil
    ) {
        self.name = name
        self.repository = repository
        self.buildImage = buildImage
        self.buildCommand = buildCommand
        self.dockerfile = dockerfile
        self.context = context
        self.defaultBranch = defaultBranch
        self.labels = labels
        self.supersede = supersede
        self.maxConcurrent = maxConcurrent
        self.branches = branches
        self.webhookSecret = webhookSecret
        self.pipeline = pipeline
        self.createdAt = createdAt
    }

    enum CodingKeys: String, CodingKey {
        case name, repository, buildImage, buildCommand, dockerfile, context, defaultBranch, labels, supersede, maxConcurrent, branches, webhookSecret, pipeline, createdAt
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        name = try c.decode(String.self, forKey: .name)
        repository = try c.decode(String.self, forKey: .repository)
        buildImage = try c.decode(String.self, forKey: .buildImage)
        buildCommand = try c.decode(String.self, forKey: .buildCommand)
        dockerfile = try c.decodeIfPresent(String.self, forKey: .dockerfile) ?? "Dockerfile"
        context = try c.decodeIfPresent(String.self, forKey: .context) ?? "."
        defaultBranch = try c.decodeIfPresent(String.self, forKey: .defaultBranch) ?? "main"
        labels = try c.decodeIfPresent([String].self, forKey: .labels) ?? []
        supersede = try c.decodeIfPresent(Supersede.self, forKey: .supersede)
        maxConcurrent = try c.decodeIfPresent(Int.self, forKey: .maxConcurrent)
        branches = try c.decodeIfPresent([String].self, forKey: .branches)
        webhookSecret = try c.decodeIfPresent(String.self, forKey: .webhookSecret)
        pipeline = try c.decodeIfPresent([PipelineStep].self, forKey: .pipeline)
        createdAt = try c.decodeIfPresent(Date.self, forKey: .createdAt)
    }

    /// The project as the API shows it: the webhook secret left out.
    public var redacted: Project {
        var p = self
        p.webhookSecret = nil
        return p
    }

    /// Whether a push to `branch` (a name without `refs/heads/`) builds this project.
    public func builds(branch: String) -> Bool {
        (branches ?? [defaultBranch]).contains { Project.glob($0, matches: branch) }
    }

    /// `*` matches any run of characters, `/` included; everything else matches itself.
    public static func glob(_ pattern: String, matches s: String) -> Bool {
        let p = Array(pattern.utf8), t = Array(s.utf8)
        var pi = 0, ti = 0, star = -1, mark = 0
        while ti < t.count {
            if pi < p.count && p[pi] != UInt8(ascii: "*") && p[pi] == t[ti] {
                pi += 1; ti += 1
            } else if pi < p.count && p[pi] == UInt8(ascii: "*") {
                star = pi; mark = ti; pi += 1
            } else if star >= 0 {
                pi = star + 1; mark += 1; ti = mark
            } else {
                return false
            }
        }
        while pi < p.count && p[pi] == UInt8(ascii: "*") { pi += 1 }
        return pi == p.count
    }

    /// Checks every field; throws `KilnError.invalid` naming the first bad one.
    public func validate() throws {
        try Validation.projectName(name)
        try Validation.repositoryURL(repository)
        try Validation.imageReference(buildImage, field: "buildImage")
        if buildCommand.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty {
            throw KilnError.invalid("buildCommand is empty: give the command that builds the project, for example \"mvn -B -q package\"")
        }
        if buildCommand.contains("\0") { throw KilnError.invalid("buildCommand contains a NUL byte") }
        try Validation.relativePath(dockerfile, field: "dockerfile")
        try Validation.relativePath(context, field: "context")
        try Validation.ref(defaultBranch, field: "defaultBranch")
        for l in labels { try Validation.label(l) }
        if let patterns = branches {
            if patterns.isEmpty || patterns.count > 100 { throw KilnError.invalid("branches must list 1 to 100 patterns, for example [\"main\", \"release/*\"]; leave it out to build the default branch only") }
            for p in patterns { try Validation.ref(p.replacingOccurrences(of: "*", with: "x"), field: "branches pattern") }
        }
        if let secret = webhookSecret, !secret.isEmpty {
            if secret.utf8.count > 256 || secret.utf8.contains(where: { $0 < 0x21 || $0 == 0x7f }) {
                throw KilnError.invalid("webhookSecret must be 1 to 256 visible characters without spaces (GitLab's \"Secret token\" of the webhook)")
            }
        }
        if let m = maxConcurrent, !(1...1000).contains(m) {
            throw KilnError.invalid("maxConcurrent \(m) is out of range: use 1 to 1000 builds of this project at once, or leave it out for no limit")
        }
    }
}

/// Where a build is in its life. Final states never change again.
public enum BuildStatus: String, Codable, Sendable, CaseIterable {
    case queued, assigned, running, succeeded, failed, cancelled

    public var isFinal: Bool { self == .succeeded || self == .failed || self == .cancelled }
}

/// The four steps of a build, in order.
public enum StepName: String, Codable, Sendable, CaseIterable {
    case fetch, compile, image, push
}

public enum StepStatus: String, Codable, Sendable {
    case pending, running, succeeded, failed, cancelled, skipped
}

/// One timed step of a build.
public struct BuildStep: Codable, Sendable, Equatable {
    public var name: StepName
    public var status: StepStatus
    public var startedAt: Date?
    public var finishedAt: Date?
    public var durationMs: Int?
    public var error: String?

    public init(name: StepName, status: StepStatus = .pending, startedAt: Date? = nil, finishedAt: Date? = nil, durationMs: Int? = nil, error: String? = nil) {
        self.name = name
        self.status = status
        self.startedAt = startedAt
        self.finishedAt = finishedAt
        self.durationMs = durationMs
        self.error = error
    }
}

/// A request to build a project at a ref (or an exact commit), and everything that
/// happened to it. Stored at `/kiln/builds/{id}`.
public struct Build: Codable, Sendable, Equatable {
    public var id: String
    public var project: String
    public var status: BuildStatus
    public var ref: String
    public var commit: String?
    public var tag: String?
    public var mvncache: Bool
    /// The full pushed reference, `registry/project:tag`.
    public var image: String?
    public var digest: String?
    public var agent: String?
    public var attempt: Int
    public var error: String?
    public var steps: [BuildStep]
    public var createdAt: Date
    public var startedAt: Date?
    public var finishedAt: Date?
    /// Who or what asked for it (`cli`, `api`, `webhook`, `kiln up`).
    public var trigger: String?
    public var cancelRequested: Bool?
    /// Higher goes first; default 0.
    public var priority: Int?
    /// Why a queued build is not assigned yet (no live agent has its labels), if it is not
    /// just waiting for room.
    public var waiting: String?
    /// The post-build pipeline's latest run (deploy, lb, retire, notify), if the project has
    /// a pipeline and the build succeeded. Its failure leaves the build `succeeded`.
    public var deploy: PipelineRun?

    public init(id: String, project: String, ref: String, commit: String? = nil, tag: String? = nil, mvncache: Bool = true, createdAt: Date = Date(), trigger: String? = nil) {
        self.id = id
        self.project = project
        self.status = .queued
        self.ref = ref
        self.commit = commit
        self.tag = tag
        self.mvncache = mvncache
        self.attempt = 0
        self.steps = StepName.allCases.map { BuildStep(name: $0) }
        self.createdAt = createdAt
        self.trigger = trigger
    }

    public var durationMs: Int? {
        guard let s = startedAt, let f = finishedAt else { return nil }
        return Int((f.timeIntervalSince(s) * 1000).rounded())
    }
}

/// A live builder, registered under its lease at `/kiln/agents/{id}`.
public struct AgentInfo: Codable, Sendable, Equatable {
    public var id: String
    public var capacity: Int
    public var labels: [String]
    public var version: String
    public var startedAt: Date
    /// Filled in by the API from `/kiln/tasks/{id}/`, not stored.
    public var running: Int?
    public var tasks: [String]?
    /// Filled in by the API: projects whose home on the ring is this agent.
    public var homedProjects: Int?

    public init(id: String, capacity: Int, labels: [String], version: String, startedAt: Date = Date()) {
        self.id = id
        self.capacity = capacity
        self.labels = labels
        self.version = version
        self.startedAt = startedAt
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

/// The JSON coding every part of Kiln uses: camelCase keys, ISO 8601 dates with milliseconds.
public enum KilnJSON {
    public static func encoder(pretty: Bool = false) -> JSONEncoder {
        let e = JSONEncoder()
        e.dateEncodingStrategy = .custom { date, encoder in
            var c = encoder.singleValueContainer()
            try c.encode(formatDate(date))
        }
        e.outputFormatting = pretty ? [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes] : [.sortedKeys, .withoutEscapingSlashes]
        return e
    }

    public static func decoder() -> JSONDecoder {
        let d = JSONDecoder()
        d.dateDecodingStrategy = .custom { decoder in
            let c = try decoder.singleValueContainer()
            let s = try c.decode(String.self)
            guard let date = parseDate(s) else {
                throw DecodingError.dataCorruptedError(in: c, debugDescription: "not an ISO 8601 date: \(s)")
            }
            return date
        }
        return d
    }

    public static func encode<T: Encodable>(_ value: T) throws -> String {
        String(decoding: try encoder().encode(value), as: UTF8.self)
    }

    public static func decode<T: Decodable>(_ type: T.Type, from string: String) throws -> T {
        try decoder().decode(type, from: Data(string.utf8))
    }

    public static func decode<T: Decodable>(_ type: T.Type, from bytes: [UInt8]) throws -> T {
        try decoder().decode(type, from: Data(bytes))
    }

    public static func formatDate(_ date: Date) -> String {
        date.formatted(.iso8601.year().month().day().dateSeparator(.dash).time(includingFractionalSeconds: true).timeSeparator(.colon).timeZone(separator: .omitted))
    }

    public static func parseDate(_ s: String) -> Date? {
        if let d = try? Date(s, strategy: .iso8601.year().month().day().dateSeparator(.dash).time(includingFractionalSeconds: true).timeSeparator(.colon).timeZone(separator: .omitted)) { return d }
        if let d = try? Date(s, strategy: .iso8601) { return d }
        return nil
    }
}

/// Build identifiers: time-ordered, so a listing sorted by id is newest last.
public enum BuildID {
    /// `b` + 11 base-36 digits of milliseconds since 1970 + 6 random hex digits, e.g. `b0mj4x2k9q1-3fa2c1`.
    public static func generate(now: Date = Date()) -> String {
        let ms = UInt64(max(0, now.timeIntervalSince1970 * 1000))
        var t = String(ms, radix: 36)
        while t.count < 11 { t = "0" + t }
        let r = String(UInt32.random(in: 0..<0x100_0000), radix: 16)
        return "b\(t)-\(String(repeating: "0", count: 6 - r.count))\(r)"
    }

    /// Build ids are used in etcd keys and URLs: letters, digits and `-` only.
    public static func isValid(_ id: String) -> Bool {
        !id.isEmpty && id.count <= 64 && id.utf8.allSatisfy { ($0 >= 97 && $0 <= 122) || ($0 >= 48 && $0 <= 57) || $0 == 45 }
    }
}

/// One line of a project's activity feed: who or what triggered which build, and how it
/// ended (the "activity" tab of LeEngine's console). Made from the build's record.
public struct ActivityEntry: Codable, Sendable, Equatable {
    public var at: Date
    public var build: String
    /// `api`, `gitlab push to main by jsmith`, `gitlab tag v1.0 by jsmith`, …
    public var trigger: String
    public var ref: String
    public var commit: String?
    public var tag: String?
    public var status: BuildStatus
    public var durationMs: Int?
    /// Why it failed or was cancelled (superseded, by request, its agents died), or why it waits.
    public var note: String?

    public init(_ b: Build) {
        at = b.createdAt
        build = b.id
        trigger = b.trigger ?? "api"
        ref = b.ref
        commit = b.commit
        tag = b.tag
        status = b.status
        durationMs = b.durationMs
        note = b.status == .queued ? b.waiting : (b.status == .failed || b.status == .cancelled ? b.error : nil)
    }
}

/// A JSON value, for plugin settings whose shape each plugin defines.
public enum JSONValue: Codable, Sendable, Equatable {
    case string(String), number(Double), bool(Bool), array([JSONValue]), object([String: JSONValue]), null

    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let b = try? c.decode(Bool.self) { self = .bool(b) }
        else if let n = try? c.decode(Double.self) { self = .number(n) }
        else if let s = try? c.decode(String.self) { self = .string(s) }
        else if let a = try? c.decode([JSONValue].self) { self = .array(a) }
        else { self = .object(try c.decode([String: JSONValue].self)) }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .string(let s): try c.encode(s)
        case .number(let n): try c.encode(n)
        case .bool(let b): try c.encode(b)
        case .array(let a): try c.encode(a)
        case .object(let o): try c.encode(o)
        case .null: try c.encodeNil()
        }
    }
}

/// One step of a project's post-build pipeline: a plugin and its settings. The steps run in
/// order after a build succeeds (see the Plugins module).
public struct PipelineStep: Codable, Sendable, Equatable {
    /// `deploy`, `lb`, `retire` or `notify`.
    public var plugin: String
    public var settings: [String: JSONValue]
    /// Longest the step may run (default: the plugin's own).
    public var timeoutSeconds: Int?

    public init(plugin: String, settings: [String: JSONValue] = [:], timeoutSeconds: Int? = nil) {
        self.plugin = plugin
        self.settings = settings
        self.timeoutSeconds = timeoutSeconds
    }

    enum CodingKeys: String, CodingKey { case plugin, settings, timeoutSeconds }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        plugin = try c.decode(String.self, forKey: .plugin)
        settings = try c.decodeIfPresent([String: JSONValue].self, forKey: .settings) ?? [:]
        timeoutSeconds = try c.decodeIfPresent(Int.self, forKey: .timeoutSeconds)
    }
}
