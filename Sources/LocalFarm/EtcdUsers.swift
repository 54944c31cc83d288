import Etcd
import Foundation
import KilnCore

/// etcd's users for a farm: the root user, and one user with a least-privilege role per
/// process (``EtcdAccess``), each with a credential file of mode 0600 in `credentialsDir`
/// (`etcd-root` as `root:PASSWORD`, the form `etcdctl --user` takes; `etcd-scheduler`,
/// `etcd-agent.ID`, `etcd-lb.GROUP.ID` as `USER:PASSWORD`).
///
/// Idempotent from one start to the next: a credential file that exists is the truth (its
/// user is added, or set to its password, and given its role); a missing one is made with a
/// random password. Roles are set to exactly their grants. Used by `kiln up`, the test farms
/// and `kiln etcd-auth setup`.
public struct EtcdUsers: Sendable {
    public let endpoint: String
    public let credentialsDir: URL
    public let keys: Keys
    public let slb: SLBKeys
    public let tls: EtcdTLS?
    /// Root's credentials, from `etcd-root` (or `rootCredentialFile`).
    public let root: EtcdCredentials
    /// A client that authenticates as root.
    public let rootClient: EtcdClient

    /// Makes sure user `root` (role `root`) exists with the password of the root credential
    /// file (made if missing, at `rootCredentialFile` or else `credentialsDir/etcd-root`),
    /// then turns authentication on. Throws with what to do when etcd has authentication on
    /// already and refuses that password.
    public static func enable(
        endpoint: String, credentialsDir: URL, rootCredentialFile: URL? = nil, keys: Keys = Keys(), slb: SLBKeys = SLBKeys(), tls: EtcdTLS? = nil
    ) async throws -> EtcdUsers {
        let rootFile = rootCredentialFile ?? credentialsDir.appendingPathComponent(EtcdAccess.rootCredentialFileName)
        let text = try CredentialFile.readOrCreate(rootFile.path) { "\(EtcdAccess.rootUser):\(Secret.random())" }
        guard let pair = UserPassword(text) else {
            throw KilnError.invalid("the credential file \(rootFile.path) does not hold user:password")
        }
        let root = EtcdCredentials(user: pair.user, password: pair.password)
        let client = EtcdClient(endpoint: endpoint, credentials: root, tls: tls)
        do {
            try await ensureUser(client, root, roles: ["root"])
            try await client.enableAuthentication()
        } catch let error as EtcdError where error == .unauthenticated {
            throw KilnError.invalid("""
                etcd at \(endpoint) has authentication on and refuses the root credential in \(rootFile.path) \
                (\(error.message)): put etcd's root user:password in that file (mode 0600), or start from an \
                empty etcd data folder
                """)
        }
        return EtcdUsers(endpoint: endpoint, credentialsDir: credentialsDir, keys: keys, slb: slb, tls: tls, root: root, rootClient: client)
    }

    /// The credential file of `access`'s user; the user and its role are made or brought up
    /// to date first.
    @discardableResult
    public func ensure(_ access: EtcdAccess) async throws -> URL {
        try access.validate()
        let file = credentialFile(access)
        let text = try CredentialFile.readOrCreate(file.path) { "\(access.user):\(Secret.random())" }
        guard let pair = UserPassword(text), pair.user == access.user else {
            throw KilnError.invalid("the credential file \(file.path) should hold \(access.user):PASSWORD; remove it to have a new one made")
        }
        try await rootClient.ensureRole(access.user, permissions: Self.permissions(access, keys: keys, slb: slb))
        try await Self.ensureUser(rootClient, EtcdCredentials(user: pair.user, password: pair.password), roles: [access.user])
        return file
    }

    /// Where `access`'s credential file is (whether or not it exists yet).
    public func credentialFile(_ access: EtcdAccess) -> URL {
        credentialsDir.appendingPathComponent(access.credentialFileName)
    }

    /// `access`'s credentials, read from its file (made by ``ensure(_:)``).
    public func credentials(_ access: EtcdAccess) throws -> EtcdCredentials {
        let pair = try UserPassword.read(credentialFile(access).path)
        return EtcdCredentials(user: pair.user, password: pair.password)
    }

    /// A client that authenticates as `access`'s user (made or updated first).
    public func client(_ access: EtcdAccess) async throws -> EtcdClient {
        try await ensure(access)
        return EtcdClient(endpoint: endpoint, credentials: try credentials(access), tls: tls)
    }

    /// `access`'s grants in etcd's terms.
    public static func permissions(_ access: EtcdAccess, keys: Keys, slb: SLBKeys) -> [EtcdPermission] {
        access.grants(keys: keys, slb: slb).map { grant in
            let kind: EtcdPermission.Kind = switch grant.access {
            case .read: .read
            case .write: .write
            case .readWrite: .readWrite
            }
            return grant.prefix ? .prefix(grant.key, kind) : EtcdPermission(kind, key: grant.key)
        }
    }

    /// Adds the user or, if it exists and does not accept the password, sets it; then grants
    /// the roles it lacks. A password that works is left alone: changing it would make every
    /// token etcd gave out older than its auth store.
    static func ensureUser(_ client: EtcdClient, _ credentials: EtcdCredentials, roles: [String]) async throws {
        if !(try await client.addUser(credentials.user, password: credentials.password)) {
            let probe = EtcdClient(endpoints: client.endpoints, httpClient: client.httpClient, credentials: credentials)
            if (try? await probe.authenticates()) != true {
                try await client.changePassword(user: credentials.user, password: credentials.password)
            }
        }
        let held = try await client.roles(ofUser: credentials.user) ?? []
        for role in roles where !held.contains(role) { try await client.grantRole(role, toUser: credentials.user) }
    }
}
