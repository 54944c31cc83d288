import Etcd
import Foundation
import KilnCore

/// The activity of projects, apps and groups: builds (from their records) and every other
/// event, with who did it (docs/roles.md).
extension SchedulerStore {
    /// Records an event on a resource. A failure to record is logged by the caller's route
    /// as an error of the request only if the change itself failed: the event is written
    /// after the change, so a crash between the two loses the line, not the change.
    public func record(_ event: ActivityEvent, on kind: ResourceKind, _ name: String) async throws {
        try await etcd.put(keys.activityEvent(kind, name, at: event.at, id: Secret.random(bytes: 4)), try KilnJSON.encode(event))
    }

    /// A resource's feed, newest first: its events, and for a project its builds too. Only the
    /// newest `limit` events are read (their keys start with their time), not the whole feed:
    /// pages read it on every view, and a busy app's feed holds thousands.
    public func activity(_ kind: ResourceKind, _ name: String, limit: Int = 50) async throws -> [ActivityEntry] {
        var entries = try await etcd.range(prefix: keys.activity(kind, name), options: .init(limit: limit, order: .descending)).kvs
            .compactMap { try? KilnJSON.decode(ActivityEvent.self, from: $0.value) }.map(ActivityEntry.init)
        if kind == .project { entries += try await builds(project: name, limit: limit).map(ActivityEntry.init) }
        return Array(entries.sorted { $0.at > $1.at }.prefix(limit))
    }
}
