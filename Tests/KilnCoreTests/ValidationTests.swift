import Foundation
import KilnCore
import Testing

@Suite("Validation of what reaches Kiln from outside")
struct ValidationTests {
    @Test("project names: [a-z0-9-], not starting or ending with '-'", arguments: ["demo", "a", "my-app-2", String(repeating: "a", count: 63)])
    func goodProjectNames(_ name: String) throws {
        try Validation.projectName(name)
    }

    @Test(arguments: ["", "Demo", "my_app", "-demo", "demo-", "a/b", "../etc", "a b", "dé", String(repeating: "a", count: 64), "x\u{0}y"])
    func badProjectNames(_ name: String) {
        #expect(throws: KilnError.self) { try Validation.projectName(name) }
    }

    @Test(arguments: ["main", "refs/heads/main", "feature/x-1", "v1.0.0", "refs/tags/v1.0", "release-2026.11"])
    func goodRefs(_ ref: String) throws {
        try Validation.ref(ref)
    }

    @Test(arguments: ["", "-main", "--upload-pack=touch /tmp/x", "a..b", "a b", "a~1", "a^", "a:b", "a?", "a*", "a[", "a\\b",
                      "/main", "main/", "a//b", ".hidden", "a/.b", "x.lock", "a@{1}", "@", "main.", "a\u{7}b"])
    func badRefs(_ ref: String) {
        #expect(throws: KilnError.self) { try Validation.ref(ref) }
    }

    @Test func badRefNamesTheReason() {
        do {
            try Validation.ref("a..b")
            Issue.record("a..b was accepted")
        } catch let e as KilnError {
            #expect(e.httpStatus == 400)
            #expect(e.message.contains(".."))
        } catch {
            Issue.record("unexpected \(error)")
        }
    }

    @Test(arguments: ["v1", "latest", "1.0.0-rc.1", "abc1234", "A_b", String(repeating: "t", count: 128)])
    func goodTags(_ tag: String) throws {
        try Validation.tag(tag)
    }

    @Test(arguments: ["", ".v1", "-v1", "v1/x", "v:1", "v 1", "ü", String(repeating: "t", count: 129)])
    func badTags(_ tag: String) {
        #expect(throws: KilnError.self) { try Validation.tag(tag) }
    }

    @Test(arguments: ["localhost/kiln/jdk17-maven:1", "busybox", "127.0.0.1:5000/demo:abc", "registry.example.com/a/b_c:v1.2",
                      "demo@sha256:" + String(repeating: "a", count: 64)])
    func goodImageReferences(_ ref: String) throws {
        try Validation.imageReference(ref)
    }

    @Test(arguments: ["", "Demo", "a//b", "a:b:c", "-x", "host:99999/a", "a/b:", "a@sha256:xyz"])
    func badImageReferences(_ ref: String) {
        #expect(throws: KilnError.self) { try Validation.imageReference(ref) }
    }

    @Test(arguments: ["http://127.0.0.1:8082/demo.git", "https://gitlab.example.com/group/app.git", "ssh://git@gitlab.example.com:2222/g/a.git",
                      "git://127.0.0.1/demo.git", "file:///srv/git/demo.git", "git@gitlab.example.com:group/app.git"])
    func goodRepositories(_ url: String) throws {
        try Validation.repositoryURL(url)
    }

    @Test(arguments: ["", "ext::sh -c touch% /tmp/pwned", "fd::17", "-uhttp://x", "ftp://host/repo.git", "ssh://-oProxyCommand=touch%20x/repo",
                      "ssh://git@-oProxyCommand=x/repo", "http://host/repo.git --upload-pack=x", "file://relative/path", "just-a-name",
                      "http:///nohost", "http://host/a\nb", "git@-host:repo", "host:-repo"])
    func hostileRepositories(_ url: String) {
        #expect(throws: KilnError.self) { try Validation.repositoryURL(url) }
    }

    // Validation and the agent's GitMirror had rules of their own that disagreed both ways;
    // these are the cases where one let through what the other refused, now one rule.
    @Test("refused by one of the two old rules, so by the one rule", arguments: [
        ("https://h/a::b", "'::' transport syntax"),            // the mirror let '::' after a '/' through
        ("https://h/-x", "its path starts with '-'"),              // the mirror did not look at the path
        ("ssh://-oProxyCommand=x@host/r", "its user starts with '-'"),  // nor at the user
        ("git@host:", "it has no path"),                           // Validation took an empty path
        ("user@:repo", "its host is empty"),                       // … and read 'user' as the host
        ("a@b@host:repo", "more than one '@'"),
        ("h$x:repo", "its host may hold only"),
        ("ssh://user@/repo", "its host is empty"),                 // neither saw the empty host
        ("ssh://[ext::1]/repo", "'::' transport syntax"),          // not an IPv6 literal
        ("ssh://[fe80::1%25eth0]/repo", "'::' transport syntax"),
        ("ext::ssh://[::1]/repo", "'::' transport syntax"),
        ("https://h/" + String(repeating: "a", count: 2048), "longer than 2048"),
    ])
    func onceDisagreeingRefused(_ url: String, _ why: String) {
        let error = #expect(throws: KilnError.self) { try Validation.repositoryURL(url) }
        #expect(error?.message.contains(why) == true, "\(error?.message ?? "accepted")")
        #expect(error?.isInvalid == true)
    }

    @Test("a password in the URL is refused without repeating it", arguments: [
        ("https://deploy:glpat-s3cretvalue@gitlab.example.com/g/app.git", "https://deploy:***@gitlab.example.com/g/app.git"),
        ("http://u:glpat-s3cretvalue@127.0.0.1:8082/demo.git", "http://u:***@127.0.0.1:8082/demo.git"),
        ("https://oauth2%3Aglpat-s3cretvalue@gitlab.example.com/g/app.git", "https://oauth2:***@gitlab.example.com/g/app.git"),
        ("ssh://git:glpat-s3cretvalue@gitlab.example.com/g/app.git", "ssh://git:***@gitlab.example.com/g/app.git"),
        ("deploy:glpat-s3cretvalue@gitlab.example.com:g/app.git", "deploy:***@gitlab.example.com:g/app.git"),
    ])
    func passwordsInURLsAreRefused(_ url: String, _ shown: String) throws {
        try Validation.repositoryURL(url)  // the agent's rule: a record saved before still fetches
        let project = Project(name: "app", repository: url, buildImage: "a:1", buildCommand: "make")
        let error = #expect(throws: KilnError.self) { try project.validate() }
        #expect(error?.message.contains("kiln credential set git") == true && error?.message.contains(shown) == true, "\(error?.message ?? "accepted")")
        #expect(error?.message.contains("s3cretvalue") == false)
    }

    @Test("a user name alone stays", arguments: [
        "ssh://git@gitlab.example.com/g/app.git", "git@gitlab.example.com:g/app.git", "https://deploy@gitlab.example.com/g/app.git",
        "ssh://git@[::1]:22/app.git", "git@gitlab.example.com:g/a@b.git",
    ])
    func userNamesStay(_ url: String) throws {
        try Project(name: "app", repository: url, buildImage: "a:1", buildCommand: "make").validate()
    }

    @Test("an IPv6 host literal is the one place '::' is allowed", arguments: [
        "ssh://git@[::1]:22/app.git", "http://[fd00::2]:8080/app.git", "https://[::ffff:10.0.0.1]/app.git",
    ])
    func onceDisagreeingAccepted(_ url: String) throws {
        try Validation.repositoryURL(url)
    }

    @Test(arguments: ["Dockerfile", "docker/Dockerfile", ".", "sub/dir"])
    func goodPaths(_ p: String) throws {
        try Validation.relativePath(p, field: "dockerfile")
    }

    @Test(arguments: ["", "/etc/passwd", "../Dockerfile", "a/../../b", "-f", "a\u{0}b"])
    func badPaths(_ p: String) {
        #expect(throws: KilnError.self) { try Validation.relativePath(p, field: "dockerfile") }
    }

    @Test(arguments: ["abc1234", "4399c1c0e8dd8fd8a9e6cf7a2a829042a5a0c77b"])
    func goodCommits(_ c: String) throws { try Validation.commit(c) }

    @Test(arguments: ["abc", "xyz1234", "4399c1c0e8dd8fd8a9e6cf7a2a829042a5a0c77b0", "-abcdef1"])
    func badCommits(_ c: String) {
        #expect(throws: KilnError.self) { try Validation.commit(c) }
    }

    @Test func aDateReadBackFromItsTextWritesTheSameText() throws {
        #expect(KilnJSON.formatDate(Date(timeIntervalSince1970: 1_795_662_416.5371)) == "2026-11-26T03:06:56.537Z")
        #expect(KilnJSON.formatDate(Date(timeIntervalSince1970: 0.0996)) == "1970-01-01T00:00:00.100Z")
        #expect(KilnJSON.formatDate(Date(timeIntervalSince1970: -0.25)) == "1969-12-31T23:59:59.750Z")
        for _ in 0..<2000 {
            let text = KilnJSON.formatDate(Date(timeIntervalSince1970: Double.random(in: 1_700_000_000...1_900_000_000)))
            let again = KilnJSON.formatDate(try #require(KilnJSON.parseDate(text)))
            #expect(again == text)
        }
    }

    @Test func anHTTPPasswordIsTakenOutOfAURLDecoded() throws {
        let split = try #require(Validation.splitHTTPPassword("https://deploy%2Bbot:t%40k@git.example.com:8443/a/b.git"))
        #expect(split.url == "https://git.example.com:8443/a/b.git" && split.username == "deploy+bot" && split.password == "t@k")
        #expect(Validation.splitHTTPPassword("HTTP://u:p@h/x")?.url == "HTTP://h/x")
        #expect(Validation.splitHTTPPassword("https://user@h/x") == nil)
        #expect(Validation.splitHTTPPassword("https://u:@h/x") == nil)
        #expect(Validation.splitHTTPPassword("ssh://u:p@h/x") == nil)
        #expect(Validation.splitHTTPPassword("u:p@h:x") == nil)
        #expect(Validation.splitHTTPPassword("https://h/x?a=b@c") == nil)
    }

    @Test func projectValidationNamesTheBadField() {
        let p = Project(name: "demo", repository: "ext::sh", buildImage: "localhost/x:1", buildCommand: "make")
        #expect(throws: KilnError.self) { try p.validate() }
        let q = Project(name: "demo", repository: "http://h/r.git", buildImage: "localhost/x:1", buildCommand: "  ")
        do {
            try q.validate()
            Issue.record("empty build command accepted")
        } catch {
            #expect("\(error)".contains("buildCommand"))
        }
    }
}

@Suite("Models and keys")
struct ModelTests {
    @Test func buildRoundTripsThroughJSONWithCamelCaseKeys() throws {
        var b = Build(id: BuildID.generate(), project: "demo", ref: "main", tag: "v1", mvncache: false)
        b.steps[0].durationMs = 1234
        b.steps[0].startedAt = Date(timeIntervalSince1970: 1_790_000_000.123)
        let json = try KilnJSON.encode(b)
        for key in ["\"id\"", "\"project\"", "\"status\":\"queued\"", "\"mvncache\":false", "\"durationMs\":1234", "\"startedAt\":\"", "\"createdAt\""] {
            #expect(json.contains(key), "missing \(key) in \(json)")
        }
        let back = try KilnJSON.decode(Build.self, from: json)
        #expect(back.id == b.id)
        #expect(back.steps.map(\.name) == [.fetch, .compile, .image, .push])
        #expect(abs(back.steps[0].startedAt!.timeIntervalSince1970 - 1_790_000_000.123) < 0.001)
    }

    @Test func buildIDsAreValidUniqueAndSortByTime() {
        let a = BuildID.generate(now: Date(timeIntervalSince1970: 1_000))
        let b = BuildID.generate(now: Date(timeIntervalSince1970: 2_000))
        #expect(BuildID.isValid(a) && BuildID.isValid(b))
        #expect(a < b)
        let many = Set((0..<1000).map { _ in BuildID.generate() })
        #expect(many.count == 1000)
        #expect(!BuildID.isValid("../x"))
        #expect(!BuildID.isValid(""))
    }

    @Test func keysFollowTheSchema() {
        let k = Keys(prefix: "/kiln/")
        #expect(k.agent("a1") == "/kiln/agents/a1")
        #expect(k.task(agent: "a1", build: "b1") == "/kiln/tasks/a1/b1")
        #expect(k.tasks(of: "a1") == "/kiln/tasks/a1/")
        #expect(k.queued("b1") == "/kiln/queue/b1")
        #expect(k.build("b1") == "/kiln/builds/b1")
        #expect(k.project("demo") == "/kiln/projects/demo")
        #expect(k.leader == "/kiln/leader")
        // Log chunks sort in writing order as strings.
        #expect(k.logChunk(build: "b", attempt: 1, seq: 9) < k.logChunk(build: "b", attempt: 1, seq: 10))
        #expect(k.logChunk(build: "b", attempt: 1, seq: 99_999_999) < k.logChunk(build: "b", attempt: 2, seq: 0))
        #expect(Keys.name(of: "/kiln/agents/a1", under: k.agents) == "a1")
        #expect(Keys.name(of: "/other/a1", under: k.agents) == nil)
        let owner = k.taskOwner("/kiln/tasks/a1/b1")
        #expect(owner?.agent == "a1" && owner?.build == "b1")
        #expect(k.taskOwner("/kiln/tasks/a1") == nil)
        #expect(k.taskOwner("/kiln/tasks/a1/b1/x") == nil)
        #expect(k.taskOwner("/kiln/queue/b1") == nil)
    }

    @Test("a record saved before the URL rule shows its password as *** through the API and the console; its task keeps the URL to fetch with")
    func aLegacyPasswordInARepositoryURLIsMaskedWhereShown() {
        let p = Project(name: "old", repository: "https://deploy:glpat-secret-token@git.example.com/team/old.git", buildImage: "a:1",
                        buildCommand: "make", webhookSecret: "hook-token")
        #expect(p.redacted.repository == "https://deploy:***@git.example.com/team/old.git" && p.redacted.webhookSecret == nil)
        #expect(!p.maskedForViewers.repository.contains("glpat") && p.forTask.repository == p.repository && p.forTask.webhookSecret == nil)
        let clean = Project(name: "new", repository: "ssh://git@git.example.com/team/new.git", buildImage: "a:1", buildCommand: "make")
        #expect(clean.redacted.repository == clean.repository)
    }
}
