import Foundation

/// The etcd key schema (shared/ARCHITECTURE.md). Scheduler and agents meet only here.
///
/// Every key is under one prefix (default `/kiln`) so several farms can share an etcd.
public struct Keys: Sendable, Equatable {
    public let prefix: String

    public init(prefix: String = "/kiln") {
        var p = prefix
        while p.hasSuffix("/") { p.removeLast() }
        self.prefix = p.isEmpty ? "/kiln" : p
    }

    public var agents: String { "\(prefix)/agents/" }
    public func agent(_ id: String) -> String { agents + id }

    public var queue: String { "\(prefix)/queue/" }
    public func queued(_ build: String) -> String { queue + build }

    public var tasks: String { "\(prefix)/tasks/" }
    public func tasks(of agent: String) -> String { "\(tasks)\(agent)/" }
    public func task(agent: String, build: String) -> String { "\(tasks)\(agent)/\(build)" }

    /// The agent and build of a key under `tasks`, or nil for any other key.
    public func taskOwner(_ key: String) -> (agent: String, build: String)? { Keys.agentAndBuild(of: key, under: tasks) }

    public var builds: String { "\(prefix)/builds/" }
    public func build(_ id: String) -> String { builds + id }

    public var projects: String { "\(prefix)/projects/" }
    public func project(_ name: String) -> String { projects + name }

    public var logs: String { "\(prefix)/logs/" }
    public func logs(of build: String) -> String { "\(logs)\(build)/" }
    /// Chunks sort by key: the sequence number is zero-padded.
    public func logChunk(build: String, attempt: Int, seq: Int) -> String {
        let a = String(attempt), s = String(seq)
        return "\(logs)\(build)/\(String(repeating: "0", count: max(0, 3 - a.count)))\(a)-\(String(repeating: "0", count: max(0, 8 - s.count)))\(s)"
    }

    /// The last chunk of an attempt's log, after any its agent can write: where the scheduler
    /// closes the log of a build it ends or requeues itself (``Build/LogEnd``).
    public func logEnd(build: String, attempt: Int) -> String {
        logChunk(build: build, attempt: attempt, seq: 99_999_999)
    }

    public var leader: String { "\(prefix)/leader" }

    /// People and their API tokens (issue 12; docs/roles.md). Only schedulers read these.
    public var users: String { "\(prefix)/users/" }
    public func user(_ name: String) -> String { users + name }
    /// Keyed by the token's SHA-256 (hex): the token itself is kept nowhere.
    public var tokens: String { "\(prefix)/tokens/" }
    public func token(hash: String) -> String { tokens + hash }
    /// The console's login sessions, keyed like tokens (the cookie's SHA-256).
    public var sessions: String { "\(prefix)/sessions/" }
    public func session(hash: String) -> String { sessions + hash }
    /// Activity of projects, apps and groups besides builds (``ActivityEvent``), newest last:
    /// the last part of the key is the time in milliseconds, zero-padded, then a random suffix.
    public var activity: String { "\(prefix)/activity/" }
    public func activity(_ kind: ResourceKind, _ name: String) -> String { "\(activity)\(kind.plural)/\(name)/" }
    public func activityEvent(_ kind: ResourceKind, _ name: String, at: Date, id: String) -> String {
        let ms = String(Int64((at.timeIntervalSince1970 * 1000).rounded()))
        return activity(kind, name) + String(repeating: "0", count: max(0, 15 - ms.count)) + ms + "-" + id
    }

    /// Groups: namespaces of the registry and of projects (``Group``).
    public var groups: String { "\(prefix)/groups/" }
    public func group(_ name: String) -> String { groups + name }
    /// The members of a resource, whole in one key: `/kiln/members/{projects|apps|groups}/{name}`.
    public var members: String { "\(prefix)/members/" }
    public func members(_ kind: ResourceKind, _ name: String) -> String { "\(members)\(kind.plural)/\(name)" }

    /// Where apps run: Docker Engine API endpoints or Kubernetes API servers.
    public var cells: String { "\(prefix)/cells/" }
    public func cell(_ name: String) -> String { cells + name }

    /// Apps and their versions, written by the deploy and retire plugins.
    public var apps: String { "\(prefix)/apps/" }
    public func app(_ name: String) -> String { apps + name }

    /// A post-build pipeline run's log, after the build's own chunks (`p` sorts after digits).
    public func pipelineLogChunk(build: String, run: Int, seq: Int) -> String {
        let a = String(run), s = String(seq)
        return "\(logs)\(build)/p\(String(repeating: "0", count: max(0, 3 - a.count)))\(a)-\(String(repeating: "0", count: max(0, 8 - s.count)))\(s)"
    }

    /// Webhook deliveries already turned into builds, by idempotency key (hashed).
    public var hooks: String { "\(prefix)/hooks/" }
    public func hook(_ id: String) -> String { hooks + id }

    /// Machines that may ask the registry's token service for tokens (`MachineCredential`):
    /// the SHA-256 of each one's token and its kind. Only the schedulers read them.
    public var machines: String { "\(prefix)/machines/" }
    public func machine(_ name: String) -> String { machines + name }

    /// What the registry's token service lets an agent push: the project of each build the
    /// dispatcher gave it, written in the assignment's txn, deleted when the build is given
    /// back. Only schedulers read or write here: an agent may write its own task keys (it
    /// deletes them at a build's end), so the token service cannot trust those alone.
    public var grants: String { "\(prefix)/grants/" }
    public func grants(of agent: String) -> String { "\(grants)\(agent)/" }
    public func grant(agent: String, build: String) -> String { grants(of: agent) + build }
    /// The agent and build of a key under `grants`, or nil for any other key.
    public func grantOwner(_ key: String) -> (agent: String, build: String)? { Keys.agentAndBuild(of: key, under: grants) }

    /// Sealed secrets (issue 13): only schedulers read or write here, and etcd holds nothing
    /// under it but `SealedValue`s with their metadata (`StoredSecret`).
    /// `secrets/projects/{p}/env/{NAME}`, `…/git`, `…/webhook`, `…/registry/{host}`; the same
    /// under `secrets/groups/{g}/` (no git, no webhook); `secrets/cells/{cell}` (a Kubernetes
    /// cell's credential); `secrets/check` (a value sealed at first start, so a wrong key file
    /// is found at start even before any secret exists).
    public var secrets: String { "\(prefix)/secrets/" }
    public func secrets(of scope: SecretScope) -> String { "\(secrets)\(scope.path)/" }
    public func secret(_ scope: SecretScope, env name: String) -> String { "\(secrets(of: scope))env/\(name)" }
    public func secret(_ scope: SecretScope, registry host: String) -> String { "\(secrets(of: scope))registry/\(host)" }
    public func gitCredential(project: String) -> String { "\(secrets(of: .project(project)))git" }
    public func webhookSecret(project: String) -> String { "\(secrets(of: .project(project)))webhook" }
    public func cellCredential(_ cell: String) -> String { "\(secrets)cells/\(cell)" }
    public var secretsCheck: String { "\(secrets)check" }

    /// Indexes the scheduler keeps beside the records (issue 14), so that hot paths read a few
    /// keys instead of every record. Only schedulers write here, except where noted.
    public var index: String { "\(prefix)/index/" }
    /// A project's builds: `index/builds/{project}/{build}`, value empty. Build ids sort by
    /// their creation time, so a range of this prefix is the project's builds in order.
    public func buildIndex(project: String) -> String { "\(index)builds/\(project)/" }
    public func buildIndexEntry(project: String, build: String) -> String { buildIndex(project: project) + build }
    /// Projects by repository: `index/repos/{url}/{project}`, where `url` is the repository
    /// URL as webhook matching compares it (no user info, key-escaped), value empty.
    public var repoIndex: String { "\(index)repos/" }
    public func repoIndex(url: String) -> String { "\(repoIndex)\(url)/" }
    public func repoIndexEntry(url: String, project: String) -> String { repoIndex(url: url) + project }
    /// Builds whose post-build pipeline run waits or runs: `index/pipelines/{build}`, so the
    /// pipeline service finds them without reading every build record.
    public var pipelineIndex: String { "\(index)pipelines/" }
    public func pipelineIndexEntry(build: String) -> String { pipelineIndex + build }
    /// Builds whose image a later build with the same inputs may reuse (docs/reuse.md):
    /// `index/reuse/{project}/{key hex}/{protected|shared}`, a ``ReuseEntry``. Written and read
    /// by the agents (the end of a successful real build; the reuse lookup after a fetch).
    public var reuseIndex: String { "\(index)reuse/" }
    public func reuseEntries(project: String, key: String) -> String {
        "\(reuseIndex)\(project)/\(key.hasPrefix("sha256:") ? String(key.dropFirst(7)) : key)/"
    }
    public func reuseEntry(project: String, key: String, protected: Bool) -> String {
        reuseEntries(project: project, key: key) + (protected ? "protected" : "shared")
    }
    /// The schema of the indexes that existing records have entries for (a number, as text):
    /// a scheduler's start builds what is missing and writes it (`IndexMigration`).
    public var indexSchema: String { "\(index)schema" }

    /// `{agent}/{build}` under `base` (tasks and grants), or nil for any other key.
    static func agentAndBuild(of key: String, under base: String) -> (agent: String, build: String)? {
        guard let rest = Keys.name(of: key, under: base) else { return nil }
        let parts = rest.split(separator: "/", maxSplits: 1)
        guard parts.count == 2, !parts[1].contains("/") else { return nil }
        return (String(parts[0]), String(parts[1]))
    }

    /// The last path component of `key` under `base`, or nil if `key` is not directly under it.
    public static func name(of key: String, under base: String) -> String? {
        guard key.hasPrefix(base) else { return nil }
        let rest = key.dropFirst(base.count)
        return rest.isEmpty ? nil : String(rest)
    }
}

/// Whose secrets: a project's or a group's (a group's are inherited by its projects).
public enum SecretScope: Sendable, Equatable, Hashable {
    case project(String)
    case group(String)

    public var path: String {
        switch self {
        case .project(let p): "projects/\(p)"
        case .group(let g): "groups/\(g)"
        }
    }

    public var kindName: String {
        switch self {
        case .project: "project"
        case .group: "group"
        }
    }
}
