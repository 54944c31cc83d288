import Etcd
import Foundation
import KilnCore
import Logging
import Plugins
import Synchronization

/// Runs post-build pipelines while this scheduler leads.
///
/// A build that succeeds carries its first run (`deploy`, status `pending`) in the same
/// write that records the success, with its entry in the pipeline index
/// (`index/pipelines/{build}`), so a run is never lost; "run again" writes both too. The
/// leader follows the index (the runs that wait or run, not every build record), reads those
/// builds, and runs each pending run and each `running` run left by an earlier term (started
/// over, skipping the steps that succeeded). The write that ends a run removes its entry; an
/// entry whose run has ended or whose build is gone is removed when it is read. Runs of one
/// project go one at a time, oldest build first, so two versions of an app never deploy into
/// each other. Every write is fenced by the leader's term.
public struct PipelineService: Sendable {
    let store: SchedulerStore
    let runner: PipelineRunner
    let logger: Logger

    public init(store: SchedulerStore, runner: PipelineRunner, logger: Logger) {
        self.store = store
        self.runner = runner
        self.logger = logger
    }

    var etcd: EtcdClient { store.etcd }
    var keys: Keys { store.keys }

    /// Runs pipelines until cancelled (the term's end).
    func lead(term: String, fence: [Compare]) async {
        let lanes = Lanes()
        await withDiscardingTaskGroup { group in
            for await update in etcd.follow(prefix: keys.pipelineIndex) {
                let entries: [KeyValue]
                switch update {
                case .reset(let kvs, _): entries = kvs
                case .events(let events, _): entries = events.filter { $0.kind == .put }.map(\.kv)
                }
                let ids = entries.compactMap { Keys.name(of: $0.key, under: keys.pipelineIndex) }.filter(BuildID.isValid)
                guard !ids.isEmpty, let records = await read(ids) else { continue }
                for id in ids {
                    let kv = records[id]
                    guard let kv, let b = try? KilnJSON.decode(Build.self, from: kv.value), let run = b.deploy,
                          b.status == .succeeded, !run.status.isFinal else {
                        // Nothing to run: the run ended (its end removed the entry, or not yet), or
                        // the build is gone. Compared with the record read, so that a run asked
                        // for meanwhile keeps its entry.
                        let unchanged: Compare = kv.map { .modRevision($0.key, .equal, $0.modRevision) } ?? .createRevision(keys.build(id), .equal, 0)
                        _ = try? await etcd.txn(Txn(compare: fence + [unchanged], success: [.delete(keys.pipelineIndexEntry(build: id))]))
                        continue
                    }
                    guard run.status == .pending || run.runner != term else { continue }
                    if let start = lanes.offer(project: b.project, build: b.id, createdAt: b.createdAt) {
                        group.addTask { await drive(lane: b.project, first: start, lanes: lanes, term: term, fence: fence) }
                    }
                }
            }
        }
    }

    /// The records of `ids` (those that exist) by id, read again until etcd answers; nil once cancelled.
    private func read(_ ids: [String]) async -> [String: KeyValue]? {
        var backoff = Duration.milliseconds(200)
        while !Task.isCancelled {
            do {
                var found: [String: KeyValue] = [:]
                for start in stride(from: 0, to: ids.count, by: SchedulerStore.getsPerTxn) {
                    let some = Array(ids[start..<min(start + SchedulerStore.getsPerTxn, ids.count)])
                    let r = try await etcd.txn(Txn(success: some.map { .get(keys.build($0)) }))
                    for (id, response) in zip(some, r.responses) { found[id] = response.kvs.first }
                }
                return found
            } catch {
                logger.warning("pipelines: cannot read the builds of the pipeline index (\(error)); trying again in \(backoff)")
                do { try await Task.sleep(for: backoff) } catch { return nil }
                backoff = min(backoff * 2, .seconds(5))
            }
        }
        return nil
    }

    /// Runs a project's pending runs one after another until its lane is empty.
    private func drive(lane: String, first: String, lanes: Lanes, term: String, fence: [Compare]) async {
        var next: String? = first
        while let build = next, !Task.isCancelled {
            do {
                try await execute(build: build, term: term, fence: fence)
            } catch {
                if Task.isCancelled { return }
                logger.warning("pipeline of build \(build) stopped: \(error)", metadata: ["build.id": "\(build)"])
            }
            next = lanes.done(project: lane, build: build)
        }
    }

    /// Claims the build's run for this term and runs it.
    func execute(build id: String, term: String, fence: [Compare]) async throws {
        let key = keys.build(id)
        guard let claimed = try await claim(id, term: term, fence: fence), var run = claimed.build.deploy else { return }
        let build = claimed.build
        let revision = Mutex(claimed.revision)
        var log = logger
        log[metadataKey: "build.id"] = "\(id)"
        log[metadataKey: "project"] = "\(build.project)"
        log.info("pipeline run \(run.run) starting")

        // The log of this run continues after what an earlier attempt of it wrote.
        let runNumber = run.run
        let chunkPrefix = String(keys.pipelineLogChunk(build: id, run: runNumber, seq: 0).dropLast(8))
        let seq = Mutex(Int(try await etcd.range(prefix: chunkPrefix).kvs.count))
        let etcd = self.etcd, keys = self.keys
        let writeLog: @Sendable (String, Bool) async -> Void = { line, end in
            let n = seq.withLock { s -> Int in defer { s += 1 }; return s }
            let chunk = LogChunk(seq: n, lines: [line], end: end ? true : nil)
            guard let value = try? KilnJSON.encode(chunk) else { return }
            _ = try? await etcd.txn(Txn(compare: fence, success: [.put(keys.pipelineLogChunk(build: id, run: runNumber, seq: n), value)]))
        }
        let snapshot = Mutex(build)
        let record: @Sendable (PipelineRun) async throws -> Void = { run in
            // The run's entry in the index goes with the write that ends it.
            let unindex: [TxnOp] = run.status.isFinal ? [.delete(keys.pipelineIndexEntry(build: id))] : []
            for _ in 0..<10 {
                var b = snapshot.withLock { $0 }
                b.deploy = run
                let r = try await etcd.txn(Txn(compare: fence + [.modRevision(key, .equal, revision.withLock { $0 })],
                                               success: [.put(key, try KilnJSON.encode(b))] + unindex))
                if r.succeeded {
                    revision.withLock { $0 = r.revision }
                    return
                }
                // Another field of the record changed (its log archived, say): fine while the
                // run in it is still this term's; anything else means another leader took it.
                guard let kv = try await etcd.get(key), let now = try? KilnJSON.decode(Build.self, from: kv.value),
                      now.deploy?.run == run.run, now.deploy?.runner == term, !(now.deploy?.status.isFinal ?? true) else { break }
                snapshot.withLock { $0 = now }
                revision.withLock { $0 = kv.modRevision }
            }
            throw KilnError.conflict("build \(id)'s record changed under its pipeline run (another scheduler leads now?); this run stops here")
        }
        let project: Project
        do {
            project = try await store.project(build.project)
        } catch let e as KilnError where e.isNotFound {
            run.status = .failed
            run.finishedAt = Date()
            run.error = "project \(build.project) was deleted before its pipeline ran"
            try await record(run)
            await writeLog("==> pipeline run \(runNumber) failed: \(run.error!)", true)
            return
        }
        let ended = try await runner.run(run, build: build, project: project, log: { await writeLog($0, false) }, record: record)
        await writeLog("==> end of pipeline run \(runNumber): \(ended.status.rawValue)", true)
        log.info("pipeline run \(runNumber) \(ended.status.rawValue)", metadata: ended.error.map { ["error": "\($0)"] } ?? [:])
    }

    /// Marks the build's run as this term's, comparing the record read (again if another field
    /// of it changed meanwhile). Nil: there is nothing for this term to run (the run ended, is
    /// this term's already, or the build is gone), or this scheduler no longer leads.
    private func claim(_ id: String, term: String, fence: [Compare]) async throws -> (build: Build, revision: Int64)? {
        let key = keys.build(id)
        for _ in 0..<10 {
            guard let kv = try await etcd.get(key), var build = try? KilnJSON.decode(Build.self, from: kv.value),
                  var run = build.deploy, !run.status.isFinal, run.runner != term else { return nil }
            run.runner = term
            build.deploy = run
            let claim = try await etcd.txn(Txn(compare: fence + [.modRevision(key, .equal, kv.modRevision)], success: [.put(key, try KilnJSON.encode(build))]))
            if claim.succeeded { return (build, claim.revision) }
            if try await !etcd.txn(Txn(compare: fence)).succeeded { return nil }  // the term is over
        }
        throw KilnError.unavailable("build \(id)'s record kept changing; its pipeline run waits for the next offer")
    }

    /// Which project runs which build, and which builds wait for their project's turn.
    final class Lanes: Sendable {
        private struct State {
            /// Project → the build whose run is under way.
            var running: [String: String] = [:]
            var waiting: [String: [(build: String, createdAt: Date)]] = [:]
        }
        private let state = Mutex(State())

        /// Returns the build to start now if the project's lane was free; otherwise the build
        /// waits its turn (once, however often it is offered).
        func offer(project: String, build: String, createdAt: Date) -> String? {
            state.withLock { s in
                guard let current = s.running[project] else {
                    s.running[project] = build
                    return build
                }
                if current == build { return nil }
                if !(s.waiting[project] ?? []).contains(where: { $0.build == build }) {
                    s.waiting[project, default: []].append((build, createdAt))
                    s.waiting[project]!.sort { $0.createdAt < $1.createdAt }
                }
                return nil
            }
        }

        /// The next build of the project, or nil (the lane is free again).
        func done(project: String, build: String) -> String? {
            state.withLock { s in
                s.waiting[project]?.removeAll { $0.build == build }
                guard var queue = s.waiting[project], !queue.isEmpty else {
                    s.running[project] = nil
                    s.waiting[project] = nil
                    return nil
                }
                let next = queue.removeFirst()
                s.waiting[project] = queue
                s.running[project] = next.build
                return next.build
            }
        }
    }
}
