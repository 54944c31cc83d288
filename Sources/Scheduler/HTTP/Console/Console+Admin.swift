import Etcd
import Foundation
import Hummingbird
import KilnCore

/// The admin page (docs/console.md): `GET /ui/admin`, for admins only (anyone else gets the
/// same 404 page as a page that does not exist, `GET /ui/**`, so the page does not even say
/// it is there), and `POST /ui/admin/users`, adding a user through the API's own
/// `IdentityAPI.addUser`.
///
/// What it reads, each as cheaply as the data allows: users, cells, apps, agents and the
/// load-balancer groups whole (they are few); usage over the last 30 days, counted by the pure
/// ``Usage``: closed days once per scheduler (``UsageCache``), the last days from their records
/// only (builds by their time-ordered ids, each app's activity by its time-ordered keys: never
/// the records before them); etcd's
/// size from `EtcdHealth`'s last look. No secret is read: a cell's credential only as
/// whether its key exists.
extension Console {
    /// Builds read per range while counting usage (each read holds at most this many records).
    static let usagePage = 500

    func addAdminRoutes(to router: Router<KilnRequestContext>) {
        let usageCache = UsageCache()
        router.get("ui/admin") { request, _ in
            try await page(request) { me in
                try requireAdmin(me)
                return ConsolePages.admin(try await adminView(usage: usageCache), now: Date(), viewer: me.viewer)
            }
        }
        // Any other console page that does not exist: the same page a non-admin gets for this
        // one (the router prefers every route that names its parts over this one).
        router.get("ui/**") { request, _ in
            try await page(request) { _ in throw Console.noSuchPage }
        }
        form("ui/admin/users", to: router) { _, _, me, fields in
            try requireAdmin(me)
            let name = fields["name", default: ""].trimmingCharacters(in: .whitespaces)
            let password = fields["password", default: ""]
            let body = NewUser(name: name, password: password.isEmpty ? nil : password, admin: fields["admin"] == "on")
            do {
                _ = try await identity.addUser(body, by: me.caller)
                return ConsoleHTTP.redirect("/ui/admin#users")
            } catch let error as KilnError where error.httpStatus == 400 || error.httpStatus == 409 {
                // The form comes back with the name and why; never with the password.
                var view = try await adminView(usage: usageCache)
                view.userForm = AdminUserForm(name: name, admin: body.admin == true, message: error.message)
                return ConsoleHTTP.html(ConsolePages.admin(view, now: Date(), viewer: me.viewer), status: error.httpStatus)
            }
        }
    }

    /// The API of users, whose `addUser` the page's form calls.
    var identity: IdentityAPI { IdentityAPI(store: store, auth: auth, access: access, logger: logger) }

    /// Anyone but an admin: the console's 404 page, the same as for a page that does not exist.
    func requireAdmin(_ me: SignedIn) throws {
        guard me.caller.admin else { throw Console.noSuchPage }
    }

    static let noSuchPage = KilnError.notFound("there is no such page")

    /// Everything the admin page shows.
    func adminView(usage cache: UsageCache, now: Date = Date()) async throws -> AdminView {
        async let users = store.users()
        async let cells = store.cells()
        async let apps = store.apps()
        async let agents = store.agents()
        async let groups = lbGroups()
        let appList = try await apps
        let usage = try await usage(apps: appList.map(\.name), now: now, cache: cache)
        var cellViews: [CellView] = []
        for cell in try await cells {
            // Whether a credential is sealed for it: the key's existence, never its value.
            let credential = cell.backend == "kubernetes"
                ? try await store.etcd.range(key: store.keys.cellCredential(cell.name), rangeEnd: nil, options: .init(countOnly: true)).count > 0
                : nil
            cellViews.append(CellView(cell: cell, credentialSet: credential, apps: CellView.running(appList, in: cell.name)))
        }
        return AdminView(users: try await users.map(\.view), cells: cellViews, agents: try await agents, lbGroups: try await groups,
                         usage: usage, etcd: await etcdHealth?.status)
    }

    /// Usage over ``Usage/window`` days: the closed days from `cache`, the others from the
    /// records: the builds created since (the farm's build keys are their time-ordered ids, so
    /// the range starts at that time's first id) and each app's activity since (its keys start
    /// with their time), read page by page.
    func usage(apps: [String], now: Date, cache: UsageCache) async throws -> Usage {
        var usage = Usage(endingAt: now)
        let closed = cache.days
        let open = usage.firstOpen(in: closed)
        let since = usage.readFrom(open)
        let sinceMs = Int64(since.timeIntervalSince1970 * 1000)
        let end = store.keys.builds + "c"
        var from = store.keys.builds + NewestWindow.firstID(atMs: sinceMs)
        while true {
            let r = try await store.etcd.range(key: from, rangeEnd: end, options: .init(limit: Self.usagePage))
            // A record counts under its own id only (an agent may write any key under the
            // builds' prefix, and so could copy one record under many keys).
            for kv in r.kvs {
                if let b = try? KilnJSON.decode(Build.self, from: kv.value), kv.key == store.keys.build(b.id) { usage.count(b) }
            }
            guard r.more, let last = r.kvs.last else { break }
            from = last.key + "\0"
        }
        // Each app's activity, a few apps at a time.
        for start in stride(from: 0, to: apps.count, by: SchedulerStore.mergedProjectsMax) {
            let some = apps[start..<min(start + SchedulerStore.mergedProjectsMax, apps.count)]
            let events = try await withThrowingTaskGroup(of: [ActivityEvent].self) { group in
                for app in some { group.addTask { try await activity(of: app, since: since) } }
                return try await group.reduce(into: [ActivityEvent]()) { $0 += $1 }
            }
            for e in events { usage.count(e) }
        }
        usage.keep(closed, before: open)
        cache.remember(usage)
        return usage
    }

    /// An app's activity from `since` on: its keys are `{ms:015}-{random}`, so the read starts
    /// at `since`'s millisecond and ends at ':', which sorts after every digit.
    private func activity(of app: String, since: Date) async throws -> [ActivityEvent] {
        let prefix = store.keys.activity(.app, app)
        var from = String(store.keys.activityEvent(.app, app, at: since, id: "").dropLast())
        var events: [ActivityEvent] = []
        while true {
            let r = try await store.etcd.range(key: from, rangeEnd: prefix + ":", options: .init(limit: Self.usagePage))
            events += r.kvs.compactMap { try? KilnJSON.decode(ActivityEvent.self, from: $0.value) }
            guard r.more, let last = r.kvs.last else { return events }
            from = last.key + "\0"
        }
    }

    /// The nginx groups under `/slb/`: their domains and what each lb-agent applied. Few keys
    /// (a domain each, an agent each), read whole.
    func lbGroups(slb: SLBKeys = SLBKeys()) async throws -> [LBGroupView] {
        var groups: [String: LBGroupView] = [:]
        for kv in try await store.etcd.range(prefix: slb.root + "/", options: .init()).kvs {
            let parts = kv.key.dropFirst(slb.root.count + 1).split(separator: "/", maxSplits: 2, omittingEmptySubsequences: false)
            guard parts.count == 3 else { continue }
            let name = String(parts[0])
            var group = groups[name] ?? LBGroupView(name: name)
            switch parts[1] {
            case "domains":
                if let d = try? KilnJSON.decode(SLBDomain.self, from: kv.value) { group.domains.append(.init(domain: d, modRevision: kv.modRevision)) }
            case "agents":
                if let a = try? KilnJSON.decode(SLBAgentReport.self, from: kv.value) { group.agents.append(a) }
            default:
                continue
            }
            groups[name] = group
        }
        return groups.values.sorted { $0.name < $1.name }
    }
}
