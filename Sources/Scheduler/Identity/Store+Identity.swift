import Crypto
import Etcd
import Foundation
import KilnCore

/// Users, API tokens and members in etcd (docs/roles.md).
extension SchedulerStore {
    // MARK: users

    public func user(_ name: String) async throws -> User? {
        guard (try? Validation.userName(name)) != nil, let kv = try await etcd.get(keys.user(name)) else { return nil }
        return try? KilnJSON.decode(User.self, from: kv.value)
    }

    public func users() async throws -> [User] {
        try await etcd.range(prefix: keys.users).kvs.compactMap { try? KilnJSON.decode(User.self, from: $0.value) }.sorted { $0.name < $1.name }
    }

    /// Creates a user; 409 if the name is taken. The password is hashed here.
    public func createUser(_ request: NewUser, by creator: String?) async throws -> User {
        try Validation.userName(request.name)
        if let password = request.password { try Validation.password(password) }
        let user = User(name: request.name, admin: request.admin ?? false,
                        passwordHash: try request.password.map(PasswordHasher.hash), createdBy: creator)
        let key = keys.user(user.name)
        let r = try await etcd.txn(Txn(compare: [.createRevision(key, .equal, 0)], success: [.put(key, try KilnJSON.encode(user))]))
        guard r.succeeded else { throw KilnError.conflict("user '\(user.name)' exists already") }
        return user
    }

    // MARK: tokens

    /// Makes a token for `user`: 256 random bits with a `kiln_` prefix (so a secret scanner
    /// can find one pasted where it should not be). Returns the token, shown this once.
    public func createToken(for user: String, name: String, expiresInDays: Int?, notAfter: Date? = nil) async throws -> CreatedToken {
        guard !name.isEmpty, name.utf8.count <= 100, !name.utf8.contains(where: { $0 < 0x20 || $0 == 0x7f }) else {
            throw KilnError.invalid("a token's name must be 1 to 100 printable characters, for example \"laptop\"")
        }
        let days = expiresInDays ?? 90
        guard (1...3650).contains(days) else { throw KilnError.invalid("expiresInDays \(days) is out of range: use 1 to 3650") }
        let token = "kiln_" + Secret.random()
        let expiry = Date().addingTimeInterval(Double(days) * 86_400)
        return try await storeToken(token, for: user, name: name, expiresAt: notAfter.map { min($0, expiry) } ?? expiry)
    }

    /// Records `token` (made elsewhere: the first admin's, from its file) for `user`.
    func storeToken(_ token: String, for user: String, name: String, expiresAt: Date?) async throws -> CreatedToken {
        let hash = SHA256.hex(token)
        let record = APIToken(id: String(hash.prefix(16)), user: user, name: name, expiresAt: expiresAt)
        let key = keys.token(hash: hash)
        let r = try await etcd.txn(Txn(compare: [.createRevision(key, .equal, 0), .version(keys.user(user), .greater, 0)],
                                       success: [.put(key, try KilnJSON.encode(record))]))
        guard r.succeeded else { throw KilnError.conflict("the token could not be recorded (its user is gone, or it exists already)") }
        return CreatedToken(id: record.id, token: token, name: name, expiresAt: expiresAt)
    }

    /// The record of `token`, if it exists (valid or not).
    func tokenRecord(_ token: String) async throws -> APIToken? {
        guard token.utf8.count <= 256, let kv = try await etcd.get(keys.token(hash: SHA256.hex(token))) else { return nil }
        return try? KilnJSON.decode(APIToken.self, from: kv.value)
    }

    /// A user's tokens, newest first.
    public func tokens(of user: String) async throws -> [APIToken] {
        try await etcd.range(prefix: keys.tokens).kvs.compactMap { try? KilnJSON.decode(APIToken.self, from: $0.value) }
            .filter { $0.user == user }.sorted { $0.createdAt > $1.createdAt }
    }

    /// Revokes `user`'s token `id`; 404 if they have none by that id.
    public func revokeToken(id: String, of user: String) async throws -> APIToken {
        for kv in try await etcd.range(prefix: keys.tokens).kvs {
            guard var record = try? KilnJSON.decode(APIToken.self, from: kv.value), record.id == id, record.user == user else { continue }
            if record.revokedAt == nil { record.revokedAt = Date() }
            let r = try await etcd.txn(Txn(compare: [.modRevision(kv.key, .equal, kv.modRevision)], success: [.put(kv.key, try KilnJSON.encode(record))]))
            guard r.succeeded else { throw KilnError.conflict("token \(id) changed meanwhile; try again") }
            return record
        }
        throw KilnError.notFound("you have no token '\(Validation.printable(id))': `kiln token list` shows yours")
    }

    /// Removes a user: their tokens and memberships first, then the user. Refused (409) while
    /// they are the last owner of anything: an admin gives it another owner first.
    public func deleteUser(_ name: String) async throws {
        guard try await user(name) != nil else { throw KilnError.notFound("user '\(Validation.printable(name))' does not exist") }
        let all = try await allMembers()
        var lastOwnerOf: [String] = []
        for (kind, resources) in all {
            for (resource, members) in resources where members.owners == [name] { lastOwnerOf.append("\(kind.rawValue) \(resource)") }
        }
        guard lastOwnerOf.isEmpty else {
            throw KilnError.conflict("'\(name)' is the last owner of \(lastOwnerOf.sorted().joined(separator: ", ")): make someone else owner first")
        }
        for (kind, resources) in all {
            for (resource, members) in resources where members.users[name] != nil {
                try await updateMembers(kind, resource) { $0.users[name] = nil }
            }
        }
        try await revokeTokens(of: name)
        _ = try await etcd.delete(keys.user(name))
    }

    /// Revokes every token of `user`; returns how many.
    @discardableResult
    public func revokeTokens(of user: String) async throws -> Int {
        var count = 0
        for kv in try await etcd.range(prefix: keys.tokens).kvs {
            guard var record = try? KilnJSON.decode(APIToken.self, from: kv.value), record.user == user, record.revokedAt == nil else { continue }
            record.revokedAt = Date()
            let r = try await etcd.txn(Txn(compare: [.modRevision(kv.key, .equal, kv.modRevision)], success: [.put(kv.key, try KilnJSON.encode(record))]))
            if r.succeeded { count += 1 }
        }
        return count
    }

    /// Sets a user's password (hashed here).
    public func setPassword(of name: String, to password: String) async throws {
        try Validation.password(password)
        let key = keys.user(name)
        for _ in 0..<5 {
            guard let kv = try await etcd.get(key), var user = try? KilnJSON.decode(User.self, from: kv.value) else {
                throw KilnError.notFound("user '\(Validation.printable(name))' does not exist")
            }
            user.passwordHash = try PasswordHasher.hash(password)
            let r = try await etcd.txn(Txn(compare: [.modRevision(key, .equal, kv.modRevision)], success: [.put(key, try KilnJSON.encode(user))]))
            if r.succeeded { return }
        }
        throw KilnError.unavailable("user '\(name)' kept changing; try again")
    }

    // MARK: members

    public func members(_ kind: ResourceKind, _ name: String) async throws -> (members: Members, modRevision: Int64) {
        guard let kv = try await etcd.get(keys.members(kind, name)) else { return (Members(), 0) }
        return ((try? KilnJSON.decode(Members.self, from: kv.value)) ?? Members(), kv.modRevision)
    }

    /// Every resource's members, for listings and role lookups of one request.
    func allMembers() async throws -> [ResourceKind: [String: Members]] {
        var out: [ResourceKind: [String: Members]] = [:]
        for kv in try await etcd.range(prefix: keys.members).kvs {
            guard let rest = Keys.name(of: kv.key, under: keys.members) else { continue }
            let parts = rest.split(separator: "/", maxSplits: 1).map(String.init)
            guard parts.count == 2, let kind = ResourceKind(plural: parts[0]),
                  let members = try? KilnJSON.decode(Members.self, from: kv.value) else { continue }
            out[kind, default: [:]][parts[1]] = members
        }
        return out
    }

    /// Changes a resource's members with `change`, guarded by the revision read (tried again
    /// if another change came between).
    @discardableResult
    func updateMembers(_ kind: ResourceKind, _ name: String, _ change: (inout Members) throws -> Void) async throws -> Members {
        let key = keys.members(kind, name)
        for _ in 0..<10 {
            var (members, revision) = try await members(kind, name)
            try change(&members)
            let r = try await etcd.txn(Txn(compare: [.modRevision(key, .equal, revision)], success: [.put(key, try KilnJSON.encode(members))]))
            if r.succeeded { return members }
        }
        throw KilnError.unavailable("the members of \(kind.rawValue) '\(name)' kept changing; try again")
    }
}

/// Groups, and the first admin.
extension SchedulerStore {
    public func group(_ name: String) async throws -> Group {
        try Validation.projectName(name, what: "group name")
        guard let kv = try await etcd.get(keys.group(name)) else {
            throw KilnError.notFound("group '\(name)' does not exist: make it with POST /api/v1/groups")
        }
        return try KilnJSON.decode(Group.self, from: kv.value)
    }

    public func groups() async throws -> [Group] {
        try await etcd.range(prefix: keys.groups).kvs.compactMap { try? KilnJSON.decode(Group.self, from: $0.value) }.sorted { $0.name < $1.name }
    }

    /// Creates a group with `owner` as its owner, in one transaction; 409 if it exists.
    public func createGroup(_ group: Group, owner: String) async throws {
        try Validation.projectName(group.name, what: "group name")
        let key = keys.group(group.name)
        let r = try await etcd.txn(Txn(compare: [.createRevision(key, .equal, 0)], success: [
            .put(key, try KilnJSON.encode(group)),
            .put(keys.members(.group, group.name), try KilnJSON.encode(Members(users: [owner: .owner]))),
        ]))
        guard r.succeeded else { throw KilnError.conflict("group '\(group.name)' exists already") }
    }

    public func saveGroup(_ group: Group) async throws {
        try await etcd.put(keys.group(group.name), try KilnJSON.encode(group))
    }

    /// Makes the first admin when etcd has no user yet: user `admin`, whose API token is the
    /// one in `tokenFile` if that file exists (`kiln up` writes it first), or a new one written
    /// there (mode 0600). When users exist, a token in the file must be a valid admin token,
    /// or the start is refused: a stale file would otherwise look like a working credential.
    /// Returns a line for the log.
    public func ensureFirstAdmin(tokenFile: String?) async throws -> String {
        let fileToken = try tokenFile.flatMap { FileManager.default.fileExists(atPath: $0) ? try CredentialFile.read($0) : nil }
        if try await etcd.range(prefix: keys.users, limit: 1).kvs.isEmpty {
            guard let tokenFile else {
                return "no user exists and no --admin-token-file was given: start a scheduler with --admin-token-file FILE to make the first admin"
            }
            // The file first: a crash between the two writes must not leave an admin whose
            // token nobody has.
            // Two schedulers starting at once on one file agree on one token: the first file wins.
            let token = try fileToken ?? CredentialFile.writeIfAbsent("kiln_" + Secret.random(), to: tokenFile)
            let admin = User(name: "admin", admin: true, createdBy: "scheduler")
            let hash = SHA256.hex(token)
            let record = APIToken(id: String(hash.prefix(16)), user: admin.name, name: "first admin (\(URL(fileURLWithPath: tokenFile).lastPathComponent))")
            let r = try await etcd.txn(Txn(compare: [.createRevision(keys.user(admin.name), .equal, 0)], success: [
                .put(keys.user(admin.name), try KilnJSON.encode(admin)),
                .put(keys.token(hash: hash), try KilnJSON.encode(record)),
            ]))
            if r.succeeded { return "made the first admin, user 'admin'; its API token is in \(tokenFile)" }
            // Another scheduler made the first admin meanwhile, with its own file: the token just
            // written is no one's (unless it is that scheduler's, in the same file).
            if fileToken == nil, try await tokenRecord(token) == nil, (try? CredentialFile.read(tokenFile)) == token {
                unlink(tokenFile)
                return "another scheduler made the first admin"
            }
        }
        guard let tokenFile, let fileToken else { return "users exist" }
        guard let record = try await tokenRecord(fileToken), record.isValid(at: Date()),
              let user = try await user(record.user), user.admin else {
            throw KilnError.invalid("the admin token file \(tokenFile) holds a token that is not a valid admin's token in etcd (revoked, expired, or from another farm): remove the file or the --admin-token-file option")
        }
        return "users exist; \(tokenFile) holds admin '\(user.name)''s token \(record.id)"
    }
}
