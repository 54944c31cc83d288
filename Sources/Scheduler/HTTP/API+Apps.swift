import Foundation
import Hummingbird
import KilnCore
import Plugins

/// The apps' actions: deploy a build as a new version, roll back to an earlier version,
/// retire a version that is not live, scale the live one. What the API's routes and the
/// console's app page (`Console+Apps.swift`) both call, so the two check the same role
/// (`deploy` on the app: master and up), validate the same way with the same messages and
/// record the same activity (docs/console.md, docs/roles.md).
///
/// Deploys, roll backs and retires are pipeline runs of a build (the Deploy module's plugins
/// run them on the leading scheduler, as for `POST /api/v1/builds/{id}/deploy`); the run's
/// `pipeline` is made here from the project's, so that a run can carry the form's settings.
/// Scaling is the `AppScaling` handed to the scheduler (`ScaleAPI.swift`).
extension API {
    /// Every app `caller` has a role on (directly, through its owning project or that
    /// project's group): `GET /api/v1/apps` and the console's apps page. The versions' env
    /// values are masked where the caller is below master, as `GET /api/v1/apps/{app}` does.
    func visibleApps(_ caller: Caller, _ access: Access) async throws -> [App] {
        let roles = try await access.roles(of: caller)
        let projects = Dictionary(try await store.projects().map { ($0.name, $0) }) { a, _ in a }
        return try await store.apps().compactMap { app in
            guard let role = roles.role(of: app, projects: projects) else { return nil }
            return role >= Permission.manage.minimumRole ? app : app.maskedForViewers
        }
    }

    /// App `name` and `caller`'s role on it, if they may do `permission`; the same 404 as a
    /// missing app if they have no role on it, a 403 naming the role needed otherwise.
    func visibleApp(_ name: String, _ permission: Permission, _ caller: Caller, _ access: Access) async throws -> (app: App, role: Role) {
        let hidden = appNotFound(name)
        guard let app = try await notFoundAsNil({ try await store.app(name) }) else { throw hidden }
        return (app, try await access.require(permission, caller, on: .app, name, app: app, hidden: hidden))
    }

    /// `GET /api/v1/apps/{app}`: the app with its domains as the lb-agents serve them, as
    /// `caller` may read it (`read`): the versions' env values masked below master.
    func shownApp(_ name: String, _ caller: Caller, _ access: Access) async throws -> (status: AppStatus, role: Role) {
        let role = try await visibleApp(name, .read, caller, access).role
        let status = try await store.appStatus(name)
        return (role >= Permission.manage.minimumRole ? status : status.maskedForViewers, role)
    }

    /// Scales app `name`'s live version for `caller` (`deploy` on it): `POST
    /// /api/v1/apps/{app}/scale` and the console's scale form. Returns once the scaling has
    /// ended; it goes on to its end even when the client goes away.
    func scaleApp(_ name: String, _ asked: ScaleRequest, by caller: Caller, access: Access) async throws -> ScaleResult {
        _ = try await visibleApp(name, .deploy, caller, access)
        try asked.validate()
        guard let scaler else {
            throw KilnError.unavailable("this scheduler runs no deploy backends, so it cannot scale apps: ask one started with `kiln scheduler`")
        }
        logger.info("scaling", metadata: ["app": "\(name)", "replicas": "\(asked.replicas)", "cell": "\(asked.cell ?? "all")", "by": "\(caller.user)"])
        let user = caller.user
        let result = try await outlivingCancellation { try await scaler.scale(app: name, asked, by: user) }
        logger.info("scaled", metadata: ["app": "\(name)", "summary": "\(result.summary)", "by": "\(caller.user)"])
        return result
    }

    /// Deploys build `id` as app `name`'s next version for `caller` (`deploy` on the app, `read`
    /// on the build's project): a pipeline run of the build whose steps are the project's steps
    /// for this app (``appPipeline(_:app:settings:)``), the deploy step's settings being
    /// `settings` when given. `rollBack`: the version this deploy returns to (for the trigger and
    /// the activity). Returns the build with its new run (pending).
    func deployBuild(_ id: String, to name: String, settings: DeploySettings?, rollBack: Int? = nil, by caller: Caller, access: Access,
                     via: String = "api") async throws -> Build {
        let app = try await visibleApp(name, .deploy, caller, access).app
        // The run is one of the build's project (its steps for this app, its secrets): a build
        // of another project than the app's owner needs `deploy` there too, as
        // `POST /api/v1/builds/{id}/deploy` does.
        let build = try await visibleBuild(id, .read, caller, access)
        if build.project != app.owner {
            _ = try await access.require(.deploy, caller, on: .project, build.project, hidden: projectNotFound(build.project))
        }
        // A build of the owning project, of a project whose pipeline made one of its versions,
        // or of one the app's members allow (what the deploy step itself checks, said sooner).
        let projects = Set(app.owner.map { [$0] } ?? []).union(app.versions.map(\.project))
        var allowed = projects.isEmpty || projects.contains(build.project)
        if !allowed { allowed = app.allows(project: build.project, members: try await store.members(.app, name).members) }
        guard allowed else {
            throw KilnError.invalid("build \(id) is of project \(build.project); app \(name) runs builds of \(projects.sorted().joined(separator: ", ")): choose one of theirs")
        }
        guard build.status == .succeeded, build.image != nil else {
            throw KilnError.conflict("build \(id) is \(build.status.rawValue)\(build.status == .succeeded ? " but pushed no image" : ""): only a build that succeeded can be deployed")
        }
        if let settings { try Self.settingsProblems(settings, app: name).throwFirst() }
        let project = try await store.project(build.project)
        // Naming secrets the app does not get yet hands their values to its instances: who may
        // put them in the project's pipeline (manage on the project) only.
        // Names this project gave the app already (another project's names say nothing of
        // what this project's secrets may reach).
        let given = Set(app.versions.filter { $0.project == build.project }.flatMap { $0.settings.secretEnv ?? [] })
            .union((project.pipeline ?? []).filter { $0.plugin == "deploy" && $0.settings["app"] == .string(name) }
                .flatMap { step -> [String] in
                    guard case .array(let names)? = step.settings["secretEnv"] else { return [] }
                    return names.compactMap { if case .string(let n) = $0 { n } else { nil } }
                })
        if let asked = settings?.secretEnv, !Set(asked).isSubset(of: given) {
            try await access.require(.manage, caller, on: .project, project.name, project: project, hidden: projectNotFound(project.name))
        }
        let pipeline = Self.appPipeline(project.pipeline ?? [], app: app, settings: settings)
        try PluginCatalog.validate(pipeline)
        let what = rollBack.map { "roll back to version \($0)" } ?? "deploy"
        let requested = try await store.requestPipelineRun(build: id, trigger: "\(via): \(what) by \(caller.user)", pipeline: pipeline)
        let run = requested.deploy?.run ?? 0
        try await store.record(ActivityEvent(user: caller.user, action: rollBack == nil ? "deploy requested" : "roll back requested",
                                             detail: "build \(id) as the next version of \(name)\(rollBack.map { " (the build and settings of version \($0))" } ?? "") in pipeline run \(run)",
                                             build: id), on: .app, name)
        try await store.record(ActivityEvent(user: caller.user, action: "deploy requested", detail: "pipeline run \(run): \(what) of app \(name)", build: id),
                               on: .project, build.project)
        logger.info("app deploy requested", metadata: ["app": "\(name)", "build.id": "\(id)", "run": "\(run)", "by": "\(caller.user)", "via": "\(via)"])
        return requested
    }

    /// Rolls app `name` back to version `number` for `caller`: its build deployed again as the
    /// next version, with that version's settings. Only a version that ran and is not live
    /// (ready or retired) can be returned to.
    func rollBack(_ name: String, to number: Int, by caller: Caller, access: Access, via: String = "api") async throws -> Build {
        let app = try await visibleApp(name, .deploy, caller, access).app
        guard let version = app.version(number) else { throw versionNotFound(name, number) }
        guard version.number != app.live?.number else {
            throw KilnError.conflict("version \(number) of \(name) is live already: roll back to an earlier one")
        }
        guard version.state == .ready || version.state == .retired else {
            throw KilnError.conflict("version \(number) of \(name) is \(version.state.rawValue): only a version that ran (ready or retired) can be rolled back to")
        }
        return try await deployBuild(version.build, to: name, settings: version.settings, rollBack: number, by: caller, access: access, via: via)
    }

    /// Retires version `number` of app `name` for `caller`: a pipeline run of its build with one
    /// `retire` step naming it (out of every domain, drained, stopped). The live version cannot
    /// be retired: it leaves the load balancer only when another takes its place.
    func retireVersion(_ name: String, _ number: Int, by caller: Caller, access: Access, via: String = "api") async throws -> Build {
        let app = try await visibleApp(name, .deploy, caller, access).app
        guard let version = app.version(number) else { throw versionNotFound(name, number) }
        if version.number == app.live?.number {
            throw KilnError.conflict(Self.liveCannotRetire(name, number))
        }
        switch version.state {
        case .ready, .live: break
        case .retired, .failed: throw KilnError.conflict("version \(number) of \(name) is \(version.state.rawValue) already: nothing runs to retire")
        case .deploying, .retiring: throw KilnError.conflict("version \(number) of \(name) is \(version.state.rawValue): wait for its pipeline run to end")
        }
        // The drain the project's own retire step gives, else the plugin's default.
        let project = try await store.project(version.project)
        var settings: [String: JSONValue] = ["app": .string(name), "version": .number(Double(number))]
        settings["drainSeconds"] = project.pipeline?.first { $0.plugin == "retire" && $0.settings["app"] == .string(name) }?.settings["drainSeconds"]
        let requested = try await store.requestPipelineRun(build: version.build, trigger: "\(via): retire version \(number) by \(caller.user)",
                                                           pipeline: [PipelineStep(plugin: "retire", settings: settings)])
        try await store.record(ActivityEvent(user: caller.user, action: "retire requested",
                                             detail: "version \(number) of \(name) in pipeline run \(requested.deploy?.run ?? 0) of its build", build: version.build),
                               on: .app, name)
        logger.info("retire requested", metadata: ["app": "\(name)", "version": "\(number)", "by": "\(caller.user)", "via": "\(via)"])
        return requested
    }

    /// Why the live version has no retire button.
    static func liveCannotRetire(_ name: String, _ number: Int) -> String {
        "version \(number) of \(name) is live: it leaves the load balancer only when another version takes its place. Deploy a build or roll back to an earlier version; the pipeline's retire step then stops this one"
    }

    // MARK: the pipeline a deploy runs

    /// The deploy step's settings for `s`: the names the `deploy` plugin takes. No `replicas`
    /// when `s` has counts per cell (the current version's go on); no `cpu`, `memoryMB` or
    /// `secretEnv` when unset (a step cannot unset them: the previous version's go on).
    static func deployStepSettings(_ s: DeploySettings) -> [String: JSONValue] {
        var d: [String: JSONValue] = ["port": .number(Double(s.port)), "healthPath": .string(s.healthPath),
                                      "env": .object(s.env.mapValues { .string($0) })]
        if s.cellReplicas == nil { d["replicas"] = .number(Double(s.replicas)) }
        if let cpu = s.cpu { d["cpu"] = .number(cpu) }
        if let memory = s.memoryMB { d["memoryMB"] = .number(Double(memory)) }
        if let names = s.secretEnv, !names.isEmpty { d["secretEnv"] = .array(names.map { .string($0) }) }
        return d
    }

    /// The settings in a deploy form: each wrong one as a problem of its field, with the
    /// message the pipeline's validation gives (the deploy plugin's ranges and rules).
    static func settingsProblems(_ s: DeploySettings, app: String, skipping: Set<String> = []) -> [FieldProblem] {
        let all = deployStepSettings(s)
        func check(_ field: String, _ settings: [String: JSONValue]) -> FieldProblem? {
            FieldProblem.check(field) { try PluginCatalog.validate([PipelineStep(plugin: "deploy", settings: settings)]) }.map {
                FieldProblem(field: $0.field, message: $0.message.replacingOccurrences(of: "pipeline step 1 (deploy): ", with: ""))
            }
        }
        var problems: [FieldProblem] = []
        for (key, value) in all.sorted(by: { $0.key < $1.key }) where !skipping.contains(key) {
            var one: [String: JSONValue] = ["app": .string(app), "port": .number(8080)]
            one[key] = value
            if let p = check(key, one) { problems.append(p) }
        }
        if s.cellReplicas != nil, !skipping.contains("replicas"), !(1...DeploySettings.maxReplicas).contains(s.replicas) {
            problems.append(FieldProblem(field: "replicas", message: "replicas \(s.replicas) is out of range: give 1 to \(DeploySettings.maxReplicas) instances per cell"))
        }
        // Rules between settings (a name in both env and secretEnv), once each is right on its own.
        if problems.isEmpty, skipping.isEmpty, let p = check("secretEnv", all.merging(["app": .string(app)]) { a, _ in a }) { problems.append(p) }
        return problems
    }

    /// What a deploy of `app` from its page runs: the project's steps for this app (deploy, lb,
    /// retire naming it) and its notify steps, in their order; steps for other apps are left
    /// out (deploying one app deploys no other). A pipeline that no longer deploys the app gets
    /// the steps its newest version was made with: deploy (its backend and cells), an lb step
    /// per domain, retire. `settings`: the deploy step's settings instead of the project's.
    static func appPipeline(_ steps: [PipelineStep], app: App, settings: DeploySettings?) -> [PipelineStep] {
        let name = JSONValue.string(app.name)
        func mine(_ step: PipelineStep) -> Bool { step.settings["app"] == name }
        var pipeline = steps.filter { mine($0) || $0.plugin == "notify" }
        if !pipeline.contains(where: { $0.plugin == "deploy" && mine($0) }) {
            let base = app.live ?? app.current ?? app.versions.last
            var deploy: [String: JSONValue] = ["app": name, "port": .number(Double(base?.settings.port ?? 8080))]
            if let base {
                deploy["backend"] = .string(base.backend)
                if !base.cells.isEmpty { deploy["cells"] = .array(base.cells.map { .string($0) }) }
            }
            pipeline = [PipelineStep(plugin: "deploy", settings: deploy)]
                + app.lb.map { PipelineStep(plugin: "lb", settings: ["app": name, "group": .string($0.group), "domain": .string($0.domain)]) }
                + [PipelineStep(plugin: "retire", settings: ["app": name])] + pipeline.filter { $0.plugin == "notify" }
        }
        guard let settings else { return pipeline }
        let given = deployStepSettings(settings)
        return pipeline.map { step in
            guard step.plugin == "deploy", mine(step) else { return step }
            var s = step
            for key in ["port", "replicas", "cpu", "memoryMB", "env", "healthPath", "secretEnv"] { s.settings[key] = given[key] }
            return s
        }
    }

    // MARK: routes

    /// `POST /api/v1/apps/{app}/deploy` (``KilnCore/AppDeployRequest``),
    /// `POST /api/v1/apps/{app}/versions/{n}/rollback` and `…/retire`: each answers 202 with
    /// the build whose pipeline run carries the action out (follow it at `/api/v1/builds/{id}`).
    func addAppRoutes(to api: RouterGroup<KilnRequestContext>, auth: Authenticator, access: Access) {
        api.post("apps/:name/deploy") { request, context in
            let caller = try await auth.caller(request, context: context)
            let name = try context.parameters.require("name")
            _ = try await visibleApp(name, .deploy, caller, access)
            var request = request
            let asked = try decodeBody(AppDeployRequest.self, from: try await request.collectBody(upTo: maxBody))
            return json(try await deployBuild(asked.build, to: name, settings: asked.settings, by: caller, access: access), status: .accepted)
        }
        api.post("apps/:name/versions/:number/rollback") { request, context in
            let caller = try await auth.caller(request, context: context)
            return json(try await rollBack(try context.parameters.require("name"), to: try Self.versionNumber(context), by: caller, access: access), status: .accepted)
        }
        api.post("apps/:name/versions/:number/retire") { request, context in
            let caller = try await auth.caller(request, context: context)
            return json(try await retireVersion(try context.parameters.require("name"), try Self.versionNumber(context), by: caller, access: access), status: .accepted)
        }
    }

    /// The `{n}` of a version's path: a positive number (400 otherwise).
    static func versionNumber(_ context: KilnRequestContext) throws -> Int {
        let text = try context.parameters.require("number")
        guard let n = Int(text), n > 0 else { throw KilnError.invalid("'\(Validation.printable(String(text.prefix(20))))' is not a version number: give 1, 2, 3…") }
        return n
    }
}

func appNotFound(_ name: String) -> KilnError {
    KilnError.notFound("app '\(Validation.printable(name))' does not exist: an app appears when a project's pipeline deploys it")
}

func versionNotFound(_ app: String, _ number: Int) -> KilnError {
    KilnError.notFound("version \(number) of app '\(Validation.printable(app))' does not exist (`kiln apps \(app)` lists its versions)")
}
