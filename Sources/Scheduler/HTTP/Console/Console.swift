import Etcd
import Foundation
import HTTPTypes
import Hummingbird
import KilnCore
import Logging
import NIOCore
import Plugins

/// The web console the scheduler serves beside its API: `/` (projects, recent builds, apps,
/// agents), `/ui/projects/{name}`, `/ui/builds[?project=][&cursor=]` (builds a page at a
/// time), `/ui/builds/{id}` (with the live log), `/ui/agents`,
/// `/ui/roles`, the login and log out of `Console+Login.swift`, and the project and build
/// forms of `Console+Projects.swift` (docs/console.md).
///
/// Every page needs a console session (a cookie, `ConsoleSession`): without one a page
/// redirects to the login page, and what a page fetches (the log, the summary) answers 401.
/// Each page shows only what the viewer may see, decided by `Access` as for the API: a project
/// or build they have no role on is the same 404 page as a missing one. Anything that changes
/// something is a POST added with ``form(_:to:_:)`` (CSRF token, origin check).
///
/// Plain server-rendered HTML. The handlers only read the store and hand the data to the
/// pure functions of `ConsolePages`; the one script (on the build page) follows
/// `/ui/builds/{id}/log?follow=1` and refreshes the build's summary from
/// `/ui/builds/{id}/summary`. Pages are `HTML` values, whose interpolation escapes every
/// `String`, so a value from data cannot open markup.
public struct Console: Sendable {
    let store: SchedulerStore
    let auth: Authenticator
    let access: Access
    /// The API's lookups (`visibleBuild`), so that the console checks exactly what the API does.
    let api: API
    /// `--console-secure-cookies`: mark the cookies `Secure` whatever the request says.
    let secureCookies: Bool
    /// etcd's health, shown on the agents page when it needs a person (nil: not watched).
    let etcdHealth: EtcdHealth?
    let logger: Logger
    /// The registry's API, for the group pages' images (nil: build records only; set by `buildSchedulerApplication`).
    var registry: RegistryClient? = nil

    /// `secrets`: the scheduler's sealed store, where a project form's webhook token goes (nil:
    /// none, and a form that sets a token is told how to start the scheduler with one).
    public init(store: SchedulerStore, secrets: SchedulerSecrets? = nil, secureCookies: Bool = false, etcdHealth: EtcdHealth? = nil,
                scaler: (any AppScaling)? = nil, logger: Logger = Logger(label: "kiln.console")) {
        self.store = store
        self.etcdHealth = etcdHealth
        self.auth = Authenticator(store: store, logger: logger)
        self.access = Access(store: store)
        self.api = API(store: store, schedulerID: "console", secrets: secrets, scaler: scaler, logger: logger)
        self.secureCookies = secureCookies
        self.logger = logger
    }

    public func addRoutes(to router: Router<KilnRequestContext>) {
        addLoginRoutes(to: router)
        router.get("/") { request, _ in
            try await page(request) { me in
                async let projects = store.projects()
                async let apps = store.apps()
                async let agents = store.agents()
                let roles = try await access.roles(of: me.caller)
                let byName = Dictionary((try await projects).map { ($0.name, $0) }) { a, _ in a }
                let recent = try await store.buildPage(readableBy: roles, projects: Array(byName.values), limit: 30, cursor: nil)
                // Each readable project's newest build: the first of its in the recent ones, else its index's newest.
                var last: [String: Build] = [:]
                for b in recent.builds where last[b.project] == nil { last[b.project] = b }
                let others = byName.values.filter { last[$0.name] == nil && roles.may(.read, roles.role(of: $0)) }.map(\.name)
                last.merge(try await store.latestBuilds(of: others)) { a, _ in a }
                let agentList = try await agents
                return ConsolePages.overview(
                    projects: byName.values.filter { roles.role(of: $0) != nil }.map(\.redacted),
                    builds: recent.builds,
                    apps: (try await apps).filter { roles.role(of: $0, projects: byName) != nil },
                    agents: try await hidingBuilds(agentList, from: me.caller, roles: roles, projects: byName),
                    etcd: await etcdHealth?.status, now: Date(), viewer: me.viewer, lastBuilds: last, older: recent.next.map { "/ui/builds?cursor=\($0)" })
            }
        }
        router.get("ui/builds") { request, _ in
            try await page(request) { me in
                let query = request.uri.queryParameters
                let cursor = try BuildPage.query(limit: nil, cursor: query["cursor"].map(String.init)).cursor
                let project = query["project"].map(String.init)
                let builds: BuildPage
                if let project {
                    _ = try await api.visibleProject(project, .read, me.caller, access)
                    builds = try await store.buildPage(project: project, limit: 50, cursor: cursor)
                } else {
                    builds = try await store.buildPage(readableBy: try await access.roles(of: me.caller), projects: me.caller.admin ? [] : try await store.projects(), limit: 50, cursor: cursor)
                }
                let older = builds.next.map { "/ui/builds?\(project.map { "project=\($0)&" } ?? "")cursor=\($0)" }
                return ConsolePages.builds(builds.builds, project: project, older: older, newest: cursor == nil, now: Date(), viewer: me.viewer)
            }
        }
        router.get("ui/projects/:name") { request, context in
            try await page(request) { me in try await projectPage(try context.parameters.require("name"), me, request: request) }
        }
        router.get("ui/builds/:id") { request, context in
            try await page(request) { me in
                let build = try await api.visibleBuild(try context.parameters.require("id"), .read, me.caller, access)
                return ConsolePages.build(build, now: Date(), viewer: me.viewer, mayCancel: try await mayCancel(build, me))
            }
        }
        router.get("ui/builds/:id/summary") { request, context in
            try await fragment(request) { me in
                let build = try await api.visibleBuild(try context.parameters.require("id"), .read, me.caller, access)
                return ConsoleHTTP.html(ConsolePages.buildSummary(build, now: Date(), canceller: try await mayCancel(build, me) ? me.viewer : nil))
            }
        }
        router.get("ui/builds/:id/log") { request, context in
            try await fragment(request) { me in
                let build = try await api.visibleBuild(try context.parameters.require("id"), .read, me.caller, access)
                var response = try await logResponse(store: store, build: build.id, follow: request.uri.queryParameters["follow"], logger: logger)
                ConsoleHTTP.secure(&response.headers)
                return response
            }
        }
        router.get("ui/agents") { request, _ in
            try await page(request) { me in
                var agents = try await store.agents()
                if !me.caller.admin {
                    let roles = try await access.roles(of: me.caller)
                    let byName = Dictionary(try await store.projects().map { ($0.name, $0) }) { a, _ in a }
                    agents = try await hidingBuilds(agents, from: me.caller, roles: roles, projects: byName)
                }
                return ConsolePages.agents(agents, etcd: await etcdHealth?.status, viewer: me.viewer)
            }
        }
        router.get("ui/roles") { request, _ in
            try await page(request) { me in ConsolePages.roles(viewer: me.viewer) }
        }
        form("ui/builds/:id/cancel", to: router) { _, context, me, _ in
            let cancelled = try await api.cancelBuild(try context.parameters.require("id"), by: me.caller, access: access, via: "console")
            return ConsoleHTTP.redirect("/ui/builds/\(cancelled.id)")
        }
        addProjectRoutes(to: router)
        addAppRoutes(to: router)
        addGroupRoutes(to: router)
        addAdminRoutes(to: router)
    }

    /// Whether the build page offers `me` the cancel and rebuild buttons (developers and up).
    private func mayCancel(_ build: Build, _ me: SignedIn) async throws -> Bool {
        try await access.may(.build, me.caller, on: .project, build.project)
    }

    /// Agents as `caller` may see them: every agent and its load, but links only to the
    /// builds they may read (read from the records of the agents' tasks); admins see all.
    private func hidingBuilds(_ agents: [AgentInfo], from caller: Caller, roles: RoleMap, projects: [String: Project]) async throws -> [AgentInfo] {
        guard !caller.admin else { return agents }
        let running = try await store.records(agents.flatMap { $0.tasks ?? [] })
        let visible = Set(running.filter { roles.mayRead($0, projects: projects) }.map(\.id))
        return agents.map { a in
            var a = a
            a.tasks = a.tasks?.filter(visible.contains)
            return a
        }
    }

    // MARK: sessions and answers

    /// A request's logged-in user: who, their session and its cookie.
    struct SignedIn: Sendable {
        let caller: Caller
        let session: ConsoleSession
        let cookie: String
        var viewer: ConsoleViewer { ConsoleViewer(user: caller.user, admin: caller.admin, csrf: session.csrf) }
    }

    func cookies(_ request: Request) -> ConsoleCookies { ConsoleCookies(forced: secureCookies, request: request) }

    /// The session the request's cookie names, if it is valid and its user still exists.
    func signedIn(_ request: Request) async throws -> SignedIn? {
        guard let cookie = ConsoleCookies.value(cookies(request).session, in: request),
              let session = try await store.session(cookie: cookie),
              let user = try await store.user(session.user) else { return nil }
        return SignedIn(caller: Caller(user: user.name, admin: user.admin), session: session, cookie: cookie)
    }

    /// A page: without a session, a redirect to the login page (which comes back here);
    /// an error, an HTML page with the error's status (404 for what the viewer may not see).
    func page(_ request: Request, _ render: (SignedIn) async throws -> HTML) async throws -> Response {
        var me: SignedIn?
        do {
            guard let signed = try await signedIn(request) else { return ConsoleHTTP.toLogin(from: request) }
            me = signed
            return ConsoleHTTP.html(try await render(signed))
        } catch {
            return try errorPage(error, viewer: me?.viewer)
        }
    }

    /// What a page's script fetches: without a session, 401 (a redirect would hand the
    /// script the login page).
    private func fragment(_ request: Request, _ answer: (SignedIn) async throws -> Response) async throws -> Response {
        var me: SignedIn?
        do {
            guard let signed = try await signedIn(request) else {
                return ConsoleHTTP.text("not logged in, or the session has ended: log in again at /ui/login", status: 401)
            }
            me = signed
            return try await answer(signed)
        } catch {
            return try errorPage(error, viewer: me?.viewer)
        }
    }

    /// Adds a console POST route, the one way the console changes anything. Before `act`
    /// runs: a session (else to the login page), the origin, the form and its CSRF token
    /// (`ConsoleForm`; else 403 and nothing changes).
    func form(_ path: RouterPath, to router: Router<KilnRequestContext>,
              _ act: @escaping @Sendable (Request, KilnRequestContext, SignedIn, [String: String]) async throws -> Response) {
        router.post(path) { request, context in
            var me: SignedIn?
            do {
                guard let signed = try await signedIn(request) else { return ConsoleHTTP.redirect("/ui/login") }
                me = signed
                let fields = try await formFields(request)
                try ConsoleForm.checkToken(fields, expected: signed.session.csrf)
                return try await act(request, context, signed, fields)
            } catch {
                return try errorPage(error, viewer: me?.viewer)
            }
        }
    }

    /// The fields of a console form, once the request has shown it comes from a page of this
    /// console (403) and carries a form body (400).
    func formFields(_ request: Request) async throws -> [String: String] {
        var hosts = [request.head.authority, request.headers[HTTPField.Name("Host")!]].compactMap { $0 }
        if let forwarded = request.headers[HTTPField.Name("X-Forwarded-Host")!]?.split(separator: ",").first {
            hosts.append(forwarded.trimmingCharacters(in: .whitespaces))
        }
        guard ConsoleForm.isSameOrigin(origin: request.headers[HTTPField.Name("Origin")!], referer: request.headers[.referer], hosts: hosts) else {
            throw KilnError.forbidden("this form was not sent from a page of this console (its Origin names another site, or it has no Origin): open the console at its own address and try again")
        }
        guard request.headers[.contentType]?.lowercased().hasPrefix("application/x-www-form-urlencoded") == true else {
            throw KilnError.invalid("a console form is sent as application/x-www-form-urlencoded")
        }
        var request = request
        guard let fields = ConsoleForm.parse(String(buffer: try await request.collectBody(upTo: ConsoleForm.maxBody))) else {
            throw KilnError.invalid("the form is malformed (or names a field twice): reload the page and try again")
        }
        return fields
    }

    /// An error as an HTML page with its status; anything but Kiln's and etcd's errors goes
    /// on to the API's error middleware.
    func errorPage(_ error: Error, viewer: ConsoleViewer?) throws -> Response {
        switch error {
        case let error as KilnError:
            return ConsoleHTTP.html(ConsolePages.error(status: error.httpStatus, message: error.message, viewer: viewer), status: error.httpStatus)
        case let error as EtcdError:
            return ConsoleHTTP.html(ConsolePages.error(status: 503, message: "etcd is unreachable or failing: \(error)", viewer: viewer), status: 503)
        default:
            throw error
        }
    }
}

/// The console's own stylesheet and script. They are files beside this one (console.css,
/// console.js) compiled into the binary (SwiftPM's `embedInCode`), so a scheduler needs no
/// resource folder next to it at run time; the pages carry them inline, and the
/// Content-Security-Policy allows exactly these two by their hashes (`ConsoleHTTP`).
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
