import Etcd
import Foundation
import Hummingbird
import KilnCore
import NIOCore

/// The web console the scheduler serves beside its API: `/` (projects, recent builds,
/// agents), `/ui/projects/{name}`, `/ui/builds/{id}` (with the live log) and `/ui/agents`.
///
/// Plain server-rendered HTML. The handlers only read the store and hand the data to the
/// pure functions of `ConsolePages`; the one script (on the build page) follows
/// `/api/v1/builds/{id}/log?follow=1` and refreshes the build's summary from
/// `/ui/builds/{id}/summary`. Every value that comes from data goes through `html(_:)`.
public struct Console: Sendable {
    let store: SchedulerStore

    public init(store: SchedulerStore) {
        self.store = store
    }

    public func addRoutes(to router: Router<BasicRequestContext>) {
        router.get("/") { _, _ in
            try await page {
                async let projects = store.projects()
                async let builds = store.builds(limit: 30)
                async let agents = store.agents()
                return ConsolePages.overview(projects: (try await projects).map(\.redacted), builds: try await builds, agents: try await agents, now: Date())
            }
        }
        router.get("ui/projects/:name") { _, context in
            try await page {
                let name = try context.parameters.require("name")
                let project = try await store.project(name)
                let builds = try await store.builds(project: name, limit: 50)
                return ConsolePages.project(project.redacted, builds: builds, activity: builds.map(ActivityEntry.init), now: Date())
            }
        }
        router.get("ui/builds/:id") { _, context in
            try await page { ConsolePages.build(try await store.build(try context.parameters.require("id")), now: Date()) }
        }
        router.get("ui/builds/:id/summary") { _, context in
            try await page { ConsolePages.buildSummary(try await store.build(try context.parameters.require("id")), now: Date()) }
        }
        router.get("ui/agents") { _, _ in
            try await page { ConsolePages.agents(try await store.agents()) }
        }
    }

    /// Runs a handler that renders HTML; an error becomes an HTML page with the error's
    /// status (404 for an unknown project or build), not the API's JSON.
    private func page(_ render: () async throws -> String) async throws -> Response {
        do {
            return htmlResponse(try await render())
        } catch let error as KilnError {
            return htmlResponse(ConsolePages.error(status: error.httpStatus, message: error.message), status: error.httpStatus)
        } catch let error as EtcdError {
            return htmlResponse(ConsolePages.error(status: 503, message: "etcd is unreachable or failing: \(error)"), status: 503)
        }
    }

    private func htmlResponse(_ body: String, status: Int = 200) -> Response {
        var headers = HTTPFields()
        headers[.contentType] = "text/html; charset=utf-8"
        headers[.cacheControl] = "no-store"
        return Response(status: .init(code: status), headers: headers, body: .init(byteBuffer: ByteBuffer(string: body)))
    }
}

/// Escapes a value for HTML text and for a double- or single-quoted attribute.
/// Every value that comes from data (names, refs, log lines, errors) goes through here.
func html(_ value: String) -> String {
    var out = ""
    out.reserveCapacity(value.utf8.count)
    for c in value.unicodeScalars {
        switch c {
        case "&": out += "&amp;"
        case "<": out += "&lt;"
        case ">": out += "&gt;"
        case "\"": out += "&quot;"
        case "'": out += "&#39;"
        default: out.unicodeScalars.append(c)
        }
    }
    return out
}

/// The console's pages: data in, HTML out, no I/O (unit-tested without a server).
enum ConsolePages {
    // MARK: pages

    static func overview(projects: [Project], builds: [Build], agents: [AgentInfo], now: Date) -> String {
        let projectRows = projects.sorted { $0.name < $1.name }.map { p in
            let last = builds.first { $0.project == p.name }
            return "<tr><td>\(projectLink(p.name))</td><td>\(html(p.repository))</td><td>\(html(p.defaultBranch))</td>"
                + "<td>\(last.map { "\(buildLink($0.id)) \(badge($0.status))" } ?? "—")</td></tr>"
        }
        return layout(title: "Kiln", refresh: 10, body: """
            <h1>Kiln</h1>
            <h2>Projects</h2>
            \(table(["project", "repository", "default branch", "last build"], projectRows, empty: "No project yet: add one with <code>kiln project add</code>."))
            <h2>Recent builds</h2>
            \(buildsTable(builds, now: now, showProject: true))
            <h2>Agents</h2>
            \(agentsTable(agents))
            """)
    }

    static func project(_ p: Project, builds: [Build], activity: [ActivityEntry], now: Date) -> String {
        var settings: [(String, String)] = [
            ("repository", p.repository), ("build image", p.buildImage), ("build command", p.buildCommand),
            ("dockerfile", p.dockerfile), ("context", p.context), ("default branch", p.defaultBranch),
            ("labels", p.labels.isEmpty ? "—" : p.labels.joined(separator: ", ")),
            ("branches", p.branches?.joined(separator: ", ") ?? p.defaultBranch),
            ("supersede", p.supersede?.rawValue ?? "—"),
            ("max concurrent", p.maxConcurrent.map(String.init) ?? "—"),
        ]
        if let created = p.createdAt { settings.append(("created", when(created))) }
        let activityRows = activity.map { a in
            "<tr><td>\(html(when(a.at)))</td><td>\(buildLink(a.build))</td><td>\(html(a.trigger))</td><td>\(html(a.ref))</td>"
                + "<td>\(code(a.commit.map(shortCommit)))</td><td>\(html(a.tag ?? "—"))</td><td>\(badge(a.status))</td>"
                + "<td>\(html(a.durationMs.map(seconds) ?? "—"))</td><td>\(html(a.note ?? ""))</td></tr>"
        }
        return layout(title: "\(p.name) · Kiln", refresh: 10, body: """
            <h1>Project <span id="project">\(html(p.name))</span></h1>
            <h2>Settings</h2>
            \(definitions(settings))
            <h2>Builds</h2>
            \(buildsTable(builds, now: now, showProject: false))
            <h2>Activity</h2>
            \(table(["at", "build", "trigger", "ref", "commit", "tag", "status", "duration", "note"], activityRows, empty: "No activity yet."))
            """)
    }

    /// The build page: the summary (refreshed by the script) and the live log.
    static func build(_ b: Build, now: Date) -> String {
        layout(title: "\(b.id) · Kiln", refresh: nil, body: """
            <h1>Build <span id="build">\(html(b.id))</span> of \(projectLink(b.project))</h1>
            \(buildSummary(b, now: now))
            <h2>Log <small><a href="/api/v1/builds/\(html(b.id))/log">raw</a></small></h2>
            <pre id="log" data-build="\(html(b.id))"></pre>
            <script>\(followScript)</script>
            """)
    }

    /// The part of the build page that changes while it runs: status, fields, step bar.
    static func buildSummary(_ b: Build, now: Date) -> String {
        var fields: [(String, String)] = [
            ("status", b.status.rawValue), ("ref", b.ref), ("commit", b.commit ?? "—"), ("tag", b.tag ?? "—"),
            ("image", b.image ?? "—"), ("digest", b.digest ?? "—"), ("agent", b.agent ?? "—"),
            ("attempt", String(b.attempt)), ("trigger", b.trigger ?? "api"), ("Maven cache", b.mvncache ? "yes" : "no"),
            ("created", when(b.createdAt)),
        ]
        if let d = b.durationMs { fields.append(("duration", seconds(d))) }
        if let w = b.waiting, b.status == .queued { fields.append(("waiting", w)) }
        let error = b.error.map { "<p class=\"error\" id=\"error\">\(html($0))</p>" } ?? ""
        return """
            <div id="summary" data-status="\(html(b.status.rawValue))">
            <p>\(badge(b.status))</p>
            \(error)
            \(definitions(fields))
            <h2>Steps</h2>
            \(stepBar(b.steps, now: now))
            \(b.deploy.map(pipelineRun) ?? "")
            </div>
            """
    }

    /// The post-build pipeline's run: each step's status, duration and what it did or why it failed.
    static func pipelineRun(_ run: PipelineRun) -> String {
        let rows = run.steps.map { s in
            "<tr><td>\(html(s.plugin))</td><td>\(html(s.status.rawValue))</td><td>\(s.durationMs.map(seconds) ?? "—")</td><td>\(html(s.error ?? s.summary ?? ""))</td></tr>"
        }
        return """
            <h2 id="pipeline">Pipeline run \(run.run) <small>\(html(run.trigger)) · \(html(run.status.rawValue))</small></h2>
            \(table(["step", "status", "time", "outcome"], rows, empty: "No steps."))
            """
    }

    static func agents(_ agents: [AgentInfo]) -> String {
        layout(title: "Agents · Kiln", refresh: 10, body: """
            <h1>Agents</h1>
            \(agentsTable(agents))
            """)
    }

    static func error(status: Int, message: String) -> String {
        layout(title: "\(status) · Kiln", refresh: nil, body: """
            <h1>\(status == 404 ? "Not found" : "Error \(status)")</h1>
            <p class="error">\(html(message))</p>
            <p><a href="/">Back to the overview</a></p>
            """)
    }

    // MARK: the step bar

    /// Each step's share of the bar, in percent of the timed steps' total: a finished step
    /// counts its duration, a running one the time since it started, the others nothing.
    static func stepWidths(_ steps: [BuildStep], now: Date) -> [(step: BuildStep, ms: Int, percent: Double)] {
        let ms = steps.map { stepMs($0, now: now) }
        let total = ms.reduce(0, +)
        return zip(steps, ms).map { ($0, $1, total > 0 ? Double($1) * 100 / Double(total) : 0) }
    }

    static func stepMs(_ s: BuildStep, now: Date) -> Int {
        if let d = s.durationMs { return max(0, d) }
        if s.status == .running, let start = s.startedAt { return max(0, Int((now.timeIntervalSince(start) * 1000).rounded())) }
        return 0
    }

    static func stepBar(_ steps: [BuildStep], now: Date) -> String {
        let widths = stepWidths(steps, now: now)
        let segments = widths.filter { $0.ms > 0 }.map { w in
            let label = "\(w.step.name.rawValue) \(seconds(w.ms))"
            return "<span class=\"seg \(html(w.step.status.rawValue)) \(html(w.step.name.rawValue))\" data-step=\"\(html(w.step.name.rawValue))\" "
                + "style=\"width:\(String(format: "%.2f", w.percent))%\" title=\"\(html(label))\">\(html(label))</span>"
        }
        let legend = widths.map { w in
            "<li><span class=\"dot \(html(w.step.name.rawValue))\"></span>\(html(w.step.name.rawValue)): \(html(w.step.status.rawValue))"
                + "\(w.ms > 0 || w.step.durationMs != nil ? ", " + html(seconds(w.ms)) : "")"
                + "\(w.step.error.map { " — " + html($0) } ?? "")</li>"
        }
        let bar = segments.isEmpty ? "<p class=\"muted\">No step has started yet.</p>" : "<div class=\"bar\" id=\"steps\">\(segments.joined())</div>"
        return bar + "<ul class=\"legend\">\(legend.joined())</ul>"
    }

    // MARK: pieces

    static func buildsTable(_ builds: [Build], now: Date, showProject: Bool) -> String {
        let rows = builds.map { b in
            "<tr><td>\(buildLink(b.id))</td>\(showProject ? "<td>\(projectLink(b.project))</td>" : "")<td>\(badge(b.status))</td>"
                + "<td>\(html(b.ref))</td><td>\(code(b.commit.map(shortCommit)))</td><td>\(html(b.tag ?? "—"))</td>"
                + "<td>\(html(b.image ?? "—"))</td><td>\(html(b.agent ?? "—"))</td><td class=\"mini\">\(miniBar(b.steps, now: now))</td>"
                + "<td>\(html(when(b.createdAt)))</td></tr>"
        }
        let heads = ["build"] + (showProject ? ["project"] : []) + ["status", "ref", "commit", "tag", "image", "agent", "steps", "created"]
        return table(heads, rows, empty: "No build yet.")
    }

    /// The step bar without labels, for a table row.
    static func miniBar(_ steps: [BuildStep], now: Date) -> String {
        let segments = stepWidths(steps, now: now).filter { $0.ms > 0 }.map { w in
            "<span class=\"seg \(html(w.step.name.rawValue))\" style=\"width:\(String(format: "%.2f", w.percent))%\" "
                + "title=\"\(html(w.step.name.rawValue)) \(html(seconds(w.ms)))\"></span>"
        }
        return segments.isEmpty ? "" : "<div class=\"bar small\">\(segments.joined())</div>"
    }

    static func agentsTable(_ agents: [AgentInfo]) -> String {
        let rows = agents.map { a in
            let running = (a.tasks ?? []).map(buildLink).joined(separator: " ")
            return "<tr><td class=\"agent\">\(html(a.id))</td><td>\(a.running ?? 0)/\(a.capacity)</td>"
                + "<td>\(html(a.labels.isEmpty ? "—" : a.labels.joined(separator: ", ")))</td><td>\(a.homedProjects ?? 0)</td>"
                + "<td>\(running.isEmpty ? "—" : running)</td><td>\(html(a.version))</td><td>\(html(when(a.startedAt)))</td></tr>"
        }
        return table(["agent", "load/capacity", "labels", "homed projects", "running builds", "version", "up since"], rows,
                     empty: "No live agent: start one with <code>kiln agent</code>.")
    }

    /// `headers` and `empty` are the page's own text; `rows` are already escaped.
    static func table(_ headers: [String], _ rows: [String], empty: String) -> String {
        if rows.isEmpty { return "<p class=\"muted\">\(empty)</p>" }
        return "<table><thead><tr>\(headers.map { "<th>\($0)</th>" }.joined())</tr></thead><tbody>\n\(rows.joined(separator: "\n"))\n</tbody></table>"
    }

    /// A definition list of label and raw value (escaped here).
    static func definitions(_ pairs: [(String, String)]) -> String {
        "<dl>\(pairs.map { "<dt>\(html($0.0))</dt><dd>\(html($0.1))</dd>" }.joined())</dl>"
    }

    static func projectLink(_ name: String) -> String {
        "<a href=\"/ui/projects/\(html(name))\">\(html(name))</a>"
    }

    static func buildLink(_ id: String) -> String {
        "<a href=\"/ui/builds/\(html(id))\"><code>\(html(id))</code></a>"
    }

    static func badge(_ status: BuildStatus) -> String {
        "<span class=\"status \(status.rawValue)\">\(status.rawValue)</span>"
    }

    static func code(_ value: String?) -> String {
        value.map { "<code>\(html($0))</code>" } ?? "—"
    }

    static func shortCommit(_ commit: String) -> String { String(commit.prefix(12)) }

    static func seconds(_ ms: Int) -> String { String(format: "%.1f s", Double(ms) / 1000) }

    static func when(_ date: Date) -> String { date.formatted(.iso8601) }

    static func layout(title: String, refresh: Int?, body: String) -> String {
        """
        <!doctype html>
        <html lang="en"><head><meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        \(refresh.map { "<meta http-equiv=\"refresh\" content=\"\($0)\">" } ?? "")
        <title>\(html(title))</title>
        <style>\(style)</style></head>
        <body><nav><a href="/"><b>Kiln</b></a> <a href="/">Overview</a> <a href="/ui/agents">Agents</a></nav>
        <main>
        \(body)
        </main></body></html>
        """
    }

    static let style = """
        body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
        nav{background:#2b2b2b;padding:8px 16px}nav a{color:#eee;margin-right:16px;text-decoration:none}
        main{padding:8px 16px}h1{font-size:20px}h2{font-size:16px;margin-top:20px}
        table{border-collapse:collapse;width:100%;background:#fff}th,td{border-bottom:1px solid #ddd;padding:4px 6px;text-align:left;vertical-align:top}
        th{background:#eee}dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px}dt{color:#666}dd{margin:0;word-break:break-all}
        .status{padding:1px 6px;border-radius:3px;color:#fff;background:#888}.status.succeeded{background:#2e7d32}.status.failed{background:#c62828}
        .status.running,.status.assigned{background:#1565c0}.status.cancelled{background:#6d4c41}
        .bar{display:flex;height:22px;width:100%;max-width:900px;background:#eee;border-radius:3px;overflow:hidden}
        .bar.small{height:8px;width:120px}.seg{color:#fff;font-size:12px;white-space:nowrap;overflow:hidden;padding-left:3px;box-sizing:border-box}
        .fetch{background:#6a1b9a}.compile{background:#1565c0}.image{background:#00897b}.push{background:#ef6c00}.seg.failed{outline:2px solid #c62828}
        .legend{list-style:none;padding:0}.legend li{display:inline-block;margin-right:16px}
        .dot{display:inline-block;width:10px;height:10px;margin-right:4px;border-radius:2px}
        .error{color:#c62828;white-space:pre-wrap}.muted{color:#888}
        pre#log{background:#111;color:#ddd;padding:8px;min-height:200px;max-height:70vh;overflow:auto;white-space:pre-wrap}
        """

    /// Follows the log with fetch() and a stream reader, appending text as it arrives;
    /// refreshes the summary every 3 s while it runs and once when the log ends.
    static let followScript = """
        (function(){
          var log = document.getElementById('log'), id = log.dataset.build, ended = false;
          function refresh(){
            return fetch('/ui/builds/' + id + '/summary', {cache: 'no-store'}).then(function(r){
              if (!r.ok) return;
              return r.text().then(function(t){ document.getElementById('summary').outerHTML = t; });
            }).catch(function(){});
          }
          async function follow(){
            try {
              var r = await fetch('/api/v1/builds/' + id + '/log?follow=1', {cache: 'no-store'});
              if (!r.ok) throw new Error('HTTP ' + r.status);
              var reader = r.body.getReader(), decoder = new TextDecoder();
              for (;;) {
                var part = await reader.read();
                if (part.done) break;
                var stick = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
                log.appendChild(document.createTextNode(decoder.decode(part.value, {stream: true})));
                if (stick) log.scrollTop = log.scrollHeight;
              }
            } catch (e) {
              log.appendChild(document.createTextNode('\\n[the log stream stopped: ' + e + ']\\n'));
            }
            ended = true;
            log.dataset.ended = 'true';
            refresh();
          }
          follow();
          var timer = setInterval(function(){ if (ended) clearInterval(timer); else refresh(); }, 3000);
        })();
        """
}
