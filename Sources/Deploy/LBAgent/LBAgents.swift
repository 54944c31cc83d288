import Etcd
import Foundation
import KilnCore

/// What the `lb` and `retire` plugins ask of a group's lb-agents.
public enum LBAgents {
    /// Waits until every lb-agent registered under `/slb/{group}/agents/` reports
    /// `appliedRevision >= revision` (it serves the domains as of that etcd revision), and
    /// returns their reports, sorted by id. A domain whose config an agent refused is in that
    /// report's `rejected`: the caller decides whether that fails its step.
    ///
    /// It follows the reports' watch (no polling). An agent that goes away while waiting (its
    /// lease expired) is no longer waited for. Throws a `KilnError` naming the agents that lag
    /// when `timeout` passes, and one saying how to start an agent when none is registered.
    public static func waitApplied(etcd: EtcdClient, keys: SLBKeys, group: String, revision: Int64, timeout: Duration) async throws -> [SLBAgentReport] {
        let prefix = keys.agents(group)
        let seen = Locked(PrefixView())
        let outcome = try await withThrowingTaskGroup(of: [SLBAgentReport]?.self) { tasks in
            tasks.addTask {
                for await update in etcd.follow(prefix: prefix) {
                    let agents = seen.withLock { view in
                        view.apply(update)
                        return view.kvs
                    }
                    if let done = try check(agents, group: group, prefix: prefix, revision: revision) { return done }
                }
                throw CancellationError()
            }
            tasks.addTask {
                try await Task.sleep(for: timeout)
                return nil
            }
            defer { tasks.cancelAll() }
            return try await tasks.next()!
        }
        if let outcome { return outcome }
        if seen.value.revision == 0 {
            throw KilnError.unavailable("lb group \(group): could not read the lb-agents' reports under \(prefix) from etcd within \(timeout); check that etcd answers")
        }
        let lagging = seen.value.sorted.compactMap { kv -> String? in
            let id = String(kv.key.dropFirst(prefix.count))
            guard let report = try? KilnJSON.decode(SLBAgentReport.self, from: kv.value) else { return "\(id) (its report is unreadable)" }
            guard report.appliedRevision < revision else { return nil }
            return "\(id) (applied revision \(report.appliedRevision)\(report.listen.map { ", nginx on \($0)" } ?? ""))"
        }
        throw KilnError.unavailable("lb group \(group): not every lb-agent applied etcd revision \(revision) within \(timeout); lagging: \(lagging.joined(separator: ", ")). Check that they run and can reach etcd and nginx (their logs say why), or stop the ones that are gone")
    }

    /// The reports if every registered agent applied `revision`, nil if some still lag.
    private static func check(_ agents: [String: KeyValue], group: String, prefix: String, revision: Int64) throws -> [SLBAgentReport]? {
        if agents.isEmpty {
            throw KilnError.unavailable("no lb-agent serves lb group \(group) (nothing under \(prefix)): start one beside each nginx of the group with `kiln lb-agent --group \(group) --etcd URL`")
        }
        var reports: [SLBAgentReport] = []
        for kv in agents.values {
            guard let report = try? KilnJSON.decode(SLBAgentReport.self, from: kv.value), report.appliedRevision >= revision else { return nil }
            reports.append(report)
        }
        return reports.sorted { $0.id < $1.id }
    }
}
