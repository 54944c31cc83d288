import Etcd
import Foundation
import KilnCore

/// What the bench sees of the farm's builds, from etcd watches on `/kiln/builds/` and
/// `/kiln/tasks/`: when each build was first seen running and when it ended (on this
/// process's wall clock, which the agents' `startedAt` also uses), and when each task key
/// was created (an assignment).
actor BuildTracker {
    struct Seen: Sendable {
        /// When the watch delivered the first record with status running.
        var runningSeenAt: Date?
        /// The final record and when the watch delivered it.
        var final: Build?
        var finalSeenAt: Date?
    }

    private(set) var builds: [String: Seen] = [:]
    /// When the watch delivered each task key's creation, in order.
    private(set) var assignments: [Date] = []
    private(set) var finalCount = 0
    private(set) var runningCount = 0
    /// Events the two watches delivered (etcd counts them among every watcher's).
    private(set) var eventsSeen = 0

    /// Follows both prefixes from `revision` until cancelled.
    func follow(_ etcd: EtcdClient, keys: Keys, from revision: Int64) async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                for try await update in etcd.watch(prefix: keys.builds, fromRevision: revision) {
                    guard case .events(let events, _) = update else { continue }
                    let now = Date()
                    await self.count(events.count)
                    let records = events.compactMap { e in e.kind == .put ? try? KilnJSON.decode(Build.self, from: e.kv.value) : nil }
                    await self.saw(records, at: now)
                }
            }
            group.addTask {
                for try await update in etcd.watch(prefix: keys.tasks, fromRevision: revision) {
                    guard case .events(let events, _) = update else { continue }
                    let now = Date()
                    await self.count(events.count)
                    let created = events.filter { $0.kind == .put && $0.kv.version == 1 }.count
                    if created > 0 { await self.assigned(created, at: now) }
                }
            }
            try await group.waitForAll()
        }
    }

    private func saw(_ records: [Build], at now: Date) {
        for b in records {
            var s = builds[b.id] ?? Seen()
            if b.status == .running && s.runningSeenAt == nil {
                s.runningSeenAt = now
                runningCount += 1
            }
            if b.status.isFinal && s.final == nil {
                s.final = b
                s.finalSeenAt = now
                finalCount += 1
            }
            builds[b.id] = s
        }
    }

    private func count(_ n: Int) { eventsSeen += n }

    private func assigned(_ n: Int, at now: Date) {
        for _ in 0..<n { assignments.append(now) }
    }

    func seen(_ id: String) -> Seen? { builds[id] }

    var finals: [Build] { builds.values.compactMap(\.final) }

    /// Waits (checking every 2 ms) until `id` has ended; nil after `timeout`.
    nonisolated func waitFinal(_ id: String, timeout: Duration) async throws -> Seen? {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let s = await seen(id), s.final != nil { return s }
            try await Task.sleep(for: .milliseconds(2))
        }
        return nil
    }

    /// Waits until `count` builds have ended; false after `timeout`.
    nonisolated func waitFinals(_ count: Int, timeout: Duration) async throws -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if await finalCount >= count { return true }
            try await Task.sleep(for: .milliseconds(50))
        }
        return false
    }
}

/// Runs `body` while `tracker` follows the farm from the current revision; stops following
/// when `body` returns or throws.
func whileTracking<T: Sendable>(_ farm: BenchFarm, _ tracker: BuildTracker,
                                _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    let revision = try await farm.etcd.status() + 1
    return try await whileRunning({ try await tracker.follow(farm.etcd, keys: farm.keys, from: revision) }, body)
}

/// Runs `body` with `background` beside it, until `body` returns or either throws; then
/// cancels `background`.
func whileRunning<T: Sendable>(_ background: @escaping @Sendable () async throws -> Void,
                               _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask {
            try await background()
            return nil
        }
        group.addTask { try await body() }
        defer { group.cancelAll() }
        while let r = try await group.next() {
            if let r { return r }
        }
        throw CancellationError()
    }
}
