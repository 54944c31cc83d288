import Foundation
import KilnCore

/// Which of a project's builds retention prunes (docs/retention.md). Pure: no I/O, no clock;
/// the ``Pruner`` reads etcd, asks, and carries the answer out.
///
/// A project's builds are read from its index (`index/builds/{project}/{build}`), oldest
/// first, a page at a time. A build is kept, the first rule that holds deciding:
/// 1. a version of an app refers to it (one that runs, or a retired one the app keeps as a
///    roll-back candidate);
/// 2. it is not final (queued, assigned, running): its agent may still write it;
/// 3. its post-build pipeline run waits or runs;
/// 4. it is among the project's last `keepBuilds`;
/// 5. it is younger than `keepDays`;
/// 6. its record does not decode (a newer scheduler's, or damaged), or names another build or
///    project than its index entry: a person decides.
/// Otherwise it is pruned; so is an index entry whose record is gone.
///
/// Since ids sort by creation time, once a build is among the last `keepBuilds` or younger
/// than `keepDays`, so is every later one: the walk stops there (``Page/done``), so a pass
/// reads only the builds it may prune and the first it keeps.
public enum RetentionPolicy {
    /// One index entry with what etcd holds for it.
    public struct Entry: Sendable, Equatable {
        public enum Record: Sendable, Equatable {
            case build(Build)
            /// The index names a build whose record is gone.
            case missing
            /// The record does not decode, or names another build or project.
            case unreadable
        }
        public var id: String
        public var record: Record

        public init(id: String, record: Record) {
            self.id = id
            self.record = record
        }
    }

    /// Why a build stays.
    public enum KeepReason: Sendable, Equatable {
        case referenced(String)
        case notFinal(BuildStatus)
        case pipelineRun(PipelineStatus)
        case amongLast(Int)
        case younger(days: Int)
        case unreadable
    }

    public enum Verdict: Sendable, Equatable {
        case prune
        case keep(KeepReason)
    }

    /// One build's verdict.
    public struct Decision: Sendable, Equatable {
        public var id: String
        public var verdict: Verdict
        public init(_ id: String, _ verdict: Verdict) {
            self.id = id
            self.verdict = verdict
        }
    }

    /// The verdicts of one page and whether the walk over the project is over.
    public struct Page: Sendable, Equatable {
        public var decisions: [Decision]
        /// Every later entry is among the last `keepBuilds` or younger than `keepDays`.
        public var done: Bool

        public var pruned: [String] { decisions.filter { $0.verdict == .prune }.map(\.id) }
    }

    /// The verdict on one build. `newer`: how many of the project's builds are newer than it
    /// (its place from the newest end of the index). `references`: build id → what refers to
    /// it (`app demo v3`).
    public static func verdict(_ entry: Entry, newer: Int, retention: BuildRetention, now: Date, references: [String: String]) -> Verdict {
        if let who = references[entry.id] { return .keep(.referenced(who)) }
        switch entry.record {
        case .missing:
            return .prune
        case .unreadable:
            return .keep(.unreadable)
        case .build(let b):
            if !b.status.isFinal { return .keep(.notFinal(b.status)) }
            if let run = b.deploy, !run.status.isFinal { return .keep(.pipelineRun(run.status)) }
            if newer < retention.keepBuilds { return .keep(.amongLast(retention.keepBuilds)) }
            if b.createdAt >= retention.cutoff(now: now) { return .keep(.younger(days: retention.keepDays)) }
            return .prune
        }
    }

    /// The verdicts on `entries`, a page of the project's index in order whose first entry has
    /// `before` entries before it; `total` entries in the whole index.
    public static func page(_ entries: [Entry], before: Int, total: Int, retention: BuildRetention, now: Date, references: [String: String]) -> Page {
        var decisions: [Decision] = []
        for (i, entry) in entries.enumerated() {
            let newer = total - (before + i) - 1
            let v = verdict(entry, newer: newer, retention: retention, now: now, references: references)
            decisions.append(Decision(entry.id, v))
            if v == .keep(.amongLast(retention.keepBuilds)) || v == .keep(.younger(days: retention.keepDays)) {
                return Page(decisions: decisions, done: true)
            }
        }
        return Page(decisions: decisions, done: before + entries.count >= total - min(total, retention.keepBuilds))
    }

    /// Whether the walk need not read the index at all past `id`: its id says it is younger
    /// than the cutoff (the record may still be read for it to be sure).
    public static func isYoung(id: String, retention: BuildRetention, now: Date) -> Bool {
        BuildID.createdAt(of: id).map { $0 >= retention.cutoff(now: now) } ?? false
    }

    /// The retention of a project that was deleted: no count is kept (nobody can see its
    /// builds but admins), only the default age, so its history lasts as long as a project's
    /// would by default and then goes.
    public static let deletedProject = BuildRetention(keepBuilds: 0, keepDays: BuildRetention.defaultKeepDays)

    /// Build id → what refers to it (`app demo v3 (live)`), from every version the apps keep.
    public static func references(in apps: [App]) -> [String: String] {
        var refs: [String: String] = [:]
        for app in apps {
            for v in app.versions where refs[v.build] == nil {
                refs[v.build] = "app \(app.name) v\(v.number) (\(v.state.rawValue))"
            }
        }
        return refs
    }

    /// The milliseconds part of an activity key before which events are older than `cutoff`
    /// (``Keys/activityEvent(_:_:at:id:)``: 15 digits then `-`): an event key sorts before
    /// `prefix + this` exactly when its time is earlier.
    public static func activityCutoffKey(_ cutoff: Date) -> String {
        let ms = String(max(0, Int64((cutoff.timeIntervalSince1970 * 1000).rounded(.down))))
        return String(repeating: "0", count: max(0, 15 - ms.count)) + ms
    }
}
