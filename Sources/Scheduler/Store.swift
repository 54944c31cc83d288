import Etcd
import Foundation
import KilnCore
import Plugins
import Logging

/// The scheduler's reads and writes in etcd: projects, builds, the queue, cancellation.
///
/// Every change that touches more than one key is one transaction guarded by revisions,
/// so a build is never lost between the queue and an agent and never assigned twice.
public struct SchedulerStore: Sendable {
    public let etcd: EtcdClient
    public let keys: Keys
    /// Failed password logins of this scheduler, shared by every copy of the store: the API's
    /// HTTP Basic logins and the console's login form count against one budget.
    let loginThrottle = LoginThrottle()
    /// The leases webhook idempotency keys expire with, shared by every copy of the store.
    let hookLeases: HookLeases
    /// Where the newest builds of each range were found last (listings), shared likewise.
    let listingHints = NewestWindow.Hints()
    /// Where ended builds' logs go (docs/logs.md); nil: this store reads only the logs still
    /// in etcd, and refuses to show an archived one.
    public let logArchive: (any LogArchive)?

    public init(etcd: EtcdClient, keys: Keys = Keys(), hookLeases: HookLeases = HookLeases(), logArchive: (any LogArchive)? = nil) {
        self.etcd = etcd
        self.keys = keys
        self.hookLeases = hookLeases
        self.logArchive = logArchive
    }

    // MARK: projects

    /// A project and the revision it was read at, or nil if there is none. Any other error
    /// (etcd failing, a record that does not decode) is thrown, never taken for "absent".
    public func projectIfExists(_ name: String) async throws -> (project: Project, modRevision: Int64)? {
        try Validation.projectName(name)
        guard let kv = try await etcd.get(keys.project(name)) else { return nil }
        return (try KilnJSON.decode(Project.self, from: kv.value), kv.modRevision)
    }

    /// Creates or replaces a project, and its entry in the repository index
    /// (``repositoryIndexWrites(project:from:to:)``). Returns true if it was new. A new project's `creator`
    /// becomes its owner in the same transaction. The write compares against what the caller
    /// decided on (`replacing`, from ``projectIfExists(_:)``; nil: the project must not
    /// exist), else 409: someone changed it meanwhile. Without `replacing` and `creator`
    /// (tests, tools) it reads the project itself. A project naming a group needs the group
    /// to exist, in the same transaction. `webhookWrite` (the sealed webhook token's write or
    /// delete, `SecretStore.webhookSecretWrite`) goes into the same transaction, and the
    /// record then keeps no token of its own.
    @discardableResult
    public func saveProject(_ project: Project, creator: String? = nil, replacing: (project: Project, modRevision: Int64)?? = .none,
                            webhookWrite: TxnOp? = nil) async throws -> Bool {
        try project.validate()
        try PluginCatalog.validate(project.pipeline ?? [])
        var p = project
        let key = keys.project(p.name)
        let existing: (project: Project, modRevision: Int64)?
        switch replacing {
        case .some(let decided): existing = decided
        case .none: existing = try await projectIfExists(p.name)
        }
        if let existing {
            let old = existing.project
            p.createdAt = old.createdAt
            // The API never shows the secret, so a project saved back without one keeps it;
            // an empty one removes it.
            if p.webhookSecret == nil, webhookWrite == nil { p.webhookSecret = old.webhookSecret }
        } else {
            p.createdAt = p.createdAt ?? Date()
        }
        if p.webhookSecret == "" || webhookWrite != nil { p.webhookSecret = nil }
        var success: [TxnOp] = [.put(key, try KilnJSON.encode(p))] + (webhookWrite.map { [$0] } ?? [])
        success += repositoryIndexWrites(project: p.name, from: existing?.project.repository, to: p.repository)
        if existing == nil, let creator {
            success.append(.put(keys.members(.project, p.name), try KilnJSON.encode(Members(users: [creator: .owner]))))
        }
        var compare: [Compare] = [existing.map { .modRevision(key, .equal, $0.modRevision) } ?? .createRevision(key, .equal, 0)]
        if let group = p.group { compare.append(.version(keys.group(group), .greater, 0)) }
        let r = try await etcd.txn(Txn(compare: compare, success: success))
        guard r.succeeded else {
            if let group = p.group, try await etcd.get(keys.group(group)) == nil {
                throw KilnError.notFound("group '\(group)' does not exist: make it with POST /api/v1/groups first")
            }
            throw KilnError.conflict("project '\(p.name)' changed while it was being saved: read it again and retry")
        }
        return existing == nil
    }

    public func project(_ name: String) async throws -> Project {
        try Validation.projectName(name)
        guard let kv = try await etcd.get(keys.project(name)) else {
            throw KilnError.notFound("project '\(name)' does not exist: add it with `kiln project add` or POST /api/v1/projects")
        }
        return try KilnJSON.decode(Project.self, from: kv.value)
    }

    public func projects() async throws -> [Project] {
        try await etcd.range(prefix: keys.projects).kvs.compactMap { try? KilnJSON.decode(Project.self, from: $0.value) }
    }

    // MARK: builds

    /// Checks the request, writes the build record and its queue entry in one transaction
    /// (which fails if the project was deleted meanwhile), and returns the new build.
    public func enqueue(project name: String, request: BuildRequest) async throws -> Build {
        try await enqueue(project: name, request: request, delivery: nil).build
    }

    /// The same, once per `delivery` (a webhook's idempotency key, at most 200 characters):
    /// the key is written in the build's transaction, so a redelivery, even a concurrent one,
    /// gets the first build back (`created` false) instead of a second one. The key expires
    /// after a day (``HookLeases``): a delivery that comes back later is a new one.
    public func enqueue(project name: String, request: BuildRequest, delivery: String?) async throws -> (build: Build, created: Bool) {
        try await enqueue(try await self.project(name), request: request, delivery: delivery)
    }

    /// The same, for a project the caller has just read (the transaction still checks that it
    /// exists). The build's entry in its project's index (`Keys.buildIndexEntry`) is written in
    /// the same transaction, so a listing through the index never misses a build.
    /// `vouchedCommit`: the commit, if any, is the pushed head of the ref (a GitLab delivery); a
    /// commit a person's request names marks the build `commitPinnedByRequest`.
    func enqueue(_ project: Project, request: BuildRequest, delivery: String?, vouchedCommit: Bool = false) async throws -> (build: Build, created: Bool) {
        let name = project.name
        try request.problems().throwFirst()
        let ref = request.ref ?? project.defaultBranch
        try Validation.ref(ref)
        var build = Build(
            id: BuildID.generate(), project: name, ref: ref, commit: request.commit?.lowercased(), tag: request.tag,
            mvncache: request.mvncache ?? true, trigger: request.trigger ?? "api")
        build.priority = request.priority
        if request.rebuild == true { build.rebuild = true }
        if build.commit != nil && !vouchedCommit { build.commitPinnedByRequest = true }
        let entry = QueueEntry(queuing: build)
        var compare: [Compare] = [.version(keys.project(name), .greater, 0), .createRevision(keys.build(build.id), .equal, 0)]
        let success: [TxnOp] = [.put(keys.build(build.id), try KilnJSON.encode(build)), .put(keys.queued(build.id), try KilnJSON.encode(entry)),
                                .put(keys.buildIndexEntry(project: name, build: build.id), "")]
        var failure: [TxnOp] = []
        let hookKey = delivery.map { keys.hook("\(name)/\(SchedulerStore.escapeKeyPart(String($0.prefix(200))))") }
        if let hookKey {
            compare.append(.createRevision(hookKey, .equal, 0))
            failure.append(.get(hookKey))
        }
        let result = try await enqueueTxn(Txn(compare: compare, success: success, failure: failure), hookKey: hookKey, build: build.id)
        guard result.succeeded else {
            if hookKey != nil, let first = result.responses.first?.kvs.first {
                return (try await self.build(first.string), false)
            }
            throw KilnError.conflict("project '\(name)' was deleted while the build was being queued")
        }
        if let mode = project.supersede {
            try await supersede(by: build, includingRunning: mode == .running)
        }
        return (build, true)
    }

    /// Runs the enqueue's transaction, with the delivery's key (if any) bound to this window's
    /// hook lease; once more with a new lease if etcd no longer knows the one kept.
    private func enqueueTxn(_ txn: Txn, hookKey: String?, build: String) async throws -> TxnResult {
        guard let hookKey else { return try await etcd.txn(txn) }
        for attempt in 0..<2 {
            let lease = try await hookLeases.lease(etcd)
            var t = txn
            t.success.append(.put(hookKey, build, lease: lease))
            do {
                return try await etcd.txn(t)
            } catch where HookLeases.isLeaseGone(error) && attempt == 0 {
                hookLeases.forget(lease)
            }
        }
        throw KilnError.unavailable("etcd refused the webhook delivery's lease twice; try again")
    }

    /// A string made safe as one component of an etcd key: letters, digits, `-`, `_` and `.`
    /// stay; every other byte becomes `%XX`.
    static func escapeKeyPart(_ s: String) -> String {
        var out = ""
        for b in s.utf8 {
            if (48...57).contains(b) || (65...90).contains(b) || (97...122).contains(b) || b == 45 || b == 95 || b == 46 {
                out.append(Character(Unicode.Scalar(b)))
            } else {
                out += String(format: "%%%02X", b)
            }
        }
        return out
    }

    /// Cancels the older builds of the same project and ref that `build` makes pointless.
    /// Only builds that have not ended can be: those in the queue (and with `includingRunning`
    /// those with a task), so these are read, never the project's history.
    func supersede(by build: Build, includingRunning: Bool) async throws {
        let older = try await unendedBuilds(of: build.project, includingRunning: includingRunning).filter {
            $0.id != build.id && $0.ref == build.ref && $0.createdAt <= build.createdAt
                && ($0.status == .queued || (includingRunning && ($0.status == .assigned || $0.status == .running)))
        }
        for b in older {
            // A build that ended meanwhile is fine: it needs no cancel.
            _ = try? await cancel(b.id, reason: "superseded by build \(build.id)")
        }
    }

    public func build(_ id: String) async throws -> Build {
        try await buildWithRevision(id).build
    }

    public func buildWithRevision(_ id: String) async throws -> (build: Build, modRevision: Int64) {
        guard BuildID.isValid(id) else { throw KilnError.invalid("build id '\(Validation.printable(id))' is malformed") }
        guard let kv = try await etcd.get(keys.build(id)) else { throw KilnError.notFound("build '\(id)' does not exist") }
        return (try KilnJSON.decode(Build.self, from: kv.value), kv.modRevision)
    }

    /// The newest builds, optionally of one project: the first page of ``buildPage(project:limit:cursor:)``.
    public func builds(project: String? = nil, limit: Int = BuildPage.defaultLimit) async throws -> [Build] {
        try await buildPage(project: project, limit: limit).builds
    }

    /// A project's activity, newest first: its builds and the other events on it.
    public func activity(project name: String, limit: Int = 50) async throws -> [ActivityEntry] {
        _ = try await project(name)
        return try await activity(.project, name, limit: limit)
    }

    /// Cancels a build. A queued build ends at once; an assigned or running one is marked
    /// on its task so its agent stops the container and records the end.
    public func cancel(_ id: String, reason: String? = nil) async throws -> Build {
        for _ in 0..<10 {
            let (build, rev) = try await buildWithRevision(id)
            var b = build
            if case .ended(let end) = try b.cancel(reason: reason, at: Date()) {
                let r = try await etcd.txn(Txn(
                    compare: [.modRevision(keys.build(id), .equal, rev)],
                    success: [.delete(keys.queued(id)), .put(keys.build(id), try KilnJSON.encode(b)),
                              try putLogEnd(end, of: id)]))
                if r.succeeded { return b }
                continue
            }
            // Only marked: the agent stops the build when its task says so.
            guard let agent = b.agent,
                  let taskKV = try await etcd.get(keys.task(agent: agent, build: id)),
                  var task = try? KilnJSON.decode(BuildTask.self, from: taskKV.value) else {
                continue  // between states: read again
            }
            task.cancel = true
            let r = try await etcd.txn(Txn(
                compare: [.modRevision(keys.build(id), .equal, rev), .modRevision(taskKV.key, .equal, taskKV.modRevision)],
                success: [.put(taskKV.key, try KilnJSON.encode(task)), .put(keys.build(id), try KilnJSON.encode(b))]))
            if r.succeeded { return b }
        }
        throw KilnError.unavailable("build '\(id)' kept changing while it was being cancelled; try again")
    }

    /// The write that closes an attempt's log with the scheduler's last line of it.
    func putLogEnd(_ end: Build.LogEnd, of build: String) throws -> TxnOp {
        .put(keys.logEnd(build: build, attempt: end.attempt), try KilnJSON.encode(end.chunk))
    }

    // MARK: agents

    /// Live agents with how many builds each holds.
    public func agents() async throws -> [AgentInfo] {
        let agents = try await etcd.range(prefix: keys.agents).kvs.compactMap { try? KilnJSON.decode(AgentInfo.self, from: $0.value) }
        let tasks = try await etcd.range(prefix: keys.tasks).kvs
        var byAgent: [String: [String]] = [:]
        for kv in tasks {
            if let owner = keys.taskOwner(kv.key) { byAgent[owner.agent, default: []].append(owner.build) }
        }
        // Homes as the dispatcher's ring sees them (virtual nodes in proportion to capacity).
        let ring = HashRing(members: agents.map { .init(id: $0.id, weight: $0.capacity) })
        var homes: [String: Int] = [:]
        for p in try await projects() {
            if let home = ring.home(of: p.name) { homes[home, default: 0] += 1 }
        }
        return agents.map { a in
            var a = a
            a.tasks = byAgent[a.id] ?? []
            a.running = a.tasks?.count
            a.homedProjects = homes[a.id] ?? 0
            return a
        }.sorted { $0.id < $1.id }
    }

    // The logs (archive and chunks): Logs/Store+Logs.swift.
}
