import Etcd
import Foundation
import KilnCore

/// The secrets Kiln keeps, sealed in etcd under `/kiln/secrets/` (docs/secrets.md): build
/// secrets and registry logins of projects and groups, a project's git credential and
/// GitLab webhook token, a Kubernetes cell's credential. Each value is a ``StoredSecret``
/// sealed by the farm's ``SecretsKeyring`` and bound to its etcd key, so etcd (a backup, a
/// snapshot, `etcdctl get --prefix /`) never holds one in clear, and a sealed value copied
/// to another key does not open there.
///
/// Rules for callers:
/// - Only schedulers use it: their etcd role alone has `/kiln/secrets/`. Agents get what one
///   build needs from a scheduler (`POST /agent/v1/builds/{build}/secrets`) and never hold
///   the key.
/// - The store does not know people: check who asks before calling, and never log or answer
///   what it opens (names and ``SecretInfo`` only).
/// - A value that does not open (its key left the key file, or it was altered) is an error
///   naming the secret, never a secret silently missing from a build.
public struct SecretStore: Sendable {
    public let etcd: EtcdClient
    public let keys: Keys
    public let keyring: SecretsKeyring

    public init(etcd: EtcdClient, keys: Keys = Keys(), keyring: SecretsKeyring) {
        self.etcd = etcd
        self.keys = keys
        self.keyring = keyring
    }

    /// Reads the key file (`--secrets-key-file`); throws `KilnError.invalid` saying what to do
    /// when it is missing, readable by others or holds no key.
    public init(etcd: EtcdClient, keys: Keys = Keys(), keyFile: String) throws {
        self.init(etcd: etcd, keys: keys, keyring: try SecretsKeyring(path: keyFile))
    }

    // MARK: build secrets

    /// Sets the build secret `name` of a project or group; true if it is new.
    @discardableResult
    public func setSecret(_ name: String, _ request: SecretRequest, scope: SecretScope, by user: String? = nil) async throws -> Bool {
        try Self.check(scope)
        try request.validate(name: name)
        return try await write(Data(request.value.utf8), at: keys.secret(scope, env: name), protectedOnly: request.protectedOnly == true ? true : nil,
                               file: request.file == true ? true : nil, by: user)
    }

    /// Removes a build secret; false if there was none.
    @discardableResult
    public func deleteSecret(_ name: String, scope: SecretScope) async throws -> Bool {
        try Self.check(scope)
        try SecretRules.name(name)
        return try await etcd.delete(keys.secret(scope, env: name)) > 0
    }

    // MARK: git credentials

    /// Sets a project's git credential (the fetch's login); true if it is new.
    @discardableResult
    public func setGitCredential(_ credential: GitCredential, project: String, by user: String? = nil) async throws -> Bool {
        try Validation.projectName(project)
        let detail: String
        switch credential {
        case .token: detail = "token"
        case .sshKey: detail = "sshKey"
        }
        return try await write(try KilnJSON.encoder().encode(credential), at: keys.gitCredential(project: project), detail: detail, by: user)
    }

    public func gitCredential(project: String) async throws -> GitCredential? {
        try Validation.projectName(project)
        return try await open(GitCredential.self, at: keys.gitCredential(project: project))
    }

    @discardableResult
    public func deleteGitCredential(project: String) async throws -> Bool {
        try Validation.projectName(project)
        return try await etcd.delete(keys.gitCredential(project: project)) > 0
    }

    // MARK: registry logins

    /// Sets the login of a project or group to the registry `host` (`host[:port]`); true if new.
    @discardableResult
    public func setRegistryLogin(_ request: RegistryCredentialRequest, host: String, scope: SecretScope, by user: String? = nil) async throws -> Bool {
        try Self.check(scope)
        try request.validate(host: host)
        let login = RegistryLogin(host: host, username: request.username, password: request.password)
        return try await write(try KilnJSON.encoder().encode(login), at: keys.secret(scope, registry: host), detail: request.username, by: user)
    }

    @discardableResult
    public func deleteRegistryLogin(host: String, scope: SecretScope) async throws -> Bool {
        try Self.check(scope)
        try SecretRules.registryHost(host)
        return try await etcd.delete(keys.secret(scope, registry: host)) > 0
    }

    // MARK: webhook tokens

    /// A project's GitLab webhook token (`X-Gitlab-Token`), nil when it has none.
    public func webhookSecret(project: String) async throws -> String? {
        try Validation.projectName(project)
        return try await openString(at: keys.webhookSecret(project: project))
    }

    /// The write that sets a project's webhook token, for the transaction that saves the
    /// project (so the record and its token change together).
    public func webhookSecretWrite(_ secret: String, project: String, by user: String? = nil) throws -> TxnOp {
        try Validation.projectName(project)
        let key = keys.webhookSecret(project: project)
        return .put(key, try KilnJSON.encode(try stored(Data(secret.utf8), at: key, by: user)))
    }

    // MARK: cells

    /// Sets a Kubernetes cell's credential; true if it is new.
    @discardableResult
    public func setCellCredential(_ credential: CellCredential, cell: String, by user: String? = nil) async throws -> Bool {
        try Validation.projectName(cell, what: "cell name")
        try credential.validate()
        return try await write(try KilnJSON.encoder().encode(credential), at: keys.cellCredential(cell),
                               detail: credential.token != nil ? "token" : "clientCertificate", by: user)
    }

    /// A cell's credential, nil when none was set.
    public func cellCredential(_ cell: String) async throws -> CellCredential? {
        try Validation.projectName(cell, what: "cell name")
        return try await open(CellCredential.self, at: keys.cellCredential(cell))
    }

    @discardableResult
    public func deleteCellCredential(_ cell: String) async throws -> Bool {
        try Validation.projectName(cell, what: "cell name")
        return try await etcd.delete(keys.cellCredential(cell)) > 0
    }

    // MARK: listing

    /// What is set for a project or group, names and metadata only, sorted by kind and name.
    /// A project's listing (`group`: the project's group) shows the group's too, scope
    /// `group`, except those the project's own replace.
    public func list(_ scope: SecretScope, group: String? = nil) async throws -> [SecretInfo] {
        try Self.check(scope)
        var infos = try await etcd.range(prefix: keys.secrets(of: scope)).kvs.compactMap { info($0) }
        if case .project = scope, let group {
            try Validation.projectName(group, what: "group name")
            let own = Set(infos.map { "\($0.kind)/\($0.name)" })
            infos += try await etcd.range(prefix: keys.secrets(of: .group(group))).kvs.compactMap { info($0) }
                .filter { !own.contains("\($0.kind)/\($0.name)") }
        }
        return infos.sorted { ($0.kind, $0.name, $0.scope) < ($1.kind, $1.name, $1.scope) }
    }

    func info(_ kv: KeyValue) -> SecretInfo? {
        guard let slot = SecretSlot.of(kv.key, keys: keys), let scope = slot.scope,
              let stored = try? KilnJSON.decode(StoredSecret.self, from: kv.value) else { return nil }
        return SecretInfo(kind: slot.kind, name: slot.name, scope: scope.kindName, protectedOnly: stored.protectedOnly, file: stored.file,
                          detail: stored.detail, updatedAt: stored.updatedAt, updatedBy: stored.updatedBy)
    }

    // MARK: what one build gets

    /// Everything a build of `project` at `ref` receives: its git credential, its registry
    /// logins and build secrets with its group's (`project.group`) inherited, the project's
    /// winning over the group's of the same name or host. A secret for protected refs only is
    /// given when `project.isProtected(ref:)`, else its name goes in `withheld` (a project's
    /// withheld secret does not fall back to the group's of the same name).
    /// A nil `ref` holds no protection (a commit pinned by a request).
    public func buildSecrets(project: Project, ref: String?) async throws -> BuildSecrets {
        try Validation.projectName(project.name)
        let own = try await etcd.range(prefix: keys.secrets(of: .project(project.name))).kvs
        var inherited: [KeyValue] = []
        if let group = project.group { inherited = try await etcd.range(prefix: keys.secrets(of: .group(group))).kvs }
        var env: [String: BuildSecret] = [:], registries: [String: RegistryLogin] = [:], withheld: Set<String> = []
        var git: GitCredential?
        let protected = ref.map(project.isProtected(ref:)) ?? false
        // The group's first, so the project's replace them.
        for kv in inherited + own {
            guard let slot = SecretSlot.of(kv.key, keys: keys) else { continue }
            switch slot {
            case .env(_, let name):
                let stored = try decode(kv)
                if stored.protectedOnly == true, !protected {
                    env[name] = nil
                    withheld.insert(name)
                    continue
                }
                withheld.remove(name)
                env[name] = BuildSecret(name: name, value: try openString(stored, at: kv.key), file: stored.file == true,
                                        protectedOnly: stored.protectedOnly == true)
            case .registry(_, let host):
                registries[host.lowercased()] = try KilnJSON.decoder().decode(RegistryLogin.self, from: try keyring.open(try decode(kv).sealed, boundTo: kv.key))
            case .git:
                git = try KilnJSON.decoder().decode(GitCredential.self, from: try keyring.open(try decode(kv).sealed, boundTo: kv.key))
            case .webhook, .cell, .check:
                continue
            }
        }
        return BuildSecrets(git: git, registries: registries.values.sorted { $0.host < $1.host },
                            env: env.values.sorted { $0.name < $1.name }, withheld: withheld.sorted())
    }

    // MARK: reading and writing one value

    /// Seals `plaintext` for `key` with its metadata.
    func stored(_ plaintext: Data, at key: String, protectedOnly: Bool? = nil, file: Bool? = nil, detail: String? = nil, by user: String?) throws -> StoredSecret {
        StoredSecret(sealed: try keyring.seal(plaintext, boundTo: key), protectedOnly: protectedOnly, file: file, detail: detail,
                     updatedAt: Date(), updatedBy: user)
    }

    /// Seals and writes one value; true if the key was new. One transaction, so "new" is
    /// what etcd saw, not a guess from an earlier read.
    func write(_ plaintext: Data, at key: String, protectedOnly: Bool? = nil, file: Bool? = nil, detail: String? = nil, by user: String?) async throws -> Bool {
        let value = try KilnJSON.encode(try stored(plaintext, at: key, protectedOnly: protectedOnly, file: file, detail: detail, by: user))
        return try await etcd.txn(Txn(compare: [.createRevision(key, .equal, 0)], success: [.put(key, value)], failure: [.put(key, value)])).succeeded
    }

    func decode(_ kv: KeyValue) throws -> StoredSecret {
        do { return try KilnJSON.decode(StoredSecret.self, from: kv.value) } catch {
            throw KilnError.internalError("\(kv.key) does not hold a sealed secret: remove it (etcdctl del \(kv.key)) and set the secret again")
        }
    }

    func openString(_ stored: StoredSecret, at key: String) throws -> String {
        try keyring.openString(stored.sealed, boundTo: key)
    }

    func openString(at key: String) async throws -> String? {
        guard let kv = try await etcd.get(key) else { return nil }
        return try openString(try decode(kv), at: key)
    }

    func open<T: Decodable>(_ type: T.Type, at key: String) async throws -> T? {
        guard let kv = try await etcd.get(key) else { return nil }
        let plaintext = try keyring.open(try decode(kv).sealed, boundTo: key)
        do { return try KilnJSON.decoder().decode(type, from: plaintext) } catch {
            throw KilnError.internalError("the secret at \(key) opened but is not a \(type): set it again")
        }
    }

    static func check(_ scope: SecretScope) throws {
        switch scope {
        case .project(let p): try Validation.projectName(p)
        case .group(let g): try Validation.projectName(g, what: "group name")
        }
    }
}
