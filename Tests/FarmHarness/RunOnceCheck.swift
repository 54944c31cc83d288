import Etcd
import Foundation
import KilnCore

/// One change under a farm's key prefix, as a watch delivered it.
public struct FarmEvent: Sendable {
    public let kind: WatchEvent.Kind
    public let key: String
    /// The revision of the change (etcd's `mod_revision`); one transaction, one revision.
    public let revision: Int64
    /// 1 for a put that created the key.
    public let version: Int64
    /// The record of a put under `builds`.
    public let record: Build?
    /// When this process saw it.
    public let seenAt: Date

    public init(kind: WatchEvent.Kind, key: String, revision: Int64, version: Int64, record: Build? = nil, seenAt: Date = Date()) {
        self.kind = kind
        self.key = key
        self.revision = revision
        self.version = version
        self.record = record
        self.seenAt = seenAt
    }

    /// The event of a watch, with the build record decoded where there is one.
    public init(_ e: WatchEvent, keys: Keys, seenAt: Date) {
        let record = e.kind == .put && e.kv.key.hasPrefix(keys.builds) ? try? KilnJSON.decode(Build.self, from: e.kv.value) : nil
        self.init(kind: e.kind, key: e.kv.key, revision: e.kv.modRevision, version: e.kv.version, record: record, seenAt: seenAt)
    }
}

/// "No build lost, none run twice", judged from a farm's etcd history: the events under its
/// prefix in revision order (from a watch, for example `FarmHistory`). Pure; the caller
/// decides which events it has and which builds it requested.
///
/// A build is run twice when two task keys of it were alive at once (a double dispatch),
/// when one agent set it running while another agent's attempt still held its task key, or
/// when it was finished succeeded twice (two transactions that finished it and removed a
/// task, or its record turning succeeded twice). A requested build is lost when it never
/// ended, or ended failed for any reason but running out of attempts.
public struct RunOnceCheck: Sendable {
    /// Task keys created per build: each is one assignment to an agent. A put of an existing
    /// task key (a cancel mark) is not one.
    public private(set) var assignments: [String: Int] = [:]
    public private(set) var doubleDispatch: Set<String> = []
    public private(set) var overlappingRunning: Set<String> = []
    public private(set) var succeededTwice: Set<String> = []
    /// A line for each time a build was run twice, in the order found.
    public private(set) var runTwice: [String] = []
    /// The last final record of each build that ended.
    public private(set) var final: [String: Build] = [:]

    public init(_ events: [FarmEvent], keys: Keys) {
        var live: [String: Set<String>] = [:]          // build → agents holding a task key for it
        var running: [String: Set<String>] = [:]       // build → agents that set it running and still hold its task
        var succeededFinishes: [String: Int] = [:]     // build → transactions that finished it succeeded and removed a task
        var lastStatus: [String: BuildStatus] = [:]
        var intoSucceeded: [String: Int] = [:]
        let byRevision = Dictionary(grouping: events, by: \.revision)

        for e in events {
            if let owner = keys.taskOwner(e.key) {
                if e.kind == .put && e.version == 1 {
                    assignments[owner.build, default: 0] += 1
                    live[owner.build, default: []].insert(owner.agent)
                    if live[owner.build]!.count > 1 {
                        doubleDispatch.insert(owner.build)
                        runTwice.append("\(owner.build): task keys of \(live[owner.build]!.sorted().joined(separator: " and ")) alive at once (revision \(e.revision))")
                    }
                } else if e.kind == .delete {
                    live[owner.build]?.remove(owner.agent)
                    running[owner.build]?.remove(owner.agent)
                    let sameTxn = byRevision[e.revision] ?? []
                    if sameTxn.contains(where: { $0.record?.id == owner.build && $0.record?.status == .succeeded }) {
                        succeededFinishes[owner.build, default: 0] += 1
                    }
                }
            } else if let b = e.record {
                if b.status == .running, let agent = b.agent {
                    let others = (running[b.id] ?? []).subtracting([agent])
                    if !others.isEmpty {
                        overlappingRunning.insert(b.id)
                        runTwice.append("\(b.id): set running by \(agent) while \(others.sorted().joined(separator: ", ")) still ran it (revision \(e.revision))")
                    }
                    running[b.id, default: []].insert(agent)
                }
                if b.status == .succeeded && lastStatus[b.id] != .succeeded { intoSucceeded[b.id, default: 0] += 1 }
                lastStatus[b.id] = b.status
                if b.status.isFinal { final[b.id] = b }
            }
        }
        for (id, n) in succeededFinishes.sorted(by: { $0.key < $1.key }) where n > 1 {
            succeededTwice.insert(id)
            runTwice.append("\(id): finished succeeded by \(n) transactions")
        }
        for (id, n) in intoSucceeded.sorted(by: { $0.key < $1.key }) where n > 1 && !succeededTwice.contains(id) {
            succeededTwice.insert(id)
            runTwice.append("\(id): record turned succeeded \(n) times")
        }
    }

    /// How the `requested` builds ended.
    public struct Outcome: Sendable, Equatable {
        public var notEnded: [String] = []
        /// "id status: error" of each build that failed for another reason than running out
        /// of attempts (or was cancelled).
        public var failedOther: [String] = []
        public var attemptsExhausted: [String] = []
        public var ended = 0
        public var succeeded = 0
        /// Builds that needed more than one attempt.
        public var retried = 0
        public var maxAttempt = 0

        /// Every lost build, a line each.
        public var lost: [String] { notEnded.map { "\($0) never ended" } + failedOther }
    }

    public func outcome(of requested: Set<String>) -> Outcome {
        var o = Outcome()
        for id in requested.sorted() {
            guard let b = final[id] else { o.notEnded.append(id); continue }
            o.ended += 1
            o.maxAttempt = max(o.maxAttempt, b.attempt)
            if b.attempt > 1 { o.retried += 1 }
            switch b.status {
            case .succeeded: o.succeeded += 1
            case .failed where (b.error ?? "").contains("gave up after"): o.attemptsExhausted.append(id)
            default: o.failedOther.append("\(id) \(b.status.rawValue): \(b.error ?? "")")
            }
        }
        return o
    }
}
