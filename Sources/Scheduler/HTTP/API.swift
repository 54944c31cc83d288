import Etcd
import Foundation
import HTTPTypes
import Hummingbird
import KilnCore
import Logging
import NIOCore
import Plugins

/// The scheduler's HTTP API, `/api/v1/…` (JSON, camelCase keys; errors are
/// `{"error": "…"}` with a 4xx or 5xx status).
public struct API: Sendable {
    let store: SchedulerStore
    let logger: Logger
    /// Largest request body accepted.
    let maxBody = 1 << 20
    /// This scheduler's name in the leader election.
    let schedulerID: String

    let metrics: SchedulerMetrics
    /// The sealed secrets (nil store: the scheduler has no key file).
    let secrets: SchedulerSecrets
    /// etcd's size and alarms (nil: not watched; no `kiln_etcd_*` metrics, no `etcd` in the agents' listing).
    let etcdHealth: EtcdHealth?
    /// Scales apps (`POST /api/v1/apps/{name}/scale`); nil: that route answers 503.
    let scaler: (any AppScaling)?

    public init(store: SchedulerStore, schedulerID: String = Dispatcher.defaultID(), metrics: SchedulerMetrics = SchedulerMetrics(),
                secrets: SchedulerSecrets? = nil, etcdHealth: EtcdHealth? = nil, scaler: (any AppScaling)? = nil, logger: Logger) {
        self.etcdHealth = etcdHealth
        self.scaler = scaler
        self.store = store
        self.schedulerID = schedulerID
        self.metrics = metrics
        self.secrets = secrets ?? SchedulerSecrets(keyFile: nil, etcd: store.etcd, keys: store.keys)
        self.logger = logger
    }

    public func addRoutes(to router: Router<KilnRequestContext>) {
        let auth = Authenticator(store: store, logger: logger)
        let access = Access(store: store)
        let hook = GitLabWebhook(store: store, secrets: secrets, logger: logger, metrics: metrics)
        // The webhook keeps its per-project token (GitLab's "Secret token"): no user.
        router.post("hooks/gitlab") { request, _ in try await hook.handle(request) }
        let page = MetricsPage(store: store, metrics: metrics)
        router.get("metrics") { request, context in
            try access.requireAdmin(try await auth.caller(request, context: context), to: "read the metrics")
            var headers = HTTPFields()
            headers[.contentType] = "text/plain; version=0.0.4; charset=utf-8"
            let etcdLines = await etcdHealth?.metricLines() ?? ""
            return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(string: try await page.render() + etcdLines)))
        }
        let api = router.group("api/v1")
        // The one route without a token: load balancers and `kiln up` probe it.
        api.get("health") { _, _ in
            _ = try await store.etcd.status()
            return json(["status": "ok"])
        }
        let identity = IdentityAPI(store: store, auth: auth, access: access, logger: logger)
        identity.addRoutes(to: api)
        SecretsAPI(store: store, secrets: secrets, auth: auth, access: access, identity: identity, logger: logger).addRoutes(to: api)
        RetentionAPI(store: store, auth: auth, access: access, identity: identity, logger: logger).addRoutes(to: api)
        ScaleAPI(shared: self, auth: auth, access: access).addRoutes(to: api)
        addAppRoutes(to: api, auth: auth, access: access)
        AgentSecrets(store: store, secrets: secrets, logger: logger).addRoutes(to: router)
        // Which scheduler answers and which one dispatches (the elected leader).
        api.get("scheduler") { request, context in
            _ = try await auth.caller(request, context: context)
            let leader = try await store.etcd.get(store.keys.leader)?.string
            return json(SchedulerStatus(id: schedulerID, leader: leader, isLeader: leader == schedulerID))
        }
        api.get("projects") { request, context in
            let roles = try await access.roles(of: try await auth.caller(request, context: context))
            return json(try await store.projects().compactMap { p in roles.role(of: p).map { shown(p, to: $0) } })
        }
        api.post("projects") { request, context in
            let caller = try await auth.caller(request, context: context)
            var request = request
            let asked = try decodeBody(Project.self, from: try await request.collectBody(upTo: maxBody))
            let saved = try await saveProject(asked, by: caller, access: access)
            return json(saved.project, status: saved.created ? .created : .ok)  // a master or above: all but the secret
        }
        api.get("projects/:name") { request, context in
            let name = try context.parameters.require("name")
            let (project, role) = try await visibleProjectAndRole(name, .view, try await auth.caller(request, context: context), access)
            return json(shown(project, to: role))
        }
        api.get("projects/:name/activity") { request, context in
            let name = try context.parameters.require("name")
            _ = try await visibleProject(name, .read, try await auth.caller(request, context: context), access)
            let limit = request.uri.queryParameters["limit"].flatMap { Int($0) } ?? 50
            return json(try await store.activity(project: name, limit: max(1, min(limit, 1000))))
        }
        api.post("projects/:name/builds") { request, context in
            let caller = try await auth.caller(request, context: context)
            var request = request
            let body = try await request.collectBody(upTo: maxBody)
            let req = body.readableBytes == 0 ? BuildRequest() : try decodeBody(BuildRequest.self, from: body)
            return json(try await startBuild(try context.parameters.require("name"), req, by: caller, access: access), status: .created)
        }
        // A page of builds, newest first (BuildPage): the next page's cursor in X-Next-Cursor and Link.
        api.get("builds") { request, context in
            let caller = try await auth.caller(request, context: context)
            let query = request.uri.queryParameters
            let project = query["project"].map(String.init)
            let (limit, cursor) = try BuildPage.query(limit: query["limit"].map(String.init), cursor: query["cursor"].map(String.init))
            let page: BuildPage
            if let project {
                _ = try await visibleProject(project, .read, caller, access)
                page = try await store.buildPage(project: project, limit: limit, cursor: cursor)
            } else {
                let roles = try await access.roles(of: caller)
                page = try await store.buildPage(readableBy: roles, projects: caller.admin ? [] : try await store.projects(), limit: limit, cursor: cursor)
            }
            var response = json(page.builds)
            if let next = page.next, let path = page.nextPath(limit: limit, project: project) {
                response.headers[HTTPField.Name(BuildPage.nextCursorHeader)!] = next
                response.headers[HTTPField.Name("Link")!] = "<\(path)>; rel=\"next\""
            }
            return response
        }
        api.get("builds/:id") { request, context in
            json(try await visibleBuild(try context.parameters.require("id"), .read, try await auth.caller(request, context: context), access))
        }
        api.post("builds/:id/cancel") { request, context in
            let caller = try await auth.caller(request, context: context)
            return json(try await cancelBuild(try context.parameters.require("id"), by: caller, access: access))
        }
        api.get("builds/:id/log") { request, context in
            let build = try await visibleBuild(try context.parameters.require("id"), .read, try await auth.caller(request, context: context), access)
            return try await logResponse(store: store, build: build.id, follow: request.uri.queryParameters["follow"], logger: logger)
        }
        api.get("agents") { request, context in
            _ = try await auth.caller(request, context: context)
            // The bare list unless asked for etcd's health beside it (older clients read the list).
            guard request.uri.queryParameters["with"] == "etcd" else { return json(try await store.agents()) }
            return json(AgentsListing(agents: try await store.agents(), etcd: await etcdHealth?.status))
        }

        // Deploys: run the project's pipeline again for a build (a roll back to its image).
        api.post("builds/:id/deploy") { request, context in
            let caller = try await auth.caller(request, context: context)
            let id = try context.parameters.require("id")
            _ = try await visibleBuild(id, .deploy, caller, access)
            let build = try await store.requestPipelineRun(build: id, trigger: "api by \(caller.user)")
            try await store.record(ActivityEvent(user: caller.user, action: "deploy requested", detail: "pipeline run \(build.deploy?.run ?? 0)", build: id), on: .project, build.project)
            logger.info("pipeline run requested", metadata: ["build.id": "\(build.id)", "run": "\(build.deploy?.run ?? 0)", "by": "\(caller.user)"])
            return json(build, status: .accepted)
        }
        api.get("apps") { request, context in
            json(try await visibleApps(try await auth.caller(request, context: context), access))
        }
        api.get("apps/:name") { request, context in
            let caller = try await auth.caller(request, context: context)
            return json(try await shownApp(try context.parameters.require("name"), caller, access).status)
        }
        for kind in ResourceKind.allCases where kind != .project {
            api.get("\(kind.plural)/:name/activity") { request, context in
                let caller = try await auth.caller(request, context: context)
                let name = try context.parameters.require("name")
                try await identity.requireExisting(kind, name, .read, caller)
                let limit = request.uri.queryParameters["limit"].flatMap { Int($0) } ?? 50
                return json(try await store.activity(kind, name, limit: max(1, min(limit, 1000))))
            }
        }
        api.get("cells") { request, context in
            _ = try await auth.caller(request, context: context)
            return json(try await store.cells())
        }
        api.put("cells/:name") { request, context in
            let caller = try await auth.caller(request, context: context)
            try access.requireAdmin(caller, to: "add or change cells")
            var request = request
            var cell = try decodeBody(Cell.self, from: try await request.collectBody(upTo: maxBody))
            let name = try context.parameters.require("name")
            if cell.name != name { throw KilnError.invalid("the body names cell '\(Validation.printable(cell.name))' but the path names '\(Validation.printable(name))'") }
            cell.createdAt = nil
            let created = try await store.saveCell(cell)
            logger.info("cell saved", metadata: ["cell": "\(name)", "by": "\(caller.user)"])
            return json(try await store.cells().first { $0.name == name }, status: created ? .created : .ok)
        }
        api.delete("cells/:name") { request, context in
            let caller = try await auth.caller(request, context: context)
            try access.requireAdmin(caller, to: "remove cells")
            let name = try context.parameters.require("name")
            try await store.deleteCell(name)
            // A cell made again under this name must not inherit the old one's credential.
            if let sealed = secrets.store { try await sealed.deleteCellCredential(name) }
            logger.info("cell removed", metadata: ["cell": "\(name)", "by": "\(caller.user)"])
            return json(["deleted": name])
        }
    }

    /// What a caller with `role` sees of a project: everything but the webhook secret from
    /// master up, the pipeline's env values and URLs masked below.
    func shown(_ project: Project, to role: Role) -> Project {
        role >= Permission.manage.minimumRole ? project.redacted : project.maskedForViewers
    }

    /// The project, if the caller may do `permission` on it; 404 as for a missing project if
    /// they have no role on it.
    func visibleProject(_ name: String, _ permission: Permission, _ caller: Caller, _ access: Access) async throws -> Project {
        try await visibleProjectAndRole(name, permission, caller, access).project
    }

    /// The same, with the caller's role on it (what they are shown depends on it).
    func visibleProjectAndRole(_ name: String, _ permission: Permission, _ caller: Caller, _ access: Access) async throws -> (project: Project, role: Role) {
        // Only a missing project is "not found": etcd failing stays a 503, not a 404.
        guard let project = try await store.projectIfExists(name)?.project else { throw projectNotFound(name) }
        return (project, try await access.require(permission, caller, on: .project, name, project: project, hidden: projectNotFound(name)))
    }

    /// The build, if the caller may do `permission` on its project; 404 as for a missing build
    /// if they have no role on the project.
    func visibleBuild(_ id: String, _ permission: Permission, _ caller: Caller, _ access: Access) async throws -> Build {
        let build = try await store.build(id)
        let hidden = KilnError.notFound("build '\(id)' does not exist")
        guard let project = try await store.projectIfExists(build.project)?.project else {
            guard caller.admin else { throw hidden }
            return build
        }
        try await access.require(permission, caller, on: .project, project.name, project: project, hidden: hidden)
        return build
    }
}

/// Turns any error from a route into `{"error": "…"}` with the status decided where the
/// error was made (`KilnError.httpStatus`); etcd trouble is a 503; anything else a 500.
struct JSONErrorMiddleware: RouterMiddleware {
    typealias Context = KilnRequestContext
    let logger: Logger

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as KilnError {
            return errorResponse(error.httpStatus, error.message)
        } catch let error as HTTPError {
            if error.status == .notFound {
                return errorResponse(404, "no such endpoint: \(request.method) \(request.uri.path)")
            }
            if error.status == .contentTooLarge {
                return errorResponse(413, "request body too large")
            }
            return errorResponse(error.status.code, error.body ?? error.status.reasonPhrase)
        } catch let error as EtcdError {
            logger.error("etcd: \(error)")
            return errorResponse(503, "etcd is unreachable or failing: \(error)")
        } catch {
            logger.error("request \(request.method) \(request.uri.path) failed: \(error)")
            return errorResponse(500, "internal error: \(error)")
        }
    }
}

func errorResponse(_ status: Int, _ message: String) -> Response {
    json(APIErrorBody(error: message), status: HTTPResponse.Status(code: status))
}

func json<T: Encodable>(_ value: T, status: HTTPResponse.Status = .ok) -> Response {
    var headers = HTTPFields()
    headers[.contentType] = "application/json; charset=utf-8"
    let data = (try? KilnJSON.encoder(pretty: true).encode(value)) ?? Data("{}".utf8)
    var buffer = ByteBuffer(data: data)
    buffer.writeString("\n")
    return Response(status: status, headers: headers, body: .init(byteBuffer: buffer))
}

/// Decodes a JSON body, turning decoding errors into a 400 that names the field.
func decodeBody<T: Decodable>(_ type: T.Type, from buffer: ByteBuffer) throws -> T {
    let data = Data(buffer: buffer)
    guard !data.isEmpty else { throw KilnError.invalid("the request body is empty: send a JSON object") }
    do {
        return try KilnJSON.decoder().decode(type, from: data)
    } catch let error as KilnError {
        throw error  // a value a type refused while decoding, with its own reason
    } catch let DecodingError.keyNotFound(key, _) {
        throw KilnError.invalid("missing field '\(key.stringValue)'")
    } catch let DecodingError.typeMismatch(_, ctx) {
        throw KilnError.invalid("field '\(ctx.codingPath.map(\.stringValue).joined(separator: "."))' has the wrong type")
    } catch let DecodingError.valueNotFound(_, ctx) {
        throw KilnError.invalid("field '\(ctx.codingPath.map(\.stringValue).joined(separator: "."))' is null")
    } catch {
        throw KilnError.invalid("the request body is not valid JSON")
    }
}
