import Foundation
import KilnCore
import Plugins
@testable import Scheduler
import Testing

/// The console's project and build forms without a server: what they read from the inputs,
/// that their problems are the API's own (one message per field, the first is what the API
/// answers), and how they render what was typed.
struct ProjectFormTests {
    static let full: Project = {
        var p = Project(name: "shop", repository: "https://gitlab.example.com/team/shop.git", buildImage: "localhost/kiln/jdk17-maven:1",
                        buildCommand: "mvn -B -q package\nls target", dockerfile: "docker/Dockerfile", context: "docker", defaultBranch: "trunk",
                        labels: ["jdk17", "large"], supersede: .running, maxConcurrent: 3, branches: ["trunk", "release/*"],
                        pipeline: [PipelineStep(plugin: "deploy", settings: ["app": .string("shop-web"), "port": .number(8080), "env": .object(["MODE": .string("prod")])])],
                        protectedRefs: ["refs/tags/v*"], limits: BuildLimits(memoryBytes: 2 << 30, cpus: 1.5, pids: 512), createdAt: Date(timeIntervalSince1970: 1_700_000_000))
        p.group = "team"
        p.pushTo = ["registry.example.com/team/shop"]
        p.retention = BuildRetention(keepBuilds: 40, keepDays: 7)
        return p
    }()

    @Test func aProjectShownInTheFormReadsBackUnchanged() {
        let (read, problems) = ProjectForm(Self.full).read(over: Self.full, newToken: "unused")
        #expect(problems.isEmpty, "\(problems)")
        #expect(read == Self.full)
        // A blank form leaves the optional settings out: the model's defaults.
        var blank = ProjectForm.blank
        blank.values.merge(["name": "api", "repository": "https://h/api.git", "buildImage": "a:1", "buildCommand": "make"]) { $1 }
        let (minimal, none) = blank.read(over: nil, newToken: "unused")
        #expect(none.isEmpty, "\(none)")
        #expect(minimal == Project(name: "api", repository: "https://h/api.git", buildImage: "a:1", buildCommand: "make"))
    }

    @Test func eachFieldsProblemIsTheAPIsOwnMessageBesideThatField() throws {
        var form = ProjectForm(Self.full)
        form.values["repository"] = "ftp://nowhere"
        form.values["maxConcurrent"] = "many"
        form.values["labels"] = "ok, not ok!"
        form.values["pipeline"] = #"[{"plugin": "teleport"}]"#
        form.values["limitsMemory"] = "lots"
        let (project, problems) = form.read(over: Self.full, newToken: "unused")
        #expect(Set(problems.map(\.field)) == ["repository", "maxConcurrent", "labels", "pipeline", "limits"], "\(problems)")
        #expect(problems.of("maxConcurrent").first?.message.contains("'many' is not a number") == true)
        #expect(problems.of("pipeline").first?.message.contains("unknown plugin 'teleport'") == true)
        // The model's problems are what validate() throws, first first: the API's 400.
        #expect(throws: KilnError.invalid(project.problems()[0].message)) { try project.validate() }
        #expect(project.problems().map(\.field) == ["repository", "labels"])
        // Each alone: a project with one bad field reports that field only.
        var bad = Self.full
        bad.buildCommand = "  "
        bad.defaultBranch = "-x"
        #expect(bad.problems().map(\.field) == ["buildCommand", "defaultBranch"])
        #expect(Self.full.problems().isEmpty)
        // JSON that is not a list of steps says what to check.
        form.values["pipeline"] = "[{"
        #expect(form.read(over: Self.full, newToken: "x").problems.of("pipeline").first?.message.contains("not a JSON list of steps") == true)
    }

    @Test func theWebhookTokenIsKeptSetMadeOrRemovedAsAsked() {
        var form = ProjectForm(Self.full)
        #expect(form.read(over: Self.full, newToken: "fresh").project.webhookSecret == nil)  // keep
        form.values["webhookSecret"] = "typed-token"
        #expect(form.read(over: Self.full, newToken: "fresh").project.webhookSecret == "typed-token")
        form.values["webhookSecret"] = ""
        form.values["generateWebhookSecret"] = "on"
        #expect(form.read(over: Self.full, newToken: "fresh").project.webhookSecret == "fresh")
        form.values["generateWebhookSecret"] = nil
        form.values["removeWebhookSecret"] = "on"
        #expect(form.read(over: Self.full, newToken: "fresh").project.webhookSecret == "")
        form.values["webhookSecret"] = "typed-token"
        #expect(form.read(over: Self.full, newToken: "fresh").problems.map(\.field) == ["webhookSecret"])
        form.values["removeWebhookSecret"] = nil
        form.values["webhookSecret"] = "has spaces in it"
        #expect(form.read(over: Self.full, newToken: "fresh").problems.map(\.field) == ["webhookSecret"])
    }

    @Test func listsAndCommandsReadAsTyped() {
        var form = ProjectForm(Self.full)
        form.values["branches"] = "trunk\r\n release/* ,hotfix\r\n\r\n"
        form.values["buildCommand"] = "mvn package\r\nls\r\n"
        form.values["supersede"] = ""
        form.values["keepBuilds"] = ""
        let (p, problems) = form.read(over: Self.full, newToken: "x")
        #expect(problems.isEmpty)
        #expect(p.branches == ["trunk", "release/*", "hotfix"])
        #expect(p.buildCommand == "mvn package\nls")
        #expect(p.supersede == nil)
        #expect(p.retention == BuildRetention(keepBuilds: BuildRetention.defaultKeepBuilds, keepDays: 7))
        form.values["supersede"] = "always"
        #expect(form.read(over: Self.full, newToken: "x").problems.map(\.field) == ["supersede"])
    }

    @Test func cachesReadOneALineEmptyIsMavensNoneIsNone() {
        var form = ProjectForm(Self.full)
        form.values["caches"] = "/root/.m2\r\n/root/.gradle\r\n\r\n"
        var (p, problems) = form.read(over: Self.full, newToken: "x")
        #expect(problems.isEmpty, "\(problems)")
        #expect(p.caches == ["/root/.m2", "/root/.gradle"])
        #expect(ProjectForm(p)["caches"] == "/root/.m2\n/root/.gradle")
        let v = ConsoleViewer(user: "mia", admin: false, csrf: "tok")
        #expect(ConsolePages.project(p, builds: [], activity: [], now: Date(), viewer: v).rendered.contains("/root/.m2, /root/.gradle"))
        form.values["caches"] = ""
        #expect(form.read(over: Self.full, newToken: "x").project.caches == nil)
        form.values["caches"] = " none "
        p = form.read(over: Self.full, newToken: "x").project
        #expect(p.caches == [])
        #expect(ProjectForm(p)["caches"] == "none")
        form.values["caches"] = "/root/.m2\n/workspace/cache"
        (p, problems) = form.read(over: Self.full, newToken: "x")
        #expect(problems.map(\.field) == ["caches"])
        #expect(problems.first?.message.contains("/workspace is the checkout") == true, "\(problems)")
    }

    @Test func aRefusedFormShowsWhatWasTypedAndEachProblemBesideItsInput() throws {
        var form = ProjectForm.blank
        form.values["name"] = "Shop"
        form.values["repository"] = "<script>alert(1)</script>"
        form.values["buildImage"] = "kept:1"
        let (_, problems) = form.read(over: nil, newToken: "x")
        let viewer = ConsoleViewer(user: "alice", admin: false, csrf: "token-1")
        let page = ConsolePages.projectForm(form, problems: problems, editing: nil, revision: nil, message: nil, viewer: viewer).rendered
        #expect(page.contains(#"<input type="hidden" name="csrf" value="token-1">"#))
        #expect(page.contains(#"name="buildImage" value="kept:1""#))
        #expect(page.contains(#"name="repository" value="&lt;script&gt;alert(1)&lt;/script&gt;" placeholder"#) && !page.contains("<script>alert"))
        // The note follows its own input, before the next field.
        let input = try #require(page.range(of: #"name="repository""#)), note = try #require(page.range(of: #"id="error-repository""#))
        let next = try #require(page.range(of: #"name="buildImage""#))
        #expect(input.lowerBound < note.lowerBound && note.lowerBound < next.lowerBound)
        #expect(page.contains(#"id="error-name""#) && page.contains(#"id="error-buildCommand""#))
        #expect(page.contains(#"id="form-error""#) && !page.contains("style="))
        // The edit form names no name input and carries the revision it started from.
        let edit = ConsolePages.projectForm(ProjectForm(Self.full), problems: [], editing: "shop", revision: 42, message: nil, viewer: viewer).rendered
        #expect(edit.contains(#"<input type="hidden" name="revision" value="42">"#) && !edit.contains(#"name="name""#))
        #expect(edit.contains(#"action="/ui/projects/shop/edit""#) && !edit.contains(#"id="form-error""#))
    }

    @Test func theProjectPageOffersEachPartOnlyWhenGivenAndEscapesIt() {
        let evil = "<script>x</script>"
        let v = ConsoleViewer(user: "mia", admin: false, csrf: "tok")
        var actions = ProjectActions(mayEdit: true, webhook: WebhookView(url: "http://\(evil)/hooks/gitlab", tokenSet: true, newToken: nil),
                                     buildForm: BuildForm(fields: ["ref": evil, "mvncache": "on"]), refs: [evil])
        var page = ConsolePages.project(Self.full, builds: [], activity: [], now: Date(), viewer: v, actions: actions).rendered
        #expect(!page.contains("<script>x") && page.contains("&lt;script&gt;x"))
        #expect(page.contains(#"id="webhook-token-set""#) && page.contains(#"href="/ui/projects/shop/edit""#))
        #expect(page.contains(#"<form method="post" action="/ui/projects/shop/builds" id="build-form" class="settings build"><input type="hidden" name="csrf" value="tok">"#))
        // A page with a form does not reload itself under the person typing.
        #expect(!page.contains("http-equiv") && !page.contains("style="))
        actions.webhook?.newToken = "tok-\(evil)"
        page = ConsolePages.project(Self.full, builds: [], activity: [], now: Date(), viewer: v, actions: actions).rendered
        #expect(page.contains(#"<code id="webhook-token">tok-&lt;script&gt;"#) && !page.contains("webhook-token-set"))
        let plain = ConsolePages.project(Self.full, builds: [], activity: [], now: Date(), viewer: v).rendered
        #expect(!plain.contains(#"id="build-form""#) && !plain.contains(#"id="webhook""#) && !plain.contains(#"id="edit""#) && plain.contains("http-equiv"))
    }

    @Test func theBuildFormMakesTheAPIsRequest() {
        var form = BuildForm(Self.full)
        #expect(form["ref"] == "trunk" && form["mvncache"] == "on")
        form = BuildForm(fields: ["ref": " release/2 ", "tag": "v1.2", "priority": "5", "csrf": "t"])
        let (request, problems) = form.request()
        #expect(problems.isEmpty)
        #expect(request.ref == "release/2" && request.tag == "v1.2" && request.mvncache == false && request.priority == 5 && request.commit == nil)
        #expect(request.trigger == "console")
        form = BuildForm(fields: ["ref": "a..b", "tag": "-x", "priority": "high"])
        #expect(form.request().problems.map(\.field) == ["priority", "ref", "tag"])
        form = BuildForm(fields: ["priority": "5000"])
        #expect(form.request().problems.first?.message == "priority 5000 is out of range: use -1000 to 1000 (higher goes first)")
        // The default branch, then the project's branches and protected refs that are not patterns.
        #expect(BuildForm.offeredRefs(Self.full) == ["trunk"])
        var p = Self.full
        p.branches = ["trunk", "develop", "release/*"]
        p.protectedRefs = ["hotfix", "develop"]
        #expect(BuildForm.offeredRefs(p) == ["trunk", "develop", "hotfix"])
    }

    @Test func aRebuildAsksForTheSameRefAndOptions() {
        var b = Build(id: "b0000000001-000000000001", project: "shop", ref: "main", commit: String(repeating: "a", count: 40), tag: "v3", mvncache: false)
        b.priority = 7
        var again = BuildForm.rebuild(of: b)
        #expect(again.ref == "main" && again.tag == "v3" && again.mvncache == false && again.priority == 7)
        // The ref's newest commit, unless a person pinned that commit.
        #expect(again.commit == nil)
        b.commitPinnedByRequest = true
        again = BuildForm.rebuild(of: b)
        #expect(again.commit == b.commit)
        #expect(again.trigger == "rebuild of b0000000001-000000000001")
    }
}
