import Foundation

/// A person (or a script's account) who logs in to Kiln: `/kiln/users/{name}`.
///
/// The password is kept only as a slow hash (``passwordHash``, scrypt: the Scheduler's
/// `PasswordHasher`); API tokens are separate records (``APIToken``). A user with no password
/// logs in only with tokens (the first admin made by a scheduler, accounts for scripts). The
/// seam for an external identity provider is ``source``: a user made by one would carry
/// its name there and no password.
public struct User: Codable, Sendable, Equatable {
    public var name: String
    public var admin: Bool
    /// `scrypt$N$r$p$SALT$HASH` (base64), or nil: no password login.
    public var passwordHash: String?
    /// Where the user comes from: nil for a local user. Reserved for GitLab OAuth, OIDC or
    /// LDAP, none of which exists yet.
    public var source: String?
    public var createdAt: Date
    public var createdBy: String?

    public init(name: String, admin: Bool = false, passwordHash: String? = nil, createdAt: Date = Date(), createdBy: String? = nil) {
        self.name = name
        self.admin = admin
        self.passwordHash = passwordHash
        self.createdAt = createdAt
        self.createdBy = createdBy
    }

    /// What the API shows of a user: never the hash.
    public var view: UserView { UserView(name: name, admin: admin, createdAt: createdAt, hasPassword: passwordHash != nil) }
}

/// A user as the API answers with it.
public struct UserView: Codable, Sendable, Equatable {
    public var name: String
    public var admin: Bool
    public var createdAt: Date
    public var hasPassword: Bool
}

/// The body of `POST /api/v1/users`.
public struct NewUser: Codable, Sendable {
    public var name: String
    public var password: String?
    public var admin: Bool?
    public init(name: String, password: String?, admin: Bool? = nil) {
        self.name = name
        self.password = password
        self.admin = admin
    }
}

/// A personal API token: `/kiln/tokens/{sha256 of the token, hex}`.
///
/// The token itself is shown once, when it is made, and kept nowhere: the key is its SHA-256,
/// so a lookup needs no comparison of secrets and a stolen etcd copy holds no usable token.
/// Tokens are 256 random bits, so a fast hash is enough (a password needs a slow one).
public struct APIToken: Codable, Sendable, Equatable {
    /// Short public id (the first 16 hex digits of the hash): what list and revoke name.
    public var id: String
    public var user: String
    public var name: String
    public var createdAt: Date
    /// nil: never expires.
    public var expiresAt: Date?
    /// Set by revocation; a revoked token is kept a while so listings can say so.
    public var revokedAt: Date?

    public init(id: String, user: String, name: String, createdAt: Date = Date(), expiresAt: Date? = nil) {
        self.id = id
        self.user = user
        self.name = name
        self.createdAt = createdAt
        self.expiresAt = expiresAt
    }

    public func isValid(at now: Date) -> Bool {
        revokedAt == nil && (expiresAt.map { now < $0 } ?? true)
    }
}

/// The body of `POST /api/v1/tokens`.
public struct NewToken: Codable, Sendable {
    public var name: String
    /// 1 to 3650; nil: 90 days.
    public var expiresInDays: Int?
    public init(name: String, expiresInDays: Int? = nil) {
        self.name = name
        self.expiresInDays = expiresInDays
    }
}

/// The answer to `POST /api/v1/tokens`: the only time the token is shown.
public struct CreatedToken: Codable, Sendable {
    public var id: String
    public var token: String
    public var name: String
    public var expiresAt: Date?
    public init(id: String, token: String, name: String, expiresAt: Date?) {
        self.id = id
        self.token = token
        self.name = name
        self.expiresAt = expiresAt
    }
}

extension Validation {
    /// User names: like project names (`[a-z0-9-]`, 1 to 63), and never one of the names
    /// the registry's token service keeps for machines.
    public static func userName(_ name: String) throws {
        try projectName(name, what: "user name")
    }

    /// Passwords: 12 to 1024 bytes (a long passphrase is fine; a short one is refused).
    public static func password(_ password: String) throws {
        guard password.utf8.count >= 12 else { throw KilnError.invalid("the password is shorter than 12 characters: use a longer one (a passphrase is fine)") }
        guard password.utf8.count <= 1024 else { throw KilnError.invalid("the password is longer than 1024 bytes") }
    }
}
