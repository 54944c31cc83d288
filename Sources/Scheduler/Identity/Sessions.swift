import Crypto
import Etcd
import Foundation
import KilnCore

/// A login to the web console: `/kiln/sessions/{sha256 of the cookie, hex}`.
///
/// The cookie's value (256 random bits) is kept nowhere: like an API token, only its SHA-256
/// names the key, so a copy of etcd holds no usable session. Every scheduler of the farm
/// reads the same key, so any of them accepts the session, and deleting the key (log out,
/// expiry) ends it everywhere at once.
///
/// A session lasts ``lifetime`` from the login and is not extended by use (no write per
/// page view; someone who steals a cookie keeps it at most that long). Its key is also bound
/// to an etcd lease a little longer than that, so etcd deletes it even if no one ever
/// presents it again; a session read past its expiry is refused and deleted at once.
struct ConsoleSession: Codable, Sendable, Equatable {
    var user: String
    /// The token every console form carries (``ConsoleForm``): a page of another site cannot
    /// read it, so it cannot make a form that passes.
    var csrf: String
    var createdAt: Date
    var expiresAt: Date
    /// The etcd lease the key is bound to (revoked at log out).
    var lease: Int64?

    static let lifetime: TimeInterval = 12 * 3600

    func isValid(at now: Date) -> Bool { now < expiresAt }
}

extension SchedulerStore {
    /// Starts a session for `user` (who must exist) and returns its cookie value, shown to the
    /// browser once and kept nowhere.
    func createSession(for user: String, now: Date = Date()) async throws -> (cookie: String, session: ConsoleSession) {
        let cookie = Secret.random()
        // A margin past the expiry, so the lease never ends a session early through clock skew.
        let lease = try await etcd.grantLease(ttl: Int64(ConsoleSession.lifetime) + 300)
        let session = ConsoleSession(user: user, csrf: Secret.random(), createdAt: now,
                                     expiresAt: now.addingTimeInterval(ConsoleSession.lifetime), lease: lease)
        let key = sessionKey(cookie: cookie)
        let r = try await etcd.txn(Txn(compare: [.createRevision(key, .equal, 0), .version(keys.user(user), .greater, 0)],
                                       success: [.put(key, try KilnJSON.encode(session), lease: lease)]))
        guard r.succeeded else {
            try? await etcd.revokeLease(lease)
            throw KilnError.unauthorized("user '\(Validation.printable(user))' no longer exists")
        }
        return (cookie, session)
    }

    /// The session of `cookie` if it exists and has not expired. An expired one is deleted
    /// here (etcd's lease would delete it a little later anyway).
    func session(cookie: String, now: Date = Date()) async throws -> ConsoleSession? {
        guard Self.isSessionCookie(cookie), let kv = try await etcd.get(sessionKey(cookie: cookie)) else { return nil }
        guard let session = try? KilnJSON.decode(ConsoleSession.self, from: kv.value) else { return nil }
        guard session.isValid(at: now) else {
            _ = try? await etcd.txn(Txn(compare: [.modRevision(kv.key, .equal, kv.modRevision)], success: [.delete(kv.key)]))
            if let lease = session.lease { try? await etcd.revokeLease(lease) }
            return nil
        }
        return session
    }

    /// Ends the session of `cookie` on every scheduler: its key goes, then its lease.
    func endSession(cookie: String) async throws {
        guard Self.isSessionCookie(cookie) else { return }
        let key = sessionKey(cookie: cookie)
        guard let kv = try await etcd.get(key) else { return }
        _ = try await etcd.delete(key)
        if let lease = (try? KilnJSON.decode(ConsoleSession.self, from: kv.value))?.lease {
            try? await etcd.revokeLease(lease)
        }
    }

    /// The key of the session of `cookie`: named by its hash, never the cookie itself.
    func sessionKey(cookie: String) -> String { keys.session(hash: SHA256.hex(cookie)) }

    /// What `Secret.random()` makes (URL-safe base64): anything else is not looked up.
    static func isSessionCookie(_ value: String) -> Bool {
        (20...128).contains(value.utf8.count)
            && value.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5a) || ($0 >= 0x61 && $0 <= 0x7a) || $0 == 0x2d || $0 == 0x5f }
    }
}
