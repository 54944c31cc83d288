import Foundation
import KilnCore

/// What an app's page offers its viewer beyond what it shows: the forms, to those who may
/// deploy the app (master and up), decided by the handler (`Console+Apps.swift`).
struct AppActions: Sendable, Equatable {
    /// Masters and up: the deploy, scale, roll back and retire forms.
    var mayDeploy = false
    /// The deploy form, as shown first (the live version's settings) or sent back with its problems.
    var deployForm: DeployForm?
    var scaleForm: ScaleForm?
    /// The builds of the app's project that succeeded, newest first: what the deploy form offers.
    var builds: [Build] = []
}

/// The apps' pages: the list and one app's page with its forms.
extension ConsolePages {
    static func appLink(_ name: String) -> HTML {
        "<a href=\"/ui/apps/\(name)\">\(name)</a>"
    }

    /// `/ui/apps`: the apps the viewer may see (as `GET /api/v1/apps`), each with its live
    /// version, image, instances per cell and state.
    static func apps(_ apps: [App], viewer: ConsoleViewer) -> HTML {
        let rows = apps.sorted { $0.name < $1.name }.map { a -> HTML in
            let project: HTML = a.project.map(projectLink) ?? "—"
            let shown = a.live ?? a.versions.last
            let live: HTML = a.live.map { v -> HTML in "version \(v.number)" } ?? "none"
            let image: HTML = shown.map { v -> HTML in "\(v.tag ?? "—")<br>\(digest(v.image))" } ?? "—"
            let cells = shown.map(cellCounts) ?? "—"
            let state: HTML = shown.map { v -> HTML in versionState(v.state) } ?? "no version"
            let domains = a.lb.isEmpty ? "—" : a.lb.map(\.domain).joined(separator: ", ")
            return "<tr id=\"app-\(a.name)\"><td class=\"app\">\(appLink(a.name))</td><td>\(project)</td><td>\(live)</td><td>\(image)</td><td>\(cells)</td><td>\(state)</td><td>\(domains)</td></tr>"
        }
        return layout(title: "Apps · Kiln", refresh: 10, viewer: viewer, body: """
            <h1>Apps</h1>
            \(table(["app", "project", "live", "image (tag, digest)", "instances per cell", "state", "domains"], rows,
                    empty: "No app you may see. An app appears when a project's pipeline deploys it (a <code>deploy</code> step)."))
            """)
    }

    /// One app: its versions (with the roll back and retire buttons for one who may deploy),
    /// the instances of the versions that run, its domains and what each lb-agent applied, the
    /// deploy and scale forms, its events. `status`: as the viewer may read it (env values
    /// masked below master). Pages with a form do not refresh themselves.
    static func app(_ status: AppStatus, events: [ActivityEntry], viewer: ConsoleViewer, actions: AppActions = AppActions()) -> HTML {
        let app = status.app
        let live = app.live
        let versionRows = app.versions.reversed().map { v -> HTML in
            let build: HTML = buildLink(v.build)
            let image: HTML = "tag \(v.tag ?? "—")<br>\(digest(v.image))"
            let error: HTML = v.error.map { e -> HTML in "<br><small class=\"error\">\(e)</small>" } ?? ""
            return "<tr id=\"version-\(v.number)\"><td>\(v.number)</td><td>\(build)</td><td>\(image)</td><td>\(versionState(v.state))\(error)</td><td>\(settingsList(v.settings))</td><td>\(v.cells.joined(separator: ", "))</td><td>\(when(v.createdAt))</td><td>\(versionActions(app, v, actions: actions, csrf: viewer.csrf))</td></tr>"
        }
        let running = app.versions.reversed().filter { !$0.instances.isEmpty || !($0.scalingInstances ?? []).isEmpty }
        let instanceRows = running.flatMap { v -> [HTML] in
            let serving = v.instances.sorted { ($0.cell, $0.name) < ($1.cell, $1.name) }.map { i -> HTML in
                let health: HTML = i.healthy ? "<span class=\"status succeeded\">healthy</span>" : "<span class=\"status failed\">unhealthy</span>"
                return "<tr data-version=\"\(v.number)\" data-cell=\"\(i.cell)\"><td>\(v.number)</td><td>\(i.cell)</td><td>\(i.name)</td><td><code>\(i.address)</code></td><td>\(health) \(i.detail ?? "")</td><td>\(i.checkedAt.map(when) ?? "—")</td></tr>"
            }
            let scaling = (v.scalingInstances ?? []).map { i -> HTML in
                "<tr data-version=\"\(v.number)\" data-cell=\"\(i.cell)\" class=\"scaling\"><td>\(v.number)</td><td>\(i.cell)</td><td>\(i.name)</td><td><code>\(i.address)</code></td><td><span class=\"status running\">scaling</span> starting or draining, outside the load balancer</td><td>—</td></tr>"
            }
            return serving + scaling
        }
        let domains = status.domains.map { d -> HTML in
            let agents = d.agents.map { a -> HTML in
                let state: HTML = a.rejected.map { r -> HTML in "<span class=\"status failed\">refused</span> \(r)" }
                    ?? (a.current ? "<span class=\"status succeeded\">current</span>" : "<span class=\"status running\">behind</span>")
                return "<tr><td>\(a.id)</td><td>\(a.listen ?? "—")</td><td>\(String(a.appliedRevision))</td><td>\(state)</td></tr>"
            }
            let servers = d.servers.isEmpty ? "none" : d.servers.joined(separator: ", ")
            return """
                <h3 id="domain-\(d.domain)">\(d.domain) <small>group \(d.group)</small></h3>
                <p>Servers: <code>\(servers)</code>\(d.version.map { " (version \($0))" } ?? "")</p>
                \(table(["lb-agent", "listens on", "applied revision", "this domain"], agents, empty: "No lb-agent of group \(d.group) reports: nothing serves this domain."))
                """
        }.joined()
        let eventRows = events.map { e -> HTML in
            "<tr><td>\(when(e.at))</td><td>\(e.user ?? "—")</td><td>\(e.action)</td><td>\(e.detail ?? "")</td><td>\(e.build.map(buildLink) ?? "—")</td></tr>"
        }
        // Why the live version has no retire button, said once (the API refuses with the same words).
        let liveNote: HTML = actions.mayDeploy ? live.map { v -> HTML in "<p class=\"muted\" id=\"live-retire\">\(API.liveCannotRetire(app.name, v.number)).</p>" } ?? "" : ""
        let project: HTML = app.owner.map { o -> HTML in "Project \(projectLink(o))" } ?? "No owning project yet"
        let liveLine: HTML = live.map { v -> HTML in "version <b id=\"live\">\(v.number)</b> (\(cellCounts(v)))" } ?? "<b id=\"live\">none</b> (no version is in the load balancer)"
        let scaling: HTML = app.scaling.map { op -> HTML in "<p class=\"warning\" id=\"scaling\">This app is \(op.description).</p>" } ?? ""
        let forms: HTML = actions.mayDeploy ? "\(deployForm(app, actions: actions, csrf: viewer.csrf))\(scaleForm(app, actions.scaleForm ?? ScaleForm(live), csrf: viewer.csrf))"
            : "<p class=\"muted\" id=\"no-actions\">Your role on this app lets you see it; deploying, scaling, rolling back and retiring need master or above (see <a href=\"/ui/roles\">roles</a>).</p>"
        return layout(title: "\(app.name) · Kiln", refresh: actions.mayDeploy ? nil : 10, viewer: viewer, body: """
            <h1>App <span id="app">\(app.name)</span></h1>
            \(resourceTabs(.app, app.name, current: ""))
            <p>\(project) · live: \(liveLine)</p>
            \(scaling)
            <h2 id="versions">Versions</h2>
            \(table(["version", "build", "image", "state", "settings", "cells", "created", ""], versionRows, empty: "No version yet."))
            \(liveNote)
            <h2 id="instances">Instances</h2>
            \(table(["version", "cell", "instance", "address", "health", "checked"], instanceRows, empty: "No instance runs."))
            <h2>Domains</h2>
            \(domains.rendered.isEmpty ? "<p class=\"muted\">No domain: a pipeline's <code>lb</code> step points one at the app.</p>" : domains)
            \(forms)
            <h2>Events</h2>
            \(table(["at", "by", "what", "detail", "build"], eventRows, empty: "No event yet."))
            """)
    }

    /// A version's state as a coloured label.
    static func versionState(_ state: VersionState) -> HTML {
        let kind: String
        switch state {
        case .live: kind = "succeeded"
        case .ready: kind = "queued"
        case .deploying, .retiring: kind = "running"
        case .failed: kind = "failed"
        case .retired: kind = "cancelled"
        }
        return "<span class=\"status \(kind) version-state\">\(state.rawValue)</span>"
    }

    /// An image by digest, short enough for a table: the repository and the digest's first 12
    /// hex digits, the whole reference in its title.
    static func digest(_ image: String) -> HTML {
        guard let at = image.range(of: "@sha256:") else { return "<code title=\"\(image)\">\(image)</code>" }
        let repository = image[..<at.lowerBound].split(separator: "/").last.map(String.init) ?? ""
        return "<code class=\"digest\" title=\"\(image)\">\(repository)@sha256:\(String(image[at.upperBound...].prefix(12)))…</code>"
    }

    /// A version's instances per cell: its count in each of its cells.
    static func cellCounts(_ v: AppVersion) -> String {
        v.cells.map { "\($0): \(v.settings.replicas(in: $0))" }.joined(separator: ", ")
    }

    /// A version's settings, as the viewer may read them (env values masked below master,
    /// secret env by name only: its values are never in a record).
    static func settingsList(_ s: DeploySettings) -> HTML {
        var items: [String] = ["port \(s.port)"]
        items.append(s.cellReplicas == nil ? "\(s.replicas) per cell" : "\(s.replicas) per cell (" + s.cellReplicas!.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }.joined(separator: ", ") + ")")
        if let cpu = s.cpu { items.append("\(cpu) CPU") }
        if let memory = s.memoryMB { items.append("\(memory) MiB") }
        items.append("health \(s.healthPath)")
        let env = s.env.sorted { $0.key < $1.key }.map { e -> HTML in "<code class=\"env\">\(e.key)=\(e.value)</code>" }.joined(separator: " ")
        let secret: HTML = (s.secretEnv ?? []).isEmpty ? "" : "<br>secret env: \((s.secretEnv ?? []).joined(separator: ", "))"
        let envItem: HTML = s.env.isEmpty ? "" : "<br>env \(env)"
        return "<span class=\"settings-list\">\(items.joined(separator: " · "))\(envItem)\(secret)</span>"
    }

    /// A version's buttons: roll back to a version that ran and is not live (ready or retired),
    /// retire one that runs and is not live; the live one says why it has no retire button.
    static func versionActions(_ app: App, _ v: AppVersion, actions: AppActions, csrf: String) -> HTML {
        guard actions.mayDeploy else { return "" }
        if v.number == app.live?.number {
            return "<small class=\"muted\" id=\"live-note\" title=\"\(API.liveCannotRetire(app.name, v.number))\">live: no retire button (see below the table)</small>"
        }
        var buttons: [HTML] = []
        if v.state == .ready || v.state == .retired {
            buttons.append(ConsoleForm.render(action: "/ui/apps/\(app.name)/versions/\(v.number)/rollback", button: "Roll back to this version", csrf: csrf, id: "rollback-\(v.number)"))
        }
        if v.state == .ready || v.state == .live {
            buttons.append(ConsoleForm.render(action: "/ui/apps/\(app.name)/versions/\(v.number)/retire", button: "Retire", csrf: csrf, id: "retire-\(v.number)"))
        }
        return buttons.joined(separator: " ")
    }

    /// The deploy form: a build of the app's project that succeeded, and the new version's
    /// settings, first those of the live version. Its action ends in `#deploy` (the scale form's in
    /// `#scale`), so that a refused form comes back scrolled to its heading and refusal.
    static func deployForm(_ app: App, actions: AppActions, csrf: String) -> HTML {
        let form = actions.deployForm ?? DeployForm(app.live?.settings)
        func field(_ name: String, _ label: String, help: String, area: Int? = nil, placeholder: String = "") -> HTML {
            let mine = form.problems.of(name)
            let invalid: HTML = mine.isEmpty ? "" : " aria-invalid=\"true\""
            let input: HTML = area.map { rows -> HTML in
                "<textarea id=\"d-\(name)\" name=\"\(name)\" rows=\"\(rows)\" placeholder=\"\(placeholder)\"\(invalid)>\(form[name])</textarea>"
            } ?? "<input id=\"d-\(name)\" name=\"\(name)\" value=\"\(form[name])\" placeholder=\"\(placeholder)\"\(invalid)>"
            return "<div class=\"field\"><label for=\"d-\(name)\">\(label)</label>\(input)\(errorNotes(mine, id: name))<small>\(help)</small></div>"
        }
        let options = actions.builds.map { b -> HTML in
            let selected: HTML = form["build"] == b.id ? " selected" : ""
            let tag = b.tag.map { " · tag " + $0 } ?? ""
            return "<option value=\"\(b.id)\"\(selected)>\(b.id) · \(b.ref)\(tag) · \(when(b.createdAt))</option>"
        }.joined()
        let message: HTML = form.message.map { m -> HTML in "<p class=\"error\" id=\"deploy-error\">\(m)</p>" } ?? ""
        let invalidBuild: HTML = form.problems.of("build").isEmpty ? "" : " aria-invalid=\"true\""
        let none: HTML = actions.builds.isEmpty ? "<p class=\"muted\" id=\"no-builds\">No build of the app's project has succeeded with an image (or you may not read its builds).</p>" : ""
        return """
            <h2 id="deploy">Deploy a build as a new version</h2>
            <p class="muted">The build runs through its project's pipeline steps for this app (deploy, lb, retire), the deploy step with these settings. They start as the live version's: most upgrades change only the image.</p>
            \(message)\(none)
            <form method="post" action="/ui/apps/\(app.name)/deploy#deploy" id="deploy-form" class="settings">\(ConsoleForm.hiddenToken(csrf))
            <div class="field"><label for="d-build">Build</label><select id="d-build" name="build"\(invalidBuild)><option value="">choose a build</option>\(options)</select>\(errorNotes(form.problems.of("build"), id: "build"))<small>Builds of the app's project that succeeded, newest first.</small></div>
            \(field("port", "Port", help: "The port the app listens on in its container."))
            \(field("replicas", "Instances per cell", help: "Left as shown, counts a scaling set per cell go on."))
            \(field("cpu", "CPUs per instance", help: "Empty: the previous version's (none: no limit).", placeholder: "0.5"))
            \(field("memoryMB", "Memory per instance (MiB)", help: "Empty: the previous version's (none: no limit).", placeholder: "512"))
            \(field("healthPath", "Health path", help: "Answers 2xx when an instance is healthy."))
            \(field("env", "Environment", help: "NAME=value, one a line. Kept in clear in the app's record: put secrets in secret env.", area: 4, placeholder: "JAVA_OPTS=-Xmx256m"))
            \(field("secretEnv", "Secret env", help: "Names of the project's secrets given to the app as variables of the same names (kiln secret set); empty: the previous version's.", placeholder: "DB_PASSWORD, API_KEY"))
            <p><button type="submit">Deploy</button></p>
            </form>
            """
    }

    /// The scale form: instances per cell of the live version, in every cell or one.
    static func scaleForm(_ app: App, _ form: ScaleForm, csrf: String) -> HTML {
        let message: HTML = form.message.map { m -> HTML in "<p class=\"error\" id=\"scale-error\">\(m)</p>" } ?? ""
        guard let live = app.live else {
            return "<h2>Scale</h2>\(message)<p class=\"muted\" id=\"no-scale\">Scaling changes the live version, and none is in the load balancer: deploy one first.</p>"
        }
        let cells = ([""] + live.cells).map { c -> HTML in
            let selected: HTML = form["cell"] == c ? " selected" : ""
            return "<option value=\"\(c)\"\(selected)>\(c.isEmpty ? "every cell" : c)</option>"
        }.joined()
        let invalid: HTML = form.problems.of("replicas").isEmpty ? "" : " aria-invalid=\"true\""
        return """
            <h2 id="scale">Scale</h2>
            <p class="muted">Version \(live.number) runs \(cellCounts(live)). Scaling out adds instances to the load balancer once they pass their health check; scaling in takes them out first and stops them after a drain. The page answers once the scaling has ended.</p>
            \(message)
            <form method="post" action="/ui/apps/\(app.name)/scale#scale" id="scale-form" class="settings">\(ConsoleForm.hiddenToken(csrf))
            <div class="field"><label for="s-replicas">Instances per cell</label><input id="s-replicas" name="replicas" value="\(form["replicas"])"\(invalid)>\(errorNotes(form.problems.of("replicas"), id: "replicas"))<small>0 to \(DeploySettings.maxReplicas); 0 empties a cell.</small></div>
            <div class="field"><label for="s-cell">In</label><select id="s-cell" name="cell">\(cells)</select>\(errorNotes(form.problems.of("cell"), id: "cell"))<small></small></div>
            <p><button type="submit">Scale</button></p>
            </form>
            """
    }
}
