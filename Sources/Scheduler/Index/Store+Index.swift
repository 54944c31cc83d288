import Etcd
import Foundation
import KilnCore

/// The indexes beside the records (`Keys.index`): who writes which entry, and the reads that
/// use them instead of reading every record.
///
/// - `index/builds/{project}/{build}`: written with the build's record in the enqueue's
///   transaction; removed with the record by whoever deletes it (retention).
/// - `index/repos/{url}/{project}`: written and removed in the project's save transaction
///   (``repositoryIndexWrites(project:from:to:)``). `url` is the repository as the GitLab
///   webhook compares it (``GitLabWebhook/normalized(_:)``), escaped into one key component.
/// - `index/pipelines/{build}`: written where a pipeline run becomes pending (the agent's end
///   transaction, ``requestPipelineRun(build:trigger:)``), removed by the pipeline service in
///   the transaction that ends the run.
/// Existing data from before the indexes gets its entries once (``IndexMigration``).
extension SchedulerStore {
    /// The repository index's component for a repository URL.
    static func repositoryIndexName(_ repository: String) -> String {
        escapeKeyPart(GitLabWebhook.normalized(repository))
    }

    /// The writes that keep the repository index right when a project's repository goes from
    /// `old` (nil: a new project) to `new`: for the project's save transaction, which compares
    /// the record it replaces, so the old entry removed is the one that was written.
    func repositoryIndexWrites(project: String, from old: String?, to new: String) -> [TxnOp] {
        let newName = Self.repositoryIndexName(new)
        var ops: [TxnOp] = [.put(keys.repoIndexEntry(url: newName, project: project), "")]
        if let old, Self.repositoryIndexName(old) != newName {
            ops.append(.delete(keys.repoIndexEntry(url: Self.repositoryIndexName(old), project: project)))
        }
        return ops
    }

    /// The projects whose repository is one of `repositories` (as the webhook compares them),
    /// through the repository index. An entry whose project is gone or has another repository
    /// now (a record changed by hand, outside the save) is left out.
    func projects(withRepositoryIn repositories: Set<String>) async throws -> [Project] {
        var names: Set<String> = []
        for name in Set(repositories.map(Self.repositoryIndexName)) {
            let prefix = keys.repoIndex(url: name)
            for kv in try await etcd.range(prefix: prefix, options: .init(keysOnly: true)).kvs {
                if let project = Keys.name(of: kv.key, under: prefix), !project.contains("/") { names.insert(project) }
            }
        }
        let sorted = names.sorted()
        var found: [Project] = []
        for start in stride(from: 0, to: sorted.count, by: Self.getsPerTxn) {
            let some = Array(sorted[start..<min(start + Self.getsPerTxn, sorted.count)])
            let r = try await etcd.txn(Txn(success: some.map { .get(keys.project($0)) }))
            for response in r.responses {
                guard let kv = response.kvs.first, let p = try? KilnJSON.decode(Project.self, from: kv.value),
                      repositories.contains(GitLabWebhook.normalized(p.repository)) else { continue }
                found.append(p)
            }
        }
        return found
    }

    /// The builds of `project` that have not ended: those in the queue, and with
    /// `includingRunning` those with a task. Reads the queue's and the tasks' keys (as many
    /// as there are builds waiting or running in the farm), keeps the project's through its
    /// index, and reads only their records.
    func unendedBuilds(of project: String, includingRunning: Bool) async throws -> [Build] {
        var ids = try await etcd.range(prefix: keys.queue, options: .init(keysOnly: true)).kvs.compactMap { Keys.name(of: $0.key, under: keys.queue) }
        if includingRunning {
            ids += try await etcd.range(prefix: keys.tasks, options: .init(keysOnly: true)).kvs.compactMap { keys.taskOwner($0.key)?.build }
        }
        let candidates = Array(Set(ids.filter(BuildID.isValid))).sorted()
        var mine: [String] = []
        for start in stride(from: 0, to: candidates.count, by: Self.getsPerTxn) {
            let some = Array(candidates[start..<min(start + Self.getsPerTxn, candidates.count)])
            let r = try await etcd.txn(Txn(success: some.map { .get(keys.buildIndexEntry(project: project, build: $0)) }))
            for (id, response) in zip(some, r.responses) where !response.kvs.isEmpty { mine.append(id) }
        }
        return try await records(mine).filter { $0.project == project }
    }
}
