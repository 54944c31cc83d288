import Etcd
import Foundation
import KilnCore

/// The lb-agents of a group, as their reports at `/slb/{group}/agents/` show them.
public enum LBAgents {
    /// Waits until every lb-agent registered for `group` reports `appliedRevision >= revision`
    /// (it watches the reports; no polling) and returns their reports. Throws when no agent
    /// serves the group, or when some have not applied it within `timeout` (naming them).
    public static func waitApplied(etcd: EtcdClient, keys: SLBKeys, group: String, revision: Int64, timeout: Duration) async throws -> [SLBAgentReport] {
        let prefix = keys.agents(group)
        let first = try await etcd.range(prefix: prefix)
        var reports: [String: SLBAgentReport] = [:]
        for kv in first.kvs { if let r = try? KilnJSON.decode(SLBAgentReport.self, from: kv.value) { reports[kv.key] = r } }
        func done() -> Bool { !reports.isEmpty && reports.values.allSatisfy { $0.appliedRevision >= revision } }
        guard !reports.isEmpty else {
            throw KilnError.unavailable("no lb-agent serves group \(group) (nothing under \(prefix)): start one beside nginx with `kiln lb-agent --group \(group)`")
        }
        if done() { return reports.values.sorted { $0.id < $1.id } }
        let seen = reports
        let outcome = try await withThrowingTaskGroup(of: [SLBAgentReport]?.self) { tasks in
            tasks.addTask {
                var reports = seen
                func done() -> Bool { !reports.isEmpty && reports.values.allSatisfy { $0.appliedRevision >= revision } }
                for try await update in etcd.watch(prefix: prefix, fromRevision: first.revision + 1) {
                    switch update {
                    case .reset(let kvs, _):
                        reports = [:]
                        for kv in kvs { if let r = try? KilnJSON.decode(SLBAgentReport.self, from: kv.value) { reports[kv.key] = r } }
                    case .events(let events, _):
                        for e in events {
                            if e.kind == .delete { reports[e.kv.key] = nil; continue }
                            if let r = try? KilnJSON.decode(SLBAgentReport.self, from: e.kv.value) { reports[e.kv.key] = r }
                        }
                    }
                    if done() { return reports.values.sorted { $0.id < $1.id } }
                }
                return nil
            }
            tasks.addTask {
                try await Task.sleep(for: timeout)
                return nil
            }
            let first = try await tasks.next() ?? nil
            tasks.cancelAll()
            return first
        }
        if let outcome { return outcome }
        let latest = try await etcd.range(prefix: prefix).kvs.compactMap { try? KilnJSON.decode(SLBAgentReport.self, from: $0.value) }
        let lagging = latest.filter { $0.appliedRevision < revision }
        if latest.isEmpty {
            throw KilnError.unavailable("no lb-agent serves group \(group) any more: start one with `kiln lb-agent --group \(group)`")
        }
        if lagging.isEmpty { return latest.sorted { $0.id < $1.id } }
        throw KilnError.unavailable("lb-agent\(lagging.count == 1 ? "" : "s") \(lagging.map { "\($0.id) (at revision \($0.appliedRevision))" }.joined(separator: ", ")) of group \(group) did not apply revision \(revision) within \(timeout.components.seconds) s; see its log")
    }
}
