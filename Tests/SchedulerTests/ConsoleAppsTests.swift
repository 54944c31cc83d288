import Etcd
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
import Processes
@testable import Scheduler
import Testing

/// The apps' pages and forms over real HTTP against a scheduler in this process and a real
/// etcd (`ConsoleClient` posts the forms as a browser would): what each role sees (env values
/// masked below master), which forms it gets, what a refused POST (role, CSRF, validation)
/// sends back and that it changes nothing, and the pipeline runs the deploy, roll back and
/// retire forms ask for. No deploy backend runs here (the scale form then says so); the real
/// deploy, scaling and roll back under load are `EndToEndTests.ConsoleDeployTests`.
@Suite("Console apps", .serialized)
struct ConsoleAppsTests {
    static let password = "correct horse battery staple"

    static let pipeline = #"[{"plugin":"deploy","settings":{"app":"shop","port":8080,"replicas":1}},{"plugin":"lb","settings":{"app":"shop","group":"g","domain":"shop.example"}},{"plugin":"retire","settings":{"app":"shop","drainSeconds":3}},{"plugin":"deploy","settings":{"app":"other","port":8081}}]"#

    /// Logs `user` in (adding them first) and returns their console and their session's token.
    func signIn(_ h: SchedulerHarness, _ user: String) async throws -> (ConsoleClient, String) {
        try await h.addUser(user, password: Self.password)
        let client = ConsoleClient(h.api)
        #expect(try await client.logIn(user, Self.password).status == 303)
        return (client, try #require(ConsoleClient.csrf(in: try await client.get("/").body)))
    }

    /// Project shop with three builds that succeeded, and app shop: v1 (build 1) retired, v2
    /// (build 2) live in cells a and b behind shop.example, v3 (build 3) ready; an lb-agent's
    /// report and an event. Returns the builds' ids.
    func shop(_ h: SchedulerHarness) async throws -> [String] {
        let project = #"{"name":"shop","repository":"http://127.0.0.1:1/shop.git","buildImage":"a:1","buildCommand":"make","pipeline":\#(Self.pipeline)}"#
        let p = try await h.request(.POST, "/api/v1/projects", body: project)
        #expect(p.status == 201, "\(p.body)")
        var ids: [String] = []
        for n in 1...3 {
            let id = try await ConsoleTests().queueBuild(h, project: "shop", tag: "v\(n)")
            try await ConsoleTests().write(h, build: id, log: []) { b in
                b.status = .succeeded
                b.image = "127.0.0.1:5000/shop:v\(n)"
                b.digest = "sha256:" + String(repeating: "\(n)f", count: 32)
                b.finishedAt = Date()
            }
            ids.append(id)
        }
        let settings = DeploySettings(port: 8080, replicas: 1, env: ["GREETING": "hello-there"], healthPath: "/ready", secretEnv: ["DB_PASSWORD"])
        func version(_ n: Int, _ state: VersionState, instances: [Instance] = []) -> AppVersion {
            var v = AppVersion(number: n, build: ids[n - 1], project: "shop", image: "127.0.0.1:5000/shop@sha256:" + String(repeating: "\(n)f", count: 32),
                               backend: "local", cells: ["a", "b"], settings: settings, state: state, instances: instances)
            v.tag = "v\(n)"
            return v
        }
        let live = [Instance(id: "c1", name: "kiln-shop-v2-a-1", cell: "a", address: "127.0.0.1:21001", healthy: true, checkedAt: Date(), detail: "200"),
                    Instance(id: "c2", name: "kiln-shop-v2-b-1", cell: "b", address: "127.0.0.1:21051", healthy: false, checkedAt: Date(), detail: "connection refused")]
        let ready = [Instance(id: "c3", name: "kiln-shop-v3-a-1", cell: "a", address: "127.0.0.1:21002", healthy: true)]
        let app = App(name: "shop", versions: [version(1, .retired), version(2, .live, instances: live), version(3, .ready, instances: ready)],
                      lb: [LBBinding(group: "g", domain: "shop.example")], project: "shop")
        try await h.etcd.put(h.keys.app("shop"), try KilnJSON.encode(app))
        let slb = SLBKeys()
        let revision = try await h.etcd.put(slb.domain(group: "g", "shop.example"),
                                            try KilnJSON.encode(SLBDomain(domain: "shop.example", servers: [SLBServer(address: "127.0.0.1:21001")], app: "shop", version: 2)))
        try await h.etcd.put(slb.agent(group: "g", "lb-1"), try KilnJSON.encode(SLBAgentReport(id: "lb-1", appliedRevision: revision, listen: "127.0.0.1:8088")))
        try await SchedulerStore(etcd: h.etcd).record(ActivityEvent(user: "discovery", action: "health changed", detail: "v2: kiln-shop-v2-b-1 unhealthy"), on: .app, "shop")
        return ids
    }

    func appRecord(_ h: SchedulerHarness) async throws -> App {
        try KilnJSON.decode(App.self, from: try #require(try await h.etcd.get(h.keys.app("shop"))).value)
    }

    @Test func theAppPagesShowWhatEachRoleMaySeeAndOnlyMastersGetTheForms() async throws {
        try await withScheduler { h in
            let ids = try await shop(h)
            let (alice, aliceToken) = try await signIn(h, "alice")
            let (rita, ritaToken) = try await signIn(h, "rita")
            let (mallory, malloryToken) = try await signIn(h, "mallory")
            try await h.addMember("alice", to: "shop", as: .master)
            try await h.addMember("rita", to: "shop", as: .reporter)

            // The list: as GET /api/v1/apps lists them; the header links it.
            let list = try await alice.get("/ui/apps")
            #expect(list.status == 200 && list.body.contains(#"<tr id="app-shop">"#) && list.body.contains(#"<a href="/ui/apps">Apps</a>"#), "\(list.body)")
            #expect(list.body.contains("version 2") && list.body.contains("a: 1, b: 1") && list.body.contains("shop.example"))
            #expect(try await alice.get("/").body.contains(#"<a href="/ui/apps/shop">shop</a>"#))
            #expect(!(try await mallory.get("/ui/apps").body.contains("app-shop")))

            // A master: versions, settings with env values, secret env by name, instances with
            // health, the domain and its lb-agent, events, and every form.
            let page = try await alice.get("/ui/apps/shop")
            #expect(page.status == 200, "\(page.body)")
            for part in [#"<tr id="version-3">"#, "GREETING=hello-there", "secret env: DB_PASSWORD", "health /ready", "127.0.0.1:21051", "connection refused",
                         #"<h3 id="domain-shop.example">"#, "<td>lb-1</td><td>127.0.0.1:8088</td>", "current", "shop@sha256:2f2f2f2f2f2f…", "health changed", "v2: kiln-shop-v2-b-1 unhealthy",
                         #"id="deploy-form""#, #"id="scale-form""#, #"id="rollback-1""#, #"id="rollback-3""#, #"id="retire-3""#, #"id="live-note""#, "is live: it leaves the load balancer only when another version takes its place",
                         #"<option value="\#(ids[0])">"#, #"name="port" value="8080""#, #"name="healthPath" value="/ready""#, "GREETING=hello-there</textarea>",
                         #"name="secretEnv" value="DB_PASSWORD""#, "<b id=\"live\">2</b>"] {
                #expect(page.body.contains(part), "the master's page lacks \(part)")
            }
            #expect(!page.body.contains(#"id="retire-2""#) && !page.body.contains(#"id="rollback-2""#) && !page.body.contains(#"id="retire-1""#))
            #expect(!page.body.contains(#"http-equiv="refresh""#), "a page with a form does not reload itself")

            // A reporter: the same page, env values masked, no form.
            let masked = try await rita.get("/ui/apps/shop")
            #expect(masked.status == 200)
            #expect(masked.body.contains("GREETING=***") && !masked.body.contains("hello-there"), "\(masked.body)")
            #expect(masked.body.contains(#"id="no-actions""#) && !masked.body.contains("<form method=\"post\" action=\"/ui/apps/"))
            // No role: the same 404 as an app that does not exist.
            let hidden = try await mallory.get("/ui/apps/shop"), missing = try await mallory.get("/ui/apps/nosuch")
            #expect(hidden.status == 404 && missing.status == 404 && hidden.body.contains("app &#39;shop&#39; does not exist"), "\(hidden.body)")

            // Their POSTs: refused before the form is read, nothing changed.
            let before = try await appRecord(h)
            let deploy = [("build", ids[1]), ("port", "8080"), ("replicas", "1"), ("healthPath", "/ready")]
            for (client, token, status) in [(rita, ritaToken, 403), (mallory, malloryToken, 404)] {
                #expect(try await client.post("/ui/apps/shop/deploy", form: [("csrf", token)] + deploy).status == status)
                #expect(try await client.post("/ui/apps/shop/scale", form: [("csrf", token), ("replicas", "3")]).status == status)
                #expect(try await client.post("/ui/apps/shop/versions/1/rollback", form: [("csrf", token)]).status == status)
                #expect(try await client.post("/ui/apps/shop/versions/3/retire", form: [("csrf", token)]).status == status)
            }
            let ritaAPI = try await h.request(.POST, "/api/v1/apps/shop/deploy", body: #"{"build":"\#(ids[1])"}"#, token: nil)
            #expect(ritaAPI.status == 401)
            // A forged POST of alice's (no token, another session's, another site's page).
            for (form, origin) in [([], ConsoleClient.Origin.own), ([("csrf", ritaToken)], .own), ([("csrf", aliceToken)], .other("http://evil.example"))]
                as [([(String, String)], ConsoleClient.Origin)] {
                #expect(try await alice.post("/ui/apps/shop/deploy", form: form + deploy, origin: origin).status == 403)
                #expect(try await alice.post("/ui/apps/shop/versions/3/retire", form: form, origin: origin).status == 403)
            }
            #expect(try await appRecord(h) == before)
            for id in ids { #expect(try await h.build(id).deploy == nil, "no pipeline run was asked for build \(id)") }
        }
    }

    @Test func theFormsCheckTheirFieldsAndAskForThePipelineRunsTheApiAsksFor() async throws {
        try await withScheduler { h in
            let ids = try await shop(h)
            let (alice, token) = try await signIn(h, "alice")
            try await h.addMember("alice", to: "shop", as: .master)
            let before = try await appRecord(h)

            // Problems beside their fields, what was typed kept, nothing asked for.
            let bad = try await alice.post("/ui/apps/shop/deploy", form: [("csrf", token), ("build", ""), ("port", "eighty"), ("replicas", "0"),
                                                                          ("healthPath", "ready"), ("env", "JUSTANAME\r\nA=1"), ("memoryMB", "4")])
            #expect(bad.status == 400, "\(bad.body)")
            for id in ["error-build", "error-port", "error-replicas", "error-healthPath", "error-env", "error-memoryMB"] {
                #expect(bad.body.contains(#"id="\#(id)""#), "no \(id) in \(bad.body)")
            }
            #expect(bad.body.contains("&#39;eighty&#39; is not a number") && bad.body.contains("out of range 1…100") && bad.body.contains("starting with &#39;/&#39;"))
            #expect(bad.body.contains(#"name="port" value="eighty""#) && bad.body.contains("JUSTANAME\r\nA=1</textarea>"))
            let scaleBad = try await alice.post("/ui/apps/shop/scale", form: [("csrf", token), ("replicas", "many")])
            #expect(scaleBad.status == 400 && scaleBad.body.contains(#"id="error-replicas""#) && scaleBad.body.contains(#"name="replicas" value="many""#))
            let scaleHigh = try await alice.post("/ui/apps/shop/scale", form: [("csrf", token), ("replicas", "101")])
            #expect(scaleHigh.status == 400 && scaleHigh.body.contains("0 to 100"), "\(scaleHigh.body)")
            // A good scaling reaches the scaler, which this scheduler has not: it says so.
            let noScaler = try await alice.post("/ui/apps/shop/scale", form: [("csrf", token), ("replicas", "2"), ("cell", "a")])
            #expect(noScaler.status == 503 && noScaler.body.contains(#"id="scale-error""#) && noScaler.body.contains("runs no deploy backends"), "\(noScaler.body)")
            // The live version cannot be retired; a version that does not exist is a 404.
            let liveRetire = try await alice.post("/ui/apps/shop/versions/2/retire", form: [("csrf", token)])
            #expect(liveRetire.status == 409 && liveRetire.body.contains("is live: it leaves the load balancer only when another version takes its place"))
            #expect(try await alice.post("/ui/apps/shop/versions/9/rollback", form: [("csrf", token)]).status == 404)
            #expect(try await alice.post("/ui/apps/shop/versions/x/retire", form: [("csrf", token)]).status == 400)
            #expect(try await appRecord(h) == before)
            for id in ids { #expect(try await h.build(id).deploy == nil) }

            // Deploy build 2 with new settings: a run of the project's steps for this app, the
            // deploy step with the form's settings (the other app's step left out).
            let deployed = try await alice.post("/ui/apps/shop/deploy", form: [
                ("csrf", token), ("build", ids[1]), ("port", "9090"), ("replicas", "2"), ("healthPath", "/ready"), ("env", "GREETING=hi\r\nNEW=1"),
                ("cpu", "0.5"), ("memoryMB", "256"), ("secretEnv", "DB_PASSWORD")])
            #expect(deployed.status == 303 && deployed.header("Location") == "/ui/apps/shop#versions", "\(deployed.status) \(deployed.body)")
            let deployRun = try #require(try await h.build(ids[1]).deploy)
            #expect(deployRun.pipeline.map(\.plugin) == ["deploy", "lb", "retire"])
            #expect(deployRun.pipeline[0].settings == ["app": .string("shop"), "port": .number(9090), "replicas": .number(2), "healthPath": .string("/ready"),
                                                 "env": .object(["GREETING": .string("hi"), "NEW": .string("1")]), "cpu": .number(0.5), "memoryMB": .number(256),
                                                 "secretEnv": .array([.string("DB_PASSWORD")])], "\(deployRun.pipeline[0].settings)")
            #expect(deployRun.trigger == "console: deploy by alice")
            // A second deploy of the same build while its run is pending: the refusal on the form.
            let twice = try await alice.post("/ui/apps/shop/deploy", form: [("csrf", token), ("build", ids[1]), ("port", "9090"), ("replicas", "2"), ("healthPath", "/ready")])
            #expect(twice.status == 409 && twice.body.contains(#"id="deploy-error""#), "\(twice.body)")

            // Roll back to v1: its build, its settings.
            #expect(try await alice.post("/ui/apps/shop/versions/1/rollback", form: [("csrf", token)]).status == 303)
            let back = try #require(try await h.build(ids[0]).deploy)
            #expect(back.pipeline[0].settings["port"] == .number(8080) && back.pipeline[0].settings["env"] == .object(["GREETING": .string("hello-there")]))
            #expect(back.pipeline[0].settings["healthPath"] == .string("/ready") && back.trigger == "console: roll back to version 1 by alice")

            // Retire through `kiln apps retire` (the API route): the live version is refused with
            // the page's words; v3 gets one retire step naming it, with the project's drain.
            let kiln = try #require(KilnExecutable.besideCurrent)
            var environment = ProcessInfo.processInfo.environment
            environment["KILN_API"] = h.api
            environment["KILN_TOKEN"] = h.adminToken
            let env = environment
            let live = await Task.detached { try? ManagedProcess.run(kiln.path, ["apps", "retire", "shop", "2"], environment: env) }.value
            #expect(live?.status != 0 && live?.output.contains("only when another version takes its place") == true, "\(String(describing: live))")
            let retired = try await Task.detached { try run(kiln.path, ["apps", "retire", "shop", "3"], environment: env) }.value
            #expect(retired.contains("pipeline run 1") && retired.contains("api: retire version 3 by admin"), "\(retired)")
            let retire = try #require(try await h.build(ids[2]).deploy)
            #expect(retire.pipeline == [PipelineStep(plugin: "retire", settings: ["app": .string("shop"), "version": .number(3), "drainSeconds": .number(3)])])

            // The API's deploy route validates as the form does.
            let apiBad = try await h.request(.POST, "/api/v1/apps/shop/deploy", body: #"{"build":"\#(ids[2])","settings":{"port":0,"replicas":1,"env":{},"healthPath":"/"}}"#)
            #expect(apiBad.status == 400 && apiBad.body.contains("port"), "\(apiBad.body)")
            // A build of a project the app does not allow: refused, nothing asked for.
            let stranger = try await h.addProjectWithBuild("elsewhere")
            try await ConsoleTests().write(h, build: stranger, log: []) { b in
                b.status = .succeeded
                b.image = "127.0.0.1:5000/elsewhere:1"
            }
            let foreign = try await alice.post("/ui/apps/shop/deploy", form: [("csrf", token), ("build", stranger), ("port", "8080"), ("replicas", "1"), ("healthPath", "/")])
            #expect(foreign.status == 404, "alice cannot read project elsewhere's builds: \(foreign.status)")
            let foreignAPI = try await h.request(.POST, "/api/v1/apps/shop/deploy", body: #"{"build":"\#(stranger)"}"#)
            #expect(foreignAPI.status == 400 && foreignAPI.body.contains("choose one of theirs"), "\(foreignAPI.body)")
            #expect(try await h.build(stranger).deploy == nil)
            // A master of the app who is only a reporter of its project may deploy, but not name
            // a secret the app does not get yet (its value would reach the instances).
            let (bob, bobToken) = try await signIn(h, "bob")
            try await h.addMember("bob", to: "shop", as: .reporter)
            #expect(try await h.request(.PUT, "/api/v1/apps/shop/members/bob", body: #"{"role":"master"}"#).status == 200)
            let secretAsk = try await bob.post("/ui/apps/shop/deploy", form: [("csrf", bobToken), ("build", ids[2]), ("port", "8080"), ("replicas", "1"),
                                                                             ("healthPath", "/"), ("secretEnv", "DB_PASSWORD, SIGNING_KEY")])
            #expect(secretAsk.status == 403 && secretAsk.body.contains(#"id="deploy-error""#) && secretAsk.body.contains("you are reporter of project"), "\(secretAsk.body)")
            #expect(try await h.build(ids[2]).deploy?.run == 1, "only the retire run")

            // Each asked-for action is in the app's events, with who asked.
            let events = try await SchedulerStore(etcd: h.etcd).activity(.app, "shop", limit: 50)
            #expect(events.filter { $0.user == "alice" }.map(\.action).sorted() == ["deploy requested", "roll back requested"], "\(events.map(\.action))")
            #expect(events.contains { $0.action == "retire requested" && $0.user == "admin" })
            let page = try await alice.get("/ui/apps/shop")
            #expect(page.body.contains("roll back requested") && page.body.contains("retire requested"))
        }
    }

    /// Found by a hostile review: the app's owner lets another project into the app; a master
    /// of the app who is only a reporter of that project may not deploy its builds (the run is
    /// that project's, with its secrets), and the app list masks env values below master as the
    /// app's own answer does. The feed is read newest first with its limit.
    @Test func anotherProjectsBuildNeedsDeployThereAndTheListMasksEnvBelowMaster() async throws {
        try await withScheduler { h in
            let ids = try await shop(h)
            let billing = try await h.addProjectWithBuild("billing")
            try await ConsoleTests().write(h, build: billing, log: []) { b in
                b.status = .succeeded
                b.image = "127.0.0.1:5000/billing:1"
                b.digest = "sha256:" + String(repeating: "b", count: 64)
                b.finishedAt = Date()
            }
            #expect(try await h.request(.PUT, "/api/v1/apps/shop/projects/billing", body: #"{"role":"master"}"#).status == 200)
            let (mallory, token) = try await signIn(h, "mallory")
            try await h.addMember("mallory", to: "shop", as: .master)
            try await h.addMember("mallory", to: "billing", as: .reporter)
            let form = [("csrf", token), ("build", billing), ("port", "8080"), ("replicas", "1"), ("healthPath", "/")]
            let refused = try await mallory.post("/ui/apps/shop/deploy", form: form)
            #expect(refused.status == 403 && refused.body.contains("reporter"), "\(refused.status) \(refused.body)")
            #expect(try await h.build(billing).deploy == nil)
            // Her own project's build still deploys.
            #expect(try await mallory.post("/ui/apps/shop/deploy", form: [("csrf", token), ("build", ids[2]), ("port", "8080"), ("replicas", "1"), ("healthPath", "/")]).status == 303)

            // The list as a reporter sees it: values masked, as in GET /api/v1/apps/shop.
            try await h.addUser("rita", password: Self.password)
            try await h.addMember("rita", to: "shop", as: .reporter)
            let basic = Data("rita:\(Self.password)".utf8).base64EncodedString()
            let made = try await h.request(.POST, "/api/v1/tokens", body: #"{"name":"t"}"#, token: nil, headers: [("Authorization", "Basic \(basic)")])
            let ritaToken = try #require(made.json?["token"] as? String, "\(made.body)")
            let list = try await h.request(.GET, "/api/v1/apps", token: ritaToken)
            #expect(list.status == 200 && !list.body.contains("hello-there") && list.body.contains("***"), "\(list.body)")
            #expect(try await h.request(.GET, "/api/v1/apps").body.contains("hello-there"), "the admin sees the values")

            // The feed: the newest events, at most the limit.
            let store = SchedulerStore(etcd: h.etcd)
            for n in 0..<5 { try await store.record(ActivityEvent(at: Date().addingTimeInterval(Double(n)), user: "t", action: "event \(n)"), on: .app, "shop") }
            #expect(try await store.activity(.app, "shop", limit: 2).map(\.action) == ["event 4", "event 3"])
        }
    }

    @Test func thePipelineOfADeployKeepsToTheAppAndTakesTheFormsSettings() {
        let steps = [PipelineStep(plugin: "deploy", settings: ["app": .string("shop"), "port": .number(80), "cells": .array([.string("a")])]),
                     PipelineStep(plugin: "deploy", settings: ["app": .string("other"), "port": .number(81)]),
                     PipelineStep(plugin: "notify", settings: ["url": .string("http://x/")])]
        var app = App(name: "shop", lb: [LBBinding(group: "g", domain: "d.example")], project: "shop")
        var counts = DeploySettings(port: 8080, replicas: 3, healthPath: "/h")
        counts.cellReplicas = ["a": 1]
        let made = API.appPipeline(steps, app: app, settings: counts)
        #expect(made.map(\.plugin) == ["deploy", "notify"])
        #expect(made[0].settings["cells"] == .array([.string("a")]) && made[0].settings["port"] == .number(8080))
        #expect(made[0].settings["replicas"] == nil, "counts per cell go on: the step sets no replicas")
        // A pipeline that no longer deploys the app: the steps its newest version was made with.
        app.versions = [AppVersion(number: 1, build: "b", project: "shop", image: "i", backend: "local", cells: ["a", "b"], settings: counts, state: .live)]
        let rebuilt = API.appPipeline([], app: app, settings: nil)
        #expect(rebuilt.map(\.plugin) == ["deploy", "lb", "retire"])
        #expect(rebuilt[0].settings["cells"] == .array([.string("a"), .string("b")]) && rebuilt[1].settings["domain"] == .string("d.example"))
    }
}
