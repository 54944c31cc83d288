import Foundation
import KilnCore

/// The console's pages: data in, HTML out, no I/O (unit-tested without a server).
///
/// Every page and piece is an `HTML` value: the markup is the literals written here, and every
/// `String` interpolated into them (names, refs, log lines, errors, labels) is escaped.
///
/// The pages show what they are given: the console hands each one only what its viewer may
/// see (`Access`), and a page with a form gets the viewer, whose session's token it carries.
/// No page uses a `style` attribute (the step bars are SVG): the console's
/// Content-Security-Policy allows its one stylesheet and one script by hash, nothing inline.
enum ConsolePages {
    // MARK: pages

    /// `projects`, `builds`, `apps`: those the viewer may see (builds: may read). `etcd`: its
    /// warning, if any, heads the page (a full etcd stops the whole farm). `lastBuilds`: each
    /// project's newest build (nil: the first of `builds`); `older`: the next page of builds.
    static func overview(projects: [Project], builds: [Build], apps: [App], agents: [AgentInfo], etcd: EtcdHealthStatus? = nil,
                         now: Date, viewer: ConsoleViewer, lastBuilds: [String: Build]? = nil, older: String? = nil) -> HTML {
        let projectRows = projects.sorted { $0.name < $1.name }.map { p -> HTML in
            let newest = lastBuilds.map { $0[p.name] } ?? builds.first { $0.project == p.name }
            let last: HTML = newest.map { b -> HTML in "\(buildLink(b.id)) \(badge(b.status))" } ?? "—"
            return "<tr><td>\(projectLink(p.name))</td><td>\(p.repository)</td><td>\(p.defaultBranch)</td><td>\(last)</td></tr>"
        }
        let appRows = apps.sorted { $0.name < $1.name }.map { a -> HTML in
            let project: HTML = a.project.map(projectLink) ?? "—"
            let live = a.live.map { v in "version \(v.number): \(v.tag ?? v.image)" } ?? "—"
            let domains = a.lb.isEmpty ? "—" : a.lb.map(\.domain).joined(separator: ", ")
            return "<tr><td class=\"app\">\(appLink(a.name))</td><td>\(project)</td><td>\(live)</td><td>\(domains)</td></tr>"
        }
        return layout(title: "Kiln", refresh: 10, viewer: viewer, body: """
            <h1>Kiln</h1>
            \(etcdWarning(etcd))
            <h2>Projects</h2>
            \(table(["project", "repository", "default branch", "last build"], projectRows, empty: "No project you are a member of: <a href=\"/ui/new-project\">add one</a> (or <code>kiln project add</code>), or ask a project's master to add you."))
            <h2>Recent builds</h2>
            \(buildsTable(builds, now: now, showProject: true))
            \(olderLink(older))
            <h2>Apps</h2>
            \(table(["app", "project", "live", "domains"], appRows, empty: "No app you may see."))
            <h2>Agents</h2>
            \(agentsTable(agents))
            """)
    }

    /// `builds` and `activity`: nil when the viewer may see the project but not read its
    /// records (a guest). `older`: the next page of its builds. `actions`: the edit link, the
    /// webhook box and the build form, each as the viewer's role allows.
    static func project(_ p: Project, builds: [Build]?, activity: [ActivityEntry]?, now: Date, viewer: ConsoleViewer, older: String? = nil,
                        actions: ProjectActions = ProjectActions()) -> HTML {
        var settings: [(String, String)] = [
            ("repository", p.repository), ("build image", p.buildImage), ("build command", p.buildCommand),
            ("dockerfile", p.dockerfile), ("context", p.context), ("default branch", p.defaultBranch),
            ("labels", p.labels.isEmpty ? "—" : p.labels.joined(separator: ", ")),
            ("branches", p.branches?.joined(separator: ", ") ?? p.defaultBranch),
            ("caches", p.effectiveCaches.isEmpty ? "none" : p.effectiveCaches.joined(separator: ", ")),
            ("supersede", p.supersede?.rawValue ?? "—"),
            ("max concurrent", p.maxConcurrent.map(String.init) ?? "—"),
        ]
        if let created = p.createdAt { settings.append(("created", when(created))) }
        let activityRows = (activity ?? []).map { a -> HTML in
            guard let build = a.build, let status = a.status else {
                // Another event: what happened, who did it, the details.
                return "<tr><td>\(when(a.at))</td><td>—</td><td>\(a.action)\(a.user.map { " by " + $0 } ?? "")</td><td colspan=\"6\">\(a.detail ?? "")</td></tr>"
            }
            return "<tr><td>\(when(a.at))</td><td>\(buildLink(build))</td><td>\(a.trigger ?? "")</td><td>\(a.ref ?? "")</td><td>\(code(a.commit.map(shortCommit)))</td><td>\(a.tag ?? "—")</td><td>\(badge(status))</td><td>\(a.durationMs.map(seconds) ?? "—")</td><td>\(a.note ?? "")</td></tr>"
        }
        let records: HTML
        if let builds {
            records = """
                <h2>Builds</h2>
                \(buildsTable(builds, now: now, showProject: false))
                \(olderLink(older))
                <h2>Activity</h2>
                \(table(["at", "build", "trigger", "ref", "commit", "tag", "status", "duration", "note"], activityRows, empty: "No activity yet."))
                """
        } else {
            records = "<p class=\"muted\" id=\"no-records\">Your role on this project lets you see its settings, not its builds, logs or activity: reporters and above read them (see <a href=\"/ui/roles\">roles</a>).</p>"
        }
        let edit: HTML = actions.mayEdit ? " <small><a id=\"edit\" href=\"/ui/projects/\(p.name)/edit\">Edit settings</a></small>" : ""
        let startBuild: HTML = actions.buildForm.map { buildForm($0, project: p.name, refs: actions.refs, csrf: viewer.csrf) } ?? ""
        // A page with a form being filled in (or a token shown once) must not reload itself.
        let quiet = actions.buildForm != nil || actions.webhook?.newToken != nil
        return layout(title: "\(p.name) · Kiln", refresh: quiet ? nil : 10, viewer: viewer, body: """
            <h1>Project <span id="project">\(p.name)</span></h1>
            \(resourceTabs(.project, p.name, current: ""))
            \(actions.webhook.map(webhookBox) ?? "")
            \(startBuild)
            <h2>Settings\(edit)</h2>
            \(definitions(settings))
            \(records)
            """)
    }

    /// `/ui/builds[?project=][&cursor=]`: a page of builds (of one project, or every one the
    /// viewer may read) below a cursor, and the link to the next. Only the newest page refreshes.
    static func builds(_ builds: [Build], project: String?, older: String?, newest: Bool, now: Date, viewer: ConsoleViewer) -> HTML {
        let title: HTML = project.map { p -> HTML in "Builds of \(projectLink(p))" } ?? "Builds"
        return layout(title: "Builds · Kiln", refresh: newest ? 10 : nil, viewer: viewer, body: """
            <h1>\(title)</h1>
            \(buildsTable(builds, now: now, showProject: project == nil))
            \(olderLink(older))
            """)
    }

    /// The build page: the summary (refreshed by the script) and the live log. `mayCancel`:
    /// the viewer may cancel and rebuild it (developer and up), so it shows the buttons.
    static func build(_ b: Build, now: Date, viewer: ConsoleViewer, mayCancel: Bool) -> HTML {
        layout(title: "\(b.id) · Kiln", refresh: nil, viewer: viewer, body: """
            <h1>Build <span id="build">\(b.id)</span> of \(projectLink(b.project))</h1>
            \(buildSummary(b, now: now, canceller: mayCancel ? viewer : nil))
            <h2>Log <small><a href="/ui/builds/\(b.id)/log">raw</a></small></h2>
            <pre id="log" data-build="\(b.id)"></pre>
            <script>\(ConsoleAssets.followScript)</script>
            """)
    }

    /// The part of the build page that changes while it runs: status, fields, step bar, and
    /// for a `canceller` (one who may build) the rebuild button and, while it has not ended,
    /// the cancel button.
    static func buildSummary(_ b: Build, now: Date, canceller: ConsoleViewer?) -> HTML {
        var fields: [(String, String)] = [
            ("status", b.status.rawValue), ("ref", b.ref), ("commit", b.commit ?? "—"), ("tag", b.tag ?? "—"),
            ("image", b.image ?? "—"), ("digest", b.digest ?? "—"), ("agent", b.agent ?? "—"),
            ("attempt", String(b.attempt)), ("trigger", b.trigger ?? "api"), ("caches", b.mvncache ? "the project's" : "none (started empty)"),
            ("priority", String(b.priority ?? 0)),
            ("created", when(b.createdAt)),
        ]
        if let d = b.durationMs { fields.append(("duration", seconds(d))) }
        if let w = b.waiting, b.status == .queued { fields.append(("waiting", w)) }
        if b.rebuild == true { fields.append(("rebuild", "asked for: no reuse")) }
        if let key = b.inputs?.key { fields.append(("inputs", key)) }
        let error: HTML = b.error.map { e -> HTML in "<p class=\"error\" id=\"error\">\(e)</p>" } ?? ""
        // docs/reuse.md: which build's image this one took instead of compiling.
        let reused: HTML = b.reusedFrom.map { from -> HTML in
            "<p id=\"reused\">Reused the image of build <a href=\"/ui/builds/\(from)\">\(from)</a> (same inputs; nothing compiled).</p>"
        } ?? ""
        let pipeline: HTML = b.deploy.map(pipelineRun) ?? ""
        let cancel: HTML = canceller.map { buildButtons(b, csrf: $0.csrf) } ?? ""
        return """
            <div id="summary" data-status="\(b.status.rawValue)">
            <p>\(badge(b.status)) \(cancel)</p>
            \(error)
            \(reused)
            \(definitions(fields))
            <h2>Steps</h2>
            \(stepBar(b.steps, now: now))
            \(pipeline)
            </div>
            """
    }

    /// The post-build pipeline's run: each step's status, duration and what it did or why it failed.
    static func pipelineRun(_ run: PipelineRun) -> HTML {
        let rows = run.steps.map { s -> HTML in
            "<tr><td>\(s.plugin)</td><td>\(s.status.rawValue)</td><td>\(s.durationMs.map(seconds) ?? "—")</td><td>\(s.error ?? s.summary ?? "")</td></tr>"
        }
        return """
            <h2 id="pipeline">Pipeline run \(run.run) <small>\(run.trigger) · \(run.status.rawValue)</small></h2>
            \(table(["step", "status", "time", "outcome"], rows, empty: "No steps."))
            """
    }

    /// `etcd`: its health as the scheduler last saw it; its warning, if any, above the table.
    static func agents(_ agents: [AgentInfo], etcd: EtcdHealthStatus? = nil, viewer: ConsoleViewer) -> HTML {
        layout(title: "Agents · Kiln", refresh: 10, viewer: viewer, body: """
            <h1>Agents</h1>
            \(etcdWarning(etcd))
            \(agentsTable(agents))
            """)
    }

    /// etcd's warning as a paragraph (`error` class for an alarm), or nothing when all is well.
    static func etcdWarning(_ etcd: EtcdHealthStatus?) -> HTML {
        guard let etcd, let warning = etcd.warning else { return "" }
        let kind: HTML = etcd.level == .error ? "error" : "warning"
        return "<p class=\"\(kind)\" id=\"etcd-health\"><b>etcd:</b> \(warning)</p>"
    }

    /// `viewer`: nil when no one is logged in (the page then has no header links).
    static func error(status: Int, message: String, viewer: ConsoleViewer?) -> HTML {
        layout(title: "\(status) · Kiln", refresh: nil, viewer: viewer, body: """
            <h1>\(status == 404 ? "Not found" : status == 403 ? "Forbidden" : "Error \(status)")</h1>
            <p class="error">\(message)</p>
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

    /// The bar is SVG: each step a nested `<svg>` placed by `x` and `width` attributes (which,
    /// unlike a `style` attribute, the Content-Security-Policy has no objection to), clipping
    /// its own label.
    static func stepBar(_ steps: [BuildStep], now: Date) -> HTML {
        let widths = stepWidths(steps, now: now)
        let segments = placed(widths).map { w -> HTML in
            let name = w.step.name.rawValue, label = "\(w.step.name.rawValue) \(seconds(w.ms))"
            return "<svg class=\"seg \(w.step.status.rawValue) \(name)\" data-step=\"\(name)\" x=\"\(percent(w.x))%\" width=\"\(percent(w.percent))%\" height=\"100%\"><title>\(label)</title><rect width=\"100%\" height=\"100%\"/><text x=\"3\" y=\"15\">\(label)</text></svg>"
        }
        let legend = widths.map { w -> HTML in
            let name = w.step.name.rawValue
            let time = w.ms > 0 || w.step.durationMs != nil ? ", " + seconds(w.ms) : ""
            let error = w.step.error.map { " — " + $0 } ?? ""
            return "<li><span class=\"dot \(name)\"></span>\(name): \(w.step.status.rawValue)\(time)\(error)</li>"
        }
        let bar: HTML = segments.isEmpty ? "<p class=\"muted\">No step has started yet.</p>" : "<svg class=\"bar\" id=\"steps\">\(segments.joined())</svg>"
        return "\(bar)<ul class=\"legend\">\(legend.joined())</ul>"
    }

    // MARK: pieces

    static func buildsTable(_ builds: [Build], now: Date, showProject: Bool) -> HTML {
        let rows = builds.map { b -> HTML in
            let project: HTML = showProject ? "<td>\(projectLink(b.project))</td>" : ""
            return "<tr><td>\(buildLink(b.id))</td>\(project)<td>\(badge(b.status))</td><td>\(b.ref)</td><td>\(code(b.commit.map(shortCommit)))</td><td>\(b.tag ?? "—")</td><td>\(b.image ?? "—")</td><td>\(b.agent ?? "—")</td><td class=\"mini\">\(miniBar(b.steps, now: now))</td><td>\(when(b.createdAt))</td></tr>"
        }
        let heads = ["build"] + (showProject ? ["project"] : []) + ["status", "ref", "commit", "tag", "image", "agent", "steps", "created"]
        return table(heads, rows, empty: "No build yet.")
    }

    /// The link to the next (older) page of a list of builds, if there is one.
    static func olderLink(_ path: String?) -> HTML {
        path.map { p -> HTML in "<p class=\"paging\"><a id=\"older\" href=\"\(p)\">Older builds</a></p>" } ?? ""
    }

    /// The step bar without labels, for a table row.
    static func miniBar(_ steps: [BuildStep], now: Date) -> HTML {
        let segments = placed(stepWidths(steps, now: now)).map { w -> HTML in
            "<svg class=\"seg \(w.step.name.rawValue)\" x=\"\(percent(w.x))%\" width=\"\(percent(w.percent))%\" height=\"100%\"><title>\(w.step.name.rawValue) \(seconds(w.ms))</title><rect width=\"100%\" height=\"100%\"/></svg>"
        }
        return segments.isEmpty ? "" : "<svg class=\"bar small\">\(segments.joined())</svg>"
    }

    /// The steps that took time, each with where it starts (percent of the bar).
    static func placed(_ widths: [(step: BuildStep, ms: Int, percent: Double)]) -> [(step: BuildStep, ms: Int, percent: Double, x: Double)] {
        var x = 0.0
        return widths.filter { $0.ms > 0 }.map { w in
            defer { x += w.percent }
            return (w.step, w.ms, w.percent, x)
        }
    }

    static func agentsTable(_ agents: [AgentInfo]) -> HTML {
        let rows = agents.map { a -> HTML in
            let tasks = a.tasks ?? []
            let running: HTML = tasks.isEmpty ? "—" : tasks.map(buildLink).joined(separator: " ")
            let labels = a.labels.isEmpty ? "—" : a.labels.joined(separator: ", ")
            var disk: HTML = "\(a.disk?.summary ?? "—")"
            if let refusing = a.refusing { disk = "\(disk)<br><strong>refuses new builds:</strong> \(refusing)" }
            return "<tr><td class=\"agent\">\(a.id)</td><td>\(a.running ?? 0)/\(a.capacity)</td><td>\(labels)</td><td>\(a.homedProjects ?? 0)</td><td>\(running)</td><td>\(disk)</td><td>\(a.version)</td><td>\(when(a.startedAt))</td></tr>"
        }
        return table(["agent", "load/capacity", "labels", "homed projects", "running builds", "disk", "version", "up since"], rows,
                     empty: "No live agent: start one with <code>kiln agent</code>.")
    }

    /// A table of `headers` (text) and `rows` (markup), or the `empty` note if there are no rows.
    static func table(_ headers: [String], _ rows: [HTML], empty: HTML) -> HTML {
        if rows.isEmpty { return "<p class=\"muted\">\(empty)</p>" }
        let heads = headers.map { h -> HTML in "<th>\(h)</th>" }.joined()
        return "<table><thead><tr>\(heads)</tr></thead><tbody>\n\(rows.joined(separator: "\n"))\n</tbody></table>"
    }

    /// A definition list of labels and values (both text).
    static func definitions(_ pairs: [(String, String)]) -> HTML {
        "<dl>\(pairs.map { p -> HTML in "<dt>\(p.0)</dt><dd>\(p.1)</dd>" }.joined())</dl>"
    }

    static func projectLink(_ name: String) -> HTML {
        "<a href=\"/ui/projects/\(name)\">\(name)</a>"
    }

    static func buildLink(_ id: String) -> HTML {
        "<a href=\"/ui/builds/\(id)\"><code>\(id)</code></a>"
    }

    static func badge(_ status: BuildStatus) -> HTML {
        "<span class=\"status \(status.rawValue)\">\(status.rawValue)</span>"
    }

    static func code(_ value: String?) -> HTML {
        value.map { v -> HTML in "<code>\(v)</code>" } ?? "—"
    }

    static func shortCommit(_ commit: String) -> String { String(commit.prefix(12)) }

    static func seconds(_ ms: Int) -> String { String(format: "%.1f s", Double(ms) / 1000) }

    static func percent(_ value: Double) -> String { String(format: "%.2f", value) }

    static func when(_ date: Date) -> String { date.formatted(.iso8601) }

    /// The page around `body`: with a `viewer`, the header's links, their name and the log out
    /// button; without one (the login page, an error before login), the name Kiln only.
    static func layout(title: String, refresh: Int?, viewer: ConsoleViewer?, body: HTML) -> HTML {
        let meta: HTML = refresh.map { r -> HTML in "<meta http-equiv=\"refresh\" content=\"\(r)\">" } ?? ""
        return """
            <!doctype html>
            <html lang="en"><head><meta charset="utf-8">
            <meta name="viewport" content="width=device-width, initial-scale=1">
            \(meta)
            <title>\(title)</title>
            <style>\(ConsoleAssets.style)</style></head>
            <body>\(header(viewer))
            <main>
            \(body)
            </main></body></html>
            """
    }
}
