import Etcd
import Foundation
import Synchronization

/// The leases that webhook idempotency keys (`/kiln/hooks/{project}/{delivery}`) are bound
/// to, so that they expire instead of staying forever: GitLab retries a delivery for minutes,
/// so a day is plenty.
///
/// One lease serves every delivery of a window (an hour by default): it is granted by the
/// window's first delivery with a TTL of a day and a window (25 h), and kept in memory for the
/// rest of the window. So each key lives at least `ttl - window` (24 h) and at most `ttl`,
/// and etcd holds about `ttl / window` leases per scheduler instead of one per delivery.
/// Shared by every copy of a ``SchedulerStore``. Rule for a caller: a write with the lease
/// that etcd refuses because the lease is gone (``isLeaseGone(_:)``) calls ``forget(_:)``
/// and asks again.
public final class HookLeases: Sendable {
    public let windowSeconds: Int64
    public let ttlSeconds: Int64
    private let current = Mutex<(window: Int64, lease: Int64)?>(nil)

    /// `windowSeconds` must be below `ttlSeconds`; the defaults keep a key 24 to 25 hours.
    public init(windowSeconds: Int64 = 3600, ttlSeconds: Int64 = 25 * 3600) {
        precondition(windowSeconds > 0 && ttlSeconds > windowSeconds, "a hook lease must outlive its window")
        self.windowSeconds = windowSeconds
        self.ttlSeconds = ttlSeconds
    }

    /// The lease for a key written now: this window's, granted if it has none yet.
    func lease(_ etcd: EtcdClient, now: Date = Date()) async throws -> Int64 {
        let window = Int64(now.timeIntervalSince1970.rounded(.down)) / windowSeconds
        if let c = current.withLock({ $0 }), c.window == window { return c.lease }
        // Two deliveries at a window's start may both grant one; the one not kept has no keys
        // (or a few) and expires on its own.
        let granted = try await etcd.grantLease(ttl: ttlSeconds)
        current.withLock { c in
            if c == nil || c!.window < window { c = (window, granted) }
        }
        return granted
    }

    /// The lease is gone (etcd restored from a backup, or revoked by hand): the next key gets a new one.
    func forget(_ lease: Int64) {
        current.withLock { c in if c?.lease == lease { c = nil } }
    }

    /// etcd refused a write because its lease does not exist.
    static func isLeaseGone(_ error: any Error) -> Bool {
        (error as? EtcdError) == .leaseNotFound
    }
}
