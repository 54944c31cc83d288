import Etcd
import Foundation
import Hummingbird
import KilnCore
import Logging
import NIOCore

/// The web console the scheduler serves beside its API: `/` (projects, recent builds,
/// agents), `/ui/projects/{name}`, `/ui/builds/{id}` (with the live log) and `/ui/agents`.
///
/// Plain server-rendered HTML. The handlers only read the store and hand the data to the
/// pure functions of `ConsolePages`; the one script (on the build page) follows
/// `/ui/builds/{id}/log?follow=1` and refreshes the build's summary from
/// `/ui/builds/{id}/summary`. Pages are `HTML` values, whose interpolation escapes every
/// `String`, so a value from data cannot open markup.
public struct Console: Sendable {
    let store: SchedulerStore

    public init(store: SchedulerStore) {
        self.store = store
    }

    public func addRoutes(to router: Router<KilnRequestContext>) {
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
        router.get("ui/builds/:id/log") { request, context in
            let build = try await store.build(try context.parameters.require("id"))
            return logResponse(store: store, build: build.id, follow: request.uri.queryParameters["follow"], logger: Logger(label: "kiln.console"))
        }
        router.get("ui/agents") { _, _ in
            try await page { ConsolePages.agents(try await store.agents()) }
        }
    }

    /// Runs a handler that renders HTML; an error becomes an HTML page with the error's
    /// status (404 for an unknown project or build), not the API's JSON.
    private func page(_ render: () async throws -> HTML) async throws -> Response {
        do {
            return htmlResponse(try await render())
        } catch let error as KilnError {
            return htmlResponse(ConsolePages.error(status: error.httpStatus, message: error.message), status: error.httpStatus)
        } catch let error as EtcdError {
            return htmlResponse(ConsolePages.error(status: 503, message: "etcd is unreachable or failing: \(error)"), status: 503)
        }
    }

    private func htmlResponse(_ body: HTML, status: Int = 200) -> Response {
        var headers = HTTPFields()
        headers[.contentType] = "text/html; charset=utf-8"
        headers[.cacheControl] = "no-store"
        return Response(status: .init(code: status), headers: headers, body: .init(byteBuffer: ByteBuffer(string: body.rendered)))
    }
}

/// The console's own stylesheet and script. They are files beside this one (console.css,
/// console.js) compiled into the binary (SwiftPM's `embedInCode`), so a scheduler needs no
/// resource folder next to it at run time; the pages carry them inline.
enum ConsoleAssets {
    static let style = HTML(trusted: text(PackageResources.console_css))

    /// Follows the log with fetch() and a stream reader, appending text as it arrives;
    /// refreshes the summary every 3 s while it runs and once when the log ends.
    static let followScript = HTML(trusted: text(PackageResources.console_js))

    /// The file's text without its final newline (the page puts the tag right after it).
    private static func text(_ bytes: [UInt8]) -> String {
        var text = String(decoding: bytes, as: UTF8.self)
        while text.hasSuffix("\n") { text.removeLast() }
        return text
    }
}
