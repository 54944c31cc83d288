import Etcd
import Foundation
import KilnCore

extension Pruner {
    /// Removes the stopped versions each app keeps past its `keepVersions`
    /// (``App/prunedVersions()``), each app in one write guarded by the revision read. The
    /// deploy plugins prune at every write of an app; this catches apps written before the
    /// rule, or not since their setting was lowered. Returns how many versions went.
    func trimApps(_ kvs: [KeyValue], fence: [Compare]) async throws -> Int {
        var removed = 0
        for kv in kvs {
            guard let app = try? KilnJSON.decode(App.self, from: kv.value) else { continue }
            let (kept, gone) = app.prunedVersions()
            guard !gone.isEmpty else { continue }
            var trimmed = kept
            trimmed.updatedAt = Date()
            let r = try await etcd.txn(Txn(compare: fence + [.modRevision(kv.key, .equal, kv.modRevision)],
                                           success: [.put(kv.key, try KilnJSON.encode(trimmed))]))
            guard r.succeeded else { continue }  // written meanwhile: that write pruned it, or the next pass will
            removed += gone.count
            logger.info("retention: app \(app.name) keeps \(app.effectiveKeepVersions) versions; pruned \(gone.map { "v\($0.number)" }.joined(separator: ", "))",
                        metadata: ["app": "\(app.name)"])
        }
        return removed
    }

    /// Deletes activity events older than their resource's age: a project's own `keepDays`;
    /// an app's, its owning project's; a group's (and a deleted resource's), the default. An
    /// event's key starts with its time, so the old ones of a resource are one range, read
    /// and deleted `batchSize` at a time. Returns how many went.
    func pruneActivity(projects: [String: BuildRetention?], apps: [KeyValue], fence: [Compare], now: Date) async throws -> Int {
        let owners = Dictionary(apps.compactMap { kv in (try? KilnJSON.decode(App.self, from: kv.value)).map { ($0.name, $0.owner) } }) { a, _ in a }
        func keepDays(_ kind: ResourceKind, _ name: String) -> Int? {
            let project: String?
            switch kind {
            case .project: project = name
            case .app: project = owners[name] ?? nil
            case .group: project = nil
            }
            guard let project, let found = projects[project] else { return BuildRetention.defaultKeepDays }
            return found?.keepDays  // a project record that does not decode: its events stay
        }
        var pruned = 0
        for kind in ResourceKind.allCases {
            for name in try await names(under: keys.activity + kind.plural + "/") {
                guard let days = keepDays(kind, name) else { continue }
                let prefix = keys.activity(kind, name)
                let end = prefix + RetentionPolicy.activityCutoffKey(BuildRetention(keepDays: days).cutoff(now: now))
                while !Task.isCancelled {
                    let old = try await etcd.range(key: prefix, rangeEnd: end, limit: configuration.batchSize)
                    guard !old.kvs.isEmpty else { break }
                    // Events never change once written, so only the term guards the delete.
                    let r = try await etcd.txn(Txn(compare: fence, success: old.kvs.map { .delete($0.key) }))
                    guard r.succeeded else { return pruned }  // the term is over
                    pruned += old.kvs.count
                    guard old.more else { break }
                    try await Task.sleep(for: configuration.pause)
                }
            }
        }
        return pruned
    }
}
