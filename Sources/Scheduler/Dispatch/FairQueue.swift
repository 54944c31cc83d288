import Foundation
import KilnCore

/// The order in which queued builds are offered to the agents.
///
/// Priority first (higher first). Within one priority, projects take turns: each project's
/// oldest build, then each project's second, and so on; in each turn the project served
/// longest ago goes first (never served before any other), then the one with the oldest
/// build. So a project with a hundred queued builds does not starve another project's one,
/// even when a single slot frees at a time, and within a project builds keep their order.
/// Pure: no I/O, no clock; the dispatcher numbers its turns and remembers the turn in
/// which it last served each project.
public enum FairQueue {
    public struct Item: Sendable, Equatable {
        public var build: String
        public var project: String
        public var priority: Int
        public var queuedAt: Date
        public init(build: String, project: String, priority: Int = 0, queuedAt: Date) {
            self.build = build
            self.project = project
            self.priority = priority
            self.queuedAt = queuedAt
        }
    }

    public static func order(_ items: [Item], lastServed: [String: Int] = [:]) -> [Item] {
        let byPriority = Dictionary(grouping: items, by: \.priority)
        var result: [Item] = []
        result.reserveCapacity(items.count)
        for priority in byPriority.keys.sorted(by: >) {
            let older: (Item, Item) -> Bool = { $0.queuedAt != $1.queuedAt ? $0.queuedAt < $1.queuedAt : $0.build < $1.build }
            // Each project's builds, oldest first; projects ordered by their oldest build.
            var queues = Dictionary(grouping: byPriority[priority]!, by: \.project).values
                .map { $0.sorted(by: older) }
                .sorted { a, b in
                    let sa = lastServed[a[0].project] ?? Int.min, sb = lastServed[b[0].project] ?? Int.min
                    return sa != sb ? sa < sb : older(a[0], b[0])
                }
            var round = 0
            while !queues.isEmpty {
                for q in queues where round < q.count { result.append(q[round]) }
                round += 1
                queues.removeAll { $0.count <= round }
            }
        }
        return result
    }
}
