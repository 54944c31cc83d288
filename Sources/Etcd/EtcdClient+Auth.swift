import NIOCore

/// One permission of an etcd role: read, write or both on one key (`rangeEnd` nil) or on
/// the keys in [key, rangeEnd) (``prefix(_:_:)`` for every key that starts with a prefix).
public struct EtcdPermission: Sendable, Hashable, CustomStringConvertible {
    public enum Kind: String, Sendable, Hashable {
        case read = "READ"
        case write = "WRITE"
        case readWrite = "READWRITE"
    }

    public var kind: Kind
    public var key: String
    public var rangeEnd: String?

    public init(_ kind: Kind, key: String, rangeEnd: String? = nil) {
        self.kind = kind
        self.key = key
        self.rangeEnd = rangeEnd
    }

    /// Every key that starts with `prefix`.
    public static func prefix(_ prefix: String, _ kind: Kind) -> EtcdPermission {
        EtcdPermission(kind, key: prefix, rangeEnd: String(decoding: Wire.prefixEnd(Array(prefix.utf8)), as: UTF8.self))
    }

    /// Whether this permission is over a prefix rather than one key.
    public var isPrefix: Bool {
        rangeEnd.map { Array($0.utf8) == Wire.prefixEnd(Array(key.utf8)) } ?? false
    }

    /// As `etcdctl role grant-permission` takes it (without the role name).
    public var etcdctlArguments: String {
        let kind = self.kind == .readWrite ? "readwrite" : self.kind.rawValue.lowercased()
        if rangeEnd == nil { return "\(kind) \(key)" }
        if isPrefix { return "\(kind) \(key) --prefix=true" }
        return "\(kind) \(key) \(rangeEnd!)"
    }

    public var description: String { etcdctlArguments }

    /// What to change to turn a role's `current` permissions into `wanted`: ranges that are
    /// not wanted at all are revoked; wanted ones that are missing or of another kind are
    /// granted (etcd replaces the kind of a range granted again).
    public static func changes(from current: [EtcdPermission], to wanted: [EtcdPermission]) -> (grant: [EtcdPermission], revoke: [EtcdPermission]) {
        let wantedRanges = Set(wanted.map { [$0.key, $0.rangeEnd ?? ""] })
        let revoke = current.filter { !wantedRanges.contains([$0.key, $0.rangeEnd ?? ""]) }
        let have = Set(current)
        var grant: [EtcdPermission] = []
        for p in wanted where !have.contains(p) && !grant.contains(p) { grant.append(p) }
        return (grant, revoke)
    }
}

extension EtcdClient {
    /// Asks etcd for a token for `credentials` (`POST /v3/auth/authenticate`). Returns `""`
    /// when etcd has authentication off (then no token is needed). Throws `.unauthenticated`
    /// when etcd refuses the user or password.
    func authenticate(_ credentials: EtcdCredentials) async throws -> String {
        if let configurationError { throw configurationError }
        // Repeating it on another member is harmless: a second token, the first unused.
        let (status, bytes, endpoint) = try await send("/v3/auth/authenticate", Wire.AuthenticateRequest(name: credentials.user, password: credentials.password),
                                                       token: nil, idempotent: true)
        if status == 200, let answer = try? Wire.decoder().decode(Wire.AuthenticateResponse.self, from: bytes), let token = answer.token {
            logger.debug("authenticated")
            return token
        }
        let decoded = try? Wire.decoder().decode(Wire.ErrorBody.self, from: bytes)
        let message = Self.errorMessage(bytes)
        if message.contains("authentication is not enabled") {
            logger.notice("etcd has authentication off: the credentials of '\(credentials.user)' are not needed (turn it on: docs/etcd-auth.md)")
            return ""
        }
        if message.contains("authentication failed") {
            throw EtcdError.unauthenticated(endpoint, "etcd refused user '\(credentials.user)' or its password (\(message)): check the file given with --etcd-credentials", httpStatus: Int(status), grpcCode: decoded?.code)
        }
        throw EtcdError.gateway(endpoint, path: "/v3/auth/authenticate", httpStatus: Int(status), grpcCode: decoded?.code, message: message)
    }

    // MARK: users and roles (root only, or anyone while authentication is off)

    /// Adds the user; false if it exists already (its password is left alone).
    @discardableResult
    public func addUser(_ name: String, password: String) async throws -> Bool {
        try await ignoringExists { _ = try await call("/v3/auth/user/add", Wire.UserAddRequest(name: name, password: password), as: Wire.HeaderOnly.self, access: "add users") }
    }

    public func changePassword(user: String, password: String) async throws {
        _ = try await call("/v3/auth/user/changepw", Wire.UserAddRequest(name: user, password: password), as: Wire.HeaderOnly.self, access: "change passwords")
    }

    /// The user's roles, or nil if there is no such user.
    public func roles(ofUser name: String) async throws -> [String]? {
        do {
            return try await call("/v3/auth/user/get", Wire.NameRequest(name: name), as: Wire.UserGetResponse.self, access: "read users").roles ?? []
        } catch let error as EtcdError where error.message.contains("user name not found") {
            return nil
        }
    }

    public func grantRole(_ role: String, toUser user: String) async throws {
        _ = try await call("/v3/auth/user/grant", Wire.UserGrantRequest(user: user, role: role), as: Wire.HeaderOnly.self, access: "grant roles")
    }

    /// Adds the role; false if it exists already.
    @discardableResult
    public func addRole(_ name: String) async throws -> Bool {
        try await ignoringExists { _ = try await call("/v3/auth/role/add", Wire.NameRequest(name: name), as: Wire.HeaderOnly.self, access: "add roles") }
    }

    /// The role's permissions, or nil if there is no such role.
    public func permissions(ofRole role: String) async throws -> [EtcdPermission]? {
        do {
            let answer = try await call("/v3/auth/role/get", Wire.RoleRequest(role: role), as: Wire.RoleGetResponse.self, access: "read roles")
            return (answer.perm ?? []).compactMap { $0.permission }
        } catch let error as EtcdError where error.message.contains("role name not found") {
            return nil
        }
    }

    public func grant(_ permission: EtcdPermission, toRole role: String) async throws {
        let perm = Wire.Permission(permType: permission.kind.rawValue, key: Wire.base64(permission.key), rangeEnd: permission.rangeEnd.map(Wire.base64))
        _ = try await call("/v3/auth/role/grant", Wire.RoleGrantRequest(name: role, perm: perm), as: Wire.HeaderOnly.self, access: "grant permissions")
    }

    public func revoke(_ permission: EtcdPermission, fromRole role: String) async throws {
        let request = Wire.RoleRevokeRequest(role: role, key: Wire.base64(permission.key), rangeEnd: permission.rangeEnd.map(Wire.base64))
        _ = try await call("/v3/auth/role/revoke", request, as: Wire.HeaderOnly.self, access: "revoke permissions")
    }

    /// Makes `role` exist with exactly `permissions`: adds it if missing, grants what is
    /// missing, revokes what is no longer wanted. Idempotent.
    public func ensureRole(_ role: String, permissions wanted: [EtcdPermission]) async throws {
        try await addRole(role)
        let current = try await permissions(ofRole: role) ?? []
        let (grant, revoke) = EtcdPermission.changes(from: current, to: wanted)
        for p in revoke { try await self.revoke(p, fromRole: role) }
        for p in grant { try await self.grant(p, toRole: role) }
    }

    /// Whether etcd has authentication on and accepts this client's credentials (a fresh
    /// authentication, not the shared token). False for an anonymous client.
    public func authenticates() async throws -> Bool {
        guard let session else { return false }
        do {
            return try await !authenticate(session.credentials).isEmpty
        } catch let error as EtcdError where error == .unauthenticated {
            return false
        }
    }

    /// Turns authentication on (a no-op if it is on). etcd refuses unless user `root` exists
    /// with the role `root`.
    public func enableAuthentication() async throws {
        _ = try await call("/v3/auth/enable", Wire.Empty(), as: Wire.HeaderOnly.self, access: "turn authentication on")
    }

    private func ignoringExists(_ body: () async throws -> Void) async throws -> Bool {
        do {
            try await body()
            return true
        } catch let error as EtcdError where error.message.contains("already exists") {
            return false
        }
    }
}

extension Wire {
    struct AuthenticateRequest: Encodable { var name: String; var password: String }
    struct AuthenticateResponse: Decodable { var token: String? }
    struct UserAddRequest: Encodable { var name: String; var password: String }
    struct NameRequest: Encodable { var name: String }
    struct RoleRequest: Encodable { var role: String }
    struct UserGrantRequest: Encodable { var user: String; var role: String }
    struct UserGetResponse: Decodable { var roles: [String]? }
    struct RoleGetResponse: Decodable { var perm: [Permission]? }
    struct RoleGrantRequest: Encodable { var name: String; var perm: Permission }

    struct RoleRevokeRequest: Encodable {
        var role: String
        var key: String
        var rangeEnd: String?
        enum CodingKeys: String, CodingKey { case role, key, rangeEnd = "range_end" }
    }

    struct Permission: Codable {
        /// Left out for READ, the zero of the enum.
        var permType: String?
        var key: String?
        var rangeEnd: String?
        enum CodingKeys: String, CodingKey { case permType, key, rangeEnd = "range_end" }

        init(permType: String, key: String, rangeEnd: String?) {
            self.permType = permType
            self.key = key
            self.rangeEnd = rangeEnd
        }

        init(from decoder: any Decoder) throws {
            // The decoder converts snake case: "range_end" arrives as "rangeEnd".
            let c = try decoder.container(keyedBy: AnyKey.self)
            permType = try c.decodeIfPresent(String.self, forKey: "permType")
            key = try c.decodeIfPresent(String.self, forKey: "key")
            rangeEnd = try c.decodeIfPresent(String.self, forKey: "rangeEnd")
        }

        var permission: EtcdPermission? {
            guard let key, let keyBytes = Wire.bytes(base64: key),
                  let kind = EtcdPermission.Kind(rawValue: permType ?? "READ") else { return nil }
            let end = rangeEnd.flatMap { Wire.bytes(base64: $0) }.map { String(decoding: $0, as: UTF8.self) }
            return EtcdPermission(kind, key: String(decoding: keyBytes, as: UTF8.self), rangeEnd: end)
        }
    }
}
