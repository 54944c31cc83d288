import Etcd
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
@testable import Scheduler
import Testing

/// The console's project and build forms over real HTTP against a scheduler in this process
/// and a real etcd, as `ConsoleClient` (a browser that follows no redirect) posts them: what
/// each role may do, what a refused form sends back, what ends up in etcd. No agent runs:
/// builds stay queued. In Chromium: `ConsoleTests.aProjectAndABuildFromTheFormsInChromium`.
@Suite("Console forms", .serialized)
struct ConsoleFormsTests {
    static let password = "correct horse battery staple"

    /// Logs `user` in (adding them first) and returns their console and their session's token.
    func signIn(_ h: SchedulerHarness, _ user: String) async throws -> (ConsoleClient, String) {
        try await h.addUser(user, password: Self.password)
        let client = ConsoleClient(h.api)
        #expect(try await client.logIn(user, Self.password).status == 303)
        return (client, try #require(ConsoleClient.csrf(in: try await client.get("/").body)))
    }

    static let shop: [(String, String)] = [
        ("name", "shop"), ("repository", "http://127.0.0.1:1/team/shop.git"), ("buildImage", "a:1"), ("buildCommand", "make\r\nmake test"),
        ("dockerfile", "Dockerfile"), ("context", "."), ("defaultBranch", "main"), ("branches", "main\nrelease/*"), ("labels", ""),
        ("supersede", "queued"), ("maxConcurrent", ""), ("pipeline", ""),
    ]

    @Test func aProjectIsCreatedAndEditedThroughItsFormsAndOnlyAsTheRolesAllow() async throws {
        try await withScheduler { h in
            let (alice, token) = try await signIn(h, "alice")
            #expect(try await alice.get("/ui/new-project").body.contains(#"<form method="post" action="/ui/new-project" id="project-form""#))

            // Refused: each problem beside its input, the rest as typed, nothing written.
            let typos = ["repository": "htp://127.0.0.1:1/shop.git", "maxConcurrent": "lots"]
            let mistyped: [(String, String)] = Self.shop.map { field in (field.0, typos[field.0] ?? field.1) }
            let typo = try await alice.post("/ui/new-project", form: [("csrf", token)] + mistyped)
            #expect(typo.status == 400, "\(typo.body)")
            #expect(typo.body.contains(#"name="repository" value="htp://127.0.0.1:1/shop.git""#) && typo.body.contains(#"id="error-repository""#))
            #expect(typo.body.contains(#"id="error-maxConcurrent""#) && typo.body.contains("&#39;lots&#39; is not a number"))
            #expect(typo.body.contains(#"name="buildImage" value="a:1""#) && typo.body.contains("make\r\nmake test</textarea>"))
            #expect(typo.body.contains(#"<option value="queued" selected>"#))
            #expect(try await h.etcd.get(h.keys.project("shop")) == nil)

            // A forged POST (no token, another session's, another site's page): refused, nothing made.
            let (mallory, malloryToken) = try await signIn(h, "mallory")
            for (form, origin) in [([], ConsoleClient.Origin.own), ([("csrf", malloryToken)], .own), ([("csrf", token)], .other("http://evil.example"))]
                as [([(String, String)], ConsoleClient.Origin)] {
                #expect(try await alice.post("/ui/new-project", form: form + Self.shop, origin: origin).status == 403)
            }
            #expect(try await h.etcd.get(h.keys.project("shop")) == nil)

            // Saved with a new webhook token: shown in this answer only, and it opens the webhook.
            let created = try await alice.post("/ui/new-project", form: [("csrf", token), ("generateWebhookSecret", "on")] + Self.shop)
            #expect(created.status == 201, "\(created.body)")
            #expect(created.body.contains(#"<code id="webhook-url">\#(h.api)/hooks/gitlab</code>"#))
            let webhookToken = try #require(created.body.range(of: #"<code id="webhook-token">"#).map { r in created.body[r.upperBound...].prefix { $0 != "<" } })
            #expect(webhookToken.count == 43, "\(webhookToken)")
            let project = try KilnJSON.decode(Project.self, from: try await h.request(.GET, "/api/v1/projects/shop").body)
            #expect(project.buildCommand == "make\nmake test" && project.branches == ["main", "release/*"] && project.supersede == .queued)
            #expect(try await SchedulerStore(etcd: h.etcd).members(.project, "shop").members.users["alice"] == .owner)
            let push = try WebhookTests.push(["project": #"{"git_http_url": "http://127.0.0.1:1/team/shop.git"}"#, "ref": #""refs/heads/main""#])
            let hook = try await WebhookTests().deliver(h, push, token: String(webhookToken))
            #expect(hook.status == 201 && hook.body.contains("queued"), "\(hook.body)")
            let page = try await alice.get("/ui/projects/shop")
            #expect(page.body.contains(#"id="webhook-token-set""#) && !page.body.contains(String(webhookToken)))

            // The name is taken now: the same form comes back with why.
            let (carol, carolToken) = try await signIn(h, "carol")
            let taken = try await carol.post("/ui/new-project", form: [("csrf", carolToken)] + Self.shop)
            #expect(taken.status == 409 && taken.body.contains("exists already and you are not its member"), "\(taken.body)")

            // Edit: the form holds the settings; a change is saved and recorded.
            let edit = try await alice.get("/ui/projects/shop/edit")
            #expect(edit.status == 200 && edit.body.contains("main\nrelease/*</textarea>"))
            let revision = try #require(ConsoleClient.field("revision", in: edit.body))
            var changed = Self.shop.filter { $0.0 != "name" && $0.0 != "maxConcurrent" } + [("maxConcurrent", "2"), ("revision", revision)]
            let saved = try await alice.post("/ui/projects/shop/edit", form: [("csrf", token)] + changed)
            #expect(saved.status == 303 && saved.header("Location") == "/ui/projects/shop", "\(saved.body)")
            #expect(try await h.request(.GET, "/api/v1/projects/shop").json?["maxConcurrent"] as? Int == 2)
            #expect(try await h.request(.GET, "/api/v1/projects/shop/activity").body.contains("settings changed"))
            // The same form again, from before that save: refused, nothing overwritten.
            changed = changed.map { $0.0 == "maxConcurrent" ? ("maxConcurrent", "9") : $0 }
            let stale = try await alice.post("/ui/projects/shop/edit", form: [("csrf", token)] + changed)
            #expect(stale.status == 409 && stale.body.contains("changed by someone else"), "\(stale.body)")
            #expect(try await h.request(.GET, "/api/v1/projects/shop").json?["maxConcurrent"] as? Int == 2)

            // A reporter sees neither the form nor the webhook, and the POST is refused; one
            // without a role gets the 404 of a missing project.
            let (rita, ritaToken) = try await signIn(h, "rita")
            try await h.addMember("rita", to: "shop", as: .reporter)
            #expect(try await rita.get("/ui/projects/shop/edit").status == 403)
            let ritaPage = try await rita.get("/ui/projects/shop").body
            #expect(!ritaPage.contains(#"id="webhook""#) && !ritaPage.contains(#"id="edit""#) && !ritaPage.contains(#"id="build-form""#))
            let fresh = [("revision", ConsoleClient.field("revision", in: try await alice.get("/ui/projects/shop/edit").body) ?? "")]
            #expect(try await rita.post("/ui/projects/shop/edit", form: [("csrf", ritaToken)] + changed.filter { $0.0 != "revision" } + fresh).status == 403)
            #expect(try await mallory.post("/ui/projects/shop/edit", form: [("csrf", malloryToken)] + changed.filter { $0.0 != "revision" } + fresh).status == 404)
            #expect(try await h.request(.GET, "/api/v1/projects/shop").json?["maxConcurrent"] as? Int == 2)
        }
    }

    @Test func aBuildIsStartedCancelledAndRebuiltFromTheConsole() async throws {
        try await withScheduler { h in
            let project = #"{"name":"shop","repository":"http://127.0.0.1:1/shop.git","buildImage":"a:1","buildCommand":"make","branches":["main","develop","release/*"]}"#
            #expect(try await h.request(.POST, "/api/v1/projects", body: project).status == 201)
            let (dev, token) = try await signIn(h, "dev")
            try await h.addMember("dev", to: "shop", as: .developer)
            let page = try await dev.get("/ui/projects/shop").body
            #expect(page.contains(#"<datalist id="refs"><option value="main"><option value="develop"></datalist>"#), "\(page)")
            #expect(page.contains(#"id="b-mvncache" checked"#) && !page.contains(#"id="webhook""#))

            // A bad tag comes back beside its input, as typed; nothing is queued.
            let bad = try await dev.post("/ui/projects/shop/builds", form: [("csrf", token), ("ref", "develop"), ("tag", "v 1"), ("mvncache", "on")])
            #expect(bad.status == 400 && bad.body.contains(#"id="error-tag""#) && bad.body.contains(#"name="ref" value="develop""#), "\(bad.body)")
            #expect(bad.body.contains(#"id="b-mvncache" checked"#))
            #expect(try await h.etcd.range(prefix: h.keys.queue).kvs.isEmpty)
            #expect(try await dev.post("/ui/projects/shop/builds", form: [("ref", "main")]).status == 403)
            #expect(try await h.etcd.range(prefix: h.keys.queue).kvs.isEmpty)

            // A tag, the Maven cache off (the box unticked sends nothing), a priority: recorded so.
            let started = try await dev.post("/ui/projects/shop/builds", form: [("csrf", token), ("ref", "main"), ("tag", "v1.2"), ("priority", "5")])
            let location = try #require(started.header("Location"))
            #expect(started.status == 303 && location.hasPrefix("/ui/builds/b"))
            let id = String(location.dropFirst("/ui/builds/".count))
            let build = try await h.build(id)
            #expect(build.ref == "main" && build.tag == "v1.2" && build.mvncache == false && build.priority == 5 && build.trigger == "console by dev", "\(build)")
            let buildPage = try await dev.get(location).body
            #expect(buildPage.contains(#"id="cancel""#) && buildPage.contains(#"id="rebuild""#))

            // Cancel, then rebuild: a new build of the same ref and options.
            #expect(try await dev.post("/ui/builds/\(id)/cancel", form: [("csrf", token)]).status == 303)
            #expect(try await h.build(id).status == .cancelled)
            #expect(try await h.request(.GET, "/api/v1/projects/shop/activity").body.contains("build cancelled"))
            let ended = try await dev.get(location).body
            #expect(!ended.contains(#"id="cancel""#) && ended.contains(#"id="rebuild""#))
            let rebuilt = try await dev.post("/ui/builds/\(id)/rebuild", form: [("csrf", token)])
            let again = try #require(rebuilt.header("Location").map { String($0.dropFirst("/ui/builds/".count)) })
            #expect(rebuilt.status == 303 && again != id)
            let second = try await h.build(again)
            #expect(second.ref == "main" && second.tag == "v1.2" && second.mvncache == false && second.priority == 5 && second.status == .queued)
            #expect(second.trigger == "rebuild of \(id) by dev")

            // A reporter may read the build but neither start, rebuild nor cancel one.
            let (rep, repToken) = try await signIn(h, "rep")
            try await h.addMember("rep", to: "shop", as: .reporter)
            #expect(!(try await rep.get("/ui/builds/\(again)").body.contains(#"id="rebuild""#)))
            for path in ["/ui/projects/shop/builds", "/ui/builds/\(again)/rebuild", "/ui/builds/\(again)/cancel"] {
                #expect(try await rep.post(path, form: [("csrf", repToken), ("ref", "main")]).status == 403, "\(path)")
            }
            #expect(try await h.etcd.range(prefix: h.keys.queue).kvs.count == 1)
            #expect(try await h.build(again).status == .queued)
        }
    }
}
