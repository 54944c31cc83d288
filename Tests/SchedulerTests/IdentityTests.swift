import Foundation
import KilnCore
import KilnTestSupport
import NIOHTTP1
@testable import Scheduler
import Testing

@Suite("Roles, members and passwords (pure)")
struct RoleRulesTests {
    @Test func rolesAreOrderedAndTheTableFollowsTheMinimumRoles() throws {
        #expect(Role.allCases.sorted() == [.guest, .reporter, .developer, .master, .owner])
        #expect(Permission.view.minimumRole == .guest && Permission.read.minimumRole == .reporter && Permission.build.minimumRole == .developer)
        #expect(Permission.deploy.minimumRole == .master && Permission.manage.minimumRole == .master && Permission.own.minimumRole == .owner)
        let rows = Permission.table.split(separator: "\n")
        #expect(rows.count == Permission.allCases.count + 1)
        #expect(rows[1].hasPrefix("view") && !rows[1].contains("-"))  // every role may view
        #expect(rows.last!.hasPrefix("own") && rows.last!.components(separatedBy: "yes").count == 2)  // owner only
        #expect { try Role.parse("admin") } throws: { "\($0)".contains("guest, reporter, developer, master, owner") }
    }

    @Test func mastersManageMembersBelowOwnerAndTheLastOwnerStays() throws {
        var m = Members(users: ["olga": .owner, "max": .master, "dev": .developer])
        try m.set("dev", to: .master, by: .master)
        #expect(m.users["dev"] == .master)
        #expect { try m.set("olga", to: .guest, by: .master) } throws: { ($0 as? KilnError)?.httpStatus == 403 }
        #expect { try m.set("new", to: .owner, by: .master) } throws: { ($0 as? KilnError)?.httpStatus == 403 }
        #expect { try m.remove("olga", by: .master) } throws: { ($0 as? KilnError)?.httpStatus == 403 }
        #expect { try m.set("olga", to: .master, by: .owner) } throws: { ($0 as? KilnError)?.httpStatus == 409 }
        #expect { try m.remove("olga", by: nil) } throws: { ($0 as? KilnError)?.httpStatus == 409 }
        try m.set("max", to: .owner, by: .owner)
        try m.remove("olga", by: .owner)
        #expect(m.owners == ["max"])
        #expect { try m.remove("nobody", by: nil) } throws: { ($0 as? KilnError)?.isNotFound == true }
    }

    @Test func passwordsAreSaltedSlowHashesCheckedWhole() throws {
        let a = try PasswordHasher.hash("correct horse battery")
        let b = try PasswordHasher.hash("correct horse battery")
        #expect(a != b && a.hasPrefix("scrypt$32768$8$1$"))
        #expect(PasswordHasher.verify("correct horse battery", against: a))
        #expect(!PasswordHasher.verify("correct horse batter", against: a))
        #expect(!PasswordHasher.verify("correct horse battery", against: nil))
        #expect(!PasswordHasher.verify("x", against: "scrypt$1099511627776$8$1$AAAA$AAAA"))  // a planted cost is refused
        #expect(!PasswordHasher.verify("x", against: "plain"))
    }

    @Test func failedLoginsSlowDownOnePairOnlyAndASuccessClearsIt() throws {
        let now = Locked(Date(timeIntervalSince1970: 1_000_000))
        let throttle = LoginThrottle(clock: { now.value })
        // Each check counts as a failure until a success takes it back: attempts sent at
        // once are counted at once.
        for _ in 0..<LoginThrottle.freeFailures { try throttle.check(user: "alice", address: "10.0.0.9") }
        #expect { try throttle.check(user: "alice", address: "10.0.0.9") } throws: { ($0 as? KilnError)?.httpStatus == 429 && "\($0)".contains("try again in 2 s") }
        try throttle.check(user: "alice", address: "127.0.0.1")  // the real user elsewhere is not slowed
        try throttle.check(user: "bob", address: "10.0.0.9")
        now.value = now.value.addingTimeInterval(2)
        try throttle.check(user: "alice", address: "10.0.0.9")
        #expect { try throttle.check(user: "alice", address: "10.0.0.9") } throws: { "\($0)".contains("try again in 4 s") }
        // The wait is bounded, and it ends; a success clears the pair.
        #expect(LoginThrottle.delay(after: 45) == LoginThrottle.maxDelay)
        now.value = now.value.addingTimeInterval(LoginThrottle.maxDelay + 1)
        try throttle.check(user: "alice", address: "10.0.0.9")
        throttle.succeeded(user: "alice", address: "10.0.0.9")
        for _ in 0..<LoginThrottle.freeFailures { try throttle.check(user: "alice", address: "10.0.0.9") }
    }

    @Test func expensiveWorkRunsAFewAtATimeAndRefusesPastItsQueue() async throws {
        let limiter = WorkLimiter(running: 2, waiting: 2)
        let peak = Locked(0), now = Locked(0)
        let results = await withTaskGroup(of: Bool.self) { group in
            for _ in 0..<12 {
                group.addTask {
                    do {
                        try await limiter.run {
                            peak.withLock { $0 = max($0, now.add(1) + 1) }
                            try? await Task.sleep(for: .milliseconds(200))
                            now.add(-1)
                        }
                        return true
                    } catch { return false }
                }
            }
            return await group.reduce(into: [Bool]()) { $0.append($1) }
        }
        #expect(peak.value <= 2)
        #expect(results.contains(false), "past 2 running and 2 waiting, some are refused")
        #expect(results.filter { $0 }.count >= 4)
        #expect(try await limiter.run { 7 } == 7)  // and it keeps working after
    }
}

@Suite("Users, tokens and roles against the real API", .serialized)
struct IdentityAPITests {
    static let password = "a long enough passphrase"

    /// Adds a user (as admin) and returns an API token made with their password.
    static func user(_ h: SchedulerHarness, _ name: String, admin: Bool = false) async throws -> String {
        let made = try await h.request(.POST, "/api/v1/users", body: try KilnJSON.encode(NewUser(name: name, password: password, admin: admin)))
        #expect(made.status == 201, "\(made.body)")
        #expect(!made.body.contains("scrypt"))
        let basic = "Basic " + Data("\(name):\(password)".utf8).base64EncodedString()
        let r = try await h.request(.POST, "/api/v1/tokens", body: #"{"name":"test"}"#, token: nil, headers: [("Authorization", basic)])
        #expect(r.status == 201, "\(r.body)")
        return try KilnJSON.decode(CreatedToken.self, from: r.body).token
    }

    @Test func everyRouteButHealthAndTheWebhookNeedsAToken() async throws {
        try await withScheduler { h in
            let routes: [(HTTPMethod, String)] = [
                (.GET, "/api/v1/scheduler"), (.GET, "/api/v1/projects"), (.POST, "/api/v1/projects"), (.GET, "/api/v1/projects/demo"),
                (.GET, "/api/v1/projects/demo/activity"), (.POST, "/api/v1/projects/demo/builds"), (.GET, "/api/v1/builds"),
                (.GET, "/api/v1/builds/b-1"), (.POST, "/api/v1/builds/b-1/cancel"), (.GET, "/api/v1/builds/b-1/log"),
                (.POST, "/api/v1/builds/b-1/deploy"), (.GET, "/api/v1/agents"), (.GET, "/api/v1/apps"), (.GET, "/api/v1/apps/demo"),
                (.GET, "/api/v1/cells"), (.PUT, "/api/v1/cells/c1"), (.DELETE, "/api/v1/cells/c1"), (.GET, "/metrics"),
                (.POST, "/api/v1/users"), (.GET, "/api/v1/users"), (.GET, "/api/v1/users/me"), (.POST, "/api/v1/tokens"),
                (.GET, "/api/v1/tokens"), (.DELETE, "/api/v1/tokens/abc"), (.GET, "/api/v1/groups"), (.POST, "/api/v1/groups"),
                (.GET, "/api/v1/groups/g"), (.PUT, "/api/v1/groups/g"), (.GET, "/api/v1/projects/demo/members"),
                (.PUT, "/api/v1/projects/demo/members/bob"), (.DELETE, "/api/v1/apps/demo/members/bob"),
                (.PUT, "/api/v1/apps/demo/projects/demo"),
                (.GET, "/api/v1/projects/demo/secrets"), (.PUT, "/api/v1/projects/demo/secrets/TOKEN"), (.DELETE, "/api/v1/groups/g/secrets/TOKEN"),
                (.PUT, "/api/v1/projects/demo/credentials/git"), (.DELETE, "/api/v1/groups/g/credentials/registry/r.example.com"),
                (.PUT, "/api/v1/cells/c1/credentials"), (.POST, "/api/v1/admin/secrets/reseal"),
                (.GET, "/api/v1/projects/demo/retention"), (.PUT, "/api/v1/projects/demo/retention"),
                (.GET, "/api/v1/apps/demo/retention"), (.PUT, "/api/v1/apps/demo/retention"), (.POST, "/api/v1/apps/demo/scale"),
            ]
            let bad = ["Bearer kiln_wrong", "Bearer ", "Basic " + Data("admin:wrong".utf8).base64EncodedString(), "Token x"]
            for (method, path) in routes {
                let none = try await h.request(method, path, body: "{}", token: nil)
                #expect(none.status == 401, "\(method) \(path) without a token: \(none.status) \(none.body)")
                for header in bad {
                    let r = try await h.request(method, path, body: "{}", token: nil, headers: [("Authorization", header)])
                    #expect(r.status == 401 && r.body == none.body, "\(method) \(path) with \(header): \(r.status)")
                }
            }
            #expect(try await h.request(.GET, "/api/v1/health", token: nil).status == 200)
            #expect(try await h.request(.POST, "/hooks/gitlab", body: "{}", token: nil).status != 401)
        }
    }

    @Test func tokensAreMadeWithThePasswordShownOnceAndEndWhenExpiredOrRevoked() async throws {
        try await withScheduler { h in
            let alice = try await Self.user(h, "alice")
            #expect(try await h.request(.GET, "/api/v1/users/me", token: alice).body.contains(#""name" : "alice""#))
            // Wrong password, unknown user and a password where only tokens count: one answer.
            func basic(_ user: String, _ secret: String) -> [(String, String)] { [("Authorization", "Basic " + Data("\(user):\(secret)".utf8).base64EncodedString())] }
            let wrong = try await h.request(.POST, "/api/v1/tokens", body: #"{"name":"x"}"#, token: nil, headers: basic("alice", "not the password"))
            let unknown = try await h.request(.POST, "/api/v1/tokens", body: #"{"name":"x"}"#, token: nil, headers: basic("nobody", Self.password))
            let passwordOnAPI = try await h.request(.GET, "/api/v1/users/me", token: nil, headers: basic("alice", Self.password))
            #expect(wrong.status == 401 && unknown.status == 401 && passwordOnAPI.status == 401)
            #expect(wrong.body == unknown.body && unknown.body == passwordOnAPI.body)
            // A token works as the password of HTTP Basic too (what podman login sends), for its own user only.
            #expect(try await h.request(.GET, "/api/v1/users/me", token: nil, headers: basic("alice", alice)).status == 200)
            #expect(try await h.request(.GET, "/api/v1/users/me", token: nil, headers: basic("admin", alice)).status == 401)

            // Listed without the token itself; etcd holds only its hash.
            let listed = try await h.request(.GET, "/api/v1/tokens", token: alice)
            #expect(listed.status == 200 && !listed.body.contains(alice))
            #expect(try await h.etcd.range(prefix: h.keys.tokens).kvs.allSatisfy { !$0.string.contains(alice) && !$0.key.contains(alice) })
            #expect(try await h.request(.POST, "/api/v1/tokens", body: #"{"name":"x","expiresInDays":0}"#, token: alice).status == 400)

            // Expired: the record's expiry moved into the past.
            let second = try KilnJSON.decode(CreatedToken.self, from: try await h.request(.POST, "/api/v1/tokens", body: #"{"name":"short"}"#, token: alice).body)
            let kv = try #require(try await h.etcd.range(prefix: h.keys.tokens).kvs.first { $0.string.contains(second.id) })
            var record = try KilnJSON.decode(APIToken.self, from: kv.value)
            record.expiresAt = Date().addingTimeInterval(-1)
            try await h.etcd.put(kv.key, try KilnJSON.encode(record))
            #expect(try await h.request(.GET, "/api/v1/users/me", token: second.token).status == 401)

            // Revoked: by its owner only.
            let id = try #require(try KilnJSON.decode([APIToken].self, from: listed.body).first?.id)
            let bob = try await Self.user(h, "bob")
            #expect(try await h.request(.DELETE, "/api/v1/tokens/\(id)", token: bob).status == 404)
            #expect(try await h.request(.GET, "/api/v1/users/me", token: alice).status == 200)
            #expect(try await h.request(.DELETE, "/api/v1/tokens/\(id)", token: alice).status == 200)
            #expect(try await h.request(.GET, "/api/v1/users/me", token: alice).status == 401)

            // Only admins add users; names and passwords are checked.
            #expect(try await h.request(.POST, "/api/v1/users", body: #"{"name":"eve","password":"a long enough passphrase"}"#, token: bob).status == 403)
            #expect(try await h.request(.POST, "/api/v1/users", body: #"{"name":"Eve!","password":"a long enough passphrase"}"#).status == 400)
            #expect(try await h.request(.POST, "/api/v1/users", body: #"{"name":"eve","password":"short"}"#).status == 400)
            #expect(try await h.request(.POST, "/api/v1/users", body: #"{"name":"bob","password":"a long enough passphrase"}"#).status == 409)
        }
    }

    /// Each role against each action on a project: the table of docs/roles.md, through the API.
    @Test func theRoleTableHoldsForEveryActionOnAProject() async throws {
        try await withScheduler { h in
            let owner = try await Self.user(h, "olga")
            let member = try await Self.user(h, "mia")
            let outsider = try await Self.user(h, "otto")
            let project = #"{"name":"shop","repository":"http://127.0.0.1:1/shop.git","buildImage":"a:1","buildCommand":"make"}"#
            #expect(try await h.request(.POST, "/api/v1/projects", body: project, token: owner).status == 201)
            let build = try KilnJSON.decode(Build.self, from: try await h.request(.POST, "/api/v1/projects/shop/builds", body: "{}", token: owner).body)
            #expect(build.trigger == "api by olga")

            // Each action, the permission it needs, and a request that does it.
            typealias Action = (name: String, permission: Permission, method: HTTPMethod, path: String, body: String?)
            let actions: [Action] = [
                ("see the project", .view, .GET, "/api/v1/projects/shop", nil),
                ("list its members", .view, .GET, "/api/v1/projects/shop/members", nil),
                ("read its builds", .read, .GET, "/api/v1/builds?project=shop", nil),
                ("read a build", .read, .GET, "/api/v1/builds/\(build.id)", nil),
                ("read a log", .read, .GET, "/api/v1/builds/\(build.id)/log", nil),
                ("read its activity", .read, .GET, "/api/v1/projects/shop/activity", nil),
                ("start a build", .build, .POST, "/api/v1/projects/shop/builds", "{}"),
                ("deploy a build", .deploy, .POST, "/api/v1/builds/\(build.id)/deploy", nil),
                ("change settings", .manage, .POST, "/api/v1/projects", project),
                ("see its retention", .view, .GET, "/api/v1/projects/shop/retention", nil),
                ("change its retention", .manage, .PUT, "/api/v1/projects/shop/retention", #"{"keepBuilds":50}"#),
                ("add a developer", .manage, .PUT, "/api/v1/projects/shop/members/otto", #"{"role":"developer"}"#),
                ("add an owner", .own, .PUT, "/api/v1/projects/shop/members/otto", #"{"role":"owner"}"#),
            ]
            for role in Role.allCases.filter({ $0 != .owner }) {
                #expect(try await h.request(.PUT, "/api/v1/projects/shop/members/mia", body: #"{"role":"\#(role.rawValue)"}"#, token: owner).status == 200)
                for a in actions {
                    let r = try await h.request(a.method, a.path, body: a.body, token: member)
                    if role >= a.permission.minimumRole {
                        // Allowed: whatever the state says (a queued build cannot be deployed: 409), never 403/404.
                        #expect(r.status != 403 && r.status != 404 && r.status != 401, "\(role) may \(a.name): \(r.status) \(r.body)")
                    } else {
                        #expect(r.status == 403, "\(role) may not \(a.name): \(r.status) \(r.body)")
                    }
                }
                // Whatever the member did, otto must not stay a member for the next round.
                _ = try await h.request(.DELETE, "/api/v1/projects/shop/members/otto", token: owner)
            }
            // No role at all: the project and its builds do not exist for them.
            for a in actions {
                let r = try await h.request(a.method, a.path, body: a.body, token: outsider)
                if a.path == "/api/v1/projects" {
                    #expect(r.status == 409 && r.body.contains("not its member"), "\(r.body)")
                } else {
                    #expect(r.status == 404, "an outsider's \(a.name): \(r.status) \(r.body)")
                }
            }
            let missing = try await h.request(.GET, "/api/v1/projects/nothing-here", token: outsider)
            let hidden = try await h.request(.GET, "/api/v1/projects/shop", token: outsider)
            #expect(missing.body.replacingOccurrences(of: "nothing-here", with: "shop") == hidden.body)
            #expect(try KilnJSON.decode([Project].self, from: try await h.request(.GET, "/api/v1/projects", token: outsider).body).isEmpty)
            #expect(try KilnJSON.decode([Build].self, from: try await h.request(.GET, "/api/v1/builds", token: outsider).body).isEmpty)
            #expect(try KilnJSON.decode([Project].self, from: try await h.request(.GET, "/api/v1/projects", token: member).body).map(\.name) == ["shop"])

            // Owners: a master cannot demote or remove one; the last one cannot leave.
            #expect(try await h.request(.PUT, "/api/v1/projects/shop/members/mia", body: #"{"role":"master"}"#, token: owner).status == 200)
            #expect(try await h.request(.PUT, "/api/v1/projects/shop/members/olga", body: #"{"role":"guest"}"#, token: member).status == 403)
            #expect(try await h.request(.DELETE, "/api/v1/projects/shop/members/olga", token: member).status == 403)
            #expect(try await h.request(.DELETE, "/api/v1/projects/shop/members/olga", token: owner).status == 409)
            #expect(try await h.request(.PUT, "/api/v1/projects/shop/members/mia", body: #"{"role":"king"}"#, token: owner).status == 400)
            #expect(try await h.request(.PUT, "/api/v1/projects/shop/members/ghost", body: #"{"role":"guest"}"#, token: owner).status == 404)
            // A member may leave.
            #expect(try await h.request(.DELETE, "/api/v1/projects/shop/members/mia", token: member).status == 200)
            #expect(try await h.request(.GET, "/api/v1/projects/shop", token: member).status == 404)
            // Admin only: cells and metrics.
            #expect(try await h.request(.PUT, "/api/v1/cells/c1", body: #"{"name":"c1","backend":"local","endpoint":"unix:///x"}"#, token: owner).status == 403)
            #expect(try await h.request(.GET, "/metrics", token: owner).status == 403)
            #expect(try await h.request(.GET, "/metrics").status == 200)
        }
    }

    /// The same table on a group and on an app.
    @Test func theRoleTableHoldsOnGroupsAndApps() async throws {
        try await withScheduler { h in
            let owner = try await Self.user(h, "olga")
            let member = try await Self.user(h, "mia")
            let outsider = try await Self.user(h, "otto")
            #expect(try await h.request(.POST, "/api/v1/groups", body: #"{"name":"team"}"#, token: owner).status == 201)
            let project = #"{"name":"shop","repository":"http://127.0.0.1:1/shop.git","buildImage":"a:1","buildCommand":"make"}"#
            #expect(try await h.request(.POST, "/api/v1/projects", body: project, token: owner).status == 201)
            try await h.etcd.put(h.keys.app("shop-app"), try KilnJSON.encode(App(name: "shop-app", project: "shop")))
            try await h.etcd.put(h.keys.members(.app, "shop-app"), try KilnJSON.encode(Members(users: ["olga": .owner])))
            typealias Action = (name: String, permission: Permission, method: HTTPMethod, path: String, body: String?)
            let tables: [(kind: String, name: String, actions: [Action])] = [
                ("groups", "team", [
                    ("see the group", .view, .GET, "/api/v1/groups/team", nil),
                    ("list its members", .view, .GET, "/api/v1/groups/team/members", nil),
                    ("read its activity", .read, .GET, "/api/v1/groups/team/activity", nil),
                    ("put a project in it", .setSecrets, .POST, "/api/v1/projects", #"{"name":"mine","group":"team","repository":"http://127.0.0.1:1/m.git","buildImage":"a:1","buildCommand":"make"}"#),
                    ("change its visibility", .manage, .PUT, "/api/v1/groups/team", #"{"visibility":"private"}"#),
                    ("add a developer", .manage, .PUT, "/api/v1/groups/team/members/otto", #"{"role":"developer"}"#),
                    ("add an owner", .own, .PUT, "/api/v1/groups/team/members/otto", #"{"role":"owner"}"#),
                ]),
                ("apps", "shop-app", [
                    ("list its members", .view, .GET, "/api/v1/apps/shop-app/members", nil),
                    ("read its versions", .read, .GET, "/api/v1/apps/shop-app", nil),
                    ("read its activity", .read, .GET, "/api/v1/apps/shop-app/activity", nil),
                    ("read its retention", .read, .GET, "/api/v1/apps/shop-app/retention", nil),
                    ("change its retention", .manage, .PUT, "/api/v1/apps/shop-app/retention", #"{"keepVersions":5}"#),
                    // Who may deploy may scale (this scheduler has no backends: 503 past the check).
                    ("scale it", .deploy, .POST, "/api/v1/apps/shop-app/scale", #"{"replicas":1}"#),
                    ("add a developer", .manage, .PUT, "/api/v1/apps/shop-app/members/otto", #"{"role":"developer"}"#),
                    ("let another project deploy", .own, .PUT, "/api/v1/apps/shop-app/projects/shop", nil),
                ]),
            ]
            for table in tables {
                for role in Role.allCases.filter({ $0 != .owner }) {
                    #expect(try await h.request(.PUT, "/api/v1/\(table.kind)/\(table.name)/members/mia", body: #"{"role":"\#(role.rawValue)"}"#, token: owner).status == 200)
                    for a in table.actions {
                        let r = try await h.request(a.method, a.path, body: a.body, token: member)
                        if role >= a.permission.minimumRole {
                            #expect(r.status != 403 && r.status != 404 && r.status != 401, "\(role) of \(table.name) may \(a.name): \(r.status) \(r.body)")
                        } else {
                            #expect(r.status == 403 || (a.path == "/api/v1/projects" && r.status == 403), "\(role) of \(table.name) may not \(a.name): \(r.status) \(r.body)")
                        }
                        // Whatever was made or added goes again, for the next round.
                        _ = try await h.request(.DELETE, "/api/v1/\(table.kind)/\(table.name)/members/otto", token: owner)
                        if a.path == "/api/v1/projects" { try await h.etcd.delete(h.keys.project("mine")) }
                    }
                }
                _ = try await h.request(.DELETE, "/api/v1/\(table.kind)/\(table.name)/members/mia", token: owner)
                for a in table.actions where a.path != "/api/v1/projects" {
                    let r = try await h.request(a.method, a.path, body: a.body, token: outsider)
                    #expect(r.status == 404, "an outsider's \(a.name) on \(table.name): \(r.status) \(r.body)")
                }
            }
        }
    }

    @Test func groupMembersHoldTheirRoleOnTheGroupsProjectsAndAppsFollowTheirProject() async throws {
        try await withScheduler { h in
            let lead = try await Self.user(h, "lead")
            let dev = try await Self.user(h, "dev")
            #expect(try await h.request(.POST, "/api/v1/groups", body: #"{"name":"team"}"#, token: lead).status == 201)
            #expect(try await h.request(.POST, "/api/v1/groups", body: #"{"name":"team"}"#, token: dev).status == 409)
            // Only a developer of the group may put a project in it.
            let inGroup = #"{"name":"api","group":"team","repository":"http://127.0.0.1:1/api.git","buildImage":"a:1","buildCommand":"make"}"#
            #expect(try await h.request(.POST, "/api/v1/projects", body: inGroup, token: dev).status == 404)
            #expect(try await h.request(.POST, "/api/v1/projects", body: inGroup, token: lead).status == 201)
            #expect(try await h.request(.POST, "/api/v1/projects/api/builds", body: "{}", token: dev).status == 404)
            #expect(try await h.request(.PUT, "/api/v1/groups/team/members/dev", body: #"{"role":"developer"}"#, token: lead).status == 200)
            #expect(try await h.request(.POST, "/api/v1/projects/api/builds", body: "{}", token: dev).status == 201)
            #expect(try await h.request(.PUT, "/api/v1/groups/team", body: #"{"visibility":"public"}"#, token: dev).status == 403)
            #expect(try await h.request(.PUT, "/api/v1/groups/team", body: #"{"visibility":"public"}"#, token: lead).body.contains("public"))

            // An app belongs to the project that first deployed it: its members see it.
            try await h.etcd.put(h.keys.app("api-app"), try KilnJSON.encode(App(name: "api-app", project: "api")))
            try await h.etcd.put(h.keys.app("elsewhere"), try KilnJSON.encode(App(name: "elsewhere", project: "other")))
            let seen = try KilnJSON.decode([App].self, from: try await h.request(.GET, "/api/v1/apps", token: dev).body)
            #expect(seen.map(\.name) == ["api-app"])
            #expect(try await h.request(.GET, "/api/v1/apps/elsewhere", token: dev).status == 404)
            #expect(try KilnJSON.decode([App].self, from: try await h.request(.GET, "/api/v1/apps").body).count == 2)
            // Which other projects may deploy into it: its owners decide (dev is developer, lead owner through the group).
            #expect(try await h.request(.PUT, "/api/v1/apps/api-app/projects/api", token: dev).status == 403)
        }
    }

    @Test func everyResourceSaysWhoDidWhat() async throws {
        try await withScheduler { h in
            let alice = try await Self.user(h, "alice")
            _ = try await Self.user(h, "bob")
            let project = #"{"name":"shop","repository":"http://127.0.0.1:1/shop.git","buildImage":"a:1","buildCommand":"make"}"#
            #expect(try await h.request(.POST, "/api/v1/projects", body: project, token: alice).status == 201)
            #expect(try await h.request(.POST, "/api/v1/projects", body: project.replacingOccurrences(of: "make", with: "make all"), token: alice).status == 200)
            #expect(try await h.request(.PUT, "/api/v1/projects/shop/members/bob", body: #"{"role":"reporter"}"#, token: alice).status == 200)
            let build = try KilnJSON.decode(Build.self, from: try await h.request(.POST, "/api/v1/projects/shop/builds", body: "{}", token: alice).body)
            #expect(try await h.request(.POST, "/api/v1/builds/\(build.id)/cancel", token: alice).status == 200)
            #expect(try await h.request(.POST, "/api/v1/groups", body: #"{"name":"team"}"#, token: alice).status == 201)
            #expect(try await h.request(.PUT, "/api/v1/groups/team", body: #"{"visibility":"public"}"#, token: alice).status == 200)

            let feed = try KilnJSON.decode([ActivityEntry].self, from: try await h.request(.GET, "/api/v1/projects/shop/activity", token: alice).body)
            let lines = feed.map { "\($0.action) by \($0.user ?? "-"): \($0.detail ?? $0.build ?? "")" }
            for expected in ["project created by alice", "settings changed by alice: buildCommand", "member set by alice: bob is reporter",
                             "build by alice: \(build.id)", "build cancelled by alice: \(build.id)"] {
                #expect(lines.contains { $0.hasPrefix(expected) }, "\(expected) in \(lines)")
            }
            #expect(feed.map(\.at) == feed.map(\.at).sorted(by: >), "newest first")
            // A reporter reads it; an outsider does not see it.
            #expect(try await h.request(.GET, "/api/v1/projects/shop/activity", token: try await Self.user(h, "otto")).status == 404)
            let groupFeed = try KilnJSON.decode([ActivityEntry].self, from: try await h.request(.GET, "/api/v1/groups/team/activity", token: alice).body)
            #expect(groupFeed.map(\.action) == ["settings changed", "group created"] && groupFeed.allSatisfy { $0.user == "alice" })
            #expect(groupFeed.first?.detail == "visibility public")
        }
    }

    /// Holes a review found, closed: each is the attack it describes.
    @Test func aMasterCannotBecomeOwnerThroughAGroupAndALeakedTokenCannotOutliveItself() async throws {
        try await withScheduler { h in
            let owner = try await Self.user(h, "olga")
            let master = try await Self.user(h, "max")
            let project = #"{"name":"shop","repository":"http://127.0.0.1:1/shop.git","buildImage":"a:1","buildCommand":"make"}"#
            #expect(try await h.request(.POST, "/api/v1/projects", body: project, token: owner).status == 201)
            #expect(try await h.request(.PUT, "/api/v1/projects/shop/members/max", body: #"{"role":"master"}"#, token: owner).status == 200)
            // The master makes a group of their own and moves the project into it: refused.
            #expect(try await h.request(.POST, "/api/v1/groups", body: #"{"name":"mine"}"#, token: master).status == 201)
            let moved = project.replacingOccurrences(of: #""name":"shop""#, with: #""name":"shop","group":"mine""#)
            #expect(try await h.request(.POST, "/api/v1/projects", body: moved, token: master).status == 403)
            #expect(try KilnJSON.decode(Project.self, from: try await h.request(.GET, "/api/v1/projects/shop", token: owner).body).group == nil)
            // A group that does not exist cannot be named (its first maker would own the project).
            let ghost = project.replacingOccurrences(of: #""name":"shop""#, with: #""name":"shop","group":"ghost""#)
            #expect(try await h.request(.POST, "/api/v1/projects", body: ghost).status == 404)
            // A master sees the pipeline's env values; a guest sees their names only.
            let withEnv = project.replacingOccurrences(of: #""buildCommand":"make""#, with: #""buildCommand":"make","pipeline":[{"plugin":"deploy","settings":{"app":"shop","port":8080,"env":{"API_TOKEN":"s3cret-value"}}}]"#)
            #expect(try await h.request(.POST, "/api/v1/projects", body: withEnv, token: owner).status == 200)
            let guest = try await Self.user(h, "gus")
            #expect(try await h.request(.PUT, "/api/v1/projects/shop/members/gus", body: #"{"role":"guest"}"#, token: owner).status == 200)
            let seenByGuest = try await h.request(.GET, "/api/v1/projects/shop", token: guest).body
            let listedForGuest = try await h.request(.GET, "/api/v1/projects", token: guest).body
            #expect(seenByGuest.contains("API_TOKEN") && !seenByGuest.contains("s3cret-value") && !listedForGuest.contains("s3cret-value"))
            #expect(try await h.request(.GET, "/api/v1/projects/shop", token: master).body.contains("s3cret-value"))

            // A token made with a token ends when its parent does.
            let kv = try #require(try await h.etcd.range(prefix: h.keys.tokens).kvs.first { (try? KilnJSON.decode(APIToken.self, from: $0.value))?.user == "max" })
            let parent = try KilnJSON.decode(APIToken.self, from: kv.value)
            let child = try KilnJSON.decode(CreatedToken.self, from: try await h.request(.POST, "/api/v1/tokens", body: #"{"name":"long","expiresInDays":3650}"#, token: master).body)
            #expect(try #require(child.expiresAt) <= parent.expiresAt!.addingTimeInterval(1))
            // With a token one cannot set one's own password; with the password one can.
            #expect(try await h.request(.PUT, "/api/v1/users/max/password", body: #"{"password":"another long passphrase"}"#, token: master).status == 403)
            let basic = [("Authorization", "Basic " + Data("max:\(Self.password)".utf8).base64EncodedString())]
            #expect(try await h.request(.PUT, "/api/v1/users/max/password", body: #"{"password":"another long passphrase"}"#, token: nil, headers: basic).status == 200)
            #expect(try await h.request(.POST, "/api/v1/tokens", body: #"{"name":"x"}"#, token: nil, headers: basic).status == 401)

            // A user removed: their tokens die, their memberships go; the last owner stays until replaced.
            #expect(try await h.request(.DELETE, "/api/v1/users/olga").status == 409)
            #expect(try await h.request(.DELETE, "/api/v1/users/max", token: owner).status == 403)
            let lastOwner = try await h.request(.DELETE, "/api/v1/users/max")
            #expect(lastOwner.status == 409 && lastOwner.body.contains("group mine"), "\(lastOwner.body)")
            #expect(try await h.request(.PUT, "/api/v1/groups/mine/members/olga", body: #"{"role":"owner"}"#, token: child.token).status == 200)
            #expect(try await h.request(.DELETE, "/api/v1/users/max").status == 200)
            #expect(try await h.request(.GET, "/api/v1/users/me", token: child.token).status == 401)
            #expect(try await h.request(.GET, "/api/v1/projects/shop/members", token: owner).body.contains("max") == false)
            _ = try await Self.user(h, "max")  // the name again: nothing of the old one comes back
            #expect(try await h.request(.GET, "/api/v1/users/me", token: master).status == 401)
            // All of a user's tokens at once, by the user.
            #expect(try await h.request(.DELETE, "/api/v1/users/olga/tokens", token: owner).body.contains(#""revoked" : 1"#))
            #expect(try await h.request(.GET, "/api/v1/users/me", token: owner).status == 401)
        }
    }

    @Test func theFirstAdminIsMadeOnceFromItsFileAndAStaleFileIsRefused() async throws {
        try await withEtcd(timeout: nil) { _, etcd in
            let dir = try TempDir("first-admin")
            let store = SchedulerStore(etcd: etcd)
            let file = dir.url.appendingPathComponent("admin-token").path
            #expect(try await store.ensureFirstAdmin(tokenFile: file).contains("made the first admin"))
            let token = try CredentialFile.read(file)
            #expect(token.hasPrefix("kiln_"))
            #expect(try await store.user("admin")?.admin == true)
            // Again, and from a second scheduler with another empty file: nothing new is made.
            #expect(try await store.ensureFirstAdmin(tokenFile: file).contains("users exist"))
            let other = dir.url.appendingPathComponent("other-token").path
            _ = try await store.ensureFirstAdmin(tokenFile: other)
            #expect(!FileManager.default.fileExists(atPath: other))
            #expect(try await store.users().count == 1)
            // A file holding a token etcd does not know is refused, not trusted.
            try CredentialFile.write("kiln_stale", to: other)
            await #expect { try await store.ensureFirstAdmin(tokenFile: other) } throws: { "\($0)".contains("not a valid admin's token") }
        }
    }
}
