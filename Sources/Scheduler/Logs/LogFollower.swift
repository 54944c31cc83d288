import Etcd
import Foundation
import KilnCore
import Logging
import Synchronization

/// What a follower of one build's log has shown, and which lines to show next. Pure: no I/O.
///
/// Rules, in order:
/// 1. A whole view (``LogView``: archived lines, then the chunks still in etcd) is shown from
///    the first line not shown yet: a view is the log from its start, and the log only grows
///    at its end (chunks are named in the order they are written), so its first lines are
///    the ones shown already. This is how a follower starts, and how it catches up after a
///    gap in its watch (etcd compacted the revision it was at): chunks archived and deleted
///    meanwhile come back from the archive, without a line twice.
/// 2. A chunk from the watch is shown if it is named after the last one shown (or the view's
///    mark); one named up to it was shown already (the watch started before the view's last
///    read).
/// 3. A view shorter than what was shown shows nothing (it cannot be: the log never shrinks
///    while followed; an archive restored from an older backup could make one).
struct LogFollowState: Sendable, Equatable {
    /// Lines shown so far.
    private(set) var shown = 0
    /// The name of the last chunk the shown lines reach.
    private(set) var through: String?

    /// Rules 1 and 3.
    mutating func view(_ view: LogView) -> [String] {
        if let mark = view.through, LogNames.isAfter(mark, through) { through = mark }
        guard view.lines.count > shown else { return [] }
        defer { shown = view.lines.count }
        return Array(view.lines[shown...])
    }

    /// Rule 2.
    mutating func chunk(named name: String, lines: [String]) -> [String] {
        guard LogNames.isAfter(name, through) else { return [] }
        through = name
        shown += lines.count
        return lines
    }
}

/// Follows a build's log: what is there, then each new chunk, until the build has ended
/// (and its post-build pipeline run, whose chunks follow the build's own).
///
/// Whoever ends a build (its agent, a cancel of a queued build, the requeue that gives up)
/// writes a chunk with `end: true` in the same transaction as the final record, so the
/// follower stops at that chunk. A check every 10 s is the backstop for a build that
/// somehow ended without one. The leader's archiver may move the chunks into the log archive
/// and delete them while they are followed: ``LogFollowState`` says what is shown then.
struct LogFollower: Sendable {
    let store: SchedulerStore
    let build: String
    let logger: Logger

    /// The lines, a batch at a time. `from`: a view read earlier to start from (tests start
    /// from one whose revision etcd has compacted since); nil reads one now.
    func lines(from start: LogView? = nil) -> AsyncThrowingStream<[String], Error> {
        AsyncThrowingStream { continuation in
            let task = Task {
                do {
                    try await run(from: start) { continuation.yield($0) }
                    continuation.finish()
                } catch {
                    continuation.finish(throwing: error)
                }
            }
            continuation.onTermination = { _ in task.cancel() }
        }
    }

    /// The build has ended, and so has its pipeline run if it has one.
    private func isDone() async throws -> Bool {
        let b = try await store.build(build)
        return b.status.isFinal && (b.deploy.map { $0.status.isFinal } ?? true)
    }

    private func run(from start: LogView?, _ emit: @escaping @Sendable ([String]) -> Void) async throws {
        let store = self.store, build = self.build
        let first: LogView
        if let start { first = start } else { first = try await store.logView(of: build) }
        let logs = store.keys.logs
        // Shown under the lock, so the lines go out in the state's order.
        let state = Mutex(LogFollowState())
        let show: @Sendable (_ change: (inout LogFollowState) -> [String]) -> Void = { change in
            state.withLock { s in
                let lines = change(&s)
                if !lines.isEmpty { emit(lines) }
            }
        }
        show { $0.view(first) }
        if try await isDone() { return }
        let sawEnd = try await withThrowingTaskGroup(of: Bool.self) { group in
            group.addTask {
                for try await update in store.etcd.watch(prefix: store.keys.logs(of: build), fromRevision: first.revision + 1) {
                    switch update {
                    case .events(let events, _):
                        var ended = false
                        for event in events where event.kind == .put {
                            guard let name = LogNames.split(event.kv.key, under: logs)?.name, ArchivedLog.isChunkName(name),
                                  let chunk = try? KilnJSON.decode(LogChunk.self, from: event.kv.value) else { continue }
                            show { $0.chunk(named: name, lines: chunk.lines) }
                            if chunk.end == true { ended = true }
                        }
                        if ended, try await isDone() { return true }
                    case .reset:
                        // The watch could not go on from its revision (compacted): what it
                        // missed may be archived by now, so read the whole log again.
                        let view = try await store.logView(of: build)
                        show { $0.view(view) }
                        if try await isDone() { return true }
                    }
                }
                return true
            }
            group.addTask {
                while true {
                    try await Task.sleep(for: .seconds(10))
                    if try await isDone() { return false }
                }
            }
            defer { group.cancelAll() }
            return try await group.next() ?? true
        }
        if !sawEnd {
            // Ended without its end chunk reaching the watch: whatever came last is in the log.
            let view = try await store.logView(of: build)
            show { $0.view(view) }
        }
    }
}
