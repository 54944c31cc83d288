import Etcd
import Foundation

/// When etcd fills faster than its own periodic compaction empties it, Kiln compacts it
/// sooner. etcd keeps every revision of the history it was told to keep (`kiln up`: 5
/// minutes); a farm writing logs fast (every build's live chunks pass through etcd before the
/// archive takes them) can fill a small quota within that window, and a database file that
/// reaches its quota raises NOSPACE, which stops every write until someone compacts,
/// defragments and disarms by hand.
///
/// The rule, without I/O or clock: each look at etcd leaves a mark (when, and the newest
/// revision any member reported). Once a member's in-use size reaches `threshold` of its
/// quota, the history is compacted at the newest mark at least `minHistory` old, unless it
/// already was. The in-use size then holds the live keys plus about `minHistory` and one
/// interval of writes; pages freed are reused by etcd, so the file stops growing.
///
/// A watch further behind than `minHistory` is told its revision was compacted; Kiln's own
/// watches then read what they follow again (`EtcdFollow`), and log followers carry on from
/// the archive.
struct PressureCompaction: Sendable {
    /// Share of a member's quota in use from which history is compacted early (0.5: half).
    var threshold: Double
    /// History always kept, however full etcd is.
    var minHistory: TimeInterval
    private(set) var marks: [(at: Date, revision: Int64)] = []
    /// The revision this scheduler last compacted at.
    private(set) var compactedAt: Int64 = 0

    init(threshold: Double = 0.5, minHistory: TimeInterval = 30) {
        self.threshold = threshold
        self.minHistory = minHistory
    }

    /// What to compact at after `look`, if anything: the revision, and the member that is full.
    mutating func observe(_ look: EtcdLook, at now: Date) -> (revision: Int64, member: EtcdLook.Member)? {
        let answered = look.members.filter { $0.status != nil }
        if let newest = answered.map({ $0.status!.revision }).max(), newest > (marks.last?.revision ?? 0) {
            marks.append((now, newest))
        }
        // Marks older than the one a compaction would use are no longer needed.
        if let keep = marks.lastIndex(where: { now.timeIntervalSince($0.at) >= minHistory }), keep > 0 {
            marks.removeFirst(keep)
        }
        guard threshold > 0,
              let full = answered.first(where: { Double($0.status!.dbSizeInUseBytes) >= threshold * Double($0.quotaBytes) }),
              let mark = marks.last(where: { now.timeIntervalSince($0.at) >= minHistory }),
              mark.revision > compactedAt else { return nil }
        return (mark.revision, full)
    }

    /// The compaction at `revision` was done (or etcd had already compacted past it).
    mutating func compacted(at revision: Int64) {
        compactedAt = max(compactedAt, revision)
    }
}
