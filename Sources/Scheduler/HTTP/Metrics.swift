import Etcd
import Foundation
import KilnCore
import Synchronization

/// What this scheduler process counts itself (webhook deliveries by result). Everything
/// else `GET /metrics` shows is read from etcd when it is scraped, so every scheduler of a
/// farm answers the same.
public final class SchedulerMetrics: Sendable {
    private let deliveries = Mutex<[String: Int]>([:])

    public init() {}

    func webhookDelivery(result: String) {
        deliveries.withLock { $0[result, default: 0] += 1 }
    }

    var webhookDeliveries: [String: Int] { deliveries.withLock { $0 } }
}

/// `GET /metrics` in Prometheus' text format (version 0.0.4).
///
/// Gauges read at scrape time: builds queued, live agents, builds running, records by
/// status. Histograms over the build records kept in etcd: each finished step's duration,
/// and the dispatch latency (a build's request to its agent starting it, for builds that
/// started). Counter of this process: webhook deliveries by result. Reading every record is
/// fine for thousands of builds; past that, records need retention (noted in the README).
struct MetricsPage: Sendable {
    let store: SchedulerStore
    let metrics: SchedulerMetrics

    static let stepBuckets: [Double] = [0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800]
    static let dispatchBuckets: [Double] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]

    func render() async throws -> String {
        let etcd = store.etcd, keys = store.keys
        let queued = try await etcd.range(prefix: keys.queue, limit: 1).count
        let agents = try await etcd.range(prefix: keys.agents, limit: 1).count
        let tasks = try await etcd.range(prefix: keys.tasks, limit: 1).count
        var byStatus: [BuildStatus: Int] = [:]
        var steps: [StepName: Histogram] = [:]
        var dispatch = Histogram(bounds: Self.dispatchBuckets)
        for kv in try await etcd.range(prefix: keys.builds).kvs {
            guard let b = try? KilnJSON.decode(Build.self, from: kv.value) else { continue }
            byStatus[b.status, default: 0] += 1
            if let started = b.startedAt { dispatch.observe(max(0, started.timeIntervalSince(b.createdAt))) }
            for s in b.steps {
                guard let ms = s.durationMs, s.status == .succeeded || s.status == .failed else { continue }
                steps[s.name, default: Histogram(bounds: Self.stepBuckets)].observe(Double(ms) / 1000)
            }
        }

        var out = ""
        func metric(_ name: String, _ type: String, _ help: String) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
        }
        metric("kiln_queue_depth", "gauge", "Builds waiting in the queue for an agent.")
        out += "kiln_queue_depth \(queued)\n"
        metric("kiln_agents_live", "gauge", "Agents registered under a live lease.")
        out += "kiln_agents_live \(agents)\n"
        metric("kiln_builds_assigned", "gauge", "Builds assigned to an agent and not yet ended (task keys).")
        out += "kiln_builds_assigned \(tasks)\n"
        metric("kiln_builds", "gauge", "Build records kept, by status (succeeded, failed and cancelled are the outcomes).")
        for status in BuildStatus.allCases { out += "kiln_builds{status=\"\(status.rawValue)\"} \(byStatus[status] ?? 0)\n" }
        metric("kiln_step_duration_seconds", "histogram", "Duration of each finished build step.")
        for step in StepName.allCases { out += (steps[step] ?? Histogram(bounds: Self.stepBuckets)).lines("kiln_step_duration_seconds", labels: "step=\"\(step.rawValue)\"") }
        metric("kiln_dispatch_latency_seconds", "histogram", "From a build's request to its agent starting it (queue wait included).")
        out += dispatch.lines("kiln_dispatch_latency_seconds", labels: nil)
        metric("kiln_webhook_deliveries_total", "counter", "GitLab webhook deliveries this scheduler answered, by result (queued, duplicate, ignored, or the 4xx status).")
        let deliveries = metrics.webhookDeliveries
        for result in Set(["queued", "duplicate", "ignored"]).union(deliveries.keys).sorted() {
            out += "kiln_webhook_deliveries_total{result=\"\(result)\"} \(deliveries[result] ?? 0)\n"
        }
        return out
    }
}

/// A Prometheus histogram: cumulative buckets, sum and count.
struct Histogram: Sendable {
    let bounds: [Double]
    private(set) var counts: [Int]
    private(set) var sum = 0.0
    private(set) var count = 0

    init(bounds: [Double]) {
        self.bounds = bounds
        counts = Array(repeating: 0, count: bounds.count)
    }

    mutating func observe(_ v: Double) {
        for (i, b) in bounds.enumerated() where v <= b { counts[i] += 1 }
        sum += v
        count += 1
    }

    func lines(_ name: String, labels: String?) -> String {
        let prefix = labels.map { "\($0)," } ?? ""
        var s = ""
        for (i, b) in bounds.enumerated() { s += "\(name)_bucket{\(prefix)le=\"\(format(b))\"} \(counts[i])\n" }
        s += "\(name)_bucket{\(prefix)le=\"+Inf\"} \(count)\n"
        let braces = labels.map { "{\($0)}" } ?? ""
        s += "\(name)_sum\(braces) \(format(sum))\n\(name)_count\(braces) \(count)\n"
        return s
    }

    private func format(_ v: Double) -> String {
        v == v.rounded() && abs(v) < 1e15 ? String(Int(v)) : String(v)
    }
}
