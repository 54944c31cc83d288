import Etcd
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
@testable import Scheduler
import Testing

/// The console's login, sessions and forms over real HTTP against a scheduler in this process
/// and a real etcd: exact statuses, headers, cookies and etcd keys, as an attacker would probe
/// them (`ConsoleClient` follows no redirect). In Chromium: `ConsoleAccessTests`.
@Suite("Console login and sessions", .serialized)
struct ConsoleLoginTests {
    static let password = "correct horse battery staple"

    @Test func withoutASessionPagesLeadToTheLoginPageAndStreamsAnswer401() async throws {
        try await withScheduler { h in
            let id = try await h.addProjectWithBuild("demo")
            let anonymous = ConsoleClient(h.api)
            for (path, location) in [("/", "/ui/login"), ("/ui/roles", "/ui/login?next=/ui/roles"), ("/ui/agents", "/ui/login?next=/ui/agents"),
                                     ("/ui/projects/demo", "/ui/login?next=/ui/projects/demo"),
                                     ("/ui/builds/\(id)?x=1&y=2", "/ui/login?next=/ui/builds/\(id)%3Fx%3D1%26y%3D2")] {
                let r = try await anonymous.get(path)
                #expect(r.status == 303 && r.header("Location") == location, "\(path): \(r.status) \(r.header("Location") ?? "")")
                #expect(!r.body.contains("demo"))
            }
            for path in ["/ui/builds/\(id)/log?follow=1", "/ui/builds/\(id)/log", "/ui/builds/\(id)/summary"] {
                let r = try await anonymous.get(path)
                #expect(r.status == 401 && r.body.contains("/ui/login"), "\(path): \(r.status)")
            }
            // An API token is no console session (the console reads no Authorization header).
            #expect(try await anonymous.get("/", headers: [("Authorization", "Bearer \(h.adminToken)")]).status == 303)
            // A POST without a session changes nothing.
            #expect(try await anonymous.post("/ui/builds/\(id)/cancel", form: []).status == 303)
            #expect(try await h.build(id).status == .queued)
        }
    }

    @Test func loggingInStartsASessionKeptInEtcdOnlyByItsHash() async throws {
        try await withScheduler { h in
            try await h.addUser("alice", password: Self.password)
            let browser = ConsoleClient(h.api)
            let page = try await browser.get("/ui/login?next=/ui/agents")
            #expect(page.status == 200)
            for (name, value) in [("Content-Security-Policy", ConsoleHTTP.contentSecurityPolicy), ("X-Frame-Options", "DENY"),
                                  ("Referrer-Policy", "same-origin"), ("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff")] {
                #expect(page.header(name) == value, "\(name)")
            }
            let loginCookie = try #require(page.header("Set-Cookie"))
            #expect(loginCookie.hasPrefix("kiln-login=") && loginCookie.hasSuffix("; Path=/; Max-Age=3600; HttpOnly; SameSite=Strict"), "\(loginCookie)")
            let token = try #require(ConsoleClient.csrf(in: page.body))
            #expect(loginCookie == "kiln-login=\(token); Path=/; Max-Age=3600; HttpOnly; SameSite=Strict")
            let form = [("csrf", token), ("next", "/ui/agents"), ("user", "alice")]

            // The form without the login cookie (from another browser), from another site, or
            // with no Origin at all: 403, no session.
            #expect(try await ConsoleClient(h.api).post("/ui/login", form: form + [("password", Self.password)]).status == 403)
            #expect(try await browser.post("/ui/login", form: form + [("password", Self.password)], origin: .other("http://evil.example")).status == 403)
            #expect(try await browser.post("/ui/login", form: form + [("password", Self.password)], origin: .none).status == 403)
            #expect(try await browser.post("/ui/login", form: [("csrf", "x" + token.dropFirst()), ("user", "alice"), ("password", Self.password)]).status == 403)
            #expect(try await h.etcd.range(prefix: h.keys.sessions).kvs.isEmpty)

            // A wrong password and an unknown user: the same answer.
            let wrong = try await browser.post("/ui/login", form: form + [("password", "not the password at all")])
            let unknown = try await browser.post("/ui/login", form: [("csrf", token), ("next", "/ui/agents"), ("user", "mallory"), ("password", Self.password)])
            #expect(wrong.status == 401 && unknown.status == 401)
            let refusal = #"<p class="error" id="error">\#(HTML.escape(Console.loginRefusal))</p>"#
            #expect(wrong.body.contains(refusal) && unknown.body.contains(refusal))
            #expect(wrong.header("Set-Cookie")?.hasPrefix("kiln-session") != true)
            #expect(try await browser.post("/ui/login", form: form + [("password", "")]).status == 400)
            #expect(try await h.etcd.range(prefix: h.keys.sessions).kvs.isEmpty)

            let ok = try await browser.post("/ui/login", form: form + [("password", Self.password)])
            #expect(ok.status == 303 && ok.header("Location") == "/ui/agents")
            let cookies = ok.all("Set-Cookie")
            let cookie = try #require(browser.session)
            #expect(cookies.contains("kiln-session=\(cookie); Path=/; Max-Age=43200; HttpOnly; SameSite=Strict"), "\(cookies)")
            #expect(cookies.contains("kiln-login=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict"))
            // etcd holds the cookie's hash, never the cookie; bound to a lease, so etcd ends it too.
            let store = SchedulerStore(etcd: h.etcd)
            let kvs = try await h.etcd.range(prefix: h.keys.sessions).kvs
            #expect(kvs.map(\.key) == [store.sessionKey(cookie: cookie)])
            let record = try KilnJSON.decode(ConsoleSession.self, from: kvs[0].value)
            #expect(record.user == "alice" && kvs[0].lease != 0 && kvs[0].lease == record.lease)
            #expect(!kvs[0].string.contains(cookie) && !kvs[0].key.contains(cookie))
            #expect(abs(record.expiresAt.timeIntervalSince(record.createdAt) - 12 * 3600) < 1)
            let ttl = try #require(try await h.etcd.timeToLive(kvs[0].lease))
            #expect(ttl > 12 * 3600 && ttl <= 12 * 3600 + 300)

            let agents = try await browser.get("/ui/agents")
            #expect(agents.status == 200 && agents.body.contains(#"Logged in as <b id="user">alice</b> <form"#))
            #expect(agents.body.contains(#"name="csrf" value="\#(record.csrf)""#))
            #expect(agents.header("Content-Security-Policy") == ConsoleHTTP.contentSecurityPolicy)
            // Logged in, the login page sends on to next.
            #expect(try await browser.get("/ui/login?next=/ui/roles").header("Location") == "/ui/roles")

            // A session is etcd's, not this process's: one another scheduler made works here.
            let other = try await store.createSession(for: "alice")
            let elsewhere = ConsoleClient(h.api)
            elsewhere.jar.withLock { $0["kiln-session"] = other.cookie }
            #expect(try await elsewhere.get("/").status == 200)
            // The first admin has no password: it logs in with its API token.
            #expect(try await ConsoleClient(h.api).logIn("admin", h.adminToken).status == 303)
            // Behind a TLS proxy the cookies are Secure and __Host- (which plain HTTP never sets).
            let tls = try await ConsoleClient(h.api).get("/ui/login", headers: [("X-Forwarded-Proto", "https")])
            #expect(tls.header("Set-Cookie")?.hasPrefix("__Host-kiln-login=") == true && tls.header("Set-Cookie")?.hasSuffix("; SameSite=Strict; Secure") == true)
        }
    }

    @Test func theLoginSendsTheBrowserOnlyToAPathOfThisConsole() async throws {
        try await withScheduler { h in
            try await h.addUser("alice", password: Self.password)
            for next in ["//evil.example", "/\\evil.example", "https://evil.example/", "/\t/evil.example", "javascript:alert(1)"] {
                let r = try await ConsoleClient(h.api).logIn("alice", Self.password, next: next)
                #expect(r.status == 303 && r.header("Location") == "/", "\(next): \(r.header("Location") ?? "")")
            }
            let browser = ConsoleClient(h.api)
            #expect(try await browser.logIn("alice", Self.password, next: "/ui/agents").header("Location") == "/ui/agents")
            // Already logged in, the login page checks next the same way.
            #expect(try await browser.get("/ui/login?next=//evil.example").header("Location") == "/")
            #expect(try await browser.get("/ui/login?next=%2F%2Fevil.example").header("Location") == "/")
        }
    }

    @Test func loggingOutEndsTheSessionEverywhere() async throws {
        try await withScheduler { h in
            try await h.addUser("alice", password: Self.password)
            let browser = ConsoleClient(h.api)
            try await browser.logIn("alice", Self.password)
            let cookie = try #require(browser.session)
            let csrf = try #require(ConsoleClient.csrf(in: try await browser.get("/").body))
            let key = SchedulerStore(etcd: h.etcd).sessionKey(cookie: cookie)
            // Without its token, with another's, or from another site: refused, still logged in.
            for (form, origin) in [([], ConsoleClient.Origin.own), ([("csrf", "forged")], .own), ([("csrf", csrf)], .other("http://evil.example")),
                                   ([("csrf", csrf)], .none)] as [([(String, String)], ConsoleClient.Origin)] {
                let r = try await browser.post("/ui/logout", form: form, origin: origin)
                #expect(r.status == 403 && r.body.contains("<h1>Forbidden</h1>"), "\(form)")
            }
            #expect(try await h.etcd.get(key) != nil)
            #expect(try await browser.get("/").status == 200)

            let r = try await browser.post("/ui/logout", form: [("csrf", csrf)])
            #expect(r.status == 303 && r.header("Location") == "/ui/login")
            #expect(r.header("Set-Cookie") == "kiln-session=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict")
            #expect(try await h.etcd.get(key) == nil)
            #expect(try await h.etcd.range(prefix: h.keys.sessions).kvs.isEmpty)
            // The old cookie, kept by someone who copied it, opens nothing.
            let replay = ConsoleClient(h.api)
            replay.jar.withLock { $0["kiln-session"] = cookie }
            #expect(try await replay.get("/").status == 303)
            #expect(try await replay.get("/ui/agents").header("Location") == "/ui/login?next=/ui/agents")
            #expect(try await replay.post("/ui/logout", form: [("csrf", csrf)]).status == 303)
        }
    }

    @Test func anExpiredSessionIsRefusedAndDeleted() async throws {
        try await withScheduler { h in
            try await h.addUser("alice", password: Self.password)
            let cookie = Secret.random()
            let store = SchedulerStore(etcd: h.etcd)
            let past = Date().addingTimeInterval(-13 * 3600)
            let record = ConsoleSession(user: "alice", csrf: "t", createdAt: past, expiresAt: past.addingTimeInterval(ConsoleSession.lifetime), lease: nil)
            try await h.etcd.put(store.sessionKey(cookie: cookie), try KilnJSON.encode(record))
            let browser = ConsoleClient(h.api)
            browser.jar.withLock { $0["kiln-session"] = cookie }
            #expect(try await browser.get("/").status == 303)
            #expect(try await h.etcd.get(store.sessionKey(cookie: cookie)) == nil)
            // A session whose user is gone is no session either.
            let orphan = ConsoleSession(user: "ghost", csrf: "t", createdAt: Date(), expiresAt: Date().addingTimeInterval(3600), lease: nil)
            let ghost = Secret.random()
            try await h.etcd.put(store.sessionKey(cookie: ghost), try KilnJSON.encode(orphan))
            browser.jar.withLock { $0["kiln-session"] = ghost }
            #expect(try await browser.get("/").status == 303)
        }
    }

    @Test func theCancelFormActsOnlyWithItsSessionsTokenAndTheRole() async throws {
        try await withScheduler { h in
            let id = try await h.addProjectWithBuild("demo")
            for (user, role) in [("dev", Role.developer), ("rep", .reporter)] {
                try await h.addUser(user, password: Self.password)
                try await h.addMember(user, to: "demo", as: role)
            }
            try await h.addUser("outsider", password: Self.password)
            var clients: [String: ConsoleClient] = [:], tokens: [String: String] = [:]
            for user in ["dev", "rep", "outsider"] {
                clients[user] = ConsoleClient(h.api)
                #expect(try await clients[user]!.logIn(user, Self.password).status == 303)
                let token = try #require(ConsoleClient.csrf(in: try await clients[user]!.get("/").body))
                tokens[user] = token
            }
            let dev = clients["dev"]!
            let page = try await dev.get("/ui/builds/\(id)")
            #expect(page.body.contains(#"<form method="post" action="/ui/builds/\#(id)/cancel" class="inline" id="cancel"><input type="hidden" name="csrf" value="\#(tokens["dev"]!)">"#))
            // A reporter reads the build but gets no button, and the POST is refused by role.
            let reporterPage = try await clients["rep"]!.get("/ui/builds/\(id)")
            #expect(reporterPage.status == 200 && !reporterPage.body.contains("/cancel"))
            #expect(try await clients["rep"]!.post("/ui/builds/\(id)/cancel", form: [("csrf", tokens["rep"]!)]).status == 403)
            // Someone with no role: the same 404 as for a build that does not exist.
            let missing = "b000000000-000000"
            for path in ["/ui/builds/\(id)", "/ui/builds/\(id)/summary", "/ui/projects/demo"] {
                let r = try await clients["outsider"]!.get(path)
                #expect(r.status == 404 && r.body.contains("<h1>Not found</h1>"), "\(path)")
            }
            let hidden = try await clients["outsider"]!.get("/ui/builds/\(id)")
            let absent = try await clients["outsider"]!.get("/ui/builds/\(missing)")
            #expect(hidden.body.replacingOccurrences(of: id, with: missing) == absent.body)
            #expect(try await clients["outsider"]!.get("/ui/builds/\(id)/log").status == 404)
            #expect(try await clients["outsider"]!.post("/ui/builds/\(id)/cancel", form: [("csrf", tokens["outsider"]!)]).status == 404)

            // The developer's own session, but without its token, with another session's, with
            // a wrong content type, from another site: each refused and the build untouched.
            for (form, origin) in [([], ConsoleClient.Origin.own), ([("csrf", tokens["rep"]!)], .own), ([("csrf", "")], .own),
                                   ([("csrf", tokens["dev"]!)], .other("http://127.0.0.1:1")), ([("csrf", tokens["dev"]!)], .none),
                                   ([("csrf", tokens["dev"]!), ("csrf", tokens["rep"]!)], .own)] as [([(String, String)], ConsoleClient.Origin)] {
                let r = try await dev.post("/ui/builds/\(id)/cancel", form: form, origin: origin)
                #expect(r.status == 403 || (r.status == 400 && form.count == 2), "\(form) \(origin): \(r.status)")
                #expect(try await h.build(id).status == .queued)
            }
            #expect(try await dev.post("/ui/builds/\(id)/cancel", form: [("csrf", tokens["dev"]!)], contentType: "text/plain").status == 400)
            #expect(try await h.build(id).status == .queued)

            let done = try await dev.post("/ui/builds/\(id)/cancel", form: [("csrf", tokens["dev"]!)])
            #expect(done.status == 303 && done.header("Location") == "/ui/builds/\(id)")
            let cancelled = try await h.build(id)
            #expect(cancelled.status == .cancelled && cancelled.error?.contains("cancelled by dev in the console") == true, "\(cancelled)")
            // An ended build has no button any more.
            #expect(!(try await dev.get("/ui/builds/\(id)").body.contains(#"id="cancel""#)))
        }
    }

    @Test func aLoginFloodGets429FromTheSameBudgetAsTheAPI() async throws {
        try await withScheduler { h in
            try await h.addUser("dave", password: Self.password)
            let browser = ConsoleClient(h.api)
            let token = try #require(ConsoleClient.csrf(in: try await browser.get("/ui/login").body))
            func attempt(_ password: String) async throws -> HTTPReply {
                try await browser.post("/ui/login", form: [("csrf", token), ("user", "dave"), ("password", password)])
            }
            for i in 0..<LoginThrottle.freeFailures {
                #expect(try await attempt("wrong password, guess \(i)").status == 401)
            }
            // After the fifth failure the pair waits 2 s: what follows comes well within them
            // (no password is checked any more, so each answer is quick).
            let flooded = try await attempt(Self.password)
            // The right password waits too: the check comes before the password.
            #expect(flooded.status == 429 && flooded.body.contains("too many failed logins") && flooded.body.contains("try again in"), "\(flooded.body)")
            #expect(flooded.header("Set-Cookie")?.hasPrefix("kiln-session") != true)
            // So does the API's HTTP Basic login of the same user from the same address.
            let basic = Data("dave:\(Self.password)".utf8).base64EncodedString()
            let api = try await h.request(.POST, "/api/v1/tokens", body: #"{"name":"laptop"}"#, token: nil, headers: [("Authorization", "Basic \(basic)")])
            #expect(api.status == 429, "\(api.body)")
            // Another user from the same address is not slowed.
            try await h.addUser("erin", password: Self.password)
            #expect(try await ConsoleClient(h.api).logIn("erin", Self.password).status == 303)
            #expect(try await h.etcd.range(prefix: h.keys.sessions).kvs.count == 1)
        }
    }
}
