import Etcd
import Foundation
import KilnCore

extension Pruner {
    /// Deletes the reuse index's entry that names `record` (docs/reuse.md), now that the build is
    /// pruned: a later build with its inputs would find the record gone and build for real anyway,
    /// but an entry nobody looks up again (an old commit's) would stay in etcd forever. Only an
    /// entry that still names this build goes, guarded by its revision (a newer build of the same
    /// inputs may have replaced it meanwhile). Best effort: a failure leaves the entry to the
    /// agents, which delete an entry whose build is gone when they meet it.
    func dropReuseEntry(of record: Build) async {
        guard let inputs = record.inputs, BuildInputs.isValidKey(inputs.key) else { return }
        let key = keys.reuseEntry(project: record.project, key: inputs.key, protected: inputs.protected)
        guard let kv = try? await etcd.get(key), let entry = try? KilnJSON.decode(ReuseEntry.self, from: kv.value), entry.build == record.id else { return }
        _ = try? await etcd.txn(Txn(compare: [.modRevision(key, .equal, kv.modRevision)], success: [.delete(key)]))
    }
}
