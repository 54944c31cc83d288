import Etcd
import Foundation
import Hummingbird
import KilnCore
import Logging
import NIOCore
import RegistryAuth

/// The registry's token service (Docker's token specification): `GET /auth/token`, which
/// the registry names as its `auth.token.realm`. Clients (podman, docker, kubelet) come here
/// with HTTP Basic credentials and the scopes they need, and get a short-lived ES256 token
/// the registry checks against the certificate of `signingKey`.
///
/// Callers are users with one of their API tokens (what `podman login -u NAME` sends), the
/// machines in `/kiln/machines/` (the SHA-256 of each token and its kind), and anyone without
/// credentials (public groups' images only); what each gets is `RegistryAccessPolicy`'s
/// decision from their roles (docs/roles.md). Unknown users and wrong tokens get 401; a token
/// is never logged, only who asked and what was granted.
public struct RegistryTokenService: Sendable {
    /// Settings of the token service; `kiln scheduler --registry-signing-key …`.
    public struct Configuration: Sendable {
        public var signingKey: TokenSigningKey
        /// The JWT's `iss`: the registry's `auth.token.issuer`.
        public var issuer: String
        /// The JWT's `aud`: the registry's `auth.token.service`.
        public var service: String
        /// Seconds a token lives (`expires_in`); Distribution allows 60 s of skew beyond it.
        public var lifetime: Int

        public init(signingKey: TokenSigningKey, issuer: String = "kiln", service: String = "kiln-registry", lifetime: Int = 300) {
            self.signingKey = signingKey
            self.issuer = issuer
            self.service = service
            self.lifetime = lifetime
        }
    }

    let configuration: Configuration
    let store: SchedulerStore
    let logger: Logger

    public init(configuration: Configuration, store: SchedulerStore, logger: Logger) {
        self.configuration = configuration
        self.store = store
        self.logger = logger
    }

    /// The answer of a token request.
    struct TokenAnswer: Encodable {
        var token: String
        var access_token: String
        var expires_in: Int
        var issued_at: String
    }

    func addRoutes(to router: Router<KilnRequestContext>) {
        router.get("auth/token") { request, _ in try await handle(request) }
    }

    func handle(_ request: Request) async throws -> Response {
        let query = request.uri.queryParameters
        let credentials = BasicAuthorization.parse(request.headers[.authorization])
        if request.headers[.authorization] != nil, credentials == nil {
            return unauthorized("the token service takes HTTP Basic credentials: your user name and an API token (kiln token create), or a machine's name:token")
        }
        if let service = query["service"].map(String.init), service != configuration.service {
            throw KilnError.invalid("this token service signs for service '\(configuration.service)', not '\(Validation.printable(service))': set the registry's auth.token.service to it")
        }
        if let account = query["account"].map(String.init), !account.isEmpty, account != credentials?.user {
            throw KilnError.invalid("the account '\(Validation.printable(account))' is not the user of the credentials")
        }
        let requested: [ResourceAccess]
        switch ResourceAccess.parse(scopes: query.getAll("scope")) {
        case .success(let scopes): requested = scopes
        case .failure(let error): throw KilnError.invalid(error.message)
        }
        let caller: RegistryCaller
        if let credentials {
            guard let known = try await authenticate(credentials, requested: requested) else {
                // Only a name that could be an account: a token pasted into the user field stays out of the log.
                let named = (try? Validation.userName(credentials.user)) != nil
                logger.notice("registry token refused: wrong credentials", metadata: ["account": "\(named ? credentials.user : "(not an account name)")"])
                return unauthorized("wrong user or token")
            }
            caller = known
        } else {
            caller = .anonymous(rights: try await rights(of: nil, on: requested))
        }
        let granted = RegistryAccessPolicy.grant(requested, to: caller)
        if case .anonymous = caller, granted.isEmpty {
            // Nothing public was asked for: ask the client for credentials (podman and docker
            // then send the ones `podman login` stored).
            return unauthorized("log in: your user name and an API token (kiln token create); only public groups' images pull without one")
        }
        let now = Date()
        let claims = RegistryTokenClaims(issuer: configuration.issuer, subject: caller.account, audience: configuration.service,
                                         access: granted, issuedAt: now, lifetime: configuration.lifetime, id: Secret.random(bytes: 16))
        let token = try RegistryToken.sign(claims, with: configuration.signingKey)
        let refused = requested.map(\.description).filter { scope in !granted.contains { scope.hasPrefix("\($0.type):\($0.name):") } }
        logger.info("registry token", metadata: [
            "account": "\(caller.account)", "granted": "\(granted.map(\.description).joined(separator: " "))",
            "refused": "\(refused.joined(separator: " "))",
        ])
        return json(TokenAnswer(token: token, access_token: token, expires_in: configuration.lifetime, issued_at: KilnJSON.formatDate(now)))
    }

    /// The caller these credentials belong to, or nil when they belong to nobody: a machine
    /// (name and token in `/kiln/machines/`), else a user with one of their API tokens
    /// (passwords are not taken here: a token can be revoked alone and expires).
    func authenticate(_ credentials: UserPassword, requested: [ResourceAccess]) async throws -> RegistryCaller? {
        if let machine = try await machine(credentials) { return machine }
        guard let caller = try await Authenticator(store: store, logger: logger).tokenCaller(credentials.password),
              caller.user == credentials.user else { return nil }
        if caller.admin { return .admin(caller.user) }
        return .user(caller.user, rights: try await rights(of: caller, on: requested))
    }

    func machine(_ credentials: UserPassword) async throws -> RegistryCaller? {
        guard let machine = try await store.machine(credentials) else { return nil }
        switch machine.kind {
        case .deployer:
            return .deployer(machine.name)
        case .agent:
            // A task counts only with the grant the dispatcher wrote beside it, naming the same
            // repository (the project's name and group as they were at assignment): the agent
            // can write its own task keys, not the grants, so the grant's value is what counts.
            let tasks = try await store.etcd.range(prefix: store.keys.tasks(of: machine.name)).kvs
            let grants = try await store.etcd.range(prefix: store.keys.grants(of: machine.name)).kvs
            var granted: [String: String] = [:]
            for kv in grants { if let build = Keys.name(of: kv.key, under: store.keys.grants(of: machine.name)) { granted[build] = BuildGrant(value: kv.string).repository } }
            let repositories = Set(tasks.compactMap { kv -> String? in
                guard let task = try? KilnJSON.decode(BuildTask.self, from: kv.value), let repository = granted[task.build],
                      repository == task.project.repositoryName else { return nil }
                return repository
            })
            return .agent(machine.name, repositories: repositories)
        }
    }

    /// A caller's rights (nil: anonymous) on each repository asked for. A repository is a
    /// project's (`NAME`, or `GROUP/NAME` for a project in that group) or a group's
    /// (`GROUP/…`); the role is the caller's on the project, with the group's inherited.
    func rights(of caller: Caller?, on requested: [ResourceAccess]) async throws -> [String: RepositoryRights] {
        let access = Access(store: store)
        var out: [String: RepositoryRights] = [:]
        for name in Set(requested.filter { $0.type == "repository" }.map(\.name)) {
            let parts = name.split(separator: "/", maxSplits: 1).map(String.init)
            let groupName = parts.count == 2 ? parts[0] : nil
            let projectName = parts.count == 2 ? parts[1] : parts[0]
            var group: Group?
            if let groupName { group = try await notFoundAsNil { try await store.group(groupName) } }
            var role: Role?
            if let caller {
                if let project = try await notFoundAsNil({ try await store.project(projectName) }), project.repositoryName == name {
                    role = try await access.role(caller, on: .project, project.name, project: project)
                } else if let group {
                    role = try await access.role(caller, on: .group, group.name)
                }
            }
            out[name] = RepositoryRights(role: role, isPublic: group?.visibility == .public)
        }
        return out
    }
    func unauthorized(_ message: String) -> Response {
        var response = errorResponse(401, message)
        response.headers[.wwwAuthenticate] = "Basic realm=\"kiln registry token service\""
        return response
    }
}
