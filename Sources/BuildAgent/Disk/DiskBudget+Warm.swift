import Foundation
import KilnCore

extension DiskBudget {
    /// The projects the agent publishes as warm (`AgentDisk.warm`): every project with an
    /// entry, its bytes summed over its entries, the most recently used first (equal uses by
    /// name, so the list never depends on the order of a dictionary), at most `limit`. The
    /// ones left out are the ones eviction would take first, the least likely to be warm when
    /// a build comes. Pure, like the rest of `DiskBudget`.
    static func warm(_ entries: [Entry], limit: Int = AgentDisk.maxWarm) -> [WarmProject] {
        var bytes: [String: Int64] = [:]
        var lastUse: [String: Date] = [:]
        for e in entries {
            bytes[e.project, default: 0] += e.bytes
            lastUse[e.project] = max(lastUse[e.project] ?? .distantPast, e.lastUse)
        }
        let order = lastUse.sorted { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }
        return order.prefix(max(0, limit)).map { WarmProject(name: $0.key, bytes: bytes[$0.key] ?? 0) }
    }
}
