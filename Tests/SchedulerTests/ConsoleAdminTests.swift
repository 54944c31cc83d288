import Etcd
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
@testable import Scheduler
import Testing

/// The admin page over real HTTP against a scheduler in this process and a real etcd: what an
/// admin sees (users, cells with what runs there, agents, lb groups, usage per day from the
/// records written here, etcd's size), that anyone else gets the 404 page, that no secret
/// reaches it, and the add-user form. Also the build form's list of the repository's refs as
/// an agent's record carries them. A screenshot in Chromium under .build/test-artifacts/console.
@Suite("Console admin page", .serialized)
struct ConsoleAdminTests {
    static let password = "correct horse battery staple"
    static let cellSecret = "SEALED-CELL-CREDENTIAL-VALUE-7f3a"
    static let day: TimeInterval = 86_400

    func signIn(_ h: SchedulerHarness, _ user: String) async throws -> (ConsoleClient, String) {
        try await h.addUser(user, password: Self.password)
        let client = ConsoleClient(h.api)
        #expect(try await client.logIn(user, Self.password).status == 303)
        return (client, try #require(ConsoleClient.csrf(in: try await client.get("/").body)))
    }

    func admin(_ h: SchedulerHarness) async throws -> (ConsoleClient, String) {
        let client = ConsoleClient(h.api)
        #expect(try await client.logIn("admin", h.adminToken).status == 303)
        return (client, try #require(ConsoleClient.csrf(in: try await client.get("/").body)))
    }

    /// Records as the farm's parts write them: builds (today, yesterday, 40 days ago), an app
    /// with a live version in cell c1 and its activity, three cells (a Kubernetes one with a
    /// sealed credential), an nginx group with two lb-agents, a live agent.
    func seed(_ h: SchedulerHarness, now: Date) async throws {
        func put(_ build: Build) async throws { try await h.etcd.put(h.keys.build(build.id), try KilnJSON.encode(build)) }
        func build(at created: Date, pushed: Date?) -> Build {
            var b = Build(id: BuildID.generate(now: created), project: "shop", ref: "main", createdAt: created)
            if let pushed {
                b.digest = "sha256:" + String(repeating: "b", count: 64)
                b.steps[3].status = .succeeded
                b.steps[3].finishedAt = pushed
                b.status = .succeeded
                b.finishedAt = pushed
            }
            return b
        }
        let pushed = build(at: now - 60, pushed: now)
        try await put(pushed)
        // The same record under another key (an agent may write any key under the builds' prefix): counted once.
        try await h.etcd.put(h.keys.build(pushed.id + "-copy"), try KilnJSON.encode(pushed))
        try await put(build(at: now - 30, pushed: nil))
        try await put(build(at: now - Self.day, pushed: now - Self.day))
        try await put(build(at: now - 3 * Self.day, pushed: nil))
        try await put(build(at: now - 40 * Self.day, pushed: now - 40 * Self.day))

        let settings = DeploySettings(port: 8080)
        let live = AppVersion(number: 3, build: "b1", project: "shop", image: "127.0.0.1:5000/shop@sha256:" + String(repeating: "b", count: 64),
                              backend: "local", cells: ["c1"], settings: settings, state: .live,
                              instances: [Instance(id: "i1", name: "shop-3-1", cell: "c1", address: "127.0.0.1:20001", healthy: true),
                                          Instance(id: "i2", name: "shop-3-2", cell: "c1", address: "127.0.0.1:20002", healthy: false)])
        var retired = live
        retired.number = 2
        retired.state = .retired
        try await h.etcd.put(h.keys.app("shop"), try KilnJSON.encode(App(name: "shop", versions: [retired, live], project: "shop")))
        let store = SchedulerStore(etcd: h.etcd)
        for (at, action) in [(now, "deployed"), (now - 5, "deployed"), (now - Self.day, "scaled"), (now, "scaling failed"), (now - 40 * Self.day, "deployed")] {
            try await store.record(ActivityEvent(at: at, user: "pipeline of shop", action: action), on: .app, "shop")
        }

        try await h.etcd.put(h.keys.cell("c1"), try KilnJSON.encode(Cell(name: "c1", endpoint: "unix:///run/cells/c1.sock")))
        try await h.etcd.put(h.keys.cell("k8s"), try KilnJSON.encode(Cell(name: "k8s", backend: "kubernetes", endpoint: "https://k8s.example:6443")))
        try await h.etcd.put(h.keys.cell("k8s-bare"), try KilnJSON.encode(Cell(name: "k8s-bare", backend: "kubernetes", endpoint: "https://k8s2.example:6443")))
        try await h.etcd.put(h.keys.cellCredential("k8s"), Self.cellSecret)

        let slb = SLBKeys()
        try await h.etcd.put(slb.domain(group: "edge", "shop.example.com"),
                             try KilnJSON.encode(SLBDomain(domain: "shop.example.com", servers: [SLBServer(address: "127.0.0.1:20001"), SLBServer(address: "127.0.0.1:20002")], app: "shop", version: 3)))
        try await h.etcd.put(slb.agent(group: "edge", "lb-old"), try KilnJSON.encode(SLBAgentReport(id: "lb-old", appliedRevision: 1)))
        try await h.etcd.put(slb.agent(group: "edge", "lb-new"), try KilnJSON.encode(SLBAgentReport(id: "lb-new", appliedRevision: 1 << 40, listen: "127.0.0.1:8088")))
        _ = try await registerAgent(h, id: "agent-one", capacity: 3)
    }

    /// The count of the bar of `day` in the chart of `measure`.
    static func bar(_ page: String, _ measure: String, _ day: String) -> Int? {
        guard let start = page.range(of: "id=\"usage-\(measure)\""), let end = page[start.upperBound...].range(of: "</dd>") else { return nil }
        let chart = page[start.upperBound..<end.lowerBound]
        guard let rect = chart.range(of: "data-day=\"\(day)\" data-count=\"") else { return nil }
        return Int(chart[rect.upperBound...].prefix { $0.isNumber })
    }

    @Test func anAdminSeesUsersCellsAgentsLBGroupsUsageAndEtcdAndNoSecret() async throws {
        try await withScheduler { h in
            let now = Date()
            try await seed(h, now: now)
            let (bob, bobToken) = try await signIn(h, "bob")
            let (admin, _) = try await admin(h)

            // etcd's size comes from the scheduler's first look, made as it starts.
            let page = try await KilnTestSupport.withTimeout(.seconds(30), waitingFor: "etcd's size on the admin page") { () async throws -> HTTPReply in
                while true {
                    let page = try await admin.get("/ui/admin")
                    if page.body.contains("class=\"etcd-member\"") { return page }
                    try await Task.sleep(for: .milliseconds(200))
                }
            }
            let body = page.body
            #expect(page.status == 200)
            #expect(try await admin.get("/").body.contains(#"<a href="/ui/admin" id="admin-link">Admin</a>"#))

            // Users: names, flags, how they log in; no hash, no token.
            #expect(body.contains(#"<td class="user">bob</td><td>—</td><td>password</td>"#), "\(body)")
            #expect(body.contains(#"<td class="user">admin</td><td>admin</td><td>tokens only</td>"#))
            #expect(!body.contains("scrypt$") && !body.contains(h.adminToken))

            // Cells with what runs there; a credential only as set or not.
            #expect(body.contains(#"<div class="running"><b>shop</b> version 3 (live): 1/2 healthy"#))
            #expect(!body.contains("version 2 ("))
            #expect(body.contains(#"<tr id="cell-k8s"><td class="cell">k8s</td><td>kubernetes</td><td>https://k8s.example:6443</td><td>set</td>"#))
            #expect(body.contains(#"<tr id="cell-k8s-bare"><td class="cell">k8s-bare</td><td>kubernetes</td><td>https://k8s2.example:6443</td><td><span class="warning">none</span></td><td>—</td>"#))
            #expect(!body.contains(Self.cellSecret))

            // The lb group, its domain, what each lb-agent applied.
            #expect(body.contains("<div>shop.example.com → shop v3: 2 servers</div>"))
            #expect(body.contains(#"<b>lb-old</b>: revision 1 (<span class="warning">behind</span>)"#))
            #expect(body.contains(#"<b>lb-new</b> on 127.0.0.1:8088: revision \#(1 << 40) (current)"#))
            #expect(body.contains(#"<td class="agent">agent-one</td><td>0/3</td>"#))

            // Usage from the records written above: the build and deploy of 40 days ago and the
            // failed scaling do not count.
            let today = Usage.dayName(now), yesterday = Usage.dayName(now - Self.day)
            #expect(Self.bar(body, "builds", today) == 2 && Self.bar(body, "builds", yesterday) == 1)
            #expect(Self.bar(body, "pushes", today) == 1 && Self.bar(body, "pushes", yesterday) == 1)
            #expect(Self.bar(body, "deploys", today) == 2 && Self.bar(body, "deploys", yesterday) == 0)
            #expect(Self.bar(body, "scalings", today) == 0 && Self.bar(body, "scalings", yesterday) == 1)
            #expect(body.contains("<b>Builds</b>: 4 in all, at most 2 a day") && body.contains("<b>Deploys</b>: 2 in all"))

            // The closed days were counted once: a later view reads only the last days' records.
            let threeDaysAgo = Usage.dayName(now - 3 * Self.day)
            #expect(Self.bar(body, "builds", threeDaysAgo) == 1)
            let old = try #require(try await h.etcd.range(prefix: h.keys.builds, options: .init()).kvs.first { kv in
                (try? KilnJSON.decode(Build.self, from: kv.value)).map { Usage.dayName($0.createdAt) == threeDaysAgo } == true
            })
            _ = try await h.etcd.delete(old.key)
            let newer = Build(id: BuildID.generate(now: Date()), project: "shop", ref: "main")
            try await h.etcd.put(h.keys.build(newer.id), try KilnJSON.encode(newer))
            let later = try await admin.get("/ui/admin").body
            #expect(Self.bar(later, "builds", threeDaysAgo) == 1 && Self.bar(later, "builds", today) == 3)

            // etcd's size against its quota, as a bar.
            #expect(body.contains(#"<svg class="bar" data-size=""#) && body.contains(", quota "))
            #expect(body.contains(#"<p id="etcd-alarms">No alarm.</p>"#))

            // Anyone else: the 404 page, no link, and the form changes nothing.
            let refused = try await bob.get("/ui/admin")
            #expect(refused.status == 404 && refused.body.contains("<h1>Not found</h1>"), "\(refused.body)")
            #expect(!refused.body.contains("Usage per day") && !refused.body.contains("agent-one"))
            let missing = try await bob.get("/ui/no/such-page")
            #expect(missing.status == 404 && missing.body == refused.body, "\(missing.body)")
            #expect(!(try await bob.get("/").body.contains("admin-link")))
            let forged = try await bob.post("/ui/admin/users", form: [("csrf", bobToken), ("name", "eve"), ("password", Self.password), ("admin", "on")])
            #expect(forged.status == 404)
            #expect(try await h.etcd.get(h.keys.user("eve")) == nil)
        }
    }

    @Test func theAdminAddsAUserThroughTheForm() async throws {
        try await withScheduler { h in
            let (admin, token) = try await admin(h)
            let added = try await admin.post("/ui/admin/users", form: [("csrf", token), ("name", "carol"), ("password", Self.password), ("admin", "on")])
            #expect(added.status == 303 && added.header("Location") == "/ui/admin#users", "\(added.status) \(added.body)")
            let carol = try KilnJSON.decode(User.self, from: try #require(try await h.etcd.get(h.keys.user("carol"))).value)
            #expect(carol.admin && carol.createdBy == "admin" && carol.passwordHash != nil)
            // Carol logs in with that password, as an admin.
            let console = ConsoleClient(h.api)
            #expect(try await console.logIn("carol", Self.password).status == 303)
            #expect(try await console.get("/ui/admin").status == 200)

            // Refused: the API's message, the name kept, the password never sent back.
            let taken = try await admin.post("/ui/admin/users", form: [("csrf", token), ("name", "carol"), ("password", "another secret pass phrase")])
            #expect(taken.status == 409 && taken.body.contains(#"<p class="error" id="user-error">user &#39;carol&#39; exists already</p>"#), "\(taken.body)")
            #expect(!taken.body.contains("another secret pass phrase") && taken.body.contains(#"id="u-name" name="name" value="carol""#))
            let bad = try await admin.post("/ui/admin/users", form: [("csrf", token), ("name", "Bad Name"), ("password", "")])
            #expect(bad.status == 400 && bad.body.contains(#"id="user-error""#))
            // Without the session's token: refused before anything is read.
            #expect(try await admin.post("/ui/admin/users", form: [("name", "dave")]).status == 403)
            #expect(try await h.etcd.get(h.keys.user("dave")) == nil)
        }
    }

    /// The refs an agent's record carries (`Build.repositoryRefs`, written here as a hostile
    /// agent could) in the build form's list: escaped, invalid ones left out, after the
    /// project's own branches.
    @Test func theBuildFormOffersTheRefsAnAgentPublishedEscaped() async throws {
        try await withScheduler { h in
            let id = try await h.addProjectWithBuild("web")
            var b = try await h.build(id)
            let hostile = #"x"><script>alert(1)</script>"#
            b.repositoryRefs = ["release/2", hostile, "bad..ref", "v2.0"]
            try await h.etcd.put(h.keys.build(id), try KilnJSON.encode(b))
            let (admin, _) = try await admin(h)
            let page = try await admin.get("/ui/projects/web").body
            let list = try #require(page.range(of: #"<datalist id="refs">"#).flatMap { r in page[r.upperBound...].range(of: "</datalist>").map { page[r.upperBound..<$0.lowerBound] } })
            #expect(list == #"<option value="main"><option value="release/2"><option value="x&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"><option value="v2.0">"#, "\(list)")
            #expect(!page.contains("<script>alert(1)"))
        }
    }

    @Test func theAdminPageInChromium() async throws {
        let chromium = try Chromium.path()
        try await withScheduler { h in
            try await seed(h, now: Date())
            try await h.addUser("bob", password: Self.password)
            let browser = try Browser.launch(chromium)
            defer { browser.close() }
            let tab = try await browser.attachToPage()
            #expect(try await browser.logIn(h.api, user: "admin", password: h.adminToken, session: tab) == h.api + "/")
            _ = try await browser.evaluate("document.getElementById('admin-link').click(); 'clicked'", session: tab)
            try await KilnTestSupport.withTimeout(.seconds(30), waitingFor: "the admin page with etcd's size") {
                while try await browser.evaluate("String(document.querySelectorAll('.etcd-member svg').length)", session: tab) == "0" {
                    try await Task.sleep(for: .milliseconds(300))
                    _ = try await browser.load(h.api + "/ui/admin", session: tab)
                }
            }
            #expect(try await browser.evaluate("String(document.querySelectorAll('#usage-builds rect[data-day]').length)", session: tab) == "30")
            #expect(try await browser.evaluate("document.querySelector('#usage-builds rect[data-day]:last-child').getAttribute('data-count')", session: tab) == "2")
            try FileManager.default.createDirectory(at: ConsoleTests.artifacts, withIntermediateDirectories: true)
            let png = ConsoleTests.artifacts.appendingPathComponent("admin.png")
            try await browser.screenshot(to: png, session: tab)
            #expect(try Data(contentsOf: png).count > 1000)
            // The whole page, below the screen's end too.
            let whole = try JSONSerialization.jsonObject(with: try await browser.call("Page.captureScreenshot", ["format": "png", "captureBeyondViewport": true], session: tab)) as? [String: Any]
            let full = try #require((whole?["data"] as? String).flatMap { Data(base64Encoded: $0) })
            try full.write(to: ConsoleTests.artifacts.appendingPathComponent("admin-full.png"))
            #expect(full.count > 1000)
        }
    }
}
