import Etcd
import Foundation
import KilnCore

/// A build's end (or, for a build that never got going, nothing) that its reporter could not
/// write within its retries: what is left of it, for `PendingEnds` to release the build's task
/// and go on trying in the background.
struct UnrecordedEnd: Error, Sendable, CustomStringConvertible {
    let build: String
    let taskKey: String
    let taskCreateRevision: Int64
    let recordKey: String
    /// The record's mod revision as the agent last read or wrote it; nil: it never read it.
    let recordRevision: Int64?
    /// Log chunks not yet written, in order, each a key and its JSON.
    let chunks: [(key: String, value: String)]
    /// The end's own writes (last chunk, final record, the task's deletion); nil: there is no
    /// end to write, only the task to release (the leader requeues the build).
    let end: [TxnOp]?
    /// Why the last try failed.
    let cause: String

    var description: String { "the end of build \(build) could not be written to etcd: \(cause)" }
}

extension BuildReporter {
    /// The log chunks before the end, then the end's transaction, each tried until it gets
    /// through (`persistently`). When one does not, `UnrecordedEnd` with what is left.
    func writeEnd(_ writes: [(key: String, chunk: LogChunk)], _ txn: Txn) async throws -> TxnResult {
        var written = 0
        do {
            for (key, chunk) in writes {
                try await write(key, chunk)
                written += 1
            }
            return try await persistently("writing the build's end") { try await etcd.txn(txn) }
        } catch let error as TaskLostError {
            throw error
        } catch {
            if Task.isCancelled { throw error }
            let left = try writes.dropFirst(written).map { (key: $0.key, value: try KilnJSON.encode($0.chunk)) }
            throw UnrecordedEnd(build: buildID, taskKey: taskKey, taskCreateRevision: taskCreateRevision, recordKey: keys.build(buildID),
                                recordRevision: recordRevision, chunks: left, end: txn.success, cause: "\(error)")
        }
    }

    /// For a build given up before its end was made (its record could not be read or written
    /// within the retries): only the task to release.
    func unrecorded(cause: Error) -> UnrecordedEnd {
        UnrecordedEnd(build: buildID, taskKey: taskKey, taskCreateRevision: taskCreateRevision, recordKey: keys.build(buildID),
                      recordRevision: recordRevision, chunks: [], end: nil, cause: "\(cause)")
    }
}
