import Foundation
import HTTPTypes
import Hummingbird
import KilnCore

/// The console's forms that change projects and start builds (docs/console.md):
///
/// - `GET`/`POST /ui/new-project`: a new project (any logged-in user, who becomes its owner);
/// - `GET`/`POST /ui/projects/{name}/edit`: its settings (masters and up);
/// - `POST /ui/projects/{name}/builds`: a manual build (developers and up), then its page;
/// - `POST /ui/builds/{id}/rebuild`: a new build of the same ref and options.
///
/// Each save, build and cancel goes through the API's own functions (`API.saveProject`,
/// `startBuild`, `cancelBuild`), so the console checks the same roles and refuses the same
/// values with the same messages. A refused form comes back with what was typed and each
/// problem beside its input. Every POST is a `Console.form` (session, origin, CSRF token).
extension Console {
    func addProjectRoutes(to router: Router<KilnRequestContext>) {
        router.get("ui/new-project") { request, _ in
            try await page(request) { me in
                ConsolePages.projectForm(.blank, problems: [], editing: nil, revision: nil, message: nil, viewer: me.viewer)
            }
        }
        form("ui/new-project", to: router) { request, _, me, fields in
            try await save(ProjectForm(fields: fields), editing: nil, revision: nil, request: request, me: me)
        }
        router.get("ui/projects/:name/edit") { request, context in
            try await page(request) { me in
                let name = try context.parameters.require("name")
                _ = try await api.visibleProject(name, .manage, me.caller, access)
                guard let current = try await store.projectIfExists(name) else { throw projectNotFound(name) }
                return ConsolePages.projectForm(ProjectForm(current.project.redacted), problems: [], editing: name, revision: current.modRevision,
                                                message: nil, viewer: me.viewer)
            }
        }
        form("ui/projects/:name/edit", to: router) { request, context, me, fields in
            let name = try context.parameters.require("name")
            // The same 404 or 403 page as the form's GET, before anything is read from the form.
            let current = try await api.visibleProject(name, .manage, me.caller, access)
            return try await save(ProjectForm(fields: fields), editing: current.redacted, revision: fields["revision"].flatMap { Int64($0) },
                                  request: request, me: me)
        }
        form("ui/projects/:name/builds", to: router) { request, context, me, fields in
            let name = try context.parameters.require("name")
            let project = try await api.visibleProject(name, .build, me.caller, access)
            var buildForm = BuildForm(fields: fields)
            let (asked, problems) = buildForm.request()
            buildForm.problems = problems
            if problems.isEmpty {
                do {
                    let build = try await api.startBuild(project.name, asked, by: me.caller, access: access)
                    return ConsoleHTTP.redirect("/ui/builds/\(build.id)")
                } catch let error as KilnError where error.httpStatus == 400 || error.httpStatus == 409 {
                    buildForm.message = error.message
                }
            }
            return ConsoleHTTP.html(try await projectPage(name, me, request: request, buildForm: buildForm), status: 400)
        }
        form("ui/builds/:id/rebuild", to: router) { _, context, me, _ in
            let old = try await api.visibleBuild(try context.parameters.require("id"), .build, me.caller, access)
            let build = try await api.startBuild(old.project, BuildForm.rebuild(of: old), by: me.caller, access: access)
            return ConsoleHTTP.redirect("/ui/builds/\(build.id)")
        }
    }

    /// Saves the project a form describes: its problems (the model's own checks, beside each
    /// input) or the API's refusal (a taken name, a role, a change made meanwhile) send the
    /// form back as typed; else the project's page, with the webhook token if this save made
    /// or set one (shown in this answer only), or a redirect to it.
    private func save(_ form: ProjectForm, editing: Project?, revision: Int64?, request: Request, me: SignedIn) async throws -> Response {
        func refused(_ problems: [FieldProblem], _ message: String?, status: Int) -> Response {
            ConsoleHTTP.html(ConsolePages.projectForm(form, problems: problems, editing: editing?.name, revision: revision, message: message, viewer: me.viewer),
                             status: status)
        }
        let (project, problems) = form.read(over: editing, newToken: Secret.random())
        guard problems.isEmpty else { return refused(problems, nil, status: 400) }
        do {
            let saved = try await api.saveProject(project, by: me.caller, access: access, as: editing == nil ? .create : .change(revision: revision))
            guard let token = project.webhookSecret, !token.isEmpty else { return ConsoleHTTP.redirect("/ui/projects/\(saved.project.name)") }
            return ConsoleHTTP.html(try await projectPage(saved.project.name, me, request: request, newToken: token), status: saved.created ? 201 : 200)
        } catch let error as KilnError {
            return refused([], error.message, status: error.httpStatus)
        }
    }

    /// A project's page as `me` may see it: settings for any role; builds and activity from
    /// reporter up; the build form from developer up; the edit link and the webhook box from
    /// master up. `buildForm`: the build form sent back with its problems; `newToken`: the
    /// webhook token the save being answered set.
    func projectPage(_ name: String, _ me: SignedIn, request: Request, buildForm: BuildForm? = nil, newToken: String? = nil) async throws -> HTML {
        let (project, role) = try await api.visibleProjectAndRole(name, .view, me.caller, access)
        let mayRead = role >= Permission.read.minimumRole
        let builds = mayRead ? try await store.buildPage(project: name, limit: 50) : nil
        let activity = mayRead ? try await store.activity(.project, name, limit: 50) : nil
        var actions = ProjectActions()
        if role >= Permission.manage.minimumRole {
            actions.mayEdit = true
            let sealed = try await store.etcd.get(store.keys.webhookSecret(project: name)) != nil
            actions.webhook = WebhookView(url: webhookURL(request), tokenSet: sealed || project.webhookSecret?.isEmpty == false, newToken: newToken)
        }
        if role >= Permission.build.minimumRole {
            actions.buildForm = buildForm ?? BuildForm(project)
            actions.refs = BuildForm.offeredRefs(project, found: RepositoryRefs.latest(in: builds?.builds ?? []))
        }
        return ConsolePages.project(api.shown(project, to: role), builds: builds?.builds, activity: activity, now: Date(), viewer: me.viewer,
                                    older: builds?.next.map { "/ui/builds?project=\(name)&cursor=\($0)" }, actions: actions)
    }

    /// Where GitLab sends this farm's webhooks, as the browser reached the console: the host it
    /// asked for (a proxy's `X-Forwarded-Host` first), https when it came over TLS.
    func webhookURL(_ request: Request) -> String {
        let forwarded = request.headers[HTTPField.Name("X-Forwarded-Host")!]?.split(separator: ",").first.map { $0.trimmingCharacters(in: .whitespaces) }
        let host = forwarded ?? request.head.authority ?? request.headers[HTTPField.Name("Host")!] ?? "SCHEDULER"
        return (cookies(request).secure ? "https://" : "http://") + Validation.printable(host) + "/hooks/gitlab"
    }
}
