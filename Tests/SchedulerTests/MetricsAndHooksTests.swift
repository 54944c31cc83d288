import Etcd
import Foundation
import KilnCore
import KilnTestSupport
import NIOHTTP1
@testable import Scheduler
import Testing

/// `/metrics` from counters kept as records change, and webhook idempotency keys that expire,
/// against a scheduler over a real etcd.
@Suite("Metrics from events, and hook keys under leases")
struct MetricsAndHooksTests {
    /// `/metrics` once `condition` holds for it (the counters follow etcd's changes a moment later).
    func metrics(_ h: SchedulerHarness, until condition: @escaping @Sendable (String) -> Bool) async throws -> String {
        try await withTimeout(.seconds(20), waitingFor: "metrics") {
            while true {
                let r = try await h.request(.GET, "/metrics")
                if r.status == 200, condition(r.body) { return r.body }
                try await Task.sleep(for: .milliseconds(50))
            }
        }
    }

    @Test func countersCountWhatHappensAfterTheStartAndGaugesCountKeys() async throws {
        try await withScheduler(prepare: { etcd in
            // A build that ended before this scheduler started is not its to count.
            var old = Build(id: BuildID.generate(), project: "gone", ref: "main")
            old.status = .failed
            try await etcd.put(Keys().build(old.id), try KilnJSON.encode(old))
        }) { h in
            #expect(try await h.request(.POST, "/api/v1/projects", body: SchedulerHarness.demoProject).status == 201)
            let a = try KilnJSON.decode(Build.self, from: try await h.request(.POST, "/api/v1/projects/demo/builds").body)
            let b = try KilnJSON.decode(Build.self, from: try await h.request(.POST, "/api/v1/projects/demo/builds").body)
            _ = try await metrics(h) { $0.contains("kiln_builds_queued_total 2\n") }

            // `a` runs and succeeds as the dispatcher and an agent would write it: taken from
            // the queue, started, a step done, ended.
            try await h.etcd.delete(h.keys.queued(a.id))
            var run = a
            run.status = .running
            run.startedAt = a.createdAt.addingTimeInterval(0.3)
            try await h.etcd.put(h.keys.build(a.id), try KilnJSON.encode(run))
            run.steps[1] = BuildStep(name: .compile, status: .succeeded, durationMs: 4200)
            try await h.etcd.put(h.keys.build(a.id), try KilnJSON.encode(run))
            run.status = .succeeded
            try await h.etcd.put(h.keys.build(a.id), try KilnJSON.encode(run))
            // Written again (a pipeline's record update): counted once.
            run.waiting = "again"
            try await h.etcd.put(h.keys.build(a.id), try KilnJSON.encode(run))
            #expect(try await h.request(.POST, "/api/v1/builds/\(b.id)/cancel").status == 200)

            let text = try await metrics(h) { $0.contains("kiln_builds_ended_total{status=\"cancelled\"} 1\n") && $0.contains("kiln_builds_ended_total{status=\"succeeded\"} 1\n") }
            for line in ["kiln_builds_ended_total{status=\"failed\"} 0", "kiln_builds_queued_total 2",
                         "kiln_step_duration_seconds_count{step=\"compile\"} 1", "kiln_step_duration_seconds_bucket{step=\"compile\",le=\"5\"} 1",
                         "kiln_step_duration_seconds_bucket{step=\"compile\",le=\"2.5\"} 0", "kiln_step_duration_seconds_count{step=\"fetch\"} 0",
                         "kiln_dispatch_latency_seconds_count 1", "kiln_dispatch_latency_seconds_bucket{le=\"0.25\"} 0", "kiln_dispatch_latency_seconds_bucket{le=\"0.5\"} 1",
                         "kiln_queue_depth 0", "kiln_build_records 3", "kiln_builds_assigned 0", "kiln_agents_live 0", "kiln_pipeline_runs_waiting 0"] {
                #expect(text.contains(line + "\n"), "\(line)\n\(text)")
            }
            // Gauges are counts of keys, read at each scrape.
            _ = try await registerAgent(h, id: "agent-1", capacity: 2)
            try await h.etcd.put(h.keys.pipelineIndexEntry(build: a.id), "")
            _ = try await metrics(h) { $0.contains("kiln_agents_live 1\n") && $0.contains("kiln_pipeline_runs_waiting 1\n") }
        }
    }

    @Test func aBuildChangeCountsEachTransitionOnce() {
        var queued = Build(id: "b1", project: "p", ref: "main")
        #expect(BuildChange(before: nil, after: queued).queued)
        #expect(BuildChange(before: queued, after: queued) == BuildChange())
        var ended = queued
        ended.status = .succeeded
        var run = PipelineRun(run: 1, pipeline: [], trigger: "t")
        ended.deploy = run
        #expect(BuildChange(before: queued, after: ended).ended == .succeeded)
        run.status = .failed
        var deployed = ended
        deployed.deploy = run
        let change = BuildChange(before: ended, after: deployed)
        #expect(change.ended == nil && change.pipelineEnded == .failed)
        // A second run of the pipeline that ends counts again; its record written again does not.
        var second = deployed
        second.deploy = PipelineRun(run: 2, pipeline: [], trigger: "t")
        second.deploy?.status = .succeeded
        #expect(BuildChange(before: deployed, after: second).pipelineEnded == .succeeded)
        #expect(BuildChange(before: second, after: second).pipelineEnded == nil)
        queued.steps[0] = BuildStep(name: .fetch, status: .failed, durationMs: 1500)
        #expect(BuildChange(before: nil, after: queued).stepSeconds == [.fetch: 1.5])
    }

    @Test func aWebhooksKeysShareALeaseOfADayAndARedeliveryGetsTheFirstBuild() async throws {
        try await withScheduler { h in
            let body = #"{"name":"diaspora","repository":"http://example.com/mike/diaspora.git","buildImage":"a:1","buildCommand":"make","defaultBranch":"master","webhookSecret":"s3cret"}"#
            #expect(try await h.request(.POST, "/api/v1/projects", body: body).status == 201)
            let push = try WebhookTests.fixture("push.json")
            func deliver(_ uuid: String) async throws -> HTTPReply {
                try await httpRequest(.POST, h.api + "/hooks/gitlab", body: push, headers: [("X-Gitlab-Event", "Push Hook"), ("X-Gitlab-Token", "s3cret"), ("X-Gitlab-Event-UUID", uuid)])
            }
            let first = try await deliver("one")
            #expect(first.status == 201)
            #expect(try await deliver("two").status == 201)
            let again = try await deliver("one")
            #expect(again.json?["status"] as? String == "duplicate")
            #expect(again.json?["builds"] as? [String] == first.json?["builds"] as? [String])
            let hooks = try await h.etcd.range(prefix: h.keys.hooks).kvs
            #expect(hooks.count == 2)
            let lease = try #require(hooks.first?.lease)
            #expect(lease != 0 && hooks.allSatisfy { $0.lease == lease }, "one lease for the window's deliveries")
            let ttl = try #require(try await h.etcd.timeToLive(lease))
            #expect(ttl > 24 * 3600 && ttl <= 25 * 3600)

            // The lease revoked by hand (its keys go): the next delivery gets a new one and works.
            try await h.etcd.revokeLease(lease)
            let third = try await deliver("three")
            #expect(third.status == 201, "\(third.body)")
            let now = try await h.etcd.range(prefix: h.keys.hooks).kvs
            #expect(now.count == 1 && now[0].lease != lease && now[0].lease != 0)
        }
    }

    @Test func aDeliveryKeyExpiresWithItsWindowsLease() async throws {
        try await withScheduler { h in
            #expect(try await h.request(.POST, "/api/v1/projects", body: SchedulerHarness.demoProject).status == 201)
            // A window of 1 s and a TTL of 3 s stand for the hour and the 25 hours.
            let store = SchedulerStore(etcd: h.etcd, hookLeases: HookLeases(windowSeconds: 1, ttlSeconds: 3))
            let first = try await store.enqueue(project: "demo", request: BuildRequest(), delivery: "d-1")
            #expect(first.created)
            let again = try await store.enqueue(project: "demo", request: BuildRequest(), delivery: "d-1")
            #expect(!again.created && again.build.id == first.build.id)
            try await h.waitFor(prefix: h.keys.hooks, timeout: .seconds(15)) { $0.isEmpty }
            let later = try await store.enqueue(project: "demo", request: BuildRequest(), delivery: "d-1")
            #expect(later.created && later.build.id != first.build.id, "past its day, a delivery is a new one")
        }
    }
}
