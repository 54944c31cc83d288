import Etcd
import Foundation
import KilnCore
import Synchronization

/// What this scheduler process counted since it started: webhook deliveries by result, and
/// what the build records' changes told (``BuildChange``, kept current by ``BuildEventCounter``).
/// Counters and histograms of one process, as Prometheus expects (it sums the schedulers and
/// takes a restart's reset in its stride); the gauges of ``MetricsPage`` are read from etcd.
public final class SchedulerMetrics: Sendable {
    struct Counts: Sendable {
        var deliveries: [String: Int] = [:]
        var queued = 0
        var ended: [BuildStatus: Int] = [:]
        var pipelinesEnded: [PipelineStatus: Int] = [:]
        var steps: [StepName: Histogram] = [:]
        var dispatch = Histogram(bounds: MetricsPage.dispatchBuckets)
    }

    private let counts = Mutex(Counts())
    /// The last count of build records and when it was read: etcd counts them by walking its
    /// index over every record, so a scrape reads it at most every ``recordsCountAge``.
    private let recordsCount = Mutex<(at: ContinuousClock.Instant, value: Int64)?>(nil)
    static let recordsCountAge = Duration.seconds(30)

    public init() {}

    /// The count of build records, read with `read` when the last one is older than ``recordsCountAge``.
    func buildRecords(_ read: () async throws -> Int64) async throws -> Int64 {
        let now = ContinuousClock.now
        if let last = recordsCount.withLock({ $0 }), now - last.at < Self.recordsCountAge { return last.value }
        let value = try await read()
        recordsCount.withLock { $0 = (now, value) }
        return value
    }

    func webhookDelivery(result: String) {
        counts.withLock { $0.deliveries[result, default: 0] += 1 }
    }

    func record(_ change: BuildChange) {
        guard change != BuildChange() else { return }
        counts.withLock { c in
            if change.queued { c.queued += 1 }
            if let s = change.ended { c.ended[s, default: 0] += 1 }
            if let s = change.pipelineEnded { c.pipelinesEnded[s, default: 0] += 1 }
            if let d = change.dispatchSeconds { c.dispatch.observe(d) }
            for (step, seconds) in change.stepSeconds {
                c.steps[step, default: Histogram(bounds: MetricsPage.stepBuckets)].observe(seconds)
            }
        }
    }

    var snapshot: Counts { counts.withLock { $0 } }
    var webhookDeliveries: [String: Int] { snapshot.deliveries }
}

/// What one write of a build record adds to the metrics, from the record before it (nil: the
/// write made it) and after. Pure; each transition is counted once, by the write that makes it.
struct BuildChange: Equatable, Sendable {
    /// The record was made (a build was queued).
    var queued = false
    /// The build ended, with this status.
    var ended: BuildStatus?
    /// From the build's request to its agent starting it (an attempt's start).
    var dispatchSeconds: Double?
    /// Steps that finished (succeeded or failed) in this write, with their durations.
    var stepSeconds: [StepName: Double] = [:]
    /// The post-build pipeline run ended, with this status.
    var pipelineEnded: PipelineStatus?

    init() {}

    init(before: Build?, after b: Build) {
        queued = before == nil
        if b.status.isFinal && !(before?.status.isFinal ?? false) { ended = b.status }
        if let started = b.startedAt, before?.startedAt != started {
            dispatchSeconds = max(0, started.timeIntervalSince(b.createdAt))
        }
        for s in b.steps where s.status == .succeeded || s.status == .failed {
            guard let ms = s.durationMs else { continue }
            let earlier = before?.steps.first { $0.name == s.name }
            if let earlier, earlier.status == s.status, earlier.durationMs == ms { continue }
            stepSeconds[s.name] = Double(ms) / 1000
        }
        if let run = b.deploy, run.status.isFinal {
            let was = before?.deploy
            if was == nil || was!.run != run.run || !was!.status.isFinal { pipelineEnded = run.status }
        }
    }
}

/// `GET /metrics` in Prometheus' text format (version 0.0.4).
///
/// Gauges from count-only reads of etcd at scrape time (etcd counts in its index, no record
/// is read): builds queued, live agents, builds assigned (task keys), pipeline runs waiting
/// or running, and build records kept (its count walks the index over every record, so it
/// is read at most every 30 s). Counters and histograms of this scheduler since its start
/// (``SchedulerMetrics``): builds queued and ended by status, pipeline runs ended by status,
/// finished steps' durations, dispatch latency, webhook deliveries by result. A scrape costs
/// the same at 100 builds as at 100,000.
struct MetricsPage: Sendable {
    let store: SchedulerStore
    let metrics: SchedulerMetrics

    static let stepBuckets: [Double] = [0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800]
    static let dispatchBuckets: [Double] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]

    func render() async throws -> String {
        let etcd = store.etcd, keys = store.keys
        async let queued = etcd.count(prefix: keys.queue)
        async let agents = etcd.count(prefix: keys.agents)
        async let tasks = etcd.count(prefix: keys.tasks)
        async let records = metrics.buildRecords { try await etcd.count(prefix: keys.builds) }
        async let pipelines = etcd.count(prefix: keys.pipelineIndex)
        let c = metrics.snapshot

        var out = ""
        func metric(_ name: String, _ type: String, _ help: String) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
        }
        /// A metric of one value, without labels.
        func one(_ name: String, _ type: String, _ help: String, _ value: some Numeric) {
            metric(name, type, help)
            out += "\(name) \(value)\n"
        }
        one("kiln_queue_depth", "gauge", "Builds waiting in the queue for an agent.", try await queued)
        one("kiln_agents_live", "gauge", "Agents registered under a live lease.", try await agents)
        one("kiln_builds_assigned", "gauge", "Builds assigned to an agent and not yet ended (task keys).", try await tasks)
        one("kiln_build_records", "gauge", "Build records kept in etcd, of every status (counted at most every 30 s).", try await records)
        one("kiln_pipeline_runs_waiting", "gauge", "Post-build pipeline runs pending or running (the pipeline index).", try await pipelines)
        one("kiln_builds_queued_total", "counter", "Builds queued since this scheduler started (by any scheduler: counted from etcd's changes).", c.queued)
        metric("kiln_builds_ended_total", "counter", "Builds that ended since this scheduler started, by status.")
        for s in BuildStatus.allCases where s.isFinal { out += "kiln_builds_ended_total{status=\"\(s.rawValue)\"} \(c.ended[s] ?? 0)\n" }
        metric("kiln_pipeline_runs_ended_total", "counter", "Post-build pipeline runs that ended since this scheduler started, by status.")
        for s in [PipelineStatus.succeeded, .failed] { out += "kiln_pipeline_runs_ended_total{status=\"\(s.rawValue)\"} \(c.pipelinesEnded[s] ?? 0)\n" }
        metric("kiln_step_duration_seconds", "histogram", "Duration of each build step that finished since this scheduler started.")
        for step in StepName.allCases { out += (c.steps[step] ?? Histogram(bounds: Self.stepBuckets)).lines("kiln_step_duration_seconds", labels: "step=\"\(step.rawValue)\"") }
        metric("kiln_dispatch_latency_seconds", "histogram", "From a build's request to its agent starting it (queue wait included), for starts since this scheduler started.")
        out += c.dispatch.lines("kiln_dispatch_latency_seconds", labels: nil)
        metric("kiln_webhook_deliveries_total", "counter", "GitLab webhook deliveries this scheduler answered, by result (queued, duplicate, ignored, or the 4xx status).")
        for result in Set(["queued", "duplicate", "ignored"]).union(c.deliveries.keys).sorted() {
            out += "kiln_webhook_deliveries_total{result=\"\(result)\"} \(c.deliveries[result] ?? 0)\n"
        }
        return out
    }
}

/// A Prometheus histogram: cumulative buckets, sum and count.
struct Histogram: Sendable, Equatable {
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
