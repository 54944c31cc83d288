import Etcd
import Foundation
import KilnCore
import Logging
import Synchronization

/// The agent no longer holds the build: its task key was deleted or recreated (the
/// scheduler presumed this agent dead and gave the build to another). Every write the
/// agent tries for the build is refused from then on, and it stops.
struct TaskLostError: Error, CustomStringConvertible {
    let build: String
    var description: String { "build \(build) was taken away from this agent" }
}

/// Lines of a build's log waiting to be written to etcd, under the log's cap (`LogCap`), with
/// the build's secret values masked (`SecretMasker`) once they are known (`mask(_:)`).
/// Appending never waits, so any callback (container output, image build output) can feed it.
///
/// The build's output is masked as one stream (a value that spans lines is found), so a line
/// whose end may begin a value waits for the next one; a line of the agent's own is masked
/// whole and first lets out what the output held back, so the log keeps its order.
final class LogBuffer: Sendable {
    private struct State {
        var lines: [String] = []
        var cap: LogCap
        var masker = SecretMasker(values: [])
        /// Masked output after its last newline: the start of a line still being held.
        var partial = ""

        mutating func emitOutput(_ text: String) {
            guard !text.isEmpty else { return }
            var pieces = (partial + text).split(separator: "\n", omittingEmptySubsequences: false)
            partial = String(pieces.removeLast())
            for line in pieces { lines += cap.output(String(line)) }
        }

        /// Lets out what the output's masking holds back (before a line of the agent's own).
        mutating func releaseOutput() {
            emitOutput(masker.finish())
            if !partial.isEmpty {
                lines += cap.output(partial)
                partial = ""
            }
        }
    }
    private let state: Mutex<State>

    init(maxBytes: Int = AgentConfiguration.defaultMaxLogBytes) {
        state = Mutex(State(cap: LogCap(limit: maxBytes)))
    }

    /// From now on every value in `values` is masked in the log and in `masked(_:)`.
    func mask(_ values: [String]) {
        state.withLock { s in
            s.releaseOutput()
            s.masker = SecretMasker(values: values)
        }
    }

    /// `text` with the secret values masked: for what the build's record says.
    func masked(_ text: String) -> String {
        state.withLock { $0.masker.masked(text) }
    }

    /// A line of the build's output: kept while the log is under its cap.
    func output(_ line: String) {
        state.withLock { s in
            if s.masker.isEmpty {
                s.lines += s.cap.output(line)
            } else {
                s.emitOutput(s.masker.feed(line + "\n"))
            }
        }
    }

    /// A line of the agent's own: always kept.
    func append(_ line: String) {
        state.withLock { s in
            s.releaseOutput()
            s.lines += s.cap.agent(s.masker.masked(line))
        }
    }

    /// Adds how much the cap dropped, if it dropped anything (once, at the end).
    func appendSummary() {
        state.withLock { s in
            s.releaseOutput()
            if let note = s.cap.summary { s.lines += s.cap.agent(note) }
        }
    }

    func take() -> [String] {
        state.withLock { s in
            defer { s.lines = [] }
            return s.lines
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
    let buffer: LogBuffer
    private var seq = 0
    /// The project's post-build pipeline as the task carries it: a build that succeeds asks
    /// for its first run in the same write that records the success.
    let pipeline: [PipelineStep]

    let logger: Logger
    /// How long `persistently` tries (`AgentConfiguration.etcdRetryLimit`).
    let retryLimit: Duration
    /// The record's mod revision as this agent last read or wrote it: what guards the end it
    /// writes after it released the task (`PendingEnds`).
    var recordRevision: Int64?

    /// The reporter of one task; its logger names the build and the project.
    init(task: BuildTask, taskKey: String, taskCreateRevision: Int64, etcd: EtcdClient, keys: Keys, agentLogger: Logger,
         maxLogBytes: Int = AgentConfiguration.defaultMaxLogBytes, retryLimit: Duration = .seconds(600)) {
        var l = agentLogger
        l[metadataKey: "build.id"] = "\(task.build)"
        l[metadataKey: "project"] = "\(task.project.name)"
        self.init(etcd: etcd, keys: keys, buildID: task.build, taskKey: taskKey, taskCreateRevision: taskCreateRevision, attempt: task.attempt,
                  pipeline: task.project.pipeline ?? [], logger: l, maxLogBytes: maxLogBytes, retryLimit: retryLimit)
    }

    init(etcd: EtcdClient, keys: Keys, buildID: String, taskKey: String, taskCreateRevision: Int64, attempt: Int, pipeline: [PipelineStep] = [], logger: Logger = Logger(label: "kiln.agent"),
         maxLogBytes: Int = AgentConfiguration.defaultMaxLogBytes, retryLimit: Duration = .seconds(600)) {
        self.buffer = LogBuffer(maxBytes: maxLogBytes)
        self.retryLimit = retryLimit
        self.logger = logger
        self.pipeline = pipeline
        self.etcd = etcd
        self.keys = keys
        self.buildID = buildID
        self.taskKey = taskKey
        self.taskCreateRevision = taskCreateRevision
        self.attempt = attempt
    }

    var guardCompare: Compare { .createRevision(taskKey, .equal, taskCreateRevision) }
    private var warnedUnreachable = false

    /// Runs one etcd call again until it gets through: a build's record must not be lost
    /// because etcd was restarting when it was written (the agent lives, so nothing else
    /// would ever end the build). Waits 100 ms doubling to 2 s, for up to `retryLimit` (10
    /// minutes); gives up at once when the build was taken away or the caller is cancelled. A
    /// write that committed but whose answer was lost is refused when tried again (the guard
    /// no longer holds), which reads as `TaskLostError`: its effect is already there.
    func persistently<T: Sendable>(_ what: String, _ call: () async throws -> T) async throws -> T {
        var delay = Duration.milliseconds(100)
        let deadline = ContinuousClock.now + retryLimit
        while true {
            do {
                return try await call()
            } catch let error as TaskLostError {
                throw error
            } catch {
                if Task.isCancelled || ContinuousClock.now > deadline { throw error }
                if !warnedUnreachable {
                    warnedUnreachable = true
                    logger.warning("etcd: \(what) failed (\(error)); trying again until it gets through", metadata: ["build.id": "\(buildID)"])
                }
                try? await Task.sleep(for: delay)
                delay = min(delay * 2, .seconds(2))
            }
        }
    }

    /// The build's record as it is now, read again until etcd answers. A task whose record is
    /// missing or unreadable cannot be built: its task is removed (if still ours) and nil returned.
    func currentBuild() async throws -> Build? {
        let etcd = self.etcd, key = keys.build(buildID)
        if let kv = try await persistently("reading the build record", { try await etcd.get(key) }),
           let build = try? KilnJSON.decode(Build.self, from: kv.value) {
            recordRevision = kv.modRevision
            return build
        }
        logger.warning("task without a readable build record; removing it")
        let txn = Txn(compare: [guardCompare], success: [.delete(taskKey)])
        _ = try await persistently("removing the task") { try await etcd.txn(txn) }
        return nil
    }

    /// Writes the build record. Throws `TaskLostError` if the task is no longer ours.
    func update(_ build: Build) async throws {
        try await flush()
        let txn = Txn(compare: [guardCompare], success: [.put(keys.build(buildID), try KilnJSON.encode(masked(build)))])
        let r = try await persistently("writing the build record") { try await etcd.txn(txn) }
        if !r.succeeded { throw TaskLostError(build: buildID) }
        recordRevision = r.revision
    }

    /// Writes the last log chunk, the final record (with its pipeline run's entry in the pipeline
    /// index, if it has one) and removes the task, in one transaction: whoever sees the log's
    /// end sees the build's end. Throws `UnrecordedEnd`, which carries what is left to write,
    /// when etcd takes none of it within `retryLimit`.
    func finish(_ build: Build) async throws {
        var build = masked(build)
        if build.status == .succeeded, !pipeline.isEmpty, build.deploy == nil {
            build.deploy = PipelineRun(run: 1, pipeline: pipeline, trigger: "build succeeded", requestedAt: build.finishedAt ?? Date())
            log("kiln: the post-build pipeline (\(pipeline.map(\.plugin).joined(separator: ", "))) starts next")
        }
        buffer.appendSummary()
        // All but the last chunk's worth first, so that the final write stays small too.
        var chunks = LogChunks.group(buffer.take())
        let lines = chunks.popLast() ?? []
        let writes = chunks.map { numbered($0, end: false) }
        let (chunkKey, chunk) = numbered(lines, end: true)
        var success: [TxnOp] = [.put(chunkKey, try KilnJSON.encode(chunk)), .put(keys.build(buildID), try KilnJSON.encode(build)), .delete(taskKey)]
        // A pending run goes into the pipeline index, which the leader follows (not every record).
        if let run = build.deploy, !run.status.isFinal { success.append(.put(keys.pipelineIndexEntry(build: buildID), "")) }
        let txn = Txn(compare: [guardCompare], success: success)
        _ = try? await lastWrites?.value
        // A real build that succeeded becomes the one later builds with its inputs reuse
        // (docs/reuse.md). Written just before the end, so whoever sees the success finds the
        // entry; a reusing agent takes an entry only once its build's record says succeeded
        // (an end that never comes leaves an entry nobody takes). A write of its own, not part
        // of the end: a missing entry costs a later build its reuse, nothing more, while an
        // agent whose etcd role predates the reuse index (`kiln etcd-auth setup` not run again)
        // would otherwise lose every build's end.
        if let (key, entry) = build.reuseEntry(keys: keys), let value = try? KilnJSON.encode(entry) {
            do { _ = try await etcd.txn(Txn(compare: [guardCompare], success: [.put(key, value)])) } catch {
                logger.warning("could not record build \(buildID) for reuse: \(error)")
            }
        }
        let r = try await writeEnd(writes, txn)
        if !r.succeeded { throw TaskLostError(build: buildID) }
    }

    /// Writes what the buffer holds, in as many chunks as `LogChunks.group` makes of it (and
    /// an end mark on the last if `end`).
    func flush(end: Bool = false) async throws {
        var chunks = LogChunks.group(buffer.take())
        if chunks.isEmpty {
            guard end else { return }
            chunks = [[]]
        }
        // Numbered before the first write waits: a flush that runs meanwhile (the actor lets
        // one in at each wait) takes the numbers after these, so the log keeps its order.
        let writes = chunks.enumerated().map { numbered($0.element, end: end && $0.offset == chunks.count - 1) }
        // Written after the flush before it has written: a follower of the log sees chunks in
        // etcd's revision order, which must be their numbers' order too.
        let previous = lastWrites
        let these = Task {
            _ = try? await previous?.value
            for (key, value) in writes { try await self.write(key, value) }
        }
        lastWrites = these
        try await these.value
    }

    /// The writes of the last flush, which the next one waits for.
    private var lastWrites: Task<Void, Error>?

    private func numbered(_ lines: [String], end: Bool) -> (key: String, chunk: LogChunk) {
        defer { seq += 1 }
        return (keys.logChunk(build: buildID, attempt: attempt, seq: seq), LogChunk(seq: seq, lines: lines, end: end ? true : nil))
    }

    func write(_ key: String, _ chunk: LogChunk) async throws {
        let txn = Txn(compare: [guardCompare], success: [.put(key, try KilnJSON.encode(chunk))])
        let r = try await persistently("writing the log") { try await etcd.txn(txn) }
        if !r.succeeded { throw TaskLostError(build: buildID) }
    }

    /// From now on the build's secret values are masked in its log and record.
    nonisolated func mask(_ values: [String]) { buffer.mask(values) }

    /// `build` with the secret values masked in what it says of errors (a step's message may
    /// quote the container engine, which may quote the build).
    nonisolated func masked(_ build: Build) -> Build {
        var build = build
        build.error = build.error.map(buffer.masked)
        for i in build.steps.indices { build.steps[i].error = build.steps[i].error.map(buffer.masked) }
        return build
    }

    /// A line of the agent's own (never dropped by the log's cap).
    nonisolated func log(_ line: String) { buffer.append(line) }

    /// A line of the build's output (compile container, image build, push): dropped once the
    /// log has reached its cap.
    nonisolated func output(_ line: String) { buffer.output(line) }
}
