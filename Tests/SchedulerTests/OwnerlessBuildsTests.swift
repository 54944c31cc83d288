import Foundation
import KilnCore
@testable import Scheduler
import Testing

/// The leader's rule for builds whose agent released them without recording an end.
@Suite("Ownerless builds")
struct OwnerlessBuildsTests {
    func record(_ status: BuildStatus, agent: String? = "a1", attempt: Int = 1) -> Build {
        var b = Build(id: "b1", project: "p", ref: "main")
        b.status = status
        b.agent = agent
        b.attempt = attempt
        return b
    }

    @Test func aBuildWithItsTaskIsOwned() {
        var o = OwnerlessBuilds(grace: 60)
        #expect(o.judge(grant: "g", agent: "a1", record: record(.running), taskExists: true, now: 0) == .owned)
        #expect(o.waiting == 0)
    }

    @Test("a build that ended or moved on leaves only its grant to remove", arguments: [
        BuildStatus.succeeded, .failed, .cancelled, .queued,
    ])
    func endedOrMovedOn(_ status: BuildStatus) {
        var o = OwnerlessBuilds(grace: 60)
        #expect(o.judge(grant: "g", agent: "a1", record: record(status), taskExists: false, now: 0) == .removeGrant)
    }

    @Test func aMissingRecordOrAnotherAgentsBuildLeavesOnlyTheGrant() {
        var o = OwnerlessBuilds(grace: 60)
        #expect(o.judge(grant: "g", agent: "a1", record: nil, taskExists: false, now: 0) == .removeGrant)
        // Requeued and assigned elsewhere meanwhile: the record names a2.
        #expect(o.judge(grant: "g", agent: "a1", record: record(.assigned, agent: "a2"), taskExists: false, now: 0) == .removeGrant)
    }

    @Test func anOwnerlessBuildWaitsItsGraceThenIsReclaimedWithTheReason() {
        var o = OwnerlessBuilds(grace: 60)
        #expect(o.judge(grant: "g", agent: "a1", record: record(.running, attempt: 2), taskExists: false, now: 100) == .wait)
        #expect(o.waiting == 1)
        #expect(o.judge(grant: "g", agent: "a1", record: record(.running, attempt: 2), taskExists: false, now: 159) == .wait)
        #expect(o.judge(grant: "g", agent: "a1", record: record(.running, attempt: 2), taskExists: false, now: 160)
                == .reclaim(reason: "agent 'a1' gave attempt 2 up without recording its end (it could not write to etcd) and released the build"))
        // An assigned build its agent never started is ownerless too.
        #expect(o.judge(grant: "h", agent: "a1", record: record(.assigned), taskExists: false, now: 160) == .wait)
    }

    @Test func theAgentsOwnEndArrivingInTheGraceEndsTheWait() {
        var o = OwnerlessBuilds(grace: 60)
        #expect(o.judge(grant: "g", agent: "a1", record: record(.running), taskExists: false, now: 0) == .wait)
        #expect(o.judge(grant: "g", agent: "a1", record: record(.succeeded), taskExists: false, now: 30) == .removeGrant)
        #expect(o.waiting == 0)
        // Seen ownerless again later (another attempt on the same agent): a new grace.
        #expect(o.judge(grant: "g", agent: "a1", record: record(.running), taskExists: false, now: 100) == .wait)
        #expect(o.judge(grant: "g", agent: "a1", record: record(.running), taskExists: false, now: 150) == .wait)
    }

    @Test func grantsNoLongerReadAreForgotten() {
        var o = OwnerlessBuilds(grace: 60)
        _ = o.judge(grant: "g", agent: "a1", record: record(.running), taskExists: false, now: 0)
        _ = o.judge(grant: "h", agent: "a1", record: record(.running), taskExists: false, now: 0)
        o.keepOnly(["h"])
        #expect(o.waiting == 1)
        // g comes back (a new grant of the same key): its grace starts again.
        #expect(o.judge(grant: "g", agent: "a1", record: record(.running), taskExists: false, now: 100) == .wait)
    }

    @Test func theReclaimCountsTheAttemptAndGivesUpAfterTheLast() {
        var b = record(.running, attempt: 1)
        guard case .requeued(let line) = b.agentLost("a1", maxAttempts: 3, at: Date(), reason: "agent 'a1' gave attempt 1 up") else {
            Issue.record("expected a requeue"); return
        }
        #expect(b.status == .queued && b.agent == nil && b.error == "agent 'a1' gave attempt 1 up")
        #expect(line.chunk.lines == ["kiln: agent 'a1' gave attempt 1 up; the build goes back to the queue"])
        var last = record(.running, attempt: 3)
        guard case .ended = last.agentLost("a1", maxAttempts: 3, at: Date(), reason: "agent 'a1' gave attempt 3 up") else {
            Issue.record("expected the end"); return
        }
        #expect(last.status == .failed && last.error == "agent 'a1' gave attempt 3 up; gave up after 3 attempts")
    }
}
