import Foundation
import KilnCore
@testable import Scheduler
import Testing

/// The console's security pieces without a server: where a login may send the browser, how
/// forms are read and checked, the cookies, the Content-Security-Policy, the role table page,
/// session expiry, and the login throttle.
struct ConsoleSecurityTests {
    // MARK: next

    @Test func nextIsAlwaysAPathOfThisServer() {
        for local in ["/", "/ui/agents", "/ui/builds/b1-ab/log?follow=1", "/ui/projects/demo?x=1&y=%2F%2Fz", "/#top"] {
            #expect(ConsoleHTTP.safeNext(local) == local, "\(local)")
        }
        // Each of these a browser would take to another host, or is not a path at all.
        for foreign in [nil, "", "//evil.example", "///evil.example", "/\\evil.example", "\\\\evil.example", "https://evil.example/",
                        "http:evil.example", "javascript:alert(1)", "evil.example", "/\t/evil.example", "/\n/evil.example",
                        "/ /evil.example", "/ui/\u{0}x", "/ui/é", String(repeating: "/a", count: 1100)] {
            #expect(ConsoleHTTP.safeNext(foreign) == "/", "\(String(describing: foreign))")
        }
        // The redirect to the login page keeps the query, encoded.
        #expect(ConsoleHTTP.encodeQueryValue("/ui/builds/b1/log?follow=1&x=é") == "/ui/builds/b1/log%3Ffollow%3D1%26x%3D%C3%A9")
    }

    // MARK: forms

    @Test func formsParseAsBrowsersSendThem() throws {
        let fields = try #require(ConsoleForm.parse("csrf=a-b_c&user=alice+smith&password=p%26ss%3Dword%2B1&empty=&flag"))
        #expect(fields == ["csrf": "a-b_c", "user": "alice smith", "password": "p&ss=word+1", "empty": "", "flag": ""])
        #expect(ConsoleForm.parse("") == [:])
        // A field twice (which token would count?), a bad escape, a field without a name: refused.
        #expect(ConsoleForm.parse("csrf=a&csrf=b") == nil)
        #expect(ConsoleForm.parse("csrf=%zz") == nil)
        #expect(ConsoleForm.parse("=x") == nil)
    }

    @Test func aFormComesFromThisConsoleOnlyIfItsOriginNamesTheHostItWasSentTo() {
        let hosts = ["127.0.0.1:7070"]
        #expect(ConsoleForm.isSameOrigin(origin: "http://127.0.0.1:7070", referer: nil, hosts: hosts))
        // Behind a TLS proxy the scheme differs and the proxy names the public host.
        #expect(ConsoleForm.isSameOrigin(origin: "https://Kiln.Example", referer: nil, hosts: ["127.0.0.1:7070", "kiln.example"]))
        // Without an Origin, the Referer.
        #expect(ConsoleForm.isSameOrigin(origin: nil, referer: "http://127.0.0.1:7070/ui/builds/b1", hosts: hosts))
        for (origin, referer) in [("http://127.0.0.1:7071", nil), ("http://evil.example", "http://127.0.0.1:7070/"), ("null", nil),
                                  ("http://127.0.0.1:7070.evil.example", nil), ("http://127.0.0.1", nil)] as [(String, String?)] {
            #expect(!ConsoleForm.isSameOrigin(origin: origin, referer: referer, hosts: hosts), "\(origin)")
        }
        #expect(!ConsoleForm.isSameOrigin(origin: nil, referer: "http://evil.example/?127.0.0.1:7070", hosts: hosts))
        #expect(!ConsoleForm.isSameOrigin(origin: nil, referer: "http://127.0.0.1:7070@evil.example/", hosts: hosts))
        // Neither header: refused (browsers send Origin on every POST).
        #expect(!ConsoleForm.isSameOrigin(origin: nil, referer: nil, hosts: hosts))
        #expect(!ConsoleForm.isSameOrigin(origin: "http://", referer: nil, hosts: [""]))
    }

    @Test func aFormsTokenMustBeTheSessionsOwn() throws {
        try ConsoleForm.checkToken(["csrf": "token-1"], expected: "token-1")
        for fields in [[:], ["csrf": ""], ["csrf": "token-2"], ["csrf": "token-1 "], ["token": "token-1"]] {
            #expect(throws: KilnError.self) { try ConsoleForm.checkToken(fields, expected: "token-1") }
        }
        let form = ConsoleForm.render(action: "/ui/builds/b1/cancel", button: "Cancel build", csrf: "t\"1", id: "cancel").rendered
        #expect(form == #"<form method="post" action="/ui/builds/b1/cancel" class="inline" id="cancel"><input type="hidden" name="csrf" value="t&quot;1"><button type="submit">Cancel build</button></form>"#)
    }

    // MARK: cookies and headers

    @Test func cookiesAreHttpOnlyStrictAndSecureOnlyOverTLS() {
        let plain = ConsoleCookies(secure: false), tls = ConsoleCookies(secure: true)
        #expect(plain.setCookie(plain.session, "abc", maxAge: 60) == "kiln-session=abc; Path=/; Max-Age=60; HttpOnly; SameSite=Strict")
        #expect(tls.setCookie(tls.session, "abc", maxAge: 60) == "__Host-kiln-session=abc; Path=/; Max-Age=60; HttpOnly; SameSite=Strict; Secure")
        #expect(tls.login == "__Host-kiln-login" && plain.login == "kiln-login")
        #expect(ConsoleCookies.cameOverTLS(forwardedProto: "https", forwarded: nil))
        #expect(ConsoleCookies.cameOverTLS(forwardedProto: "HTTPS, http", forwarded: nil))
        #expect(ConsoleCookies.cameOverTLS(forwardedProto: nil, forwarded: "for=10.0.0.1;proto=https;host=kiln.example"))
        #expect(!ConsoleCookies.cameOverTLS(forwardedProto: "http", forwarded: nil))
        #expect(!ConsoleCookies.cameOverTLS(forwardedProto: "http, https", forwarded: "for=10.0.0.1;proto=http"))
        #expect(!ConsoleCookies.cameOverTLS(forwardedProto: nil, forwarded: nil))
        // Two session cookies (one planted by a sibling host) count as none.
        #expect(ConsoleCookies.values("kiln-session", in: ["a=1; kiln-session=x", "kiln-session=y"]) == ["x", "y"])
        #expect(ConsoleCookies.values("kiln-session", in: ["xkiln-session=1; kiln-session = z "]) == ["z"])
    }

    @Test func theContentSecurityPolicyAllowsOnlyTheConsolesOwnStyleAndScript() {
        let csp = ConsoleHTTP.contentSecurityPolicy
        #expect(csp.hasPrefix("default-src 'none'; "))
        #expect(csp.contains("style-src '\(ConsoleHTTP.sha256(ConsoleAssets.style.rendered))'"))
        #expect(csp.contains("script-src '\(ConsoleHTTP.sha256(ConsoleAssets.followScript.rendered))'"))
        #expect(csp.contains("frame-ancestors 'none'") && csp.contains("form-action 'self'") && csp.contains("connect-src 'self'"))
        #expect(!csp.contains("unsafe") && !csp.contains("*"))
        // A hash in the base64 of SHA-256 (32 bytes: 44 characters).
        #expect(ConsoleHTTP.sha256("").count == "sha256-".count + 44)
        #expect(ConsoleHTTP.sha256("") == "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=")
    }

    // MARK: pages

    @Test func theRolesPageIsTheRoleTable() {
        let page = ConsolePages.roles(viewer: ConsoleViewer(user: "alice", admin: false, csrf: "t")).rendered
        #expect(page.contains("<th>permission</th><th>guest</th><th>reporter</th><th>developer</th><th>master</th><th>owner</th><th>what it covers</th>"))
        for p in Permission.allCases {
            let marks = Role.allCases.map { $0 >= p.minimumRole ? "<td class=\"yes\">yes</td>" : "<td class=\"no\">—</td>" }.joined()
            #expect(page.contains("<tr data-permission=\"\(p.rawValue)\"><td><b>\(p.rawValue)</b></td>\(marks)<td>\(HTML.escape(p.summary))</td></tr>"), "\(p)")
        }
        // Developers build, masters deploy: spot checks against docs/roles.md.
        #expect(page.contains(#"<tr data-permission="build"><td><b>build</b></td><td class="no">—</td><td class="no">—</td><td class="yes">yes</td>"#))
        #expect(page.contains(#"<tr data-permission="deploy"><td><b>deploy</b></td><td class="no">—</td><td class="no">—</td><td class="no">—</td><td class="yes">yes</td>"#))
    }

    @Test func everyPageWithAViewerHasTheRolesLinkAndTheLogOutForm() {
        let v = ConsoleViewer(user: "alice", admin: false, csrf: "tok")
        for page in [ConsolePages.roles(viewer: v), ConsolePages.agents([], viewer: v), ConsolePages.error(status: 404, message: "x", viewer: v),
                     ConsolePages.overview(projects: [], builds: [], apps: [], agents: [], now: Date(), viewer: v)].map(\.rendered) {
            #expect(page.contains(#"<a href="/ui/roles">Roles</a>"#))
            #expect(page.contains(#"Logged in as <b id="user">alice</b> <form method="post" action="/ui/logout" class="inline" id="logout"><input type="hidden" name="csrf" value="tok">"#))
            #expect(!page.contains("style="))
        }
        let login = ConsolePages.login(token: "lt", next: "/ui/agents", user: "bob", message: nil).rendered
        #expect(login.contains(#"<input type="hidden" name="csrf" value="lt"><input type="hidden" name="next" value="/ui/agents">"#))
        #expect(!login.contains("/ui/logout") && !login.contains("/ui/roles"))
    }

    @Test func aGuestSeesAProjectsSettingsButNotItsRecords() {
        let v = ConsoleViewer(user: "gus", admin: false, csrf: "t")
        let p = Project(name: "demo", repository: "http://h/demo.git", buildImage: "a:1", buildCommand: "make")
        let page = ConsolePages.project(p, builds: nil, activity: nil, now: Date(), viewer: v).rendered
        #expect(page.contains("http://h/demo.git") && page.contains(#"id="no-records""#))
        #expect(!page.contains("<h2>Builds</h2>") && !page.contains("<h2>Activity</h2>"))
    }

    @Test func onlyABuildThatHasNotEndedOffersCancel() {
        let v = ConsoleViewer(user: "dev", admin: false, csrf: "t")
        var b = Build(id: "b1-ab", project: "p", ref: "main")
        #expect(ConsolePages.buildSummary(b, now: Date(), canceller: v).rendered.contains(#"action="/ui/builds/b1-ab/cancel""#))
        #expect(!ConsolePages.buildSummary(b, now: Date(), canceller: nil).rendered.contains("cancel"))
        b.status = .succeeded
        #expect(!ConsolePages.buildSummary(b, now: Date(), canceller: v).rendered.contains("/cancel"))
    }

    // MARK: sessions

    @Test func aSessionEndsAtItsExpiryWhateverItsUse() {
        let now = Date()
        let s = ConsoleSession(user: "a", csrf: "t", createdAt: now, expiresAt: now.addingTimeInterval(ConsoleSession.lifetime), lease: nil)
        #expect(s.isValid(at: now.addingTimeInterval(ConsoleSession.lifetime - 1)))
        #expect(!s.isValid(at: now.addingTimeInterval(ConsoleSession.lifetime)))
        #expect(ConsoleSession.lifetime == 12 * 3600)
        #expect(SchedulerStore.isSessionCookie(Secret.random()))
        for bad in ["", "short", String(repeating: "a", count: 129), "abc def ghi jkl mno pqr", "abcdefghijklmnopqrstu;", "abcdefghijklmnopqrstuv/"] {
            #expect(!SchedulerStore.isSessionCookie(bad), "\(bad)")
        }
    }

    // MARK: the login throttle (shared by the API's HTTP Basic and the console's form)

    final class Clock: Sendable {
        let now = Locked(Date(timeIntervalSince1970: 1_000_000))
        func advance(_ seconds: TimeInterval) { now.withLock { $0 = $0.addingTimeInterval(seconds) } }
    }

    @Test func aFloodFromOneAddressDoesNotLockTheUserOutElsewhereAndASuccessClears() throws {
        let clock = Clock()
        let throttle = LoginThrottle(clock: { clock.now.value })
        for _ in 0..<20 { _ = try? throttle.check(user: "alice", address: "10.0.0.66") }  // each attempt counts
        #expect(throws: KilnError.self) { try throttle.check(user: "alice", address: "10.0.0.66") }
        // The real user, from their own address; another user from the flooding address.
        try throttle.check(user: "alice", address: "10.0.0.1")
        throttle.succeeded(user: "alice", address: "10.0.0.1")
        try throttle.check(user: "bob", address: "10.0.0.66")
        // A success clears its own pair only.
        for _ in 0..<5 { _ = try? throttle.check(user: "bob", address: "10.0.0.2") }
        throttle.succeeded(user: "bob", address: "10.0.0.2")
        try throttle.check(user: "bob", address: "10.0.0.2")
        #expect(throws: KilnError.self) { try throttle.check(user: "alice", address: "10.0.0.66") }
        // The flood is forgotten a window after its last failure.
        clock.advance(LoginThrottle.window)
        try throttle.check(user: "alice", address: "10.0.0.66")
    }
}
