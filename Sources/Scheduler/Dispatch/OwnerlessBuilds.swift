import Foundation
import KilnCore

/// Finds builds that no agent holds any more although their record says one runs them, so
/// that the leader can requeue or fail them (issue 14, point 7): a pure state kept by the
/// leader's sweep of push grants, with no I/O and no clock (the caller passes `now`).
///
/// How a build loses its owner: an agent that could not write a build's end after its retries
/// (etcd full or gone for long) deletes its own task key, so that the build does not hold a
/// slot forever (an etcd over its quota still accepts deletes), and goes on trying to write
/// the end in the background, guarded by the record's revision. Its task key is gone, but the
/// record still says `assigned` or `running` on that agent. The push grant
/// `/kiln/grants/{agent}/{build}`, written with the task and removed only by the leader (or a
/// requeue), outlives the task key: it is how a leader, even a new one, finds such a build
/// without reading every record.
///
/// Rules, for each grant the sweep reads, in order:
/// 1. Its task key exists: the build has its owner; nothing to do.
/// 2. The record is missing or unreadable, final, back in the queue, or held by another
///    agent: the build has ended or moved on; the grant is removed (`removeGrant`).
/// 3. Otherwise the build is ownerless. It is left for `grace` from the moment it was first
///    seen so, time for its agent's own end to get through (`wait`); then it is reclaimed
///    (`reclaim`): requeued with the attempt counted, or failed after the last attempt
///    (`Build.agentLost` with the reason), in one transaction guarded by the record's
///    revision, so that whichever of the agent's end and the leader's reclaim comes first wins.
/// A grant the sweep no longer finds is forgotten.
public struct OwnerlessBuilds: Sendable {
    public enum Verdict: Sendable, Equatable {
        /// Rule 1.
        case owned
        /// Rule 2.
        case removeGrant
        /// Rule 3, within the grace.
        case wait
        /// Rule 3, past the grace: requeue or fail the build, with this reason.
        case reclaim(reason: String)
    }

    /// Seconds an ownerless build is left before it is reclaimed.
    public var grace: Double
    /// When each ownerless build (by grant key) was first seen, in the caller's seconds.
    private var firstSeen: [String: Double] = [:]

    public init(grace: Double) {
        self.grace = grace
    }

    /// The verdict on one grant of `agent` for a build whose record is `record` (nil: missing
    /// or unreadable) and whose task key exists or not, seen at `now`.
    public mutating func judge(grant: String, agent: String, record: Build?, taskExists: Bool, now: Double) -> Verdict {
        if taskExists {
            firstSeen[grant] = nil
            return .owned
        }
        guard let record, !record.status.isFinal, record.status != .queued, record.agent == agent else {
            firstSeen[grant] = nil
            return .removeGrant
        }
        let since = firstSeen[grant] ?? now
        firstSeen[grant] = since
        guard now - since >= grace else { return .wait }
        return .reclaim(reason: "agent '\(agent)' gave attempt \(record.attempt) up without recording its end (it could not write to etcd) and released the build")
    }

    /// Forgets every grant but `present` (the ones the last sweep read).
    public mutating func keepOnly(_ present: Set<String>) {
        firstSeen = firstSeen.filter { present.contains($0.key) }
    }

    /// The grants seen ownerless and not yet reclaimed.
    public var waiting: Int { firstSeen.count }
}
