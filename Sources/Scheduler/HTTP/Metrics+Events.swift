import Etcd
import Foundation
import KilnCore
import Logging
import ServiceLifecycle

/// Keeps a scheduler's ``SchedulerMetrics`` current as build records change: a watch of
/// `/kiln/builds/` from the revision at its start, with each change's record before it, turned
/// into a ``BuildChange``. It never reads the records that exist (what happened before the
/// scheduler started is not its to count), so its cost follows the writes, not the history.
///
/// The watch resumes after a dropped connection from the revision it had reached, so no change
/// is counted twice or missed. If etcd compacted that revision meanwhile (a connection lost
/// for longer than etcd keeps history), the changes between are lost to the counters and it
/// goes on from there; `EtcdWatch` then reads the whole prefix once to resync, which this
/// ignores (it says nothing about transitions). Every scheduler runs one.
struct BuildEventCounter: Service {
    let store: SchedulerStore
    let metrics: SchedulerMetrics
    let logger: Logger

    func run() async throws {
        await cancelWhenGracefulShutdown {
            var from: Int64?
            var backoff = Duration.milliseconds(200)
            while !Task.isCancelled {
                do {
                    for try await update in store.etcd.watch(prefix: store.keys.builds, fromRevision: from, prevKV: true) {
                        backoff = .milliseconds(200)
                        switch update {
                        case .events(let events, let revision):
                            for e in events { count(e) }
                            from = revision + 1
                        case .reset(_, let revision):
                            logger.warning("build metrics: etcd compacted the revisions being watched; changes before revision \(revision) were not counted")
                            from = revision + 1
                        }
                    }
                } catch {
                    if Task.isCancelled { return }
                    logger.warning("build metrics: the watch of build records failed (\(error)); watching again in \(backoff)")
                }
                do { try await Task.sleep(for: backoff) } catch { return }
                backoff = min(backoff * 2, .seconds(5))
            }
        }
    }

    private func count(_ e: WatchEvent) {
        guard e.kind == .put, let after = try? KilnJSON.decode(Build.self, from: e.kv.value) else { return }
        let before = e.prevKV.flatMap { try? KilnJSON.decode(Build.self, from: $0.value) }
        // A record that was there but does not decode is not a new build.
        if before == nil, e.prevKV != nil { return }
        metrics.record(BuildChange(before: before, after: after))
    }
}
