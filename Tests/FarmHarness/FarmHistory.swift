import Etcd
import Foundation
import KilnCore
import LocalFarm

/// The history of a farm as one etcd watch delivers it (logs left out), for `RunOnceCheck`
/// and for a progress line: every event with when this process saw it, and the task and
/// queue keys alive now.
///
/// `follow` runs until its task is cancelled; everything else may be asked meanwhile.
public actor FarmHistory {
    public let keys: Keys
    public private(set) var events: [FarmEvent] = []
    /// The revision up to which the watch has delivered.
    public private(set) var revision: Int64 = 0
    /// Whether the watch's history was compacted away at least once (events are missing).
    public private(set) var compacted = false
    private var endedBuilds = Set<String>()
    private var tasks = Set<String>()
    private var queue = Set<String>()

    public init(keys: Keys) { self.keys = keys }

    public var liveTasks: Int { tasks.count }
    public var liveQueue: Int { queue.count }
    public func ended(of ids: Set<String>) -> Int { endedBuilds.intersection(ids).count }

    /// The check over everything seen so far.
    public func check() -> RunOnceCheck { RunOnceCheck(events, keys: keys) }

    /// Records every change under `prefix` from `revision` on (1: the whole history, whenever
    /// it starts). When the history it resumes from was compacted, it throws if
    /// `failOnCompaction`, else goes on from the present with `compacted` set.
    public func follow(_ etcd: EtcdClient, prefix: String, from revision: Int64, failOnCompaction: Bool) async throws {
        for try await update in etcd.watch(prefix: prefix, fromRevision: revision) {
            switch update {
            case .events(let list, let rev):
                let now = Date()
                for e in list where !e.kv.key.hasPrefix(keys.logs) { add(FarmEvent(e, keys: keys, seenAt: now)) }
                self.revision = rev
            case .reset(_, let rev):
                if failOnCompaction { throw FarmError("the history under \(prefix) was compacted while it was followed; the check needs all of it") }
                compacted = true
                self.revision = rev
            }
        }
    }

    private func add(_ e: FarmEvent) {
        events.append(e)
        if let record = e.record, record.status.isFinal { endedBuilds.insert(record.id) }
        if e.key.hasPrefix(keys.tasks) {
            if e.kind == .put { tasks.insert(e.key) } else { tasks.remove(e.key) }
        } else if e.key.hasPrefix(keys.queue) {
            if e.kind == .put { queue.insert(e.key) } else { queue.remove(e.key) }
        }
    }
}
