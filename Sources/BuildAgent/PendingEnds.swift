import Etcd
import Foundation
import KilnCore
import Logging
import Synchronization

/// The builds whose end this agent could not write within its retries (etcd over its quota,
/// or gone for longer than `AgentConfiguration.etcdRetryLimit`): a build must never stay
/// `running` without an owner, nor hold a slot of this agent forever (issue 14, point 7).
///
/// For each one, until it is settled, each round (1 s, doubling to 30 s):
/// 1. While the task key is this agent's: write the rest of the log and the end, guarded by
///    the task key's create revision, as the reporter would have. Done when it gets through;
///    given up when the guard fails (the task was taken away: the leader requeued the build).
/// 2. When that fails, release the task: delete the task key, guarded by its create revision.
///    An etcd over its quota (NOSPACE) still takes a transaction that only deletes. The slot
///    is free from then on; the leader finds the build ownerless through its push grant and
///    requeues or fails it after a grace (`OwnerlessBuilds` in the scheduler).
/// 3. Once released, write the rest of the log and the end (without the task's deletion),
///    guarded by the record's mod revision as this agent last wrote it: either this end or the
///    leader's requeue gets there, never both. Given up when the guard fails. A build given up
///    before its end was made (`UnrecordedEnd.end` nil) is settled by the release alone.
///
/// The agent does not start such a build again while it is pending here (`holds`), even when
/// it reads its task key anew. Pending ends live in memory: an agent that stops leaves them to
/// the leader (an unreleased task goes back to the queue with the agent's lease, a released one
/// through its grant). `run()` carries them out; it ends when cancelled (the agent stops).
final class PendingEnds: Sendable {
    private let etcd: EtcdClient
    private let logger: Logger
    private let state = Mutex<(waiting: [UnrecordedEnd], held: [String: Int64])>(([], [:]))
    private let signal: AsyncStream<Void>
    private let continuation: AsyncStream<Void>.Continuation
    /// The longest pause between two rounds (30 s, or the reporter's retry limit if shorter).
    let maxDelay: Duration

    init(etcd: EtcdClient, logger: Logger, maxDelay: Duration = .seconds(30)) {
        self.etcd = etcd
        self.logger = logger
        self.maxDelay = maxDelay
        (signal, continuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    /// Takes over one end (from a runner, whose build then leaves the agent's table).
    func hand(_ end: UnrecordedEnd) {
        state.withLock {
            $0.held[end.build] = end.taskCreateRevision
            $0.waiting.append(end)
        }
        continuation.yield()
    }

    /// Whether the task of `build` created at `revision` is one whose end is pending here.
    func holds(build: String, revision: Int64) -> Bool {
        state.withLock { $0.held[build] == revision }
    }

    /// How many ends are pending.
    var count: Int { state.withLock { $0.held.count } }

    /// Settles every end handed over, each in a task of its own, until cancelled.
    func run() async {
        await withDiscardingTaskGroup { group in
            for await _ in signal {
                let taken = state.withLock { s in
                    defer { s.waiting = [] }
                    return s.waiting
                }
                for end in taken {
                    group.addTask {
                        await self.settle(end)
                        self.state.withLock { if $0.held[end.build] == end.taskCreateRevision { $0.held[end.build] = nil } }
                    }
                }
            }
            group.cancelAll()
        }
    }

    private enum Step { case done, again }

    private func settle(_ end: UnrecordedEnd) async {
        var log = logger
        log[metadataKey: "build.id"] = "\(end.build)"
        log.error("\(end); releasing the build's task so that its slot frees, and trying to record the end in the background")
        var released = false
        var written = 0
        var delay = Duration.seconds(1)
        while !Task.isCancelled {
            do {
                if !released, try await writeWithTask(end, written: &written) == .done { return }
                if released {
                    guard end.end != nil, let revision = end.recordRevision else { return }
                    if try await writeReleased(end, revision: revision, written: &written) == .done { return }
                }
            } catch is TaskLostError {
                log.warning("the build was taken away meanwhile; its end is not written")
                return
            } catch {
                if !released {
                    do {
                        let r = try await etcd.txn(Txn(compare: [.createRevision(end.taskKey, .equal, end.taskCreateRevision)], success: [.delete(end.taskKey)]))
                        guard r.succeeded else {
                            log.warning("the build was taken away meanwhile; its end is not written")
                            return
                        }
                        released = true
                        log.warning("released the build's task (etcd: \(error)); the leader requeues the build unless its end gets through first")
                        if end.end == nil { return }
                        continue
                    } catch {}
                }
            }
            try? await Task.sleep(for: delay)
            delay = min(delay * 2, maxDelay)
        }
    }

    /// Rule 1: the rest, guarded by the task key.
    private func writeWithTask(_ end: UnrecordedEnd, written: inout Int) async throws -> Step {
        let guardTask = Compare.createRevision(end.taskKey, .equal, end.taskCreateRevision)
        guard let ops = end.end else { throw NoEnd() }
        try await writeChunks(end, guardBy: guardTask, written: &written)
        let r = try await etcd.txn(Txn(compare: [guardTask], success: ops))
        if !r.succeeded { throw TaskLostError(build: end.build) }
        logger.notice("recorded the build's end after all", metadata: ["build.id": "\(end.build)"])
        return .done
    }

    /// Rule 3: the rest, guarded by the record's revision.
    private func writeReleased(_ end: UnrecordedEnd, revision: Int64, written: inout Int) async throws -> Step {
        let guardRecord = Compare.modRevision(end.recordKey, .equal, revision)
        let ops = (end.end ?? []).filter { if case .delete(let key) = $0, key == end.taskKey { return false } else { return true } }
        try await writeChunks(end, guardBy: guardRecord, written: &written)
        let r = try await etcd.txn(Txn(compare: [guardRecord], success: ops))
        if !r.succeeded { throw TaskLostError(build: end.build) }
        logger.notice("recorded the end of the build it had released", metadata: ["build.id": "\(end.build)"])
        return .done
    }

    private func writeChunks(_ end: UnrecordedEnd, guardBy compare: Compare, written: inout Int) async throws {
        while written < end.chunks.count {
            let (key, value) = end.chunks[written]
            let r = try await etcd.txn(Txn(compare: [compare], success: [.put(key, value)]))
            if !r.succeeded { throw TaskLostError(build: end.build) }
            written += 1
        }
    }

    /// There is no end to write: go straight to the release.
    private struct NoEnd: Error {}
}
