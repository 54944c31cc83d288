import Foundation
import Hummingbird
import KilnCore

/// The apps' pages and forms (docs/console.md, "Apps"): `/ui/apps` (every app the viewer may
/// see, as `GET /api/v1/apps` lists them), `/ui/apps/{app}` (versions, instances, domains and
/// what each lb-agent applied, events) and its forms: deploy a build as a new version, roll
/// back, retire a version that is not live, scale. Each form acts through the same function as
/// the API's route (`API+Apps.swift`): the same role (`deploy` on the app), the same
/// validation, the same activity. A viewer below master sees the page without the forms, and
/// a POST from them is refused (the app's 404 without a role, 403 with one) before the form
/// is read.
extension Console {
    func addAppRoutes(to router: Router<KilnRequestContext>) {
        router.get("ui/apps") { request, _ in
            try await page(request) { me in ConsolePages.apps(try await api.visibleApps(me.caller, access), viewer: me.viewer) }
        }
        router.get("ui/apps/:name") { request, context in
            try await page(request) { me in try await appPage(try context.parameters.require("name"), me) }
        }
        form("ui/apps/:name/deploy", to: router) { _, context, me, fields in
            let name = try context.parameters.require("name")
            let app = try await api.visibleApp(name, .deploy, me.caller, access).app
            var deploy = DeployForm(fields: fields)
            let (build, settings, problems) = deploy.read(app: name, base: app.live?.settings ?? app.current?.settings)
            deploy.problems = problems
            var status = 400
            if problems.isEmpty {
                do {
                    _ = try await api.deployBuild(build, to: name, settings: settings, by: me.caller, access: access, via: "console")
                    return ConsoleHTTP.redirect("/ui/apps/\(name)#versions")
                } catch let error as KilnError where error.httpStatus < 500 {
                    // Refused (a run of that build under way, a build of another project, secrets
                    // only the project's masters may name): why, above the form as typed.
                    deploy.message = error.message
                    status = error.httpStatus
                }
            }
            return ConsoleHTTP.html(try await appPage(name, me, deployForm: deploy), status: status)
        }
        form("ui/apps/:name/scale", to: router) { _, context, me, fields in
            let name = try context.parameters.require("name")
            _ = try await api.visibleApp(name, .deploy, me.caller, access)
            var scale = ScaleForm(fields: fields)
            let (asked, problems) = scale.request()
            scale.problems = problems
            var status = 400
            if let asked {
                do {
                    _ = try await api.scaleApp(name, asked, by: me.caller, access: access)
                    return ConsoleHTTP.redirect("/ui/apps/\(name)#instances")
                } catch let error as KilnError where error.httpStatus != 403 {
                    // Refused (a scaling or deploy under way, a cell, no scaler) or failed half way: why, on the page.
                    scale.message = error.message
                    status = error.httpStatus
                }
            }
            return ConsoleHTTP.html(try await appPage(name, me, scaleForm: scale), status: status)
        }
        form("ui/apps/:name/versions/:number/rollback", to: router) { _, context, me, _ in
            let name = try context.parameters.require("name")
            _ = try await api.rollBack(name, to: try API.versionNumber(context), by: me.caller, access: access, via: "console")
            return ConsoleHTTP.redirect("/ui/apps/\(name)#versions")
        }
        form("ui/apps/:name/versions/:number/retire", to: router) { _, context, me, _ in
            let name = try context.parameters.require("name")
            _ = try await api.retireVersion(name, try API.versionNumber(context), by: me.caller, access: access, via: "console")
            return ConsoleHTTP.redirect("/ui/apps/\(name)#versions")
        }
    }

    /// An app's page as `me` may see it (`read` on the app, as `GET /api/v1/apps/{app}`; env
    /// values masked below master): the forms from master up (`deploy`), the deploy form
    /// listing the builds of the app's project that succeeded (if `me` may read them).
    /// `deployForm`, `scaleForm`: a form sent back with its problems.
    func appPage(_ name: String, _ me: SignedIn, deployForm: DeployForm? = nil, scaleForm: ScaleForm? = nil) async throws -> HTML {
        let (status, role) = try await api.shownApp(name, me.caller, access)
        let events = try await store.activity(.app, name, limit: 50)
        var actions = AppActions()
        if role >= Permission.deploy.minimumRole {
            let app = status.app
            actions.mayDeploy = true
            actions.deployForm = deployForm ?? DeployForm(app.live?.settings ?? app.current?.settings)
            actions.scaleForm = scaleForm ?? ScaleForm(app.live)
            if let owner = app.owner, try await store.projectIfExists(owner) != nil, try await access.may(.read, me.caller, on: .project, owner) {
                actions.builds = try await store.buildPage(project: owner, limit: 100).builds.filter { $0.status == .succeeded && $0.image != nil }
            }
        }
        return ConsolePages.app(status, events: events, viewer: me.viewer, actions: actions)
    }
}
