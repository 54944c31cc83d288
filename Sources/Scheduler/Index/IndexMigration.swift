import Etcd
import Foundation
import KilnCore
import Logging

/// Gives the records made before the indexes (or before the index's current ``schema``) their
/// entries, once per farm: at a scheduler's start, unless `Keys.indexSchema` already says
/// ``schema`` or later.
///
/// - Builds: every record gets `index/builds/{project}/{build}`, and one whose pipeline run
///   waits or runs gets `index/pipelines/{build}`. Records are read a page at a time in etcd's
///   own order (the only full read of the builds, this once), and each page's entries are
///   written in one transaction that compares every record's revision, so a build deleted or
///   changed meanwhile (retention, a run that ended) gets no stale entry: such a page is done
///   again build by build.
/// - Projects: every project gets its repository's entry; an entry of a project whose
///   repository is another now (or that is gone) is removed, compared against the record read.
/// Idempotent: two schedulers starting at once both write the same entries, and the marker.
/// The marker is written last, so a start cut short runs it again.
struct IndexMigration: Sendable {
    /// 1: build, repository and pipeline indexes (issue 14).
    static let schema = 1
    static let pageSize = 50

    let store: SchedulerStore
    let logger: Logger
    /// Called with the ids of each page of builds between its read and its write (tests: a
    /// record that changes meanwhile).
    var afterPageRead: (@Sendable ([String]) async throws -> Void)?

    init(store: SchedulerStore, logger: Logger) {
        self.store = store
        self.logger = logger
    }

    var etcd: EtcdClient { store.etcd }
    var keys: Keys { store.keys }

    /// Returns false if the marker said it was done.
    @discardableResult
    func runIfNeeded() async throws -> Bool {
        let marker = try await etcd.get(keys.indexSchema)
        if let marker, let done = Int(marker.string), done >= Self.schema { return false }
        let started = ContinuousClock.now
        logger.info("indexes: giving existing records their index entries (once per farm; schema \(Self.schema))")
        let projects = try await indexRepositories()
        let (builds, pipelines) = try await indexBuilds()
        // Only over what it found: a newer schema written meanwhile stays.
        _ = try await etcd.txn(Txn(
            compare: [marker.map { .modRevision(keys.indexSchema, .equal, $0.modRevision) } ?? .createRevision(keys.indexSchema, .equal, 0)],
            success: [.put(keys.indexSchema, String(Self.schema))]))
        logger.info("indexes: done in \(ContinuousClock.now - started): \(builds) builds, \(pipelines) pipeline runs, \(projects) projects")
        return true
    }

    /// Every build's entry (and its pending run's), a page at a time. Returns how many of each.
    func indexBuilds() async throws -> (builds: Int, pipelines: Int) {
        var from = keys.builds, builds = 0, pipelines = 0
        let end = EtcdClient.prefixEnd(keys.builds)
        while true {
            let page = try await etcd.range(key: from, rangeEnd: end, options: .init(limit: Self.pageSize))
            var records: [(kv: KeyValue, build: Build)] = []
            for kv in page.kvs {
                guard let b = try? KilnJSON.decode(Build.self, from: kv.value), kv.key == keys.build(b.id) else { continue }
                records.append((kv, b))
            }
            try await afterPageRead?(records.map(\.build.id))
            let compare = records.map { Compare.modRevision($0.kv.key, .equal, $0.kv.modRevision) }
            let ops = records.flatMap { entries(for: $0.build) }
            if !records.isEmpty, try await !etcd.txn(Txn(compare: compare, success: ops)).succeeded {
                for r in records { try await indexOne(r.build.id) }
            }
            builds += records.count
            pipelines += records.filter { Self.runWaits($0.build) }.count
            if builds > 0, builds % 5000 < records.count { logger.info("indexes: \(builds) builds so far") }
            guard page.more, let last = page.kvs.last else { return (builds, pipelines) }
            from = last.key + "\0"
        }
    }

    /// One build's entries, compared against the record as it is now (it changed meanwhile).
    private func indexOne(_ id: String) async throws {
        for _ in 0..<10 {
            guard let kv = try await etcd.get(keys.build(id)) else { return }  // gone: no entry
            guard let b = try? KilnJSON.decode(Build.self, from: kv.value) else { return }
            let r = try await etcd.txn(Txn(compare: [.modRevision(kv.key, .equal, kv.modRevision)], success: entries(for: b)))
            if r.succeeded { return }
        }
        throw KilnError.unavailable("indexes: build \(id) kept changing while its index entries were written; the next start tries again")
    }

    private func entries(for b: Build) -> [TxnOp] {
        [.put(keys.buildIndexEntry(project: b.project, build: b.id), "")]
            + (Self.runWaits(b) ? [.put(keys.pipelineIndexEntry(build: b.id), "")] : [])
    }

    /// A run the pipeline service has to start or finish (as it offers them).
    static func runWaits(_ b: Build) -> Bool {
        b.status == .succeeded && (b.deploy.map { !$0.status.isFinal } ?? false)
    }

    /// Every project's repository entry, and no entry of another repository. Returns how many projects.
    func indexRepositories() async throws -> Int {
        let projects = try await etcd.range(prefix: keys.projects).kvs
        var wanted: [String: (kv: KeyValue, index: String)] = [:]
        for kv in projects {
            guard let p = try? KilnJSON.decode(Project.self, from: kv.value), kv.key == keys.project(p.name) else { continue }
            let entry = keys.repoIndexEntry(url: SchedulerStore.repositoryIndexName(p.repository), project: p.name)
            wanted[p.name] = (kv, entry)
            _ = try await etcd.txn(Txn(compare: [.modRevision(kv.key, .equal, kv.modRevision)], success: [.put(entry, "")]))
        }
        for kv in try await etcd.range(prefix: keys.repoIndex, options: .init(keysOnly: true)).kvs {
            guard let project = kv.key.split(separator: "/").last.map(String.init), wanted[project]?.index != kv.key else { continue }
            // The project changed since it was read: its own save keeps its entry right.
            let unchanged: Compare = wanted[project].map { .modRevision($0.kv.key, .equal, $0.kv.modRevision) }
                ?? .createRevision(keys.project(project), .equal, 0)
            _ = try await etcd.txn(Txn(compare: [unchanged], success: [.delete(kv.key)]))
        }
        return wanted.count
    }
}
