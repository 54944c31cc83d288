import Etcd
import Foundation
import KilnCore
import Synchronization

/// The agent no longer holds the build: its task key was deleted or recreated (the
/// scheduler presumed this agent dead and gave the build to another). Every write the
/// agent tries for the build is refused from then on, and it stops.
struct TaskLostError: Error, CustomStringConvertible {
    let build: String
    var description: String { "build \(build) was taken away from this agent" }
}

/// Lines of a build's log waiting to be written to etcd. `append` never waits, so any
/// callback (container output, image build output) can feed it.
final class LogBuffer: Sendable {
    private let state = Mutex<(lines: [String], bytes: Int)>(([], 0))

    func append(_ line: String) {
        // A single line is capped so one runaway line cannot exceed etcd's request limit.
        let capped = line.utf8.count > 16_384 ? String(line.prefix(16_384)) + "…[line cut]" : line
        state.withLock {
            $0.lines.append(capped)
            $0.bytes += capped.utf8.count
        }
    }

    var pendingBytes: Int { state.withLock { $0.bytes } }

    func take() -> [String] {
        state.withLock {
            let l = $0.lines
            $0 = ([], 0)
            return l
        }
    }
}

/// Writes one build's record and log to etcd, every write guarded by the task key's
/// create revision so that an agent that lost the build can change nothing.
actor BuildReporter {
    let etcd: EtcdClient
    let keys: Keys
    let buildID: String
    let taskKey: String
    let taskCreateRevision: Int64
    let attempt: Int
    let buffer = LogBuffer()
    private var seq = 0

    init(etcd: EtcdClient, keys: Keys, buildID: String, taskKey: String, taskCreateRevision: Int64, attempt: Int) {
        self.etcd = etcd
        self.keys = keys
        self.buildID = buildID
        self.taskKey = taskKey
        self.taskCreateRevision = taskCreateRevision
        self.attempt = attempt
    }

    private var guardCompare: Compare { .createRevision(taskKey, .equal, taskCreateRevision) }

    /// Writes the build record. Throws `TaskLostError` if the task is no longer ours.
    func update(_ build: Build) async throws {
        try await flush()
        let r = try await etcd.txn(Txn(compare: [guardCompare], success: [.put(keys.build(buildID), try KilnJSON.encode(build))]))
        if !r.succeeded { throw TaskLostError(build: buildID) }
    }

    /// Writes the last log chunk, the final record and removes the task, in one transaction:
    /// whoever sees the log's end sees the build's end.
    func finish(_ build: Build) async throws {
        let lines = buffer.take()
        let chunk = LogChunk(seq: seq, lines: lines, end: true)
        let chunkKey = keys.logChunk(build: buildID, attempt: attempt, seq: seq)
        seq += 1
        let r = try await etcd.txn(Txn(
            compare: [guardCompare],
            success: [.put(chunkKey, try KilnJSON.encode(chunk)), .put(keys.build(buildID), try KilnJSON.encode(build)), .delete(taskKey)]))
        if !r.succeeded { throw TaskLostError(build: buildID) }
    }

    /// Writes what the buffer holds as one chunk (and an end mark if `end`).
    func flush(end: Bool = false) async throws {
        let lines = buffer.take()
        if lines.isEmpty && !end { return }
        let chunk = LogChunk(seq: seq, lines: lines, end: end ? true : nil)
        let key = keys.logChunk(build: buildID, attempt: attempt, seq: seq)
        seq += 1
        let r = try await etcd.txn(Txn(compare: [guardCompare], success: [.put(key, try KilnJSON.encode(chunk))]))
        if !r.succeeded { throw TaskLostError(build: buildID) }
    }

    nonisolated func log(_ line: String) { buffer.append(line) }
}
