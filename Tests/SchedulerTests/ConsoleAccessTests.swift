import Etcd
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
@testable import Scheduler
import Testing

/// The console in a real headless Chromium, logged in through its form: each user sees only
/// their own projects, builds and apps; the Content-Security-Policy holds; a form without its
/// token is refused and the real button works; log out ends the session.
@Suite("Console access in Chromium", .serialized)
struct ConsoleAccessTests {
    static let password = "correct horse battery staple"

    @Test func eachUserSeesOnlyWhatTheyAreMemberOfAndFormsNeedTheirToken() async throws {
        let chromium = try Chromium.path()
        try await withScheduler { h in
            let alphaBuild = try await h.addProjectWithBuild("alpha")
            let betaBuild = try await h.addProjectWithBuild("beta")
            try await h.addUser("erin", password: Self.password)
            try await h.addMember("erin", to: "alpha", as: .developer)
            // An app of each project (as the deploy plugin records them).
            for (app, project) in [("alpha-web", "alpha"), ("beta-web", "beta")] {
                try await h.etcd.put(h.keys.app(app), try KilnJSON.encode(App(name: app, project: project)))
            }

            let browser = try Browser.launch(chromium)
            defer { browser.close() }
            let tab = try await browser.attachToPage()
            #expect(try await browser.logIn(h.api, user: "erin", password: Self.password, session: tab) == h.api + "/")
            let overview = try await browser.html(session: tab)
            #expect(overview.contains(#"Logged in as <b id="user">erin</b> <form"#), "\(overview)")
            #expect(overview.contains(#"<a href="/ui/projects/alpha">alpha</a>"#) && overview.contains(alphaBuild))
            #expect(overview.contains(#"<td class="app"><a href="/ui/apps/alpha-web">alpha-web</a></td>"#))
            #expect(!overview.contains("beta"), "\(overview)")
            #expect(!overview.contains(betaBuild))

            // Another project's build and project pages: the same 404 page as a missing one.
            for path in ["/ui/builds/\(betaBuild)", "/ui/projects/beta"] {
                try await browser.load(h.api + path, session: tab)
                let page = try await browser.html(session: tab)
                #expect(page.contains("<h1>Not found</h1>") && page.contains("does not exist"), "\(path): \(page)")
            }
            let status = try await browser.evaluate("fetch('/ui/builds/\(betaBuild)/log').then(function(r){ return String(r.status) })", session: tab)
            #expect(status == "404")

            // The role table, reached from the header.
            try await browser.load(h.api + "/", session: tab)
            #expect(try await browser.clickLink("a[href=\"/ui/roles\"]", session: tab) == h.api + "/ui/roles")
            let roles = try await browser.html(session: tab)
            #expect(roles.contains(#"<tr data-permission="build"><td><b>build</b></td><td class="no">—</td><td class="no">—</td><td class="yes">yes</td>"#))

            // The policy is in force: the page's own style and script apply, nothing else runs.
            try await browser.load(h.api + "/ui/builds/\(alphaBuild)", session: tab)
            #expect(try await browser.evaluate("getComputedStyle(document.querySelector('nav')).backgroundColor", session: tab) == "rgb(43, 43, 43)")
            #expect(try await browser.evaluate("""
                new Promise(function(resolve) {
                  var s = document.createElement('script');
                  s.textContent = 'window.injected = 1';
                  document.addEventListener('securitypolicyviolation', function(e) { resolve(e.violatedDirective + ' ' + String(window.injected)); });
                  document.body.appendChild(s);
                })
                """, session: tab) == "script-src-elem undefined")
            // The build page's script runs (it follows the log: the request is open).
            #expect(try await browser.evaluate("String(document.getElementById('log').dataset.build)", session: tab) == alphaBuild)

            // A POST of the cancel form from this very page without its token, or with a token
            // not the session's: 403, the build still queued.
            for body in ["''", "'csrf=forged-token'", "'csrf=' + encodeURIComponent(document.querySelector('#cancel input[name=csrf]').value + 'x')"] {
                let answer = try await browser.evaluate("""
                    fetch('/ui/builds/\(alphaBuild)/cancel', {method: 'POST', headers: {'Content-Type': 'application/x-www-form-urlencoded'}, body: \(body)})
                      .then(function(r){ return String(r.status) })
                    """, session: tab)
                #expect(answer == "403", "\(body)")
                #expect(try await h.build(alphaBuild).status == .queued)
            }
            // The button itself: the page comes back with the build cancelled.
            #expect(try await browser.submit("#cancel", session: tab) == h.api + "/ui/builds/\(alphaBuild)")
            #expect(try await h.build(alphaBuild).status == .cancelled)
            let after = try await browser.html(session: tab)
            #expect(after.contains(#"data-status="cancelled""#) && !after.contains(#"id="cancel""#))

            // Log out: the login page, and the session is gone from etcd.
            #expect(try await browser.submit("#logout", session: tab) == h.api + "/ui/login")
            #expect(try await h.etcd.range(prefix: h.keys.sessions).kvs.isEmpty)
            #expect(try await browser.load(h.api + "/ui/agents", session: tab) == h.api + "/ui/login?next=/ui/agents")
        }
    }
}

extension Browser {
    /// Follows the link `selector` as a person would (a click) and returns where it led.
    func clickLink(_ selector: String, session: String) async throws -> String {
        clearEvents()
        let quoted = String(decoding: try JSONSerialization.data(withJSONObject: [selector]), as: UTF8.self).dropFirst().dropLast()
        _ = try await evaluate("document.querySelector(\(quoted)).click(); 'clicked'", session: session)
        _ = try await waitForEvent("Page.loadEventFired")
        return try await evaluate("location.href", session: session)
    }
}
