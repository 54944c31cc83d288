import Etcd
import Foundation
import KilnCore
import KilnTestSupport
import NIOHTTP1
@testable import Scheduler
import Testing

/// GitLab's documented payloads (fixtures/gitlab), replayed as GitLab sends them, against a
/// scheduler in this process over a real etcd. No agent runs: builds stay queued.
@Suite("GitLab webhooks")
struct WebhookTests {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("fixtures/gitlab")

    static func fixture(_ name: String) throws -> String {
        try String(contentsOf: fixtures.appendingPathComponent(name), encoding: .utf8)
    }

    /// The push fixture with some fields replaced (JSON values, already encoded).
    static func push(_ changes: [String: String] = [:], fixture name: String = "push.json") throws -> String {
        var object = try JSONSerialization.jsonObject(with: Data(try fixture(name).utf8)) as! [String: Any]
        for (k, v) in changes { object[k] = try JSONSerialization.jsonObject(with: Data(v.utf8), options: .fragmentsAllowed) }
        return String(decoding: try JSONSerialization.data(withJSONObject: object), as: UTF8.self)
    }

    func deliver(_ h: SchedulerHarness, _ body: String, event: String? = "Push Hook", token: String? = "s3cret", uuid: String = UUID().uuidString) async throws -> HTTPReply {
        var headers: [(String, String)] = [("X-Gitlab-Event-UUID", uuid), ("Idempotency-Key", uuid)]
        if let event { headers.append(("X-Gitlab-Event", event)) }
        if let token { headers.append(("X-Gitlab-Token", token)) }
        return try await httpRequest(.POST, h.api + "/hooks/gitlab", body: body, headers: headers)
    }

    func addProjects(_ h: SchedulerHarness) async throws {
        let diaspora = #"{"name":"diaspora","repository":"http://example.com/mike/diaspora.git","buildImage":"a:1","buildCommand":"make","defaultBranch":"master","webhookSecret":"s3cret"}"#
        let example = #"{"name":"example","repository":"git@example.com:jsmith/example.git","buildImage":"a:1","buildCommand":"make","webhookSecret":"t4g"}"#
        for p in [diaspora, example] {
            let r = try await h.request(.POST, "/api/v1/projects", body: p)
            #expect(r.status == 201, "\(r.body)")
        }
    }

    func builds(_ h: SchedulerHarness) async throws -> [Build] {
        try await h.etcd.range(prefix: h.keys.builds).kvs.map { try KilnJSON.decode(Build.self, from: $0.value) }
    }

    @Test func aPushToTheBuiltBranchQueuesOneBuildOfItsCommitEvenWhenRedelivered() async throws {
        try await withScheduler { h in
            try await addProjects(h)
            let uuid = UUID().uuidString
            let first = try await deliver(h, try Self.fixture("push.json"), uuid: uuid)
            #expect(first.status == 201, "\(first.body)")
            let ids = first.json?["builds"] as? [String] ?? []
            #expect(ids.count == 1)
            let build = try await h.build(ids[0])
            #expect(build.project == "diaspora" && build.status == .queued)
            #expect(build.ref == "master" && build.commit == "da1560886d4f094c3e6c9ef40349f7d38b5d27d7")
            #expect(build.trigger == "gitlab push to master by jsmith")

            // GitLab redelivers (a timeout on its side): the same build, no second one.
            let again = try await deliver(h, try Self.fixture("push.json"), uuid: uuid)
            #expect(again.status == 200 && again.json?["status"] as? String == "duplicate", "\(again.body)")
            #expect(again.json?["builds"] as? [String] == ids)
            // Ten concurrent redeliveries of a new event make one build too.
            let other = UUID().uuidString
            let body = try Self.push(["checkout_sha": #""b6568db1bc1dcd7f8b4d5a946b0b91f9dacd7327""#, "after": #""b6568db1bc1dcd7f8b4d5a946b0b91f9dacd7327""#])
            let answers = try await withThrowingTaskGroup(of: HTTPReply.self) { group in
                for _ in 0..<10 { group.addTask { try await deliver(h, body, uuid: other) } }
                return try await group.reduce(into: [HTTPReply]()) { $0.append($1) }
            }
            #expect(answers.filter { $0.status == 201 }.count == 1, "\(answers.map { "\($0.status) \($0.body)" })")
            #expect(answers.allSatisfy { $0.status == 201 || $0.json?["status"] as? String == "duplicate" })
            #expect(try await builds(h).count == 2)
        }
    }

    @Test func aTagPushBuildsTheTagWithItsNameAsImageTag() async throws {
        try await withScheduler { h in
            try await addProjects(h)
            let r = try await deliver(h, try Self.fixture("tag_push.json"), event: "Tag Push Hook", token: "t4g")
            #expect(r.status == 201, "\(r.body)")
            let build = try await h.build((r.json?["builds"] as? [String] ?? [""])[0])
            #expect(build.project == "example" && build.ref == "refs/tags/v1.0.0" && build.tag == "v1.0.0")
            #expect(build.commit == "82b3d5ae55f7080f1e6022629cdb57bfae7cccc7")
            // A tag that is no image tag is turned into one.
            let slashed = try Self.push(["ref": #""refs/tags/release/2.0""#], fixture: "tag_push.json")
            let s = try await deliver(h, slashed, event: "Tag Push Hook", token: "t4g")
            #expect(try await h.build((s.json?["builds"] as? [String] ?? [""])[0]).tag == "release-2.0")
            // Deleting a tag builds nothing.
            let deleted = try Self.push(["after": #""0000000000000000000000000000000000000000""#, "checkout_sha": "null"], fixture: "tag_push.json")
            let d = try await deliver(h, deleted, event: "Tag Push Hook", token: "t4g")
            #expect(d.status == 200 && d.json?["status"] as? String == "ignored", "\(d.body)")
            #expect(try await builds(h).count == 2)
        }
    }

    @Test func branchesDecideWhichPushesBuild() async throws {
        try await withScheduler { h in
            try await addProjects(h)
            let feature = try Self.push(["ref": #""refs/heads/feature/x""#])
            let ignored = try await deliver(h, feature)
            #expect(ignored.status == 200 && ignored.json?["status"] as? String == "ignored", "\(ignored.body)")
            #expect((ignored.json?["reason"] as? String)?.contains("feature/x") == true)
            let deleted = try Self.push(["after": #""0000000000000000000000000000000000000000""#, "checkout_sha": "null"])
            let d = try await deliver(h, deleted)
            #expect(d.status == 200 && d.json?["status"] as? String == "ignored")
            #expect(try await builds(h).isEmpty)
            // With patterns, the feature branch builds. Saved back without the secret, the
            // project keeps it.
            let patterns = #"{"name":"diaspora","repository":"http://EXAMPLE.com/mike/diaspora/","buildImage":"a:1","buildCommand":"make","defaultBranch":"master","branches":["master","feature/*"]}"#
            #expect(try await h.request(.POST, "/api/v1/projects", body: patterns).status == 200)
            let built = try await deliver(h, feature)
            #expect(built.status == 201, "\(built.body)")
            #expect(try await builds(h).map(\.ref) == ["feature/x"])
        }
    }

    @Test func theSecretIsNeverShownAndWrongTokensOrUnknownRepositoriesBuildNothing() async throws {
        try await withScheduler { h in
            try await addProjects(h)
            for path in ["/api/v1/projects", "/api/v1/projects/diaspora"] {
                let r = try await h.request(.GET, path)
                #expect(r.status == 200 && !r.body.contains("s3cret") && !r.body.contains("webhookSecret"), "\(r.body)")
            }
            let push = try Self.fixture("push.json")
            let wrong = try await deliver(h, push, token: "guess")
            #expect(wrong.status == 401, "\(wrong.body)")
            let missing = try await deliver(h, push, token: nil)
            #expect(missing.status == 401 && (missing.json?["reason"] as? String)?.contains("X-Gitlab-Token") == true)
            // The other project's token does not open this one.
            #expect(try await deliver(h, push, token: "t4g").status == 401)
            let unknown = try Self.push(["project": #"{"git_http_url":"http://example.com/someone/else.git"}"#])
            let u = try await deliver(h, unknown)
            // The same answer as a wrong token: nobody learns which repositories Kiln builds.
            #expect(u.status == 401 && u.body.contains("does not match"), "\(u.body)")
            #expect(try await builds(h).isEmpty)
        }
    }

    @Test func badDeliveriesAreAnsweredAsGitLabExpectsAndBuildNothing() async throws {
        try await withScheduler { h in
            try await addProjects(h)
            let push = try Self.fixture("push.json")
            var cases: [(String, String, String?, Int)] = [
                ("no event header", push, nil, 400),
                ("not JSON", "<xml/>", "Push Hook", 400),
                ("truncated JSON", String(push.prefix(300)), "Push Hook", 400),
                ("an event Kiln does not handle", push, "Issue Hook", 200),
                ("an object_kind Kiln does not handle", try Self.push(["object_kind": #""issue""#]), "Push Hook", 200),
                ("a tag push sent as a push", try Self.fixture("tag_push.json"), "Push Hook", 400),
                ("a body over 1 MiB", String(repeating: " ", count: (1 << 20) + 10) + push, "Push Hook", 413),
            ]
            for (ref, why) in [("refs/heads/a..b", "'..'"), ("refs/heads/has space", "space"), ("refs/heads/-rf", "'-'"), ("refs/heads/", "refs/heads/"), ("master", "refs/heads/")] {
                cases.append(("ref \(ref) (\(why))", try Self.push(["ref": "\"\(ref)\""]), "Push Hook", 400))
            }
            for sha in ["xyz", "da1560886d4f094c3e6c9ef40349f7d38b5d27d", "da1560886d4f094c3e6c9ef40349f7d38b5d27d7; rm -rf /"] {
                cases.append(("checkout_sha \(sha)", try Self.push(["checkout_sha": "\"\(sha)\""]), "Push Hook", 400))
            }
            for (what, body, event, status) in cases {
                let r = try await deliver(h, body, event: event)
                #expect(r.status == status, "\(what): \(r.status) \(r.body)")
                if status == 200 { #expect(r.json?["status"] as? String == "ignored", "\(what): \(r.body)") }
                if status == 400 { #expect(r.json?["reason"] as? String != nil, "\(what): \(r.body)") }
            }
            #expect(try await builds(h).isEmpty)
            // The scheduler counted each delivery by result.
            let metrics = try await h.request(.GET, "/metrics")
            #expect(metrics.status == 200)
            let rejected = cases.filter { $0.3 == 400 }.count
            #expect(metrics.body.contains("kiln_webhook_deliveries_total{result=\"400\"} \(rejected)\n"), "\(metrics.body)")
            #expect(metrics.body.contains("kiln_webhook_deliveries_total{result=\"ignored\"} 2"))
            #expect(metrics.body.contains("kiln_webhook_deliveries_total{result=\"413\"} 1"))
        }
    }

    @Test func theActivityFeedSaysWhoTriggeredWhatAndHowItEnded() async throws {
        try await withScheduler { h in
            try await addProjects(h)
            let pushed = try await deliver(h, try Self.fixture("push.json"))
            let pushedID = (pushed.json?["builds"] as? [String] ?? [""])[0]
            let manual = try KilnJSON.decode(Build.self, from: try await h.request(.POST, "/api/v1/projects/diaspora/builds", body: #"{"tag":"v9"}"#).body)
            #expect(try await h.request(.POST, "/api/v1/builds/\(manual.id)/cancel").status == 200)
            let r = try await h.request(.GET, "/api/v1/projects/diaspora/activity")
            #expect(r.status == 200)
            let all = try KilnJSON.decode([ActivityEntry].self, from: r.body)
            // The builds, and the other events (who made the project, who cancelled) beside them.
            #expect(all.first?.action == "build cancelled" && all.first?.user == "admin" && all.first?.build == manual.id)
            let feed = all.filter { $0.action == "build" }
            #expect(feed.map(\.build) == [manual.id, pushedID])
            #expect(feed[0].user == "admin" && feed[1].user == nil)
            #expect(feed[0].trigger == "api by admin" && feed[0].tag == "v9" && feed[0].status == .cancelled && feed[0].note?.contains("cancelled") == true)
            #expect(feed[1].trigger == "gitlab push to master by jsmith" && feed[1].commit == "da1560886d4f094c3e6c9ef40349f7d38b5d27d7" && feed[1].status == .queued)
            #expect(try await h.request(.GET, "/api/v1/projects/nope/activity").status == 404)
        }
    }

    @Test func globs() {
        #expect(Project.glob("main", matches: "main"))
        #expect(!Project.glob("main", matches: "main2"))
        #expect(Project.glob("release/*", matches: "release/1.0"))
        #expect(Project.glob("release/*", matches: "release/a/b"))
        #expect(!Project.glob("release/*", matches: "release"))
        #expect(Project.glob("*", matches: "anything/at/all"))
        #expect(Project.glob("feat-*-x", matches: "feat-1-x") && !Project.glob("feat-*-x", matches: "feat-1-y"))
        #expect(GitLabWebhook.normalized("HTTP://Example.COM/a/b.git/") == GitLabWebhook.normalized("http://example.com/a/b"))
        #expect(GitLabWebhook.normalized("git@Example.com:a/b.git") == GitLabWebhook.normalized("git@example.com:a/b"))
        #expect(GitLabWebhook.constantTimeEqual("abc", "abc") && !GitLabWebhook.constantTimeEqual("abc", "abd") && !GitLabWebhook.constantTimeEqual("abc", "abcd"))
    }

    @Test("user information in a URL does not change which repository it is", arguments: [
        ("https://deploy@example.com/mike/diaspora.git", "http://example.com/mike/diaspora.git", false),  // another scheme
        ("https://deploy@EXAMPLE.com/mike/diaspora", "https://example.com/mike/diaspora.git", true),
        ("ssh://git@example.com/mike/diaspora.git", "git@example.com:mike/diaspora.git", true),
        ("ssh://git@example.com:22/mike/diaspora.git", "example.com:mike/diaspora", true),
        ("ssh://git@example.com:2222/mike/diaspora.git", "git@example.com:mike/diaspora.git", false),
        ("git@example.com:mike/diaspora.git", "git@example.com:mike/other.git", false),
        ("https://example.com/Mike/diaspora.git", "https://example.com/mike/diaspora.git", false),  // paths keep their case
    ])
    func repositoriesMatchWithoutUserInformation(_ a: String, _ b: String, _ same: Bool) {
        #expect((GitLabWebhook.normalized(a) == GitLabWebhook.normalized(b)) == same, "\(GitLabWebhook.normalized(a)) vs \(GitLabWebhook.normalized(b))")
    }

    @Test func aProjectWhoseURLNamesAUserIsFoundAndItsTokenIsTheSealedOne() async throws {
        // A record from before tokens were sealed: the scheduler's start seals it.
        let legacy = Project(name: "diaspora", repository: "ssh://git@example.com/mike/diaspora.git", buildImage: "a:1", buildCommand: "make",
                             defaultBranch: "master", webhookSecret: "from-the-record")
        try await withScheduler(prepare: { etcd in try await etcd.put(Keys().project("diaspora"), try KilnJSON.encode(legacy)) }) { h in
            #expect(try await !h.etcd.get(h.keys.project("diaspora"))!.string.contains("from-the-record"))
            #expect(try await h.etcd.get(h.keys.webhookSecret(project: "diaspora")) != nil)
            let r = try await deliver(h, try Self.fixture("push.json"), token: "from-the-record")
            #expect(r.status == 201, "\(r.body)")
            // A new token replaces it, sealed; the old one opens nothing.
            let changed = #"{"name":"diaspora","repository":"http://deploy@example.com/mike/diaspora.git","buildImage":"a:1","buildCommand":"make","defaultBranch":"master","webhookSecret":"the-new-token"}"#
            #expect(try await h.request(.POST, "/api/v1/projects", body: changed).status == 200)
            #expect(try await deliver(h, try Self.fixture("push.json"), token: "from-the-record").status == 401)
            let again = try await deliver(h, try Self.push(["checkout_sha": #""b6568db1bc1dcd7f8b4d5a946b0b91f9dacd7327""#, "after": #""b6568db1bc1dcd7f8b4d5a946b0b91f9dacd7327""#]), token: "the-new-token")
            #expect(again.status == 201, "\(again.body)")
        }
    }
}
