/// Who talks to etcd, and what each may touch: the one place the farm's etcd users and
/// their least-privilege roles are defined (applied by `kiln up`, the test farms and
/// `kiln etcd-auth setup`; listed in docs/architecture.md and docs/etcd-auth.md).
///
/// Each process has a user of its own and a role of the same name. etcd grants by key or by
/// key prefix only, so where a component needs part of a prefix (an agent writes the records
/// of its builds only) it gets the prefix; what is narrower is narrower:
/// - the scheduler: reads the agents' registrations, and reads and writes every other key
///   of the farm (queue, tasks, builds, projects, logs, hooks, cells, apps, the leader key)
///   and the load balancer's `/slb/` (it writes domains for every group and reads the
///   lb-agents' reports). It never writes an agent's registration.
/// - an agent: its own registration key (and so may revoke the lease it is bound to), its
///   own tasks prefix (read, and delete when a build ends), the build records (read and
///   write: the record of a build is `builds/{id}`, with no agent in the key), the logs
///   and the pipeline index `index/pipelines/` (write only), the reuse index `index/reuse/`
///   (read and write). It cannot read or write projects,
///   the queue, another agent's tasks, the leader key, cells, apps, the other indexes or `/slb/`.
/// - an lb-agent: reads its group's domains and writes its own report key; nothing else.
/// - nobody but the scheduler reads or writes `/kiln/secrets/` (sealed secrets).
///
/// Rule for a caller: a transaction needs read permission on every key it compares, write
/// permission on every key it writes; revoking a lease needs write permission on every key
/// bound to it. A new etcd access in a component needs a line here.
public enum EtcdAccess: Hashable, Sendable, CustomStringConvertible {
    case scheduler
    case agent(String)
    case lbAgent(group: String, id: String)

    /// etcd's administrator: the one user with the role `root`.
    public static let rootUser = "root"

    /// A grant of the role: read, write or both on one key or a prefix.
    public struct Grant: Hashable, Sendable, CustomStringConvertible {
        public enum Access: String, Sendable {
            case read, write, readWrite = "readwrite"
        }

        public let access: Access
        public let key: String
        /// `key` is a prefix: the grant covers every key that starts with it.
        public let prefix: Bool

        public init(_ access: Access, _ key: String, prefix: Bool) {
            self.access = access
            self.key = key
            self.prefix = prefix
        }

        public var description: String { "\(access.rawValue) \(key)\(prefix ? " (prefix)" : "")" }
    }

    /// The etcd user (and role) of the component. Agent ids and lb group names cannot hold
    /// '.' in a group or ':' anywhere, so no two components share a user.
    public var user: String {
        switch self {
        case .scheduler: "kiln-scheduler"
        case .agent(let id): "kiln-agent.\(id)"
        case .lbAgent(let group, let id): "kiln-lb.\(group).\(id)"
        }
    }

    /// The name of its credential file (`etcd-scheduler`, `etcd-agent.agent-1`,
    /// `etcd-lb.local.lb-1`); `kiln up` keeps them in `<data-dir>/credentials/`.
    public var credentialFileName: String {
        "etcd-" + user.dropFirst("kiln-".count)
    }

    /// The name of the root credential file: `etcd-root`, holding `root:PASSWORD`.
    public static let rootCredentialFileName = "etcd-root"

    public var description: String {
        switch self {
        case .scheduler: "the scheduler"
        case .agent(let id): "agent \(id)"
        case .lbAgent(let group, let id): "lb-agent \(id) of group \(group)"
        }
    }

    /// Throws `KilnError.invalid` if the id or group is not a valid name.
    public func validate() throws {
        switch self {
        case .scheduler: break
        case .agent(let id): try Validation.agentID(id)
        case .lbAgent(let group, let id):
            try Validation.groupName(group)
            try Validation.agentID(id)
        }
    }

    /// The role's grants: everything the component reads, writes, compares or revokes, and
    /// nothing else.
    public func grants(keys: Keys = Keys(), slb: SLBKeys = SLBKeys()) -> [Grant] {
        switch self {
        case .scheduler:
            return [
                Grant(.read, keys.agents, prefix: true),
                Grant(.readWrite, keys.queue, prefix: true),
                Grant(.readWrite, keys.tasks, prefix: true),
                Grant(.readWrite, keys.builds, prefix: true),
                Grant(.readWrite, keys.projects, prefix: true),
                Grant(.readWrite, keys.logs, prefix: true),
                Grant(.readWrite, keys.hooks, prefix: true),
                Grant(.readWrite, keys.cells, prefix: true),
                Grant(.readWrite, keys.apps, prefix: true),
                Grant(.readWrite, keys.leader, prefix: false),
                // The registry's token service checks machine tokens against their hashes;
                // only root registers them (`kiln machine`, `kiln up`), no component writes there.
                Grant(.read, keys.machines, prefix: true),
                // What an agent may push (the token service trusts these, not task keys).
                Grant(.readWrite, keys.grants, prefix: true),
                // People, their tokens and sessions, groups and members (docs/roles.md).
                Grant(.readWrite, keys.users, prefix: true),
                Grant(.readWrite, keys.tokens, prefix: true),
                Grant(.readWrite, keys.sessions, prefix: true),
                Grant(.readWrite, keys.groups, prefix: true),
                Grant(.readWrite, keys.members, prefix: true),
                Grant(.readWrite, keys.activity, prefix: true),
                // Indexes beside the records (builds by project, projects by repository,
                // pending pipeline runs): hot paths read these, not every record.
                Grant(.readWrite, keys.index, prefix: true),
                // Sealed secrets (docs/secrets.md): schedulers alone hold the key and this
                // prefix; an agent gets one build's secrets from a scheduler over HTTP.
                Grant(.readWrite, keys.secrets, prefix: true),
                Grant(.readWrite, slb.root + "/", prefix: true),
            ]
        case .agent(let id):
            return [
                // Put under its lease, and revoked with it on shutdown.
                Grant(.readWrite, keys.agent(id), prefix: false),
                // Followed; compared (create revision) by every write of a build; deleted at its end.
                Grant(.readWrite, keys.tasks(of: id), prefix: true),
                // Read at a build's start, written at each step under the task's guard.
                Grant(.readWrite, keys.builds, prefix: true),
                Grant(.write, keys.logs, prefix: true),
                // A build that succeeds puts its pipeline run's entry in the index, in its end's
                // transaction (write only: the leader reads the index and checks each record).
                Grant(.write, keys.pipelineIndex, prefix: true),
                // The reuse index (docs/reuse.md): read after a fetch to find an earlier build with
                // the same inputs, written in a successful real build's end, an entry whose build
                // is gone deleted. An agent already writes any build record, and its registry
                // token pushes only the repository of a build it holds: an entry it writes names
                // at most an image of that project, which a reusing agent checks again.
                Grant(.readWrite, keys.reuseIndex, prefix: true),
            ]
        case .lbAgent(let group, let id):
            return [
                Grant(.read, slb.domains(group), prefix: true),
                // Put under its lease (compared by lease and create revision), revoked on shutdown.
                Grant(.readWrite, slb.agent(group: group, id), prefix: false),
            ]
        }
    }
}
