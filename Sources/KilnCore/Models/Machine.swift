import Foundation

/// A machine that may ask the registry's token service (the scheduler's `GET /auth/token`)
/// for tokens, at `/kiln/machines/{name}`. Written by `kiln up` or `kiln machine add`; read by
/// the schedulers only.
///
/// The machine keeps its token in a file of mode 0600 as `name:token` (`--registry-credentials`)
/// and sends it as HTTP Basic; etcd holds only the token's SHA-256, so reading etcd does not
/// give a token away. What a machine gets is decided by its kind (see `Kind`).
public struct MachineCredential: Codable, Sendable, Equatable {
    /// What a machine may do in the registry.
    public enum Kind: String, Codable, Sendable, CaseIterable {
        /// A builder: push and pull only the repositories of the builds assigned to it now
        /// (the projects of its tasks under `/kiln/tasks/{name}/`); its name is its agent id.
        case agent
        /// A deploy backend (the scheduler's cells, a Kubernetes namespace's pull secret):
        /// pull any repository, push none.
        case deployer
    }

    public var name: String
    public var kind: Kind
    /// The token's SHA-256, lower-case hex.
    public var tokenSHA256: String
    public var createdAt: Date

    public init(name: String, kind: Kind, tokenSHA256: String, createdAt: Date = Date()) {
        self.name = name
        self.kind = kind
        self.tokenSHA256 = tokenSHA256
        self.createdAt = createdAt
    }

    /// The one user name no machine may take: it is the registry's administrator.
    public static let adminUser = "admin"

    /// A machine's name: an agent id's rules (letters, digits, `.`, `_`, `-`), and not `admin`.
    public static func validateName(_ name: String) throws {
        try Validation.agentID(name)
        if name == adminUser { throw KilnError.invalid("'\(adminUser)' is the registry's administrator, not a machine: choose another name") }
    }
}
