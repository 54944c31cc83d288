import FarmHarness
import Foundation
import KilnCore
import LocalFarm

/// GitLab webhooks: how fast `POST /hooks/gitlab` answers under concurrent deliveries, and
/// how long from a push's delivery to the agent starting its build, next to the same for a
/// build requested through the API.
enum WebhookPhase {
    struct Settings: Sendable {
        var agents = 20
        var capacity = 4
        /// Deliveries sent at once, and how many such rounds.
        var concurrent = 50
        var rounds = 10
        /// Builds measured end to end, per path (webhook and API, alternating).
        var builds = 150
        var warmup = 10
    }

    static let secret = "bench-webhook-secret"
    static let repository = "http://gitlab.bench.invalid/group/hooked.git"

    /// A Push Hook body as GitLab sends it (the fields Kiln reads, and a few more).
    static func push(sha: String) -> String {
        """
        {"object_kind":"push","event_name":"push","before":"95790bf891e76fee5e1747ab589903a6a1f80f22","after":"\(sha)",\
        "ref":"refs/heads/main","checkout_sha":"\(sha)","user_id":4,"user_name":"Bench","user_username":"bench",\
        "project_id":15,"project":{"id":15,"name":"hooked","git_ssh_url":"git@gitlab.bench.invalid:group/hooked.git",\
        "git_http_url":"\(repository)","path_with_namespace":"group/hooked","default_branch":"main"},\
        "commits":[{"id":"\(sha)","message":"bench","title":"bench","timestamp":"2026-11-24T12:00:00+00:00"}],"total_commits_count":1}
        """
    }

    static func randomSHA() -> String {
        (0..<40).map { _ in String("0123456789abcdef".randomElement()!) }.joined()
    }

    static func deliver(_ api: String) async throws -> (status: Int, body: String) {
        let uuid = UUID().uuidString
        return try await FarmHTTP.send("POST", api + "/hooks/gitlab", body: push(sha: randomSHA()), headers: [
            ("X-Gitlab-Event", "Push Hook"), ("X-Gitlab-Token", secret), ("X-Gitlab-Event-UUID", uuid), ("Idempotency-Key", uuid),
        ])
    }

    static func run(rig: BenchRig, settings s: Settings) async throws -> PhaseReport {
        say("== webhooks: \(s.agents) simulated agents (--simulate 0, capacity \(s.capacity)); \(s.rounds) rounds of \(s.concurrent) concurrent deliveries, then \(s.builds) builds one at a time per path")
        let farm = try await rig.startFarm("webhook", agents: s.agents, .init(capacity: s.capacity, ttl: 10, simulate: "0"))
        defer { farm.stop() }
        let project = Project(name: "hooked", repository: repository, buildImage: "localhost/kiln/none:1", buildCommand: "true", webhookSecret: secret)
        try await farm.api.createProject(project)
        farm.sayUp()

        // 1. Answers under concurrent deliveries.
        let answers = Locked<[Double]>([])
        let refused = Locked<[String]>([])
        try await withProgress({ "\(answers.withLock { $0.count }) of \(s.rounds * s.concurrent) deliveries answered" }) {
            for _ in 0..<s.rounds {
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for _ in 0..<s.concurrent {
                        group.addTask {
                            let sent = ContinuousClock.now
                            let r = try await deliver(farm.api.base)
                            let d = ContinuousClock.now - sent
                            answers.withLock { $0.append(d.inSeconds * 1000) }
                            if r.status != 201 { refused.withLock { $0.append("\(r.status) \(r.body)") } }
                        }
                    }
                    try await group.waitForAll()
                }
            }
        }
        let answered = Samples(answers.withLock { $0 })

        // 2. Delivery → agent starts the build, against API request → agent starts it.
        struct Sample: Sendable { var viaHook: Bool; var started: Double }
        let samples = Locked<[Sample]>([])
        let tracker = BuildTracker()
        try await whileTracking(farm, tracker) {
            try await withProgress({ "\(samples.withLock { $0.count }) of \(2 * s.builds) builds measured" }) {
                for i in 0..<(2 * (s.warmup + s.builds)) {
                    let viaHook = i % 2 == 0
                    let sent = Date()
                    let id: String
                    if viaHook {
                        let r = try await deliver(farm.api.base)
                        guard r.status == 201, let data = r.body.data(using: .utf8),
                              let json = try JSONSerialization.jsonObject(with: data) as? [String: Any],
                              let first = (json["builds"] as? [String])?.first else { throw FarmError("webhook delivery: HTTP \(r.status) \(r.body)") }
                        id = first
                    } else {
                        id = try await farm.api.requestBuild("hooked").build.id
                    }
                    guard let seen = try await tracker.waitFinal(id, timeout: .seconds(30)), let final = seen.final,
                          final.status == .succeeded, let startedAt = final.startedAt else {
                        throw FarmError("build \(id) did not succeed within 30 s on an idle farm; see \(farm.logs)")
                    }
                    if i < 2 * s.warmup { continue }
                    samples.withLock { $0.append(Sample(viaHook: viaHook, started: startedAt.timeIntervalSince(sent) * 1000)) }
                }
            }
        }
        let all = samples.withLock { $0 }
        let hook = Samples(all.filter(\.viaHook).map(\.started)), api = Samples(all.filter { !$0.viaHook }.map(\.started))

        var report = PhaseReport("Webhooks: answer time and delivery → agent starts the build")
        report.setup = [
            "fresh etcd, `kiln scheduler`, \(s.agents) × `kiln agent --simulate 0 --capacity \(s.capacity)`, each its own process; one project with a webhook secret",
            "answer time: \(s.rounds) rounds of \(s.concurrent) concurrent `POST /hooks/gitlab` (Push Hook, each a new event UUID and commit, so each queues a build), request sent → answer received, on this process's monotonic clock",
            "delivery → start: one at a time, alternating a webhook delivery and `POST /api/v1/projects/hooked/builds`; request sent → the `startedAt` the agent stamps when the task reaches it (wall clock, shared by the processes, kept to the millisecond); \(s.warmup) warm-up builds per path dropped",
        ]
        report.figures = [
            Figure("webhook answered under \(s.concurrent) concurrent deliveries, p50 / p99", "\(Fmt.ms(answered.p50)) / \(Fmt.ms(answered.p99))"),
            Figure("webhook delivery → agent starts the build, p50 / p99", "\(Fmt.ms(hook.p50)) / \(Fmt.ms(hook.p99))"),
            Figure("API request → agent starts the build, p50 / p99", "\(Fmt.ms(api.p50)) / \(Fmt.ms(api.p99))"),
        ]
        let bad = refused.withLock { $0 }
        report.notes = [
            "answers: \(answered.summary); not 201: \(bad.count)\(bad.isEmpty ? "" : " (first: \(bad[0]))")",
            "webhook → start: \(hook.summary)", "API → start: \(api.summary)",
        ]
        say(report.printed())
        return report
    }
}
