import Etcd
import Foundation
import KilnCore
import Logging
import Plugins
import Synchronization

/// Runs post-build pipelines while this scheduler leads.
///
/// A build that succeeds carries its first run (`deploy`, status `pending`) in the same
/// write that records the success, so a run is never lost: the leader reads every build
/// at the start of its term, then watches `/kiln/builds/`, and runs each pending run, and
/// each `running` run left by an earlier term (started over, skipping the steps that
/// succeeded). Runs of one project go one at a time, oldest build first, so two versions of
/// an app never deploy into each other. Every write is fenced by the leader's term.
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
            func offer(_ kv: KeyValue) {
                guard let b = try? KilnJSON.decode(Build.self, from: kv.value), let run = b.deploy, b.status == .succeeded else { return }
                guard run.status == .pending || (run.status == .running && run.runner != term) else { return }
                if let start = lanes.offer(project: b.project, build: b.id, createdAt: b.createdAt) {
                    group.addTask { await drive(lane: b.project, first: start, lanes: lanes, term: term, fence: fence) }
                }
            }
            for await update in etcd.follow(prefix: keys.builds) {
                switch update {
                case .reset(let kvs, _): for kv in kvs { offer(kv) }
                case .events(let events, _): for e in events where e.kind == .put { offer(e.kv) }
                }
            }
        }
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
        guard let kv = try await etcd.get(key), var build = try? KilnJSON.decode(Build.self, from: kv.value),
              var run = build.deploy, !run.status.isFinal, run.runner != term else { return }
        run.runner = term
        build.deploy = run
        let claim = try await etcd.txn(Txn(compare: fence + [.modRevision(key, .equal, kv.modRevision)], success: [.put(key, try KilnJSON.encode(build))]))
        guard claim.succeeded else { return }  // changed meanwhile: the watch offers it again if still due
        let revision = Mutex(claim.revision)
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
        let snapshot = build
        let record: @Sendable (PipelineRun) async throws -> Void = { run in
            var b = snapshot
            b.deploy = run
            let r = try await etcd.txn(Txn(compare: fence + [.modRevision(key, .equal, revision.withLock { $0 })], success: [.put(key, try KilnJSON.encode(b))]))
            guard r.succeeded else {
                throw KilnError.conflict("build \(id)'s record changed under its pipeline run (another scheduler leads now?); this run stops here")
            }
            revision.withLock { $0 = r.revision }
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
