import Etcd
import Foundation
import KilnCore
import Logging

/// Picks one dispatching scheduler among any number of them, through one etcd key
/// (`/kiln/leader`) held under a lease.
///
/// `campaign()` waits until this process creates the key; the key's create revision names
/// the term. The leader renews the lease (`hold`); when it dies, its lease expires within
/// the TTL, etcd deletes the key, and the followers, which watch it, campaign at once.
/// Leadership alone does not make a write safe (a leader can be paused past its TTL and
/// wake up thinking it still leads), so every write the dispatcher makes also compares the
/// key's create revision with its term's (`fence`): a deposed leader's writes are refused.
public struct LeaderElection: Sendable {
    /// One time as leader.
    public struct Term: Sendable, Equatable {
        public var lease: Int64
        /// The create revision of the leader key: different for every term.
        public var createRevision: Int64
    }

    let etcd: EtcdClient
    public let key: String
    /// Who this scheduler is (written as the key's value, shown by the API).
    public let id: String
    public let ttlSeconds: Int64
    let logger: Logger

    public init(etcd: EtcdClient, key: String, id: String, ttlSeconds: Int64, logger: Logger) {
        self.etcd = etcd
        self.key = key
        self.id = id
        self.ttlSeconds = ttlSeconds
        self.logger = logger
    }

    /// The compare that holds only while `term` is current.
    public func fence(_ term: Term) -> Compare {
        .createRevision(key, .equal, term.createRevision)
    }

    /// Returns once this process is the leader.
    public func campaign() async throws -> Term {
        var announced = false
        while true {
            try Task.checkCancellation()
            let lease = try await etcd.grantLease(ttl: ttlSeconds)
            let r: TxnResult
            do {
                r = try await etcd.txn(Txn(compare: [.createRevision(key, .equal, 0)], success: [.put(key, id, lease: lease)], failure: [.get(key)]))
            } catch {
                await revoke(lease)
                throw error
            }
            if r.succeeded {
                logger.notice("elected leader; dispatching", metadata: ["scheduler.id": "\(id)", "term": "\(r.revision)"])
                return Term(lease: lease, createRevision: r.revision)
            }
            await revoke(lease)
            guard let holder = r.responses.first?.kvs.first else { continue }
            if !announced {
                logger.notice("following leader \(holder.string); taking over if it stops", metadata: ["scheduler.id": "\(id)"])
                announced = true
            }
            // Wait for the key to go (the leader resigned or its lease expired).
            watching: for try await update in etcd.watch(key: key, fromRevision: r.revision + 1) {
                switch update {
                case .events(let events, _):
                    if events.contains(where: { $0.kind == .delete }) { break watching }
                case .reset(let kvs, _):
                    if kvs.isEmpty { break watching }
                }
            }
        }
    }

    /// Keeps the term alive; returns (or throws) when it ends: the lease could not be renewed
    /// for its TTL, or the key was deleted or replaced. Returns at once when cancelled.
    public func hold(_ term: Term) async throws {
        let etcd = self.etcd, key = self.key
        let interval = Duration.milliseconds(max(200, ttlSeconds * 1000 / 3))
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await etcd.keepAlive(term.lease, every: interval) }
            group.addTask {
                for try await update in etcd.watch(key: key, fromRevision: term.createRevision + 1) {
                    switch update {
                    case .events(let events, _):
                        if events.contains(where: { $0.kind == .delete || $0.kv.createRevision != term.createRevision }) { return }
                    case .reset(let kvs, _):
                        if kvs.first?.createRevision != term.createRevision { return }
                    }
                }
            }
            defer { group.cancelAll() }
            try await group.next()
        }
        if !Task.isCancelled {
            logger.warning("lost leadership; no longer dispatching", metadata: ["scheduler.id": "\(id)", "term": "\(term.createRevision)"])
        }
    }

    /// Gives up the term at once (the lease's revocation deletes the key), so a follower
    /// takes over without waiting for the TTL. Runs even if the caller is cancelled.
    public func resign(_ term: Term) async {
        await revoke(term.lease)
        logger.notice("resigned leadership", metadata: ["scheduler.id": "\(id)", "term": "\(term.createRevision)"])
    }

    private func revoke(_ lease: Int64) async {
        let etcd = self.etcd
        await outlivingCancellation { try? await etcd.revokeLease(lease) }
    }
}
