import Etcd
import Foundation
import KilnCore
import Logging
import Synchronization

/// Moves ended builds' logs out of etcd into the log archive, on the leader (docs/logs.md).
///
/// A build's log is archived when it is complete: the build has ended (its end chunk and its
/// final record are one transaction) and no pipeline run of it is pending or running (the
/// run's last line ends its log). The archiver learns of it from the chunks marked `end`
/// (a watch of `/kiln/logs/` from the term's start), and at the start of the term and every
/// `sweepEvery` it walks the keys of `/kiln/logs/` (keys only, a page at a time: never a value
/// or a build record; `LogArchiver+Walk.swift`), so a build that ended under an earlier
/// leader, or whose archive failed, is found too; each build found costs one read of its
/// record, and a running one no more. One pass of a build (``pass(_:fence:)``):
/// store the whole log (the archived lines and the chunks after them, in reader order), and
/// only once the archive has it, write the record's mark and delete exactly those chunks,
/// each compared with the revision it was read at, in transactions fenced by the term.
///
/// When the archive is down or failing, the chunks stay in etcd and the archive is tried again
/// later with one build, then the others (``ArchiveQueue``: 5 s, doubling, at most 5 min by
/// default); no build waits for it.
public struct LogArchiver: Sendable {
    public struct Configuration: Sendable {
        /// The first wait before a failed build is tried again; doubled for each failure in a row.
        public var retryAfter: Duration
        /// The longest wait between tries.
        public var retryAtMost: Duration
        /// How often the whole of `/kiln/logs/` is walked for ended builds (the watch finds
        /// them as they end; this finds what it could not).
        public var sweepEvery: Duration

        public init(retryAfter: Duration = .seconds(5), retryAtMost: Duration = .seconds(300), sweepEvery: Duration = .seconds(600)) {
            self.retryAfter = retryAfter
            self.retryAtMost = retryAtMost
            self.sweepEvery = sweepEvery
        }
    }

    let store: SchedulerStore
    let archive: any LogArchive
    let configuration: Configuration
    let logger: Logger

    /// `store`'s archive is the one logs go to; a store without one archives nothing.
    public init?(store: SchedulerStore, configuration: Configuration = .init(), logger: Logger) {
        guard let archive = store.logArchive else { return nil }
        self.store = store
        self.archive = archive
        self.configuration = configuration
        self.logger = logger
    }

    var etcd: EtcdClient { store.etcd }
    var keys: Keys { store.keys }

    enum Input: Sendable {
        case offer(String)
        case tick
    }

    /// Archives until the term ends (the task is cancelled). `fence`: the term's compare.
    func lead(fence: [Compare]) async {
        let inbox = Inbox<Input>()
        let queue = Mutex(ArchiveQueue(retryAfter: configuration.retryAfter, retryAtMost: configuration.retryAtMost))
        logger.info("archiving ended builds' logs into \(archive)")
        let leftovers = await archive.removeLeftovers(olderThan: 3600)
        if leftovers > 0 { logger.notice("removed \(leftovers) unfinished writes older than an hour from \(archive) (a scheduler was stopped while it wrote them)") }
        await withDiscardingTaskGroup { group in
            group.addTask { await watchEnds(into: inbox) }
            group.addTask {
                while !Task.isCancelled {
                    await sweep(into: inbox)
                    try? await Task.sleep(for: configuration.sweepEvery)
                }
            }
            group.addTask {
                // Wakes the loop for builds whose retry is due; only this process's queue is read.
                let every = min(.seconds(1), configuration.retryAfter)
                while (try? await Task.sleep(for: every)) != nil { inbox.push(.tick) }
            }
            for await batch in inbox.batches {
                queue.withLock { q in
                    for case .offer(let build) in batch { q.offer(build, now: .now) }
                }
                while !Task.isCancelled, let build = queue.withLock({ $0.take(now: .now) }) {
                    await passReporting(build, fence: fence, queue: queue)
                }
                if Task.isCancelled { break }
            }
            group.cancelAll()
        }
    }

    /// One pass of `build`, its outcome told to the queue and, when it failed, to the log:
    /// a down archive once when it fails, then every tenth try, and once when it works again;
    /// a build that fails on its own at its first failure, then every tenth.
    private func passReporting(_ build: String, fence: [Compare], queue: borrowing Mutex<ArchiveQueue>) async {
        do {
            try await pass(build, fence: fence)
            let (wasDown, waiting) = queue.withLock { q in
                defer { q.succeeded(build) }
                return (q.archiveFailures > 0, q.count)
            }
            if wasDown {
                logger.notice("the log archive stores again; \(waiting) more build\(waiting == 1 ? "" : "s") to look at")
            }
        } catch let failure as StoreFailure {
            if Task.isCancelled { return }
            let (delay, n, waiting) = queue.withLock { q in
                let d = q.archiveFailed(build, now: .now)
                return (d, q.archiveFailures, q.count)
            }
            if n == 1 || n % 10 == 0 {
                logger.warning("the log archive cannot store (\(failure); try \(n)): ended builds' logs stay in etcd; trying again in \(delay), \(waiting) build\(waiting == 1 ? "" : "s") waiting",
                               metadata: ["build.id": "\(build)"])
            }
        } catch {
            if Task.isCancelled { return }
            let (delay, n) = queue.withLock { q in (q.failed(build, now: .now), q.failures(of: build)) }
            if n == 1 || n % 10 == 0 {
                logger.warning("archiving build \(build)'s log failed (try \(n)): \(error); its chunks stay in etcd, tried again in \(delay)",
                               metadata: ["build.id": "\(build)"])
            }
        }
    }

    /// Offers every build whose chunk marked `end` is written from now on.
    private func watchEnds(into inbox: Inbox<Input>) async {
        var backoff = Duration.milliseconds(200)
        while !Task.isCancelled {
            do {
                let start = try await etcd.status()
                for try await update in etcd.watch(prefix: keys.logs, fromRevision: start + 1) {
                    backoff = .milliseconds(200)
                    switch update {
                    case .events(let events, _):
                        for e in events where e.kind == .put {
                            guard let chunk = try? KilnJSON.decode(LogChunk.self, from: e.kv.value), chunk.end == true,
                                  let (build, _) = LogNames.split(e.kv.key, under: keys.logs) else { continue }
                            inbox.push(.offer(build))
                        }
                    case .reset:
                        // Events were lost to compaction: walk the logs for ended builds instead.
                        await sweep(into: inbox)
                    }
                }
                return
            } catch {
                if Task.isCancelled { return }
                logger.warning("watching the logs for ended builds failed: \(error); watching again in \(backoff)")
                try? await Task.sleep(for: backoff)
                backoff = min(backoff * 2, .seconds(5))
                await sweep(into: inbox)
            }
        }
    }

    /// Offers every build that has a chunk in etcd: one range of one key per build.
    func sweep(into inbox: Inbox<Input>) async {
        do {
            let found = try await buildsWithLogs { inbox.push(.offer($0)) }
            if found > 0 { logger.debug("\(found) builds have log chunks in etcd") }
        } catch {
            if !Task.isCancelled { logger.warning("walking the logs in etcd for ended builds failed: \(error); trying at the next sweep") }
        }
    }
}
