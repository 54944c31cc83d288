import Foundation
import HTTPTypes
import Hummingbird
import KilnCore
import Logging
import RegistryAuth

/// Who made a request: a user, known by one of their API tokens, their password (only where
/// a password is accepted: making a token, the registry's token service), or a console session.
public struct Caller: Sendable, Equatable {
    public var user: String
    public var admin: Bool
    /// When the API token the caller came with expires (nil: a password, or a token without
    /// expiry): a token made with a token lives no longer than it, so a leaked token cannot
    /// outlive its own revocation through a child.
    public var tokenExpiresAt: Date?
    /// The caller gave their password (HTTP Basic), not a token: what changing one's own
    /// password needs, so a leaked token cannot make itself permanent.
    public var byPassword = false
    public init(user: String, admin: Bool, tokenExpiresAt: Date? = nil) {
        self.user = user
        self.admin = admin
        self.tokenExpiresAt = tokenExpiresAt
    }
}

/// Authenticates API requests: `Authorization: Bearer TOKEN` (a personal API token), and where
/// a route allows it HTTP Basic `user:password` (or `user:TOKEN`, which is what `podman login`
/// sends). Every failure is the same 401 with the same message, and a wrong password costs the
/// same time as an unknown user; failed password logins are slowed per user and address by
/// ``LoginThrottle``.
///
/// The API takes credentials only from the `Authorization` header, never from a cookie, so a
/// web page in an operator's browser cannot make requests in their name (no CSRF on the API);
/// the console has its own cookie session with a CSRF token per form.
public struct Authenticator: Sendable {
    let store: SchedulerStore
    let throttle: LoginThrottle
    let logger: Logger
    /// For an external identity provider (GitLab OAuth, OIDC, LDAP): asked for a password
    /// login before the local users. None exists yet; this is where one plugs in.
    let passwordProviders: [any PasswordProvider]

    /// `throttle`: nil, the store's (one per scheduler, so the API and the console share it).
    public init(store: SchedulerStore, throttle: LoginThrottle? = nil, passwordProviders: [any PasswordProvider] = [], logger: Logger) {
        self.store = store
        self.throttle = throttle ?? store.loginThrottle
        self.passwordProviders = passwordProviders
        self.logger = logger
    }

    static let refusal = "authentication failed: send `Authorization: Bearer TOKEN` with a valid API token (`kiln login` makes one)"

    /// The caller of `request`, or a 401. `allowPassword`: HTTP Basic with a password counts
    /// too (making a token); everywhere else only tokens do.
    public func caller(_ request: Request, context: KilnRequestContext, allowPassword: Bool = false) async throws -> Caller {
        let header = request.headers[.authorization] ?? ""
        if header.lowercased().hasPrefix("bearer ") {
            let token = String(header.dropFirst(7)).trimmingCharacters(in: .whitespaces)
            if let caller = try await tokenCaller(token) { return caller }
            throw KilnError.unauthorized(Self.refusal)
        }
        if let basic = BasicAuthorization.parse(header) {
            if let caller = try await basicCaller(user: basic.user, secret: basic.password, allowPassword: allowPassword,
                                                  address: context.peer) {
                return caller
            }
            throw KilnError.unauthorized(Self.refusal)
        }
        throw KilnError.unauthorized(Self.refusal)
    }

    /// The caller of a valid, unexpired, unrevoked API token whose user exists.
    func tokenCaller(_ token: String) async throws -> Caller? {
        guard let record = try await store.tokenRecord(token), record.isValid(at: Date()),
              let user = try await store.user(record.user) else { return nil }
        return Caller(user: user.name, admin: user.admin, tokenExpiresAt: record.expiresAt)
    }

    /// HTTP Basic: the secret is tried as an API token of that user, then (if allowed) as
    /// their password, throttled per user and address.
    func basicCaller(user name: String, secret: String, allowPassword: Bool, address: String) async throws -> Caller? {
        // A token first (one etcd read by its hash), then the password: every failure goes
        // through the password check, so all failures take the same time.
        if let caller = try await tokenCaller(secret), caller.user == name { return caller }
        guard allowPassword else { return nil }
        try throttle.check(user: name, address: address)
        let user = try await store.user(name)
        var ok = try await PasswordHasher.limiter.run { PasswordHasher.verify(secret, against: user?.passwordHash) }
        if !ok, user == nil || user?.source != nil {
            for provider in passwordProviders where try await provider.verify(user: name, password: secret) { ok = true }
        }
        guard ok, let user else {
            logger.notice("login refused", metadata: ["user": "\((try? Validation.userName(name)) != nil ? name : "(not a user name)")", "address": "\(address)"])
            return nil
        }
        throttle.succeeded(user: name, address: address)
        var caller = Caller(user: user.name, admin: user.admin)
        caller.byPassword = true
        return caller
    }
}

/// An external source of password logins (GitLab OAuth, OIDC, LDAP): the seam the issue asks
/// for, with no implementation yet. A provider answers whether `password` is right for
/// `user`; the user must still exist in Kiln (made by an admin, with `source` set).
public protocol PasswordProvider: Sendable {
    func verify(user: String, password: String) async throws -> Bool
}
