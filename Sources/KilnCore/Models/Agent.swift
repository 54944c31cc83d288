import Foundation

/// A live builder, registered under its lease at `/kiln/agents/{id}`.
public struct AgentInfo: Codable, Sendable, Equatable {
    public var id: String
    public var capacity: Int
    public var labels: [String]
    public var version: String
    public var startedAt: Date
    /// Filled in by the API from `/kiln/tasks/{id}/`, not stored.
    public var running: Int?
    public var tasks: [String]?
    /// Filled in by the API: projects whose home on the ring is this agent.
    public var homedProjects: Int?

    public init(id: String, capacity: Int, labels: [String], version: String, startedAt: Date = Date()) {
        self.id = id
        self.capacity = capacity
        self.labels = labels
        self.version = version
        self.startedAt = startedAt
    }
}
