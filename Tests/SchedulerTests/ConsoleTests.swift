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
/// `chromium`) against a scheduler in this process over a real etcd. No agent runs: the
/// tests write a build's record and log chunks to etcd the way an agent does.
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
        let pages = [
            ConsolePages.build(b, now: Date()),
            ConsolePages.overview(projects: [project.redacted], builds: [b], agents: [agent], now: Date()),
            ConsolePages.project(project.redacted, builds: [b], activity: [ActivityEntry(b)], now: Date()),
            ConsolePages.agents([agent]),
            ConsolePages.error(status: 404, message: "build '\(evil)' does not exist"),
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
        #expect(bar.contains(#"data-step="fetch" style="width:16.67%""#))
        #expect(bar.contains(#"data-step="compile" style="width:50.00%""#))
        #expect(bar.contains(#"data-step="image" style="width:33.33%""#))
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

            let overview = try await Chromium.dumpDOM(chromium, h.api + "/")
            #expect(overview.contains(">webapp</a>"), "\(overview)")
            #expect(overview.contains(id) && overview.contains(running))
            #expect(overview.contains("agent-one"))

            let page = try await Chromium.dumpDOM(chromium, h.api + "/ui/projects/webapp")
            #expect(page.contains(#"<span id="project">webapp</span>"#), "\(page)")
            #expect(page.contains("http://127.0.0.1:1/webapp.git") && page.contains(id) && page.contains(running))
            #expect(page.contains("<h2>Activity</h2>") && page.contains("<td>api</td>"))
            #expect(!page.contains("hush-hush-123"))

            let agents = try await Chromium.dumpDOM(chromium, h.api + "/ui/agents")
            #expect(agents.contains(#"<td class="agent">agent-one</td><td>1/3</td><td>gpu</td><td>1</td>"#), "\(agents)")
            #expect(agents.contains("/ui/builds/\(running)"))

            // The finished build: the script read the whole log through the follow stream.
            let build = try await Chromium.dumpDOM(chromium, h.api + "/ui/builds/\(id)")
            #expect(build.contains(#"<span id="build">\#(id)</span>"#), "\(build)")
            #expect(build.contains("127.0.0.1:5000/webapp:v7") && build.contains("sha256:0f0f") && build.contains("agent-one"))
            #expect(build.contains(#"data-step="compile" style="width:60.00%""#) && build.contains("compile 6.0 s"))
            #expect(build.contains(#"data-ended="true""#))
            #expect(build.contains("fetching\n&lt;script&gt;document.title='pwned'&lt;/script&gt;\npushed\n"))
            #expect(!build.contains("<title>pwned"))

            // The build page as a picture, kept under .build/test-artifacts/console.
            try FileManager.default.createDirectory(at: Self.artifacts, withIntermediateDirectories: true)
            let png = Self.artifacts.appendingPathComponent("build-page.png")
            try? FileManager.default.removeItem(at: png)
            _ = try await Chromium.run(chromium, ["--screenshot=\(png.path)", "--window-size=1280,900", "--virtual-time-budget=3000", h.api + "/ui/builds/\(id)"])
            let bytes = try Data(contentsOf: png)
            #expect(bytes.count > 1000)
            #expect(bytes.prefix(8) == Data([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]))

            // Unknown things are HTML 404 pages.
            for path in ["/ui/builds/b000000000-000000", "/ui/projects/nope", "/ui/builds/b000000000-000000/summary"] {
                let r = try await h.request(.GET, path)
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
            try await browser.navigate(h.api + "/ui/builds/\(id)", session: page)

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

    // MARK: helpers

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

/// Debian's Chromium, headless, as a child process started with `Spawn` and stopped by PID.
enum Chromium {
    static let executable = "/usr/bin/chromium"
    static let flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage", "--hide-scrollbars"]

    /// The binary, or an error saying how to install it: the console's tests never skip.
    static func path() throws -> String {
        guard FileManager.default.isExecutableFile(atPath: executable) else {
            throw FarmError("Chromium is not installed (\(executable) is missing): run scripts/install-deps.sh as root, which installs Debian's chromium")
        }
        return executable
    }

    /// The DOM after the page's scripts ran for `budgetMs` of virtual time.
    static func dumpDOM(_ chromium: String, _ url: String, budgetMs: Int = 3000) async throws -> String {
        try await run(chromium, ["--dump-dom", "--virtual-time-budget=\(budgetMs)", url])
    }

    /// Runs Chromium to its end with a fresh profile and returns its standard output; stops it
    /// (by PID) and fails if it takes more than `timeout` seconds.
    static func run(_ chromium: String, _ arguments: [String], timeout: Double = 60) async throws -> String {
        let profile = try TempDir("chromium")
        let out = profile.path("stdout"), err = profile.path("stderr")
        let outFD = open(out.path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        let errFD = open(err.path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        let null = open("/dev/null", O_RDONLY | O_CLOEXEC)
        let pid: pid_t
        do {
            defer { close(outFD); close(errFD); close(null) }
            pid = try Spawn.start(chromium, flags + ["--user-data-dir=\(profile.path("profile").path)"] + arguments, stdin: null, stdout: outFD, stderr: errFD)
        }
        // Waiting for a child to exit has no event to wait on here: check every 50 ms.
        let deadline = Date().addingTimeInterval(timeout)
        var status = Spawn.poll(pid)
        while status == nil && Date() < deadline {
            try await Task.sleep(for: .milliseconds(50))
            status = Spawn.poll(pid)
        }
        guard let status else {
            kill(pid, SIGKILL)
            _ = Spawn.wait(pid)
            throw FarmError("chromium \(arguments.joined(separator: " ")) did not finish within \(Int(timeout)) s")
        }
        guard status == 0 else {
            throw FarmError("chromium \(arguments.joined(separator: " ")) exited with \(status): \((try? String(contentsOf: err, encoding: .utf8)) ?? "")")
        }
        return try String(contentsOf: out, encoding: .utf8)
    }
}

struct DevToolsError: Error, CustomStringConvertible {
    let description: String
}

/// Headless Chromium driven over its DevTools protocol on a pipe (`--remote-debugging-pipe`):
/// it reads commands on its descriptor 3 and writes answers and events on 4, each one JSON
/// text ending in a NUL byte. One command at a time; each blocks a thread of its own, not
/// one of Swift's concurrency threads.
final class Browser: Sendable {
    let pid: pid_t
    let profile: TempDir
    private let toBrowser: Int32
    private let fromBrowser: Int32
    /// The next command id and what was read past the last answer; held for a whole command.
    private let state = Mutex<(nextID: Int, pending: [UInt8])>((1, []))
    private let closed = Atomic<Bool>(false)

    private init(pid: pid_t, profile: TempDir, toBrowser: Int32, fromBrowser: Int32) {
        self.pid = pid
        self.profile = profile
        self.toBrowser = toBrowser
        self.fromBrowser = fromBrowser
    }

    static func launch(_ chromium: String) throws -> Browser {
        let profile = try TempDir("chromium")
        var commands: [Int32] = [0, 0], answers: [Int32] = [0, 0]
        guard pipe(&commands) == 0, pipe(&answers) == 0 else { throw FarmError("pipe() failed: errno \(errno)") }
        // Only Chromium gets them, as its 3 and 4 (Spawn moves them there).
        for fd in commands + answers { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        let log = open(profile.path("chromium.log").path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        let null = open("/dev/null", O_RDONLY | O_CLOEXEC)
        defer { Glibc.close(log); Glibc.close(null); Glibc.close(commands[0]); Glibc.close(answers[1]) }
        let pid: pid_t
        do {
            pid = try Spawn.start(
                chromium, Chromium.flags + ["--user-data-dir=\(profile.path("profile").path)", "--remote-debugging-pipe", "--window-size=1280,900", "about:blank"],
                stdin: null, stdout: log, stderr: log, extraDescriptors: [commands[0], answers[1]])
        } catch {
            Glibc.close(commands[1]); Glibc.close(answers[0])
            throw error
        }
        return Browser(pid: pid, profile: profile, toBrowser: commands[1], fromBrowser: answers[0])
    }

    /// Sends one command and returns its answer's `result` as JSON text.
    func call(_ method: String, _ params: [String: any Sendable] = [:], session: String? = nil, timeout: Double = 30) async throws -> Data {
        var message: [String: Any] = ["method": method, "params": params]
        if let session { message["sessionId"] = session }
        let body = try JSONSerialization.data(withJSONObject: message)
        return try await withCheckedThrowingContinuation { continuation in
            Thread.detachNewThread {
                continuation.resume(with: Result { try self.exchange(body, timeout: timeout, method: method) })
            }
        }
    }

    private func exchange(_ body: Data, timeout: Double, method: String) throws -> Data {
        try state.withLock { state in
            let id = state.nextID
            state.nextID += 1
            // Splice the id in front of the message's other fields.
            var bytes = Array("{\"id\":\(id),".utf8) + Array(body.dropFirst()) + [0]
            var written = 0
            while written < bytes.count {
                let n = bytes.withUnsafeMutableBytes { write(toBrowser, $0.baseAddress! + written, $0.count - written) }
                if n < 0 { if errno == EINTR { continue }; throw DevToolsError(description: "\(method): write to chromium failed: errno \(errno)") }
                written += n
            }
            let deadline = Date().addingTimeInterval(timeout)
            var buffer = [UInt8](repeating: 0, count: 1 << 16)
            while true {
                while let end = state.pending.firstIndex(of: 0) {
                    let text = Data(state.pending[..<end])
                    state.pending.removeSubrange(...end)
                    guard let answer = try? JSONSerialization.jsonObject(with: text) as? [String: Any], answer["id"] as? Int == id else { continue }
                    if let error = answer["error"] { throw DevToolsError(description: "\(method): \(error)") }
                    return try JSONSerialization.data(withJSONObject: answer["result"] ?? [:])
                }
                let left = deadline.timeIntervalSinceNow
                guard left > 0 else { throw DevToolsError(description: "\(method): no answer from chromium within \(Int(timeout)) s") }
                var pfd = pollfd(fd: fromBrowser, events: Int16(POLLIN), revents: 0)
                if poll(&pfd, 1, Int32(min(left, 1) * 1000)) <= 0 { continue }
                let n = read(fromBrowser, &buffer, buffer.count)
                if n == 0 { throw DevToolsError(description: "\(method): chromium closed its pipe (log: \(profile.path("chromium.log").path))") }
                if n > 0 { state.pending += buffer[..<n] }
            }
        }
    }

    /// Attaches to the page Chromium opened and returns the session to send page commands on.
    func attachToPage() async throws -> String {
        let targets = try JSONSerialization.jsonObject(with: try await call("Target.getTargets")) as? [String: Any]
        let infos = targets?["targetInfos"] as? [[String: Any]] ?? []
        guard let page = infos.first(where: { $0["type"] as? String == "page" })?["targetId"] as? String else {
            throw DevToolsError(description: "chromium has no page open: \(infos)")
        }
        let attached = try JSONSerialization.jsonObject(with: try await call("Target.attachToTarget", ["targetId": page, "flatten": true])) as? [String: Any]
        guard let session = attached?["sessionId"] as? String else { throw DevToolsError(description: "no session from Target.attachToTarget") }
        return session
    }

    /// Evaluates a JavaScript expression in the page, waiting for it if it is a promise;
    /// returns its value as a string.
    func evaluate(_ expression: String, session: String, timeout: Double = 30) async throws -> String {
        let answer = try JSONSerialization.jsonObject(with: try await call(
            "Runtime.evaluate", ["expression": expression, "awaitPromise": true, "returnByValue": true], session: session, timeout: timeout)) as? [String: Any]
        if let exception = answer?["exceptionDetails"] { throw DevToolsError(description: "\(expression): \(exception)") }
        let result = answer?["result"] as? [String: Any]
        return result?["value"].map { "\($0)" } ?? "undefined"
    }

    /// The text of the page's `#log` once it contains `text` (a MutationObserver in the page
    /// tells when; no polling).
    func waitForLog(containing text: String, session: String) async throws -> String {
        let quoted = String(decoding: try JSONSerialization.data(withJSONObject: [text]), as: UTF8.self).dropFirst().dropLast()
        return try await evaluate("""
            new Promise(function(resolve) {
              function check() {
                var l = document.getElementById('log');
                if (l && l.textContent.indexOf(\(quoted)) >= 0) { resolve(l.textContent); return true; }
              }
              if (!check()) new MutationObserver(check).observe(document, {subtree: true, childList: true, characterData: true});
            })
            """, session: session)
    }

    /// Loads `url` in the page; returns once the new document has been committed.
    func navigate(_ url: String, session: String) async throws {
        _ = try await call("Page.navigate", ["url": url], session: session)
    }

    func screenshot(to file: URL, session: String) async throws {
        let answer = try JSONSerialization.jsonObject(with: try await call("Page.captureScreenshot", ["format": "png"], session: session)) as? [String: Any]
        guard let base64 = answer?["data"] as? String, let png = Data(base64Encoded: base64) else { throw DevToolsError(description: "no image from Page.captureScreenshot") }
        try png.write(to: file)
    }

    /// Asks Chromium to close (`Browser.close`, so it stops its own helper processes), then
    /// stops it by its PID if it has not ended within 5 s (SIGTERM, then SIGKILL after 5 s
    /// more), and closes the pipes. A second call does nothing.
    func close() {
        guard !closed.exchange(true, ordering: .relaxed) else { return }
        defer { Glibc.close(toBrowser); Glibc.close(fromBrowser) }
        let message = Array(#"{"id":0,"method":"Browser.close"}"#.utf8) + [0]
        _ = message.withUnsafeBytes { write(toBrowser, $0.baseAddress!, $0.count) }
        for signal in [0, SIGTERM, SIGKILL] {
            if signal != 0 { kill(pid, signal) }
            let deadline = Date().addingTimeInterval(5)
            while Date() < deadline {
                if Spawn.poll(pid) != nil { return }
                usleep(20_000)
            }
        }
    }

    deinit { close() }
}
