import Etcd
import Foundation
import KilnCore

extension Dispatcher {
    /// How often the leader removes push grants whose task has ended.
    static let grantSweepInterval: Duration = .seconds(60)

    /// Removes every grant under `/kiln/grants/{agent}/{build}` whose task key
    /// `/kiln/tasks/{agent}/{build}` is gone; returns how many it removed.
    ///
    /// The dispatcher writes a grant in the same transaction as its task, and a requeue deletes
    /// both, but an agent ends a build by deleting only its task key (its etcd role may not
    /// touch grants). A grant left behind gives nothing by itself; but an agent may write its
    /// own task keys, so one that re-created an ended task's key would regain push on that
    /// project until the grant goes. Each removal is guarded: the grant is the one read, its
    /// task is absent, and (when given) this leader's term holds.
    @discardableResult
    func sweepGrants(fence: [Compare]) async throws -> Int {
        let grants = try await etcd.range(prefix: keys.grants).kvs
        guard !grants.isEmpty else { return 0 }
        let live = Set(try await etcd.range(prefix: keys.tasks).kvs.map(\.key))
        var removed = 0
        for kv in grants {
            guard let (agent, build) = keys.grantOwner(kv.key) else { continue }
            let task = keys.task(agent: agent, build: build)
            guard !live.contains(task) else { continue }
            let r = try await etcd.txn(Txn(compare: fence + [.createRevision(task, .equal, 0), .modRevision(kv.key, .equal, kv.modRevision)],
                                           success: [.delete(kv.key)]))
            if r.succeeded { removed += 1 }
        }
        if removed > 0 { logger.info("removed \(removed) push grants of ended tasks") }
        return removed
    }

    /// Sweeps at once and then every ``grantSweepInterval`` until the term ends.
    func sweepGrantsWhileLeading(fence: [Compare]) async {
        repeat {
            do { try await sweepGrants(fence: fence) } catch { logger.warning("sweeping push grants: \(error)") }
        } while (try? await Task.sleep(for: Self.grantSweepInterval)) != nil
    }
}
