import Etcd
import Foundation
import KilnCore

extension Dispatcher {
    /// Removes every grant under `/kiln/grants/{agent}/{build}` whose task key
    /// `/kiln/tasks/{agent}/{build}` is gone and whose build has ended or moved on; returns how
    /// many it removed. A grant whose build is ownerless (`OwnerlessBuilds`) is kept, and the
    /// build is reclaimed once `ownerless` says its grace is over.
    ///
    /// The dispatcher writes a grant in the same transaction as its task, and a requeue deletes
    /// both, but an agent ends a build by deleting only its task key (its etcd role may not
    /// touch grants). A grant left behind gives nothing by itself; but an agent may write its
    /// own task keys, so one that re-created an ended task's key would regain push on that
    /// project until the grant goes. Each removal is guarded: the grant is the one read, its
    /// task is absent, and (when given) this leader's term holds.
    ///
    /// Reads the grants and the tasks (two ranges), and the record of each build whose task
    /// is gone: a build's record is read about once after it ends.
    @discardableResult
    func sweepGrants(fence: [Compare], ownerless: inout OwnerlessBuilds, now: Double) async throws -> Int {
        let grants = try await etcd.range(prefix: keys.grants).kvs
        ownerless.keepOnly(Set(grants.map(\.key)))
        guard !grants.isEmpty else { return 0 }
        let live = Set(try await etcd.range(prefix: keys.tasks).kvs.map(\.key))
        var removed = 0
        for kv in grants {
            guard let (agent, build) = keys.grantOwner(kv.key) else { continue }
            let task = keys.task(agent: agent, build: build)
            let recordKV = live.contains(task) ? nil : try await etcd.get(keys.build(build))
            let record = recordKV.flatMap { try? KilnJSON.decode(Build.self, from: $0.value) }
            switch ownerless.judge(grant: kv.key, agent: agent, record: record, taskExists: live.contains(task), now: now) {
            case .owned, .wait:
                continue
            case .removeGrant:
                let r = try await etcd.txn(Txn(compare: fence + [.createRevision(task, .equal, 0), .modRevision(kv.key, .equal, kv.modRevision)],
                                               success: [.delete(kv.key)]))
                if r.succeeded { removed += 1 }
            case .reclaim(let reason):
                guard let recordKV, var record else { continue }
                try await reclaim(&record, recordKV: recordKV, grant: kv, agent: agent, reason: reason, fence: fence)
            }
        }
        if removed > 0 { logger.info("removed \(removed) push grants of ended tasks") }
        return removed
    }

    /// `sweepGrants` with a state of its own: removes the grants of ended builds; reclaims
    /// nothing (an ownerless build is only seen for the first time).
    @discardableResult
    func sweepGrants(fence: [Compare]) async throws -> Int {
        var ownerless = OwnerlessBuilds(grace: configuration.ownerlessGrace.inSeconds)
        return try await sweepGrants(fence: fence, ownerless: &ownerless, now: 0)
    }

    /// Requeues (or fails, after the last attempt) a build whose agent gave it up without
    /// recording its end: record, queue entry, the attempt's log end and the grant's removal
    /// in one transaction, written only if the record is still the one read (the agent's own
    /// end did not get there first), the task key is still absent and this leader leads.
    func reclaim(_ build: inout Build, recordKV: KeyValue, grant: KeyValue, agent: String, reason: String, fence: [Compare]) async throws {
        let id = build.id
        var ops: [TxnOp] = [.delete(grant.key)]
        switch build.agentLost(agent, maxAttempts: configuration.maxAttempts, at: Date(), reason: reason) {
        case .alreadyFinal:
            break
        case .ended(let end):
            ops += [.put(recordKV.key, try KilnJSON.encode(build)), try store.putLogEnd(end, of: id)]
        case .requeued(let line):
            ops += [.put(recordKV.key, try KilnJSON.encode(build)), .put(keys.queued(id), try KilnJSON.encode(QueueEntry(queuing: build))),
                    try store.putLogEnd(line, of: id)]
        }
        let r = try await etcd.txn(Txn(
            compare: fence + [.modRevision(recordKV.key, .equal, recordKV.modRevision), .createRevision(keys.task(agent: agent, build: id), .equal, 0),
                              .modRevision(grant.key, .equal, grant.modRevision)],
            success: ops))
        guard r.succeeded else { return }
        logger.warning("reclaimed a build its agent gave up without recording its end", metadata: [
            "build.id": "\(id)", "agent.id": "\(agent)", "status": "\(build.status.rawValue)", "reason": "\(reason)",
        ])
    }

    /// Sweeps at once and then every `sweepInterval` until the term ends, keeping what it
    /// learns of ownerless builds for the whole term.
    func sweepGrantsWhileLeading(fence: [Compare]) async {
        var ownerless = OwnerlessBuilds(grace: configuration.ownerlessGrace.inSeconds)
        let clock = ContinuousClock(), start = clock.now
        repeat {
            do {
                try await sweepGrants(fence: fence, ownerless: &ownerless, now: (clock.now - start).inSeconds)
            } catch {
                logger.warning("sweeping push grants: \(error)")
            }
        } while (try? await Task.sleep(for: configuration.sweepInterval)) != nil
    }
}
