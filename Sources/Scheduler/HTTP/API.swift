import Etcd
import Foundation
import Hummingbird
import KilnCore
import Logging
import NIOCore

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

    public init(store: SchedulerStore, schedulerID: String = Dispatcher.defaultID(), metrics: SchedulerMetrics = SchedulerMetrics(), logger: Logger) {
        self.store = store
        self.schedulerID = schedulerID
        self.metrics = metrics
        self.logger = logger
    }

    public func addRoutes(to router: Router<BasicRequestContext>) {
        let hook = GitLabWebhook(store: store, logger: logger, metrics: metrics)
        router.post("hooks/gitlab") { request, _ in try await hook.handle(request) }
        let page = MetricsPage(store: store, metrics: metrics)
        router.get("metrics") { _, _ in
            var headers = HTTPFields()
            headers[.contentType] = "text/plain; version=0.0.4; charset=utf-8"
            return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(string: try await page.render())))
        }
        let api = router.group("api/v1")
        api.get("health") { _, _ in
            _ = try await store.etcd.status()
            return json(["status": "ok"])
        }
        // Which scheduler answers and which one dispatches (the elected leader).
        api.get("scheduler") { _, _ in
            let leader = try await store.etcd.get(store.keys.leader)?.string
            return json(SchedulerStatus(id: schedulerID, leader: leader, isLeader: leader == schedulerID))
        }
        api.get("projects") { _, _ in json(try await store.projects().map(\.redacted)) }
        api.post("projects") { request, context in
            var request = request
            let project = try decodeBody(Project.self, from: try await request.collectBody(upTo: maxBody))
            let created = try await store.saveProject(project)
            return json(try await store.project(project.name).redacted, status: created ? .created : .ok)
        }
        api.get("projects/:name") { _, context in
            json(try await store.project(try context.parameters.require("name")).redacted)
        }
        api.get("projects/:name/activity") { request, context in
            let limit = request.uri.queryParameters["limit"].flatMap { Int($0) } ?? 50
            return json(try await store.activity(project: try context.parameters.require("name"), limit: max(1, min(limit, 1000))))
        }
        api.post("projects/:name/builds") { request, context in
            var request = request
            let name = try context.parameters.require("name")
            let body = try await request.collectBody(upTo: maxBody)
            let req = body.readableBytes == 0 ? BuildRequest() : try decodeBody(BuildRequest.self, from: body)
            let build = try await store.enqueue(project: name, request: req)
            logger.info("queued", metadata: ["build.id": "\(build.id)", "project": "\(name)", "ref": "\(build.ref)"])
            return json(build, status: .created)
        }
        api.get("builds") { request, _ in
            let project = request.uri.queryParameters["project"].map(String.init)
            let limit = request.uri.queryParameters["limit"].flatMap { Int($0) } ?? 50
            return json(try await store.builds(project: project, limit: max(1, min(limit, 1000))))
        }
        api.get("builds/:id") { _, context in
            json(try await store.build(try context.parameters.require("id")))
        }
        api.post("builds/:id/cancel") { _, context in
            json(try await store.cancel(try context.parameters.require("id")))
        }
        api.get("builds/:id/log") { request, context in
            let id = try context.parameters.require("id")
            let build = try await store.build(id)
            let follow = ["1", "true", "yes"].contains(request.uri.queryParameters["follow"].map(String.init) ?? "")
            var headers = HTTPFields()
            headers[.contentType] = "text/plain; charset=utf-8"
            if !follow {
                let lines = try await store.log(of: id)
                return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(string: lines.map { $0 + "\n" }.joined())))
            }
            let follower = LogFollower(store: store, build: build.id, logger: logger)
            return Response(status: .ok, headers: headers, body: ResponseBody { writer in
                for try await lines in follower.lines() {
                    try await writer.write(ByteBuffer(string: lines.map { $0 + "\n" }.joined()))
                }
                try await writer.finish(nil)
            })
        }
        api.get("agents") { _, _ in json(try await store.agents()) }

        // Deploys: run the project's pipeline again for a build (a roll back to its image).
        api.post("builds/:id/deploy") { _, context in
            let build = try await store.requestPipelineRun(build: try context.parameters.require("id"), trigger: "api")
            logger.info("pipeline run requested", metadata: ["build.id": "\(build.id)", "run": "\(build.deploy?.run ?? 0)"])
            return json(build, status: .accepted)
        }
        api.get("apps") { _, _ in json(try await store.apps()) }
        api.get("apps/:app") { _, context in json(try await store.appStatus(try context.parameters.require("app"))) }
        api.get("cells") { _, _ in json(try await store.cells()) }
        api.put("cells/:name") { request, context in
            var request = request
            var cell = try decodeBody(Cell.self, from: try await request.collectBody(upTo: maxBody))
            let name = try context.parameters.require("name")
            if cell.name != name { throw KilnError.invalid("the body names cell '\(Validation.printable(cell.name))' but the path names '\(Validation.printable(name))'") }
            cell.createdAt = nil
            let created = try await store.saveCell(cell)
            return json(try await store.cells().first { $0.name == name }, status: created ? .created : .ok)
        }
        api.delete("cells/:name") { _, context in
            try await store.deleteCell(try context.parameters.require("name"))
            return json(["deleted": try context.parameters.require("name")])
        }
    }
}

/// Turns any error from a route into `{"error": "…"}` with the status decided where the
/// error was made (`KilnError.httpStatus`); etcd trouble is a 503; anything else a 500.
struct JSONErrorMiddleware: RouterMiddleware {
    typealias Context = BasicRequestContext
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

/// Follows a build's log: what is there, then each new chunk, until the build has ended
/// (and its post-build pipeline run, whose chunks follow the build's own).
///
/// Whoever ends a build (its agent, a cancel of a queued build, the requeue that gives up)
/// writes a chunk with `end: true` in the same transaction as the final record, so the
/// follower stops at that chunk. A check every 10 s is the backstop for a build that
/// somehow ended without one.
struct LogFollower: Sendable {
    let store: SchedulerStore
    let build: String
    let logger: Logger

    func lines() -> AsyncThrowingStream<[String], Error> {
        AsyncThrowingStream { continuation in
            let task = Task {
                do {
                    try await run { continuation.yield($0) }
                    continuation.finish()
                } catch {
                    continuation.finish(throwing: error)
                }
            }
            continuation.onTermination = { _ in task.cancel() }
        }
    }

    /// The build has ended, and so has its pipeline run if it has one.
    private func isDone() async throws -> Bool {
        let b = try await store.build(build)
        return b.status.isFinal && (b.deploy.map { $0.status.isFinal } ?? true)
    }

    private func run(_ emit: @escaping @Sendable ([String]) -> Void) async throws {
        let etcd = store.etcd
        let prefix = store.keys.logs(of: build)
        try await withThrowingTaskGroup(of: Bool.self) { group in
            group.addTask {
                // Every chunk up to this revision was emitted: a later whole log (the follow
                // read it anew) emits only the chunks written since.
                var emitted: Int64?
                for await update in etcd.follow(prefix: prefix) {
                    let first = emitted == nil
                    let chunks: [KeyValue]
                    switch update {
                    case .reset(let kvs, _): chunks = kvs.filter { kv in emitted.map { kv.modRevision > $0 } ?? true }
                    case .events(let events, _): chunks = events.filter { $0.kind == .put }.map(\.kv)
                    }
                    emitted = update.revision
                    for kv in chunks {
                        guard let chunk = try? KilnJSON.decode(LogChunk.self, from: kv.value) else { continue }
                        emit(chunk.lines)
                        if !first, chunk.end == true, try await isDone() { return true }
                    }
                    if first, try await isDone() { return true }
                }
                return true
            }
            group.addTask {
                while true {
                    try await Task.sleep(for: .seconds(10))
                    if try await isDone() { return true }
                }
            }
            _ = try await group.next()
            group.cancelAll()
        }
    }
}
