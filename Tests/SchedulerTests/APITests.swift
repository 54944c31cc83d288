import Etcd
import Foundation
import KilnClient
import KilnCore
import Testing

@Suite("Scheduler API against a real etcd", .serialized)
struct APITests {
    @Test func projectsAreSavedShownAndListed() async throws {
        try await withScheduler { h in
            let created = try await h.request(.POST, "/api/v1/projects", body: SchedulerHarness.demoProject)
            #expect(created.status == 201)
            let again = try await h.request(.POST, "/api/v1/projects", body: SchedulerHarness.demoProject)
            #expect(again.status == 200)
            let shown = try await h.request(.GET, "/api/v1/projects/demo")
            #expect(shown.status == 200)
            #expect(shown.json?["buildImage"] as? String == "localhost/kiln/jdk17-maven:1")
            #expect(shown.json?["dockerfile"] as? String == "Dockerfile")
            #expect(shown.json?["context"] as? String == ".")
            let list = try await h.request(.GET, "/api/v1/projects")
            #expect(list.body.contains("\"name\" : \"demo\"") || list.body.contains("\"name\":\"demo\""))
        }
    }

    @Test func aProjectsPipelineIsSavedAndShown() async throws {
        try await withScheduler { h in
            let body = #"{"name":"demo","repository":"http://h/r.git","buildImage":"a:1","buildCommand":"make","pipeline":[{"plugin":"deploy","settings":{"app":"demo","port":8080,"cells":["a","b"]}},{"plugin":"notify","settings":{"url":"http://127.0.0.1:9/x"},"timeoutSeconds":5}]}"#
            let r = try await h.request(.POST, "/api/v1/projects", body: body)
            #expect(r.status == 201, "\(r.body)")
            let saved = try KilnJSON.decode(Project.self, from: try await h.request(.GET, "/api/v1/projects/demo").body)
            #expect(saved.pipeline?.map(\.plugin) == ["deploy", "notify"])
            #expect(saved.pipeline?[0].settings["cells"] == .array([.string("a"), .string("b")]))
            #expect(saved.pipeline?[1].timeoutSeconds == 5)
        }
    }

    @Test func badProjectsAreRefusedWithTheReason() async throws {
        try await withScheduler { h in
            let cases: [(String, String)] = [
                (#"{"name":"Bad_Name","repository":"http://h/r.git","buildImage":"a:1","buildCommand":"make"}"#, "project name"),
                (#"{"name":"a/b","repository":"http://h/r.git","buildImage":"a:1","buildCommand":"make"}"#, "project name"),
                (#"{"name":"evil","repository":"ext::sh -c touch% /tmp/pwned","buildImage":"a:1","buildCommand":"make"}"#, "::"),
                (#"{"name":"evil","repository":"ssh://-oProxyCommand=x/r","buildImage":"a:1","buildCommand":"make"}"#, "'-'"),
                (#"{"name":"evil","repository":"ftp://h/r","buildImage":"a:1","buildCommand":"make"}"#, "ftp"),
                (#"{"name":"evil","repository":"http://h/r.git","buildImage":"a:1","buildCommand":"make","dockerfile":"../../etc/passwd"}"#, ".."),
                (#"{"name":"demo","repository":"http://h/r.git","buildCommand":"make"}"#, "buildImage"),
                (#"{"name":"demo","repository":"http://h/r.git","buildImage":"a:1","buildCommand":"make","maxConcurrent":0}"#, "maxConcurrent 0 is out of range"),
                (#"{"name":"demo","repository":"http://h/r.git","buildImage":"a:1","buildCommand":"make","pipeline":[{"plugin":"deploi"}]}"#, "unknown plugin 'deploi'"),
                (#"{"name":"demo","repository":"http://h/r.git","buildImage":"a:1","buildCommand":"make","pipeline":[{"plugin":"lb","settings":{"group":"web","app":"demo"}}]}"#, "setting 'domain' is required"),
                (#"{"name":"demo","repository":"http://h/r.git","buildImage":"a:1","buildCommand":"make","caches":["/root/../etc"]}"#, "'..'"),
                (#"{"name":"demo","repository":"http://h/r.git","buildImage":"a:1","buildCommand":"make","caches":["/workspace/.m2"]}"#, "/workspace is the checkout"),
                (#"{"name":"demo","repository":"http://h/r.git","buildImage":"a:1","buildCommand":"make","caches":["/root","/root/.m2"]}"#, "is inside cache '/root'"),
                (#"{"name":"demo","#, "not valid JSON"),
                ("", "empty"),
            ]
            for (body, reason) in cases {
                let r = try await h.request(.POST, "/api/v1/projects", body: body)
                #expect(r.status == 400, "\(body) -> \(r.status)")
                #expect(r.error?.contains(reason) == true, "\(body) -> \(r.body)")
            }
            // Nothing was stored.
            #expect(try await h.etcd.range(prefix: h.keys.projects).kvs.isEmpty)
        }
    }

    @Test func unknownThingsAre404() async throws {
        try await withScheduler { h in
            #expect(try await h.request(.GET, "/api/v1/projects/nope").status == 404)
            let build = try await h.request(.POST, "/api/v1/projects/nope/builds", body: "{}")
            #expect(build.status == 404)
            #expect(build.error?.contains("nope") == true)
            #expect(try await h.request(.GET, "/api/v1/builds/b000000000-000000").status == 404)
            #expect(try await h.request(.GET, "/api/v1/builds/b000000000-000000/log").status == 404)
            let route = try await h.request(.GET, "/api/v1/nothing")
            #expect(route.status == 404)
            #expect(route.error != nil)
        }
    }

    @Test func badBuildRequestsAre400AndQueueNothing() async throws {
        try await withScheduler { h in
            _ = try await h.request(.POST, "/api/v1/projects", body: SchedulerHarness.demoProject)
            let cases: [(String, String)] = [
                (#"{"ref":"--upload-pack=touch /tmp/x"}"#, "'-'"),
                (#"{"ref":"a..b"}"#, ".."),
                (#"{"ref":"main branch"}"#, "space"),
                (#"{"ref":"main","tag":"-x"}"#, "tag"),
                (#"{"ref":"main","tag":"a/b"}"#, "tag"),
                (#"{"ref":"main","tag":"has:colon"}"#, "tag"),
                (#"{"ref":"main","commit":"not-hex"}"#, "commit"),
                (#"{"ref":"main","mvncache":"yes"}"#, "mvncache"),
            ]
            for (body, reason) in cases {
                let r = try await h.request(.POST, "/api/v1/projects/demo/builds", body: body)
                #expect(r.status == 400, "\(body) -> \(r.status) \(r.body)")
                #expect(r.error?.contains(reason) == true, "\(body) -> \(r.body)")
            }
            #expect(try await h.etcd.range(prefix: h.keys.queue).kvs.isEmpty)
            #expect(try await h.etcd.range(prefix: h.keys.builds).kvs.isEmpty)
            #expect(try await h.request(.GET, "/api/v1/projects/Bad_Name").status == 400)
            #expect(try await h.request(.GET, "/api/v1/builds/..%2F..%2Fetc").status == 400)
        }
    }

    @Test func buildsAreQueuedListedNewestFirstAndCancelled() async throws {
        try await withScheduler { h in
            _ = try await h.request(.POST, "/api/v1/projects", body: SchedulerHarness.demoProject)
            let first = try await h.request(.POST, "/api/v1/projects/demo/builds", body: #"{"ref":"main","tag":"v1","mvncache":false}"#)
            #expect(first.status == 201)
            let a = try KilnJSON.decode(Build.self, from: first.body)
            #expect(a.status == .queued)
            #expect(a.tag == "v1")
            #expect(a.mvncache == false)
            #expect(a.steps.map(\.name) == [.fetch, .compile, .image, .push])
            #expect(try await h.etcd.get(h.keys.queued(a.id)) != nil)
            let b = try KilnJSON.decode(Build.self, from: try await h.request(.POST, "/api/v1/projects/demo/builds", body: "").body)
            #expect(b.ref == "main")  // the project's default branch
            #expect(b.mvncache == true)

            let list = try KilnJSON.decode([Build].self, from: try await h.request(.GET, "/api/v1/builds?project=demo").body)
            #expect(list.map(\.id) == [b.id, a.id])
            #expect(try await h.request(.GET, "/api/v1/builds?project=other").status == 404)

            let cancelled = try await h.request(.POST, "/api/v1/builds/\(a.id)/cancel")
            #expect(cancelled.status == 200)
            #expect(try await h.build(a.id).status == .cancelled)
            #expect(try await h.etcd.get(h.keys.queued(a.id)) == nil)
            let twice = try await h.request(.POST, "/api/v1/builds/\(a.id)/cancel")
            #expect(twice.status == 409)
            let log = try await h.request(.GET, "/api/v1/builds/\(a.id)/log?follow=1")
            #expect(log.body.contains("cancelled before it started"))
        }
    }
}

@Suite("Dispatcher against a real etcd", .serialized)
struct DispatcherTests {
    @Test func queuedBuildIsAssignedToALiveAgentInOneStep() async throws {
        try await withScheduler { h in
            _ = try await h.request(.POST, "/api/v1/projects", body: SchedulerHarness.demoProject)
            _ = try await registerAgent(h, id: "a1", capacity: 2)
            let b = try KilnJSON.decode(Build.self, from: try await h.request(.POST, "/api/v1/projects/demo/builds", body: "{}").body)
            try await h.waitFor(prefix: h.keys.tasks(of: "a1")) { $0.count == 1 }
            let task = try KilnJSON.decode(BuildTask.self, from: try #require(try await h.etcd.get(h.keys.task(agent: "a1", build: b.id))).value)
            #expect(task.project.name == "demo")
            #expect(task.attempt == 1)
            let rec = try await h.build(b.id)
            #expect(rec.status == .assigned)
            #expect(rec.agent == "a1")
            #expect(try await h.etcd.get(h.keys.queued(b.id)) == nil)
            let agents = try KilnJSON.decode([AgentInfo].self, from: try await h.request(.GET, "/api/v1/agents").body)
            #expect(agents.first?.running == 1)
            #expect(agents.first?.homedProjects == 1)  // demo's home is the only agent
        }
    }

    @Test func aProjectKeepsLandingOnTheSameAgentAndCapacityIsRespected() async throws {
        try await withScheduler { h in
            _ = try await h.request(.POST, "/api/v1/projects", body: SchedulerHarness.demoProject)
            _ = try await registerAgent(h, id: "a1", capacity: 1)
            _ = try await registerAgent(h, id: "a2", capacity: 1)
            _ = try await registerAgent(h, id: "a3", capacity: 1)
            let first = try KilnJSON.decode(Build.self, from: try await h.request(.POST, "/api/v1/projects/demo/builds", body: "{}").body)
            try await h.waitFor(prefix: h.keys.tasks) { $0.count == 1 }
            let home = try await h.build(first.id).agent!
            // Finish it: the next build of the project lands on the same agent.
            _ = try await h.etcd.delete(h.keys.task(agent: home, build: first.id))
            let second = try KilnJSON.decode(Build.self, from: try await h.request(.POST, "/api/v1/projects/demo/builds", body: "{}").body)
            try await h.waitFor(prefix: h.keys.tasks) { $0.count == 1 }
            #expect(try await h.build(second.id).agent == home)
            // Home is full (capacity 1): the third walks on along the ring to another agent.
            let third = try KilnJSON.decode(Build.self, from: try await h.request(.POST, "/api/v1/projects/demo/builds", body: "{}").body)
            try await h.waitFor(prefix: h.keys.tasks) { $0.count == 2 }
            let other = try await h.build(third.id).agent
            #expect(other != nil && other != home)
            // All full: the fourth waits in the queue until a slot frees.
            let fourth = try KilnJSON.decode(Build.self, from: try await h.request(.POST, "/api/v1/projects/demo/builds", body: "{}").body)
            try await h.waitFor(prefix: h.keys.tasks) { $0.count == 3 }
            let fifth = try KilnJSON.decode(Build.self, from: try await h.request(.POST, "/api/v1/projects/demo/builds", body: "{}").body)
            _ = fourth
            #expect(try await h.build(fifth.id).status == .queued)
            _ = try await h.etcd.delete(h.keys.task(agent: home, build: second.id))
            try await h.waitFor(prefix: h.keys.queue) { $0.isEmpty }
            #expect(try await h.build(fifth.id).agent == home)
        }
    }

    @Test func aDeadAgentsBuildGoesBackToTheQueueWithTheAttemptCounted() async throws {
        try await withScheduler { h in
            _ = try await h.request(.POST, "/api/v1/projects", body: SchedulerHarness.demoProject)
            let lease = try await registerAgent(h, id: "doomed", capacity: 1)
            let b = try KilnJSON.decode(Build.self, from: try await h.request(.POST, "/api/v1/projects/demo/builds", body: "{}").body)
            try await h.waitFor(prefix: h.keys.tasks(of: "doomed")) { $0.count == 1 }
            let taskKV = try #require(try await h.etcd.get(h.keys.task(agent: "doomed", build: b.id)))
            // The agent dies: its lease ends. The build goes back to the queue (no agent left).
            try await h.etcd.revokeLease(lease)
            try await h.waitFor(prefix: h.keys.queue) { $0.count == 1 }
            let requeued = try await h.build(b.id)
            #expect(requeued.status == .queued)
            #expect(requeued.attempt == 1)
            #expect(requeued.error?.contains("doomed") == true)
            // A write guarded by the old task's create revision (what the dead agent would do) is refused.
            let late = try await h.etcd.txn(Txn(compare: [.createRevision(taskKV.key, .equal, taskKV.createRevision)],
                                                 success: [.put(h.keys.build(b.id), "late")]))
            #expect(!late.succeeded)
            // Another agent comes: it gets the build as attempt 2.
            _ = try await registerAgent(h, id: "survivor", capacity: 1)
            try await h.waitFor(prefix: h.keys.tasks(of: "survivor")) { $0.count == 1 }
            let again = try await h.build(b.id)
            #expect(again.agent == "survivor")
            #expect(again.attempt == 2)
        }
    }

    @Test func aProjectThatAsksForLabelsGoesOnlyToAgentsCarryingThemOrWaitsSayingWhy() async throws {
        try await withScheduler { h in
            let gpu = #"{"name":"trainer","repository":"http://127.0.0.1:1/t.git","buildImage":"a:1","buildCommand":"make","labels":["gpu"]}"#
            #expect(try await h.request(.POST, "/api/v1/projects", body: gpu).status == 201)
            let bad = #"{"name":"x","repository":"http://127.0.0.1:1/t.git","buildImage":"a:1","buildCommand":"make","labels":["no good"]}"#
            #expect(try await h.request(.POST, "/api/v1/projects", body: bad).status == 400)
            _ = try await registerAgent(h, id: "plain", capacity: 4)
            let waiting = try KilnJSON.decode(Build.self, from: try await h.request(.POST, "/api/v1/projects/trainer/builds", body: "{}").body)
            try await h.waitFor(prefix: h.keys.build(waiting.id)) { kvs in
                kvs.first.flatMap { try? KilnJSON.decode(Build.self, from: $0.value) }?.waiting != nil
            }
            let record = try await h.build(waiting.id)
            #expect(record.status == .queued)
            #expect(record.waiting?.contains("gpu") == true)
            #expect(try await h.etcd.range(prefix: h.keys.tasks(of: "plain")).kvs.isEmpty)
            // An agent with the label comes: the build goes there, and the reason is cleared.
            _ = try await registerAgent(h, id: "gpu-1", capacity: 1, labels: ["gpu", "cuda"])
            try await h.waitFor(prefix: h.keys.tasks(of: "gpu-1")) { $0.count == 1 }
            let assigned = try await h.build(waiting.id)
            #expect(assigned.agent == "gpu-1")
            #expect(assigned.waiting == nil)
        }
    }

    @Test func projectsTakeTurnsForAScarceSlot() async throws {
        try await withScheduler { h in
            _ = try await h.request(.POST, "/api/v1/projects", body: SchedulerHarness.demoProject)
            let small = #"{"name":"small","repository":"http://127.0.0.1:1/s.git","buildImage":"a:1","buildCommand":"make"}"#
            _ = try await h.request(.POST, "/api/v1/projects", body: small)
            _ = try await registerAgent(h, id: "only", capacity: 1)
            var big: [String] = []
            for _ in 0..<5 {
                big.append(try KilnJSON.decode(Build.self, from: try await h.request(.POST, "/api/v1/projects/demo/builds", body: "{}").body).id)
            }
            try await h.waitFor(prefix: h.keys.tasks) { $0.count == 1 }
            let lone = try KilnJSON.decode(Build.self, from: try await h.request(.POST, "/api/v1/projects/small/builds", body: "{}").body).id
            // The slot frees twice: small's one goes first (big was just served), then big's second.
            var order: [String] = []
            for _ in 0..<2 {
                let running = try #require(try await h.etcd.range(prefix: h.keys.tasks).kvs.first)
                _ = try await h.etcd.delete(running.key)
                try await h.waitFor(prefix: h.keys.tasks) { kvs in kvs.count == 1 && kvs[0].key != running.key }
                order.append(String(try await h.etcd.range(prefix: h.keys.tasks).kvs[0].key.split(separator: "/").last!))
            }
            #expect(order == [lone, big[1]], "big: \(big), lone: \(lone)")
        }
    }
    @Test func aBuildWhoseAgentsKeepDyingFailsAfterTheLastAttempt() async throws {
        try await withScheduler { h in
            _ = try await h.request(.POST, "/api/v1/projects", body: SchedulerHarness.demoProject)
            let b = try KilnJSON.decode(Build.self, from: try await h.request(.POST, "/api/v1/projects/demo/builds", body: "{}").body)
            // Three agents in turn take the build and die (the default --max-attempts is 3).
            for attempt in 1...3 {
                let lease = try await registerAgent(h, id: "short-lived-\(attempt)", capacity: 1)
                try await h.waitFor(prefix: h.keys.tasks(of: "short-lived-\(attempt)")) { $0.count == 1 }
                #expect(try await h.build(b.id).attempt == attempt)
                try await h.etcd.revokeLease(lease)
                try await h.waitFor(prefix: h.keys.tasks) { $0.isEmpty }
            }
            try await h.waitFor(prefix: h.keys.build(b.id)) { kvs in
                (kvs.first.flatMap { try? KilnJSON.decode(Build.self, from: $0.value) })?.status == .failed
            }
            let failed = try await h.build(b.id)
            #expect(failed.error?.contains("gave up after 3 attempts") == true, "\(failed.error ?? "")")
            #expect(try await h.etcd.get(h.keys.queued(b.id)) == nil)
            let log = try await h.request(.GET, "/api/v1/builds/\(b.id)/log?follow=1")
            #expect(log.body.contains("gave up after 3 attempts"))
        }
    }

    @Test func aNewerBuildOfABranchSupersedesTheQueuedOnesWhenTheProjectSaysSo() async throws {
        try await withScheduler { h in
            let p = #"{"name":"fast","repository":"http://127.0.0.1:1/f.git","buildImage":"a:1","buildCommand":"make","supersede":"queued"}"#
            #expect(try await h.request(.POST, "/api/v1/projects", body: p).status == 201)
            let bad = #"{"name":"odd","repository":"http://127.0.0.1:1/f.git","buildImage":"a:1","buildCommand":"make","supersede":"always"}"#
            let refused = try await h.request(.POST, "/api/v1/projects", body: bad)
            #expect(refused.status == 400)
            #expect(refused.error?.contains("supersede") == true)
            // No agent: everything stays queued.
            let first = try KilnJSON.decode(Build.self, from: try await h.request(.POST, "/api/v1/projects/fast/builds", body: #"{"ref":"main"}"#).body)
            let other = try KilnJSON.decode(Build.self, from: try await h.request(.POST, "/api/v1/projects/fast/builds", body: #"{"ref":"feature"}"#).body)
            let second = try KilnJSON.decode(Build.self, from: try await h.request(.POST, "/api/v1/projects/fast/builds", body: #"{"ref":"main"}"#).body)
            let cancelled = try await h.build(first.id)
            #expect(cancelled.status == .cancelled)
            #expect(cancelled.error?.contains("superseded by build \(second.id)") == true, "\(cancelled.error ?? "")")
            #expect(try await h.build(other.id).status == .queued)   // another branch
            #expect(try await h.build(second.id).status == .queued)  // the newest stays
            #expect(try await h.etcd.get(h.keys.queued(first.id)) == nil)
            // With "running", an assigned build is told to stop: its task carries the cancel.
            let eager = #"{"name":"eager","repository":"http://127.0.0.1:1/e.git","buildImage":"a:1","buildCommand":"make","supersede":"running"}"#
            #expect(try await h.request(.POST, "/api/v1/projects", body: eager).status == 201)
            // The slot must go to eager's build: end the queued ones above first.
            _ = try await h.request(.POST, "/api/v1/builds/\(other.id)/cancel")
            _ = try await h.request(.POST, "/api/v1/builds/\(second.id)/cancel")
            _ = try await registerAgent(h, id: "busy", capacity: 1)
            let running = try KilnJSON.decode(Build.self, from: try await h.request(.POST, "/api/v1/projects/eager/builds", body: "{}").body)
            try await h.waitFor(prefix: h.keys.tasks(of: "busy")) { $0.count == 1 }
            _ = try await h.request(.POST, "/api/v1/projects/eager/builds", body: "{}")
            let task = try KilnJSON.decode(BuildTask.self, from: try #require(try await h.etcd.get(h.keys.task(agent: "busy", build: running.id))).value)
            #expect(task.cancel)
            #expect(try await h.build(running.id).cancelRequested == true)
            // Without the option nothing is superseded.
            _ = try await h.request(.POST, "/api/v1/projects", body: SchedulerHarness.demoProject)
            let a = try KilnJSON.decode(Build.self, from: try await h.request(.POST, "/api/v1/projects/demo/builds", body: "{}").body)
            _ = try await h.request(.POST, "/api/v1/projects/demo/builds", body: "{}")
            #expect(try await h.build(a.id).status == .queued)
        }
    }

    /// The CLI's client against the real API: both sides use KilnCore's wire types, and an
    /// error answer reaches the caller as its message.
    @Test func theClientSpeaksTheAPIWithTheSharedWireTypes() async throws {
        try await withScheduler { h in
            let client = APIClient(h.api + "/", token: h.adminToken)
            let status = try await client.get("/api/v1/scheduler", as: SchedulerStatus.self)
            #expect(!status.id.isEmpty)
            #expect(status.isLeader == (status.leader == status.id))
            let project = Project(name: "demo", repository: "http://127.0.0.1:1/demo.git", buildImage: "a:1", buildCommand: "make", supersede: .queued)
            #expect(try await client.post("/api/v1/projects", body: project, as: Project.self).supersede == .queued)
            let build = try await client.post("/api/v1/projects/demo/builds", body: BuildRequest(ref: "feature", tag: "t1", mvncache: false, trigger: "cli", priority: 5), as: Build.self)
            #expect(build.ref == "feature" && build.tag == "t1" && !build.mvncache && build.trigger == "cli by admin" && build.priority == 5)
            let read = try await client.get("/api/v1/builds/\(build.id)", as: Build.self)
            #expect(read.id == build.id && read.tag == "t1" && read.priority == 5)
            let entries = try await client.get("/api/v1/projects/demo/activity", as: [ActivityEntry].self)
            #expect(entries.filter { $0.action == "build" }.map(\.build) == [build.id])
            #expect(entries.last?.action == "project created" && entries.last?.user == "admin")
            let missing = await #expect(throws: APIClient.Failure.self) {
                try await client.get("/api/v1/builds/b000000000-000000", as: Build.self)
            }
            #expect(missing?.description == "build 'b000000000-000000' does not exist")
            let bad = await #expect(throws: APIClient.Failure.self) {
                try await client.raw("POST", "/api/v1/projects", body: Data(#"{"name":"x","repository":"http://h/r.git","buildImage":"a:1","buildCommand":"make","supersede":"always"}"#.utf8))
            }
            #expect(bad?.description.hasPrefix("supersede 'always' is not an option") == true)
        }
    }
}
