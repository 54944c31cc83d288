import Etcd
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
@testable import Scheduler
import Testing

/// The members and activity tabs of projects, apps and groups over real HTTP against a
/// scheduler in this process and a real etcd, as `ConsoleClient` posts the forms: who may
/// change what, what a refused form leaves (nothing), and, in Chromium, what a member added
/// through the form sees and may do in their own session.
@Suite("Console members", .serialized)
struct ConsoleMembersTests {
    static let password = ConsoleFormsTests.password

    func signIn(_ h: SchedulerHarness, _ user: String) async throws -> (ConsoleClient, String) {
        try await ConsoleFormsTests().signIn(h, user)
    }

    func members(_ h: SchedulerHarness, _ kind: ResourceKind, _ name: String) async throws -> [String: Role] {
        try await SchedulerStore(etcd: h.etcd).members(kind, name).members.users
    }

    @Test func membersAreAddedChangedAndRemovedOnlyAsTheRolesAllow() async throws {
        try await withScheduler { h in
            _ = try await h.addProjectWithBuild("shop")
            let (owner, ownerToken) = try await signIn(h, "olive")
            try await h.addMember("olive", to: "shop", as: .owner)
            // The admin made shop and so owns it too: it leaves, and olive is the one owner.
            #expect(try await h.request(.DELETE, "/api/v1/projects/shop/members/admin").status == 200)
            for user in ["mary", "rita", "dave"] { try await h.addUser(user, password: Self.password) }
            try await h.addMember("mary", to: "shop", as: .master)
            try await h.addMember("rita", to: "shop", as: .reporter)

            // The tab: members with roles, the form and the role table beside it.
            let page = try await owner.get("/ui/projects/shop/members")
            #expect(page.status == 200)
            #expect(page.body.contains(#"<tr data-member="mary"><td class="user">mary</td><td class="role">master</td>"#), "\(page.body)")
            #expect(page.body.contains(#"id="member-form""#) && page.body.contains(#"<option value="owner">owner</option>"#))
            #expect(page.body.contains(#"id="role-help""#) && page.body.contains(#"data-permission="manage""#))
            #expect(try await owner.get("/ui/projects/shop").body.contains(#"<a id="tab-members" href="/ui/projects/shop/members">"#))

            // Added through the form: in etcd, in the activity.
            let added = try await owner.post("/ui/projects/shop/members", form: [("csrf", ownerToken), ("user", "dave"), ("role", "developer")])
            #expect(added.status == 303 && added.header("Location") == "/ui/projects/shop/members", "\(added.status) \(added.body)")
            #expect(try await members(h, .project, "shop")["dave"] == .developer)
            let activity = try await owner.get("/ui/projects/shop/activity")
            #expect(activity.status == 200 && activity.body.contains("member set") && activity.body.contains("dave is developer"), "\(activity.body)")

            // A reporter sees the members, no form, and a POST of theirs changes nothing.
            let (rita, ritaToken) = try await ConsoleMembersTests.logIn(h, "rita")
            let ritaPage = try await rita.get("/ui/projects/shop/members")
            #expect(ritaPage.status == 200 && ritaPage.body.contains(#"id="no-member-form""#) && !ritaPage.body.contains(#"id="member-form""#))
            let before = try await members(h, .project, "shop")
            let refused = try await rita.post("/ui/projects/shop/members", form: [("csrf", ritaToken), ("user", "rita"), ("role", "owner")])
            #expect(refused.status == 403 && refused.body.contains("you are reporter of project &#39;shop&#39;"), "\(refused.body)")
            let removal = try await rita.post("/ui/projects/shop/members/remove", form: [("csrf", ritaToken), ("user", "dave")])
            #expect(removal.status == 403)
            #expect(try await members(h, .project, "shop") == before)

            // A master may not make an owner, nor touch one; the form comes back with why.
            let (mary, maryToken) = try await ConsoleMembersTests.logIn(h, "mary")
            let maryPage = try await mary.get("/ui/projects/shop/members").body
            #expect(maryPage.contains(#"id="member-form""#) && !maryPage.contains(#"<option value="owner">"#))
            let owners = try await mary.post("/ui/projects/shop/members", form: [("csrf", maryToken), ("user", "dave"), ("role", "owner")])
            #expect(owners.status == 403 && owners.body.contains("only an owner may") && owners.body.contains(#"name="user" value="dave""#), "\(owners.body)")
            #expect(try await mary.post("/ui/projects/shop/members/remove", form: [("csrf", maryToken), ("user", "olive")]).status == 403)
            #expect(try await members(h, .project, "shop") == before)
            // A master changes a developer's role and removes them.
            #expect(try await mary.post("/ui/projects/shop/members", form: [("csrf", maryToken), ("user", "dave"), ("role", "reporter")]).status == 303)
            #expect(try await members(h, .project, "shop")["dave"] == .reporter)
            #expect(try await mary.post("/ui/projects/shop/members/remove", form: [("csrf", maryToken), ("user", "dave")]).status == 303)
            #expect(try await members(h, .project, "shop")["dave"] == nil)

            // Forged: without the token, another session's, from another site: 403, nothing changes.
            let now = try await members(h, .project, "shop")
            for (form, origin) in [([("user", "dave"), ("role", "master")], ConsoleClient.Origin.own),
                                   ([("csrf", maryToken), ("user", "dave"), ("role", "master")], .own),
                                   ([("csrf", ownerToken), ("user", "dave"), ("role", "master")], .other("http://evil.example")),
                                   ([("csrf", ownerToken), ("user", "dave"), ("role", "master")], .none)]
                as [([(String, String)], ConsoleClient.Origin)] {
                #expect(try await owner.post("/ui/projects/shop/members", form: form, origin: origin).status == 403)
            }
            #expect(try await members(h, .project, "shop") == now)

            // Unknown users, unknown roles, hostile names: refused, escaped, nothing written.
            let evil = "<script>alert(1)</script>"
            let unknown = try await owner.post("/ui/projects/shop/members", form: [("csrf", ownerToken), ("user", evil), ("role", "developer")])
            #expect(unknown.status == 404 && unknown.body.contains("&lt;script&gt;") && !unknown.body.contains(evil), "\(unknown.body)")
            let badRole = try await owner.post("/ui/projects/shop/members", form: [("csrf", ownerToken), ("user", "dave"), ("role", evil)])
            #expect(badRole.status == 400 && badRole.body.contains("does not exist: use one of guest") && !badRole.body.contains(evil), "\(badRole.body)")
            let hostilePath = try await owner.get("/ui/projects/%3Cscript%3Ex/members")
            #expect(hostilePath.status == 404 && !hostilePath.body.contains("<script>x"))
            #expect(try await members(h, .project, "shop") == now)

            // The last owner stays; a reporter may leave.
            let last = try await owner.post("/ui/projects/shop/members/remove", form: [("csrf", ownerToken), ("user", "olive")])
            #expect(last.status == 409 && last.body.contains("last owner"), "\(last.body)")
            let left = try await rita.post("/ui/projects/shop/members/remove", form: [("csrf", ritaToken), ("user", "rita")])
            #expect(left.status == 303 && left.header("Location") == "/", "\(left.status) \(left.body)")
            let after = try await members(h, .project, "shop")
            #expect(after["rita"] == nil && after["olive"] == .owner)
        }
    }

    @Test func groupsAndAppsHaveTheSameTabsAndANonMemberSeesThemAsMissing() async throws {
        try await withScheduler { h in
            _ = try await h.addProjectWithBuild("api")
            try await h.etcd.put(h.keys.app("api-app"), try KilnJSON.encode(App(name: "api-app", project: "api")))
            #expect(try await h.request(.POST, "/api/v1/groups", body: #"{"name":"team"}"#).status == 201)
            let (gina, ginaToken) = try await signIn(h, "gina")
            let (stranger, _) = try await signIn(h, "stranger")
            #expect(try await h.request(.PUT, "/api/v1/groups/team/members/gina", body: #"{"role":"master"}"#).status == 200)
            #expect(try await h.request(.PUT, "/api/v1/apps/api-app/members/gina", body: #"{"role":"guest"}"#).status == 200)

            // The group: a master adds the stranger as reporter; its activity says so.
            let groupPage = try await gina.get("/ui/groups/team/members")
            #expect(groupPage.status == 200 && groupPage.body.contains(#"id="member-form""#) && groupPage.body.contains(#"<a id="tab-group" href="/ui/groups/team">Images</a>"#))
            #expect(try await stranger.get("/ui/groups/team/members").status == 404)
            #expect(try await gina.post("/ui/groups/team/members", form: [("csrf", ginaToken), ("user", "stranger"), ("role", "reporter")]).status == 303)
            #expect(try await members(h, .group, "team")["stranger"] == .reporter)
            let activity = try await gina.get("/ui/groups/team/activity")
            #expect(activity.body.contains("stranger is reporter") && activity.body.contains("group created"), "\(activity.body)")
            #expect(try await stranger.get("/ui/groups/team/members").status == 200)

            // The app: a guest sees its members (no form) but not its activity (403); a
            // stranger neither (404, as a missing app).
            let appPage = try await gina.get("/ui/apps/api-app/members")
            #expect(appPage.status == 200 && appPage.body.contains(#"<tr data-member="gina">"#) && appPage.body.contains(#"id="leave""#) && !appPage.body.contains(#"id="member-form""#))
            #expect(try await gina.get("/ui/apps/api-app/activity").status == 403)
            // The projects its owners let deploy into it are named there too.
            _ = try await h.addProjectWithBuild("web")
            #expect(try await h.request(.PUT, "/api/v1/apps/api-app/projects/web").status == 200)
            #expect(try await gina.get("/ui/apps/api-app/members").body.contains(#"the pipelines of <a href="/ui/projects/web">web</a> may deploy"#))
            #expect(try await stranger.get("/ui/apps/api-app/members").status == 404)
            #expect(try await stranger.get("/ui/apps/nothing-here/members").status == 404)
            #expect(try await h.request(.PUT, "/api/v1/apps/api-app/members/stranger", body: #"{"role":"reporter"}"#).status == 200)
            let appActivity = try await stranger.get("/ui/apps/api-app/activity")
            #expect(appActivity.status == 200 && appActivity.body.contains("stranger is reporter"), "\(appActivity.body)")
            // The API answers the same list the tab shows.
            let listed = try KilnJSON.decode([Member].self, from: try await h.request(.GET, "/api/v1/apps/api-app/members").body)
            #expect(listed.map(\.user) == ["gina", "stranger"])
        }
    }

    /// The issue's test: the admin adds a member to a project through the form in Chromium;
    /// a second browser logs in as that member and sees their project (not the others), may
    /// start a build, sees no member or edit form, and a POST they may not make is refused.
    @Test func aMemberAddedThroughTheFormSeesAndMayDoWhatTheirRoleAllowsInChromium() async throws {
        let chromium = try Chromium.path()
        try await withScheduler { h in
            _ = try await h.addProjectWithBuild("shop")
            _ = try await h.addProjectWithBuild("secret-project")
            try await h.addUser("dave", password: Self.password)

            let admin = try Browser.launch(chromium)
            defer { admin.close() }
            let tab = try await admin.attachToPage()
            #expect(try await admin.logIn(h.api, user: "admin", password: h.adminToken, session: tab) == h.api + "/")
            try await admin.load(h.api + "/ui/projects/shop", session: tab)
            #expect(try await admin.clickLink("#tab-members", session: tab) == h.api + "/ui/projects/shop/members")
            _ = try await admin.evaluate("document.getElementById('m-role').value = 'developer'; 'chosen'", session: tab)
            #expect(try await admin.submit("#member-form", fields: ["user": "dave"], session: tab) == h.api + "/ui/projects/shop/members")
            #expect(try await admin.evaluate("document.querySelector('tr[data-member=\"dave\"] td.role').textContent", session: tab) == "developer")
            try await ConsoleTests().screenshot(admin, tab, "members-added.png")
            #expect(try await members(h, .project, "shop")["dave"] == .developer)

            // Dave's own session, in another browser.
            let browser = try Browser.launch(chromium)
            defer { browser.close() }
            let dave = try await browser.attachToPage()
            #expect(try await browser.logIn(h.api, user: "dave", password: Self.password, session: dave) == h.api + "/")
            let projects = try await browser.evaluate("Array.from(new Set(Array.from(document.querySelectorAll('a[href^=\"/ui/projects/\"]')).map(a => a.textContent))).join(',')", session: dave)
            #expect(projects == "shop", "\(projects)")
            try await ConsoleTests().screenshot(browser, dave, "member-overview.png")
            try await browser.load(h.api + "/ui/projects/secret-project", session: dave)
            #expect(try await browser.evaluate("document.querySelector('h1').textContent", session: dave) == "Not found")

            // On shop: the build form, no edit link, no webhook box; the members tab without the form.
            try await browser.load(h.api + "/ui/projects/shop", session: dave)
            #expect(try await browser.evaluate("[!!document.getElementById('build-form'), !!document.getElementById('edit'), !!document.getElementById('webhook')].join(',')", session: dave) == "true,false,false")
            let started = try await browser.submit("#build-form", fields: ["ref": "main", "tag": "dave-1"], session: dave)
            let id = String(try #require(started.components(separatedBy: "/ui/builds/").last))
            let build = try await h.build(id)
            #expect(build.tag == "dave-1" && build.trigger == "console by dave", "\(build)")
            try await ConsoleTests().screenshot(browser, dave, "member-build.png")
            try await browser.load(h.api + "/ui/projects/shop/members", session: dave)
            #expect(try await browser.evaluate("[!!document.getElementById('member-form'), !!document.getElementById('no-member-form'), !!document.getElementById('role-help')].join(',')", session: dave) == "false,true,true")
            try await ConsoleTests().screenshot(browser, dave, "member-members-tab.png")

            // A POST dave may not make, from his own page with his own token: refused, nothing changes.
            let status = try await browser.evaluate("""
                fetch('/ui/projects/shop/members', {method: 'POST', headers: {'Content-Type': 'application/x-www-form-urlencoded'},
                  body: 'csrf=' + encodeURIComponent(document.querySelector('input[name=csrf]').value) + '&user=dave&role=owner'}).then(r => String(r.status))
                """, session: dave)
            #expect(status == "403")
            #expect(try await members(h, .project, "shop")["dave"] == .developer)
            #expect(try await browser.evaluate("""
                fetch('/ui/projects/shop/edit').then(r => String(r.status))
                """, session: dave) == "403")
        }
    }

    /// Logs in an existing user.
    static func logIn(_ h: SchedulerHarness, _ user: String) async throws -> (ConsoleClient, String) {
        let client = ConsoleClient(h.api)
        #expect(try await client.logIn(user, password).status == 303)
        return (client, try #require(ConsoleClient.csrf(in: try await client.get("/").body)))
    }
}
