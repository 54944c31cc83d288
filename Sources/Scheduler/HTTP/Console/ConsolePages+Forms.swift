import Foundation
import KilnCore

/// What a project's page offers its viewer beyond the settings: each part only to those the
/// routes let act (`Access`), decided by the handler.
struct ProjectActions: Sendable, Equatable {
    /// Masters and up: the link to the edit form.
    var mayEdit = false
    /// Masters and up: where GitLab sends pushes, and the token just set.
    var webhook: WebhookView?
    /// Developers and up: the manual build form, as shown first or as sent back with its problems.
    var buildForm: BuildForm?
    /// Refs the build form offers (`BuildForm.offeredRefs`).
    var refs: [String] = []
}

/// The webhook box of a project's page. `newToken`: the token this very save set, shown once
/// in the answer to the form's POST (never in a URL, a log line or a later page).
struct WebhookView: Sendable, Equatable {
    var url: String
    var tokenSet: Bool
    var newToken: String?
}

/// The project form, the manual build form, the webhook box and the build page's buttons.
extension ConsolePages {
    /// The new-project form (`editing` nil) or a project's edit form, with what was typed and
    /// each problem beside its input; a problem of no input here and `message` (why the save
    /// was refused) head the form. `revision`: the record's mod revision the edit started from.
    static func projectForm(_ form: ProjectForm, problems: [FieldProblem], editing: String?, revision: Int64?, message: String?, viewer: ConsoleViewer) -> HTML {
        var shown: Set<String> = ["repository", "buildImage", "buildCommand", "dockerfile", "context", "defaultBranch", "branches", "protectedRefs",
                                  "caches", "labels", "supersede", "maxConcurrent", "group", "pushTo", "limits", "retention", "webhookSecret", "pipeline"]
        if editing == nil { shown.insert("name") }
        let general = (message.map { [$0] } ?? []) + problems.filter { !shown.contains($0.field) }.map(\.message)
        var top: HTML = ""
        if !general.isEmpty || !problems.isEmpty {
            let lines = general.map { m -> HTML in "<li>\(m)</li>" }.joined()
            let count = problems.filter { shown.contains($0.field) }.count
            let marked: HTML = count > 0 ? "<p>\(count == 1 ? "One field needs" : "\(count) fields need") a change: see the notes beside them.</p>" : ""
            top = "<div class=\"error\" id=\"form-error\"><p><b>The project was not saved.</b></p><ul>\(lines)</ul>\(marked)</div>"
        }
        func field(_ name: String, _ label: String, help: HTML = "", area: Int? = nil, placeholder: String = "", problemField: String? = nil) -> HTML {
            let key = problemField ?? name
            let mine = problems.of(key)
            let invalid: HTML = mine.isEmpty || problemField != nil ? "" : " aria-invalid=\"true\""
            let input: HTML = area.map { rows -> HTML in
                "<textarea id=\"f-\(name)\" name=\"\(name)\" rows=\"\(rows)\" placeholder=\"\(placeholder)\"\(invalid)>\(form[name])</textarea>"
            } ?? "<input id=\"f-\(name)\" name=\"\(name)\" value=\"\(form[name])\" placeholder=\"\(placeholder)\"\(invalid)>"
            let errors = problemField != nil ? "" : errorNotes(mine, id: name)
            return "<div class=\"field\"><label for=\"f-\(name)\">\(label)</label>\(input)\(errors)<small>\(help)</small></div>"
        }
        let supersede = ["": "none", "queued": "queued builds", "running": "queued and running builds"].sorted { $0.key < $1.key }.map { option -> HTML in
            let selected: HTML = form["supersede"] == option.key ? " selected" : ""
            return "<option value=\"\(option.key)\"\(selected)>\(option.value)</option>"
        }.joined()
        let name: HTML = editing == nil
            ? field("name", "Name", help: "Lower-case letters, digits and '-'; also the image's name in the registry. It cannot be changed later.", placeholder: "shop-api")
            : "<input type=\"hidden\" name=\"revision\" value=\"\(revision.map(String.init) ?? "")\">"
        let checked = { (box: String) -> HTML in form[box] == "on" ? " checked" : "" }
        let tokenInvalid: HTML = problems.of("webhookSecret").isEmpty ? "" : " aria-invalid=\"true\""
        let action = editing.map { "/ui/projects/\($0)/edit" } ?? "/ui/new-project"
        let title = editing.map { "Settings of \($0)" } ?? "New project"
        let cancel: HTML = editing.map { n -> HTML in "<a href=\"/ui/projects/\(n)\">Cancel</a>" } ?? "<a href=\"/\">Cancel</a>"
        return layout(title: "\(title) · Kiln", refresh: nil, viewer: viewer, body: """
            <h1>\(title)</h1>
            \(top)
            <form method="post" action="\(action)" id="project-form" class="settings">\(ConsoleForm.hiddenToken(viewer.csrf))
            \(name)
            <fieldset><legend>Code and build</legend>
            \(field("repository", "Repository", help: "Git URL: https://, ssh://, git:// or user@host:path, without a password (set the credential with <code>kiln credential set git</code>).", placeholder: "https://gitlab.example.com/team/shop-api.git"))
            \(field("buildImage", "Build image", help: "The image the build command runs in.", placeholder: "localhost/kiln/jdk17-maven:1"))
            \(field("buildCommand", "Build command", help: "Run with <code>sh -c</code> in the checkout.", area: 3, placeholder: "mvn -B -q package"))
            \(field("dockerfile", "Dockerfile", help: "Path in the checkout."))
            \(field("context", "Context", help: "The image's build context, a folder in the checkout."))
            \(field("labels", "Labels", help: "Labels an agent must carry to build this project, separated by commas.", placeholder: "jdk17, large"))
            </fieldset>
            <fieldset><legend>Branches and caches</legend>
            \(field("defaultBranch", "Default branch", help: "Built when a build names no ref; its builds use the protected caches."))
            \(field("branches", "Branches pushes build", help: "One pattern a line (<code>*</code> matches anything, <code>/</code> too). Empty: the default branch only.", area: 3, placeholder: "main\nrelease/*"))
            \(field("protectedRefs", "Refs that use the protected caches", help: "Besides the default branch; one pattern a line. Only refs trusted with releases: what their builds leave in the caches, the default branch's builds use.", area: 2, placeholder: "release/*\nrefs/tags/v*"))
            \(field("caches", "Caches", help: "Folders the build caches into, as container paths, one a line: each is mounted from the project's cache on the agent when a build uses its caches (protected refs get their own). Empty: <code>/root/.m2</code> (Maven's); <code>none</code>: no cache.", area: 3, placeholder: "/root/.m2\n/root/.gradle"))
            <div class="field"><label for="f-supersede">A newer build of a branch cancels its older</label><select id="f-supersede" name="supersede">\(supersede)</select>\(errorNotes(problems.of("supersede"), id: "supersede"))<small></small></div>
            \(field("maxConcurrent", "At most this many builds at once", help: "Empty: no limit of its own (the agents' capacity still applies)."))
            <label class="check"><input type="checkbox" name="reuseBuilds" id="f-reuseBuilds"\(checked("reuseBuilds"))> Reuse builds: a build whose inputs equal an earlier successful build's takes its image instead of compiling</label>
            </fieldset>
            <fieldset><legend>Limits and retention</legend>
            \(field("limitsMemory", "Memory", placeholder: "4g", problemField: "limits"))\(field("limitsCpus", "CPUs", placeholder: "2", problemField: "limits"))\(field("limitsPids", "Processes", placeholder: "4096", problemField: "limits"))
            \(errorNotes(problems.of("limits"), id: "limits"))<p class="muted">Lower than the agent's limits (a higher one is cut down to them); empty: the agent's.</p>
            \(field("keepBuilds", "Keep the last builds", placeholder: "500", problemField: "retention"))\(field("keepDays", "Keep every build of the last days", placeholder: "90", problemField: "retention"))
            \(errorNotes(problems.of("retention"), id: "retention"))
            </fieldset>
            <fieldset><legend>Registry and pipeline</legend>
            \(field("group", "Group", help: "The group (a namespace of the registry) the project belongs to: its members hold their role here too. Masters of the group only; moving a project between groups, its owners only."))
            \(field("pushTo", "Also push to", help: "Repositories of other registries, host[:port]/path, one a line; the credential comes from <code>kiln credential set registry</code>.", area: 2))
            \(field("pipeline", "Pipeline", help: "What runs after a build succeeds: the API's JSON list of steps (<code>kiln plugins</code> lists each plugin's settings). Empty: none.", area: 8, placeholder: "[{\"plugin\": \"deploy\", \"settings\": {\"app\": \"shop-api\", \"port\": 8080}}]"))
            </fieldset>
            <fieldset><legend>GitLab webhook</legend>
            <div class="field"><label for="f-webhookSecret">Webhook token</label><input id="f-webhookSecret" name="webhookSecret" value="\(form["webhookSecret"])" autocomplete="off"\(tokenInvalid)>\(errorNotes(problems.of("webhookSecret"), id: "webhookSecret"))<small>GitLab's "Secret token". Kept sealed and never shown again: empty keeps the one set.</small></div>
            <label class="check"><input type="checkbox" name="generateWebhookSecret" id="f-generateWebhookSecret"\(checked("generateWebhookSecret"))> Make a new token (shown once, after saving)</label>
            <label class="check"><input type="checkbox" name="removeWebhookSecret" id="f-removeWebhookSecret"\(checked("removeWebhookSecret"))> Remove the token (pushes no longer build)</label>
            </fieldset>
            <p><button type="submit">\(editing == nil ? "Create project" : "Save settings")</button> \(cancel)</p>
            </form>
            """)
    }

    /// A field's problems, each in a paragraph the tests and screen readers find by its id.
    static func errorNotes(_ problems: [FieldProblem], id: String) -> HTML {
        problems.map { p -> HTML in "<p class=\"field-error\" id=\"error-\(id)\">\(p.message)</p>" }.joined()
    }

    /// The manual build form: a ref (the offered ones in a list, any other typed), a commit, an
    /// image tag, the Maven cache, a priority.
    static func buildForm(_ form: BuildForm, project: String, refs: [String], csrf: String) -> HTML {
        func input(_ name: String, _ label: String, placeholder: String = "", list: String? = nil) -> HTML {
            let listAttribute: HTML = list.map { l -> HTML in " list=\"\(l)\"" } ?? ""
            let invalid: HTML = form.problems.of(name).isEmpty ? "" : " aria-invalid=\"true\""
            return "<div class=\"field\"><label for=\"b-\(name)\">\(label)</label><input id=\"b-\(name)\" name=\"\(name)\" value=\"\(form[name])\" placeholder=\"\(placeholder)\"\(listAttribute)\(invalid)>\(errorNotes(form.problems.of(name), id: name))</div>"
        }
        let options = refs.map { r -> HTML in "<option value=\"\(r)\">" }.joined()
        let message: HTML = form.message.map { m -> HTML in "<p class=\"error\" id=\"build-error\">\(m)</p>" } ?? ""
        let mvncache: HTML = form["mvncache"] == "on" ? " checked" : ""
        let rebuild: HTML = form["rebuild"] == "on" ? " checked" : ""
        return """
            <h2>Start a build</h2>
            \(message)
            <form method="post" action="/ui/projects/\(project)/builds" id="build-form" class="settings build">\(ConsoleForm.hiddenToken(csrf))
            \(input("ref", "Ref", placeholder: "branch, tag or refs/…", list: "refs"))<datalist id="refs">\(options)</datalist>
            \(input("commit", "Commit", placeholder: "the ref's newest"))
            \(input("tag", "Image tag", placeholder: "the commit's short id"))
            \(input("priority", "Priority", placeholder: "0"))
            <label class="check"><input type="checkbox" name="mvncache" id="b-mvncache"\(mvncache)> Use the project's caches</label>
            <label class="check"><input type="checkbox" name="rebuild" id="b-rebuild"\(rebuild)> Build for real, even when an earlier build had the same inputs</label>
            <p><button type="submit">Start build</button></p>
            </form>
            """
    }

    /// Where GitLab's webhook goes and, right after a save that set one, the token; later only
    /// whether one is set (it is sealed and never read back).
    static func webhookBox(_ w: WebhookView) -> HTML {
        let token: HTML
        if let t = w.newToken {
            token = "<p><b>Secret token</b> (shown this once; Kiln keeps it sealed and cannot show it again): <code id=\"webhook-token\">\(t)</code></p>"
        } else if w.tokenSet {
            token = "<p id=\"webhook-token-set\">A secret token is set. Kiln cannot show it again: to see one, make a new one in the settings and put it in GitLab.</p>"
        } else {
            token = "<p class=\"warning\" id=\"webhook-token-none\">No secret token is set: pushes do not build until one is (the settings make one).</p>"
        }
        return """
            <h2>GitLab webhook</h2>
            <div id="webhook"><p>In GitLab: Settings → Webhooks, URL <code id="webhook-url">\(w.url)</code>, trigger "Push events" (and "Tag push events" to build tags), with this project's secret token.</p>
            \(token)</div>
            """
    }

    /// The build page's buttons for one who may build: cancel while it has not ended, and
    /// rebuild (a new build of the same ref and options).
    static func buildButtons(_ b: Build, csrf: String) -> HTML {
        let cancel: HTML = b.status.isFinal ? "" : ConsoleForm.render(action: "/ui/builds/\(b.id)/cancel", button: "Cancel build", csrf: csrf, id: "cancel")
        return "\(cancel) \(ConsoleForm.render(action: "/ui/builds/\(b.id)/rebuild", button: "Rebuild", csrf: csrf, id: "rebuild"))"
    }
}
