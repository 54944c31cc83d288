import Etcd
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
@testable import Scheduler
import Synchronization
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The web console: its pure rendering, then its pages in a real headless Chromium (Debian's
/// `chromium`) against a scheduler in this process over a real etcd, logged in as the
/// harness's admin through the login form. No agent runs: the tests write a build's record
/// and log chunks to etcd the way an agent does. Login, sessions, CSRF and who sees what:
/// `ConsoleLoginTests`.
@Suite("Web console", .serialized)
struct ConsoleTests {
    static let artifacts = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent(".build/test-artifacts/console")

    // MARK: pure rendering

    @Test func htmlEscapesEverythingThatCouldOpenMarkup() {
        #expect(HTML.escape(#"<a href="x" onclick='y'>&amp;</a>"#) == "&lt;a href=&quot;x&quot; onclick=&#39;y&#39;&gt;&amp;amp;&lt;/a&gt;")
        #expect(HTML.escape("plain text, é ✓") == "plain text, é ✓")
    }

    @Test func hostileValuesFromDataAreEscapedOnEveryPage() {
        let evil = "<script>alert('x')</script>"
        var b = Build(id: "b0000000001-abcdef", project: "demo", ref: "main", tag: "v1")
        b.status = .failed
        b.error = "compile failed: \(evil)"
        b.agent = "agent-\(evil)"
        b.image = "127.0.0.1:5000/demo:\(evil)"
        b.trigger = "gitlab push to main by \(evil)"
        var run = PipelineRun(run: 2, pipeline: [PipelineStep(plugin: "deploy"), PipelineStep(plugin: "lb")], trigger: "api")
        run.status = .failed
        run.steps[0] = PipelineStepResult(plugin: "deploy", status: .failed, durationMs: 1500, error: "cannot pull \(evil)")
        run.steps[1].status = .skipped
        b.deploy = run
        let project = Project(name: "demo", repository: "http://h/\(evil).git", buildImage: "a:1", buildCommand: "echo \(evil)",
                              labels: [evil], webhookSecret: "hush-hush-123")
        let agent = AgentInfo(id: "agent-\(evil)", capacity: 2, labels: [evil], version: evil)
        let viewer = ConsoleViewer(user: "alice", admin: false, csrf: "token-1")
        let pages = [
            ConsolePages.build(b, now: Date(), viewer: viewer, mayCancel: true),
            ConsolePages.overview(projects: [project.redacted], builds: [b], apps: [], agents: [agent], now: Date(), viewer: viewer),
            ConsolePages.project(project.redacted, builds: [b], activity: [ActivityEntry(b)], now: Date(), viewer: viewer),
            ConsolePages.agents([agent], viewer: viewer),
            ConsolePages.error(status: 404, message: "build '\(evil)' does not exist", viewer: viewer),
        ].map(\.rendered)
        for page in pages {
            #expect(!page.contains("<script>alert"), "\(page)")
            #expect(page.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"))
            #expect(!page.contains("hush-hush-123"))
        }
        // The build page's one script is the console's own.
        #expect(pages[0].components(separatedBy: "<script>").count == 2)
        #expect(pages[0].contains("<p class=\"error\" id=\"error\">compile failed: &lt;script&gt;"))
        // The pipeline run: each step's status, time and reason.
        #expect(pages[0].contains("Pipeline run 2"))
        #expect(pages[0].contains("<tr><td>deploy</td><td>failed</td><td>1.5 s</td><td>cannot pull &lt;script&gt;"))
        #expect(pages[0].contains("<tr><td>lb</td><td>skipped</td><td>—</td>"))
    }

    @Test func theStepBarIsProportionalToTheStepsDurations() {
        let now = Date()
        let steps = [
            BuildStep(name: .fetch, status: .succeeded, durationMs: 1000),
            BuildStep(name: .compile, status: .succeeded, durationMs: 3000),
            // Running for 2 s: counts what it has taken so far.
            BuildStep(name: .image, status: .running, startedAt: now.addingTimeInterval(-2)),
            BuildStep(name: .push, status: .pending),
        ]
        let widths = ConsolePages.stepWidths(steps, now: now)
        #expect(widths.map(\.ms) == [1000, 3000, 2000, 0])
        let percents = widths.map { ($0.percent * 100).rounded() / 100 }
        #expect(percents == [16.67, 50, 33.33, 0])
        let bar = ConsolePages.stepBar(steps, now: now).rendered
        // Each segment starts where the one before ends.
        #expect(bar.contains(#"data-step="fetch" x="0.00%" width="16.67%""#))
        #expect(bar.contains(#"data-step="compile" x="16.67%" width="50.00%""#))
        #expect(bar.contains(#"data-step="image" x="66.67%" width="33.33%""#))
        // No style attribute anywhere: the Content-Security-Policy would refuse it.
        #expect(!bar.contains("style="))
        #expect(!ConsolePages.miniBar(steps, now: now).rendered.contains("style="))
        #expect(ConsolePages.miniBar(steps, now: now).rendered.contains(#"x="16.67%" width="50.00%""#))
        #expect(!bar.contains(#"data-step="push""#))  // no time, no segment
        #expect(bar.contains("fetch 1.0 s") && bar.contains("compile 3.0 s") && bar.contains("image 2.0 s"))
        #expect(bar.contains("push: pending"))
        #expect(ConsolePages.stepBar(Build(id: "b1", project: "p", ref: "main").steps, now: now).rendered.contains("No step has started yet"))
    }

    // MARK: in Chromium

    @Test func thePagesRenderInChromium() async throws {
        let chromium = try Chromium.path()
        try await withScheduler { h in
            let project = #"{"name":"webapp","repository":"http://127.0.0.1:1/webapp.git","buildImage":"a:1","buildCommand":"make","webhookSecret":"hush-hush-123"}"#
            #expect(try await h.request(.POST, "/api/v1/projects", body: project).status == 201)
            let id = try await queueBuild(h, project: "webapp", tag: "v7")
            try await write(h, build: id, log: [LogChunk(seq: 0, lines: ["fetching", "<script>document.title='pwned'</script>"]),
                                                LogChunk(seq: 1, lines: ["pushed"], end: true)]) { b in
                b.status = .succeeded
                b.agent = "agent-one"
                b.attempt = 1
                b.commit = String(repeating: "ab", count: 20)
                b.image = "127.0.0.1:5000/webapp:v7"
                b.digest = "sha256:" + String(repeating: "0f", count: 32)
                b.startedAt = b.createdAt
                b.finishedAt = b.createdAt.addingTimeInterval(10)
                for (i, ms) in [1200, 6000, 2300, 500].enumerated() {
                    b.steps[i].status = .succeeded
                    b.steps[i].durationMs = ms
                }
            }
            // A second build, running on agent-one (its task key is what the agents page counts).
            let running = try await queueBuild(h, project: "webapp", tag: nil)
            try await write(h, build: running, log: []) { $0.status = .running; $0.agent = "agent-one"; $0.attempt = 1 }
            // The agent comes after the builds left the queue, so the dispatcher assigns none.
            // Its lease outlives the test (nothing keeps it alive; Chromium can take over 10 s
            // for the pages when both cores are busy).
            _ = try await registerAgent(h, id: "agent-one", capacity: 3, labels: ["gpu"], ttl: 600)
            try await h.etcd.put(h.keys.task(agent: "agent-one", build: running), "{}")

            // Without a session a page is the login page (a fresh profile, as --dump-dom uses).
            let anonymous = try await Chromium.dumpDOM(chromium, h.api + "/")
            #expect(anonymous.contains(#"<form method="post" action="/ui/login" id="login""#), "\(anonymous)")
            #expect(!anonymous.contains("webapp"))

            let browser = try Browser.launch(chromium)
            defer { browser.close() }
            let tab = try await browser.attachToPage()
            #expect(try await browser.logIn(h.api, user: "admin", password: h.adminToken, session: tab) == h.api + "/")
            let overview = try await browser.html(session: tab)
            #expect(overview.contains(">webapp</a>"), "\(overview)")
            #expect(overview.contains(id) && overview.contains(running))
            #expect(overview.contains("agent-one"))
            #expect(overview.contains(#"Logged in as <b id="user">admin</b> (admin)"#))

            try await browser.load(h.api + "/ui/projects/webapp", session: tab)
            let page = try await browser.html(session: tab)
            #expect(page.contains(#"<span id="project">webapp</span>"#), "\(page)")
            #expect(page.contains("http://127.0.0.1:1/webapp.git") && page.contains(id) && page.contains(running))
            #expect(page.contains("<h2>Activity</h2>") && page.contains("<td>api by admin</td>"))
            #expect(!page.contains("hush-hush-123"))

            try await browser.load(h.api + "/ui/agents", session: tab)
            let agents = try await browser.html(session: tab)
            #expect(agents.contains(#"<td class="agent">agent-one</td><td>1/3</td><td>gpu</td><td>1</td>"#), "\(agents)")
            #expect(agents.contains("/ui/builds/\(running)"))

            // The finished build: the script read the whole log through the follow stream.
            try await browser.load(h.api + "/ui/builds/\(id)", session: tab)
            let ended = try await browser.evaluate("""
                new Promise(function(resolve) {
                  function check() { var l = document.getElementById('log'); if (l.dataset.ended === 'true') { resolve('ended'); return true; } }
                  if (!check()) new MutationObserver(check).observe(document.body, {subtree: true, attributes: true, childList: true});
                })
                """, session: tab)
            #expect(ended == "ended")
            let build = try await browser.html(session: tab)
            #expect(build.contains(#"<span id="build">\#(id)</span>"#), "\(build)")
            #expect(build.contains("127.0.0.1:5000/webapp:v7") && build.contains("sha256:0f0f") && build.contains("agent-one"))
            // fetch 1.2 s of 10 s, then compile 6 s.
            #expect(build.contains(#"data-step="compile" x="12.00%" width="60.00%""#) && build.contains("compile 6.0 s"))
            #expect(build.contains(#"data-ended="true""#))
            // Ended: no cancel button.
            #expect(!build.contains(#"id="cancel""#))
            #expect(build.contains("fetching\n&lt;script&gt;document.title='pwned'&lt;/script&gt;\npushed\n"))
            #expect(!build.contains("<title>pwned"))

            // The build page as a picture, kept under .build/test-artifacts/console.
            try FileManager.default.createDirectory(at: Self.artifacts, withIntermediateDirectories: true)
            let png = Self.artifacts.appendingPathComponent("build-page.png")
            try? FileManager.default.removeItem(at: png)
            try await browser.screenshot(to: png, session: tab)
            let bytes = try Data(contentsOf: png)
            #expect(bytes.count > 1000)
            #expect(bytes.prefix(8) == Data([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]))

            // Unknown things are HTML 404 pages.
            let console = ConsoleClient(h.api)
            #expect(try await console.logIn("admin", h.adminToken).status == 303)
            for path in ["/ui/builds/b000000000-000000", "/ui/projects/nope", "/ui/builds/b000000000-000000/summary"] {
                let r = try await console.get(path)
                #expect(r.status == 404, "\(path)")
                #expect(r.body.hasPrefix("<!doctype html>") && r.body.contains("Not found"), "\(r.body)")
            }
        }
    }

    /// Chromium's `--dump-dom` dumps at the load event, before a streamed response has
    /// arrived (and `--virtual-time-budget` does not advance while a fetch is open), so it
    /// cannot watch a log grow. This test drives Chromium over its DevTools protocol instead
    /// (`--remote-debugging-pipe`): the page stays open while the test writes log chunks to
    /// etcd, and the browser's own DOM is asked, through a MutationObserver, when they appear.
    @Test func aRunningBuildsLogGrowsInTheBrowser() async throws {
        let chromium = try Chromium.path()
        try await withScheduler { h in
            #expect(try await h.request(.POST, "/api/v1/projects", body: SchedulerHarness.demoProject).status == 201)
            let id = try await queueBuild(h, project: "demo", tag: nil)
            let started = Date()
            try await write(h, build: id, log: [LogChunk(seq: 0, lines: ["fetch: cloning"])]) { b in
                b.status = .running
                b.agent = "agent-one"
                b.attempt = 1
                b.startedAt = started
                b.steps[0] = BuildStep(name: .fetch, status: .succeeded, startedAt: started, finishedAt: started.addingTimeInterval(1.5), durationMs: 1500)
                b.steps[1] = BuildStep(name: .compile, status: .running, startedAt: started.addingTimeInterval(1.5))
            }
            let browser = try Browser.launch(chromium)
            defer { browser.close() }
            let page = try await browser.attachToPage()
            // Logging in from the build page comes back to it.
            #expect(try await browser.logIn(h.api, user: "admin", password: h.adminToken, from: "/ui/builds/\(id)", session: page) == h.api + "/ui/builds/\(id)")

            // What was there when the page loaded.
            var log = try await browser.waitForLog(containing: "fetch: cloning", session: page)
            #expect(!log.contains("compile: second line"))

            // Written after the page loaded: it arrives through the open stream.
            try await write(h, build: id, log: [LogChunk(seq: 1, lines: ["compile: second line", "<b>not bold</b>"])])
            log = try await browser.waitForLog(containing: "compile: second line", session: page)
            #expect(log.hasPrefix("fetch: cloning\ncompile: second line\n<b>not bold</b>\n"), "\(log)")
            #expect(try await browser.evaluate("String(document.querySelectorAll('#log b').length)", session: page) == "0")
            try await write(h, build: id, log: [LogChunk(seq: 2, lines: ["compile: third line"])])
            log = try await browser.waitForLog(containing: "compile: third line", session: page)
            #expect(try await browser.evaluate("String(document.getElementById('log').dataset.ended)", session: page) == "undefined")

            // The running page as a picture, beside build-page.png.
            try FileManager.default.createDirectory(at: Self.artifacts, withIntermediateDirectories: true)
            let png = Self.artifacts.appendingPathComponent("build-page-running.png")
            try await browser.screenshot(to: png, session: page)
            #expect(try Data(contentsOf: png).count > 1000)

            // The build ends (record and last chunk in one transaction, as an agent writes them):
            // the stream ends and the script refreshes the summary.
            try await write(h, build: id, log: [LogChunk(seq: 3, lines: ["build succeeded"], end: true)]) { b in
                b.status = .succeeded
                b.finishedAt = Date()
                b.image = "127.0.0.1:5000/demo:abc"
                for i in 1..<4 {
                    b.steps[i].status = .succeeded
                    b.steps[i].durationMs = 1000 * i
                }
            }
            let status = try await browser.evaluate("""
                new Promise(function(resolve) {
                  function check() {
                    var s = document.getElementById('summary'), l = document.getElementById('log');
                    if (l.dataset.ended === 'true' && s.dataset.status === 'succeeded') { resolve(s.dataset.status + ' ' + l.textContent); return true; }
                  }
                  if (!check()) new MutationObserver(check).observe(document.body, {subtree: true, childList: true, attributes: true, characterData: true});
                })
                """, session: page)
            #expect(status == "succeeded fetch: cloning\ncompile: second line\n<b>not bold</b>\ncompile: third line\nbuild succeeded\n")
            #expect(try await browser.evaluate("document.getElementById('summary').textContent", session: page).contains("127.0.0.1:5000/demo:abc"))
        }
    }

    /// The forms as a person uses them: a project made through its form (a typo first, shown
    /// beside its field, the rest kept), a build started from the project's page with a tag
    /// and the Maven cache off, its log growing, then cancelled while it runs (the test plays
    /// the agent, which ends a build it is told to cancel). A screenshot of each page.
    @Test func aProjectAndABuildFromTheFormsInChromium() async throws {
        let chromium = try Chromium.path()
        try await withScheduler { h in
            let browser = try Browser.launch(chromium)
            defer { browser.close() }
            let tab = try await browser.attachToPage()
            #expect(try await browser.logIn(h.api, user: "admin", password: h.adminToken, session: tab) == h.api + "/")
            #expect(try await browser.clickLink("#new-project", session: tab) == h.api + "/ui/new-project")
            let typed = ["name": "webshop", "repository": "http//127.0.0.1:1/webshop.git", "buildImage": "a:1", "buildCommand": "make", "branches": "main\nrelease/*"]
            #expect(try await browser.submit("#project-form", fields: typed, session: tab) == h.api + "/ui/new-project")
            #expect(try await browser.evaluate("document.getElementById('error-repository').textContent", session: tab).contains("has no transport"))
            #expect(try await browser.evaluate("document.getElementById('f-branches').value + '|' + document.getElementById('f-buildImage').value", session: tab) == "main\nrelease/*|a:1")
            try await screenshot(browser, tab, "project-form-refused.png")
            #expect(try await h.etcd.get(h.keys.project("webshop")) == nil)

            _ = try await browser.evaluate("document.getElementById('f-generateWebhookSecret').checked = true; 'ticked'", session: tab)
            try await browser.submit("#project-form", fields: ["repository": "http://127.0.0.1:1/webshop.git"], session: tab)
            let token = try await browser.evaluate("document.getElementById('webhook-token').textContent", session: tab)
            #expect(token.count == 43)
            #expect(try await browser.evaluate("document.getElementById('webhook-url').textContent", session: tab) == h.api + "/hooks/gitlab")
            try await screenshot(browser, tab, "project-created.png")

            // The build form of the project's page: a tag, the Maven cache unticked.
            _ = try await browser.evaluate("document.getElementById('b-mvncache').checked = false; 'unticked'", session: tab)
            let page = try await browser.submit("#build-form", fields: ["ref": "main", "tag": "v1"], session: tab)
            let id = String(try #require(page.components(separatedBy: "/ui/builds/").last))
            let queued = try await h.build(id)
            #expect(queued.tag == "v1" && queued.mvncache == false && queued.ref == "main" && queued.trigger == "console by admin", "\(queued)")

            // It runs on agent-one, with its task key as the dispatcher writes it (the agent
            // registers once the build has left the queue, so the dispatcher assigns nothing);
            // the log grows on the page.
            try await write(h, build: id, log: [LogChunk(seq: 0, lines: ["fetch: cloning"])]) { b in
                b.status = .running
                b.agent = "agent-one"
                b.attempt = 1
            }
            _ = try await registerAgent(h, id: "agent-one", capacity: 1, ttl: 600)
            let project = try await SchedulerStore(etcd: h.etcd).project("webshop")
            let task = BuildTask(build: id, project: project, ref: "main", commit: nil, tag: "v1", mvncache: false, attempt: 1)
            try await h.etcd.put(h.keys.task(agent: "agent-one", build: id), try KilnJSON.encode(task))
            try await browser.load(h.api + "/ui/builds/\(id)", session: tab)
            _ = try await browser.waitForLog(containing: "fetch: cloning", session: tab)
            try await write(h, build: id, log: [LogChunk(seq: 1, lines: ["compile: mvn package"])])
            let log = try await browser.waitForLog(containing: "compile: mvn package", session: tab)
            #expect(log.hasPrefix("fetch: cloning\ncompile: mvn package\n"), "\(log)")
            try await screenshot(browser, tab, "build-from-form-running.png")

            // Cancel: the task tells the agent; the agent ends the build, and the page follows.
            #expect(try await browser.submit("#cancel", session: tab) == h.api + "/ui/builds/\(id)")
            let told = try KilnJSON.decode(BuildTask.self, from: try #require(try await h.etcd.get(h.keys.task(agent: "agent-one", build: id))).value)
            #expect(told.cancel)
            try await write(h, build: id, log: [LogChunk(seq: 2, lines: ["cancelled"], end: true)]) { b in
                b.status = .cancelled
                b.finishedAt = Date()
            }
            #expect(try await browser.evaluate("""
                new Promise(function(resolve) {
                  function check() { var s = document.getElementById('summary'); if (s.dataset.status === 'cancelled') { resolve(s.dataset.status); return true; } }
                  if (!check()) new MutationObserver(check).observe(document.body, {subtree: true, childList: true, attributes: true});
                })
                """, session: tab) == "cancelled")
            #expect(try await browser.evaluate("String(document.getElementById('cancel'))", session: tab) == "null")
            #expect(try await browser.evaluate("String(document.getElementById('rebuild') !== null)", session: tab) == "true")
            try await screenshot(browser, tab, "build-cancelled.png")
        }
    }

    // MARK: helpers

    /// A picture of the page, kept under .build/test-artifacts/console.
    func screenshot(_ browser: Browser, _ tab: String, _ name: String) async throws {
        try FileManager.default.createDirectory(at: Self.artifacts, withIntermediateDirectories: true)
        let png = Self.artifacts.appendingPathComponent(name)
        try await browser.screenshot(to: png, session: tab)
        #expect(try Data(contentsOf: png).count > 1000)
    }

    func queueBuild(_ h: SchedulerHarness, project: String, tag: String?) async throws -> String {
        let body = tag.map { #"{"ref":"main","tag":"\#($0)"}"# } ?? #"{"ref":"main"}"#
        let r = try await h.request(.POST, "/api/v1/projects/\(project)/builds", body: body)
        #expect(r.status == 201, "\(r.body)")
        return try #require(r.json?["id"] as? String)
    }

    /// Writes a build's record (changed by `change`) and log chunks of attempt 1 in one
    /// transaction, taking it out of the queue, as the dispatcher and an agent would.
    func write(_ h: SchedulerHarness, build id: String, log: [LogChunk], change: ((inout Build) -> Void)? = nil) async throws {
        var ops: [TxnOp] = try log.map { .put(h.keys.logChunk(build: id, attempt: 1, seq: $0.seq), try KilnJSON.encode($0)) }
        if let change {
            var b = try await h.build(id)
            change(&b)
            ops += [.delete(h.keys.queued(id)), .put(h.keys.build(id), try KilnJSON.encode(b))]
        }
        let r = try await h.etcd.txn(Txn(success: ops))
        #expect(r.succeeded)
    }
}
