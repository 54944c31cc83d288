import Foundation
import KilnCore

/// What the admin page shows (``Console/adminView(now:)`` reads it; no secret is in it: users
/// as the API shows them, without hashes or tokens; a cell's credential only as set or not).
struct AdminView: Sendable {
    var users: [UserView]
    var cells: [CellView]
    var agents: [AgentInfo]
    var lbGroups: [LBGroupView]
    var usage: Usage
    /// nil: the scheduler does not watch etcd's health.
    var etcd: EtcdHealthStatus?
    /// The add-user form as sent back after a refusal (never with the password).
    var userForm = AdminUserForm()
}

struct AdminUserForm: Sendable, Equatable {
    var name = ""
    var admin = false
    var message: String?
}

/// A cell and what runs in it.
struct CellView: Sendable, Equatable {
    /// One app version with instances (or being deployed) in the cell.
    struct Running: Sendable, Equatable {
        var app: String
        var version: Int
        var state: VersionState
        var image: String
        var instances: Int
        var healthy: Int
    }

    var cell: Cell
    /// Kubernetes cells: whether a credential is sealed for it (nil for local cells, which
    /// have none). Its value is never read.
    var credentialSet: Bool?
    var apps: [Running]

    /// The versions of `apps` that run in `cell`: every version neither retired nor failed
    /// that names the cell or has an instance there, by app and version.
    static func running(_ apps: [App], in cell: String) -> [Running] {
        apps.sorted { $0.name < $1.name }.flatMap { app in
            app.versions.filter { v in
                v.state != .retired && v.state != .failed && (v.cells.contains(cell) || v.instances.contains { $0.cell == cell })
            }.map { v in
                let here = v.instances.filter { $0.cell == cell }
                return Running(app: app.name, version: v.number, state: v.state, image: v.tag ?? v.image, instances: here.count,
                               healthy: here.filter(\.healthy).count)
            }
        }
    }
}

/// One nginx group under `/slb/{group}/`: its domains and the reports of its lb-agents.
struct LBGroupView: Sendable, Equatable {
    struct Domain: Sendable, Equatable {
        var domain: SLBDomain
        var modRevision: Int64
    }

    var name: String
    var domains: [Domain] = []
    var agents: [SLBAgentReport] = []

    /// The revision an lb-agent must have applied to serve every domain as etcd holds it.
    var latestRevision: Int64 { domains.map(\.modRevision).max() ?? 0 }
}

/// The admin page.
extension ConsolePages {
    static let usageColor = "#1565c0"

    static func admin(_ view: AdminView, now: Date, viewer: ConsoleViewer) -> HTML {
        layout(title: "Admin · Kiln", refresh: nil, viewer: viewer, body: """
            <h1>Admin</h1>
            \(etcdWarning(view.etcd))
            <h2 id="usage">Usage per day <small>last \(view.usage.days.count) days, UTC</small></h2>
            \(usageCharts(view.usage))
            <h2 id="etcd">etcd</h2>
            \(etcdSize(view.etcd))
            <h2 id="cells">Cells</h2>
            \(cellsTable(view.cells))
            <h2 id="lb">Load-balancer groups</h2>
            \(lbGroupsTable(view.lbGroups))
            <h2 id="agents">Agents</h2>
            \(agentsTable(view.agents))
            <h2 id="users">Users</h2>
            \(usersTable(view.users))
            \(userForm(view.userForm, csrf: viewer.csrf))
            """)
    }

    // MARK: usage

    /// One bar chart per measure: an SVG of a bar a day, each placed by `x`/`y`/`width`/
    /// `height` attributes in percent (no `style` attribute, which the Content-Security-Policy
    /// refuses), its count in `data-count` and its title; the numbers again as a table.
    static func usageCharts(_ usage: Usage) -> HTML {
        let measures: [(id: String, label: String, count: (Usage.Day) -> Int)] = [
            ("builds", "Builds", \.builds), ("pushes", "Pushes", \.pushes), ("deploys", "Deploys", \.deploys), ("scalings", "Scalings", \.scalings),
        ]
        let slot = 100 / Double(max(1, usage.days.count))
        let charts = measures.map { m -> HTML in
            let counts = usage.days.map(m.count)
            let most = counts.max() ?? 0
            let bars = zip(usage.days, counts).enumerated().map { i, pair -> HTML in
                let (day, count) = pair
                let height = most > 0 ? Double(count) * 100 / Double(most) : 0
                return "<rect data-day=\"\(day.day)\" data-count=\"\(count)\" x=\"\(percent(Double(i) * slot))%\" width=\"\(percent(slot * 0.8))%\" y=\"\(percent(100 - height))%\" height=\"\(percent(height))%\" fill=\"\(usageColor)\"><title>\(day.day): \(count) \(m.id)</title></rect>"
            }.joined()
            return """
                <dt><b>\(m.label)</b>: \(counts.reduce(0, +)) in all, at most \(most) a day</dt>\
                <dd id="usage-\(m.id)"><svg width="100%" height="40" role="img" aria-label="\(m.label) per day">\
                <rect width="100%" height="100%" fill="#eee"/>\(bars)</svg></dd>
                """
        }.joined(separator: "\n")
        let rows = usage.days.reversed().map { d -> HTML in
            "<tr><td>\(d.day)</td><td>\(d.builds)</td><td>\(d.pushes)</td><td>\(d.deploys)</td><td>\(d.scalings)</td></tr>"
        }
        let first = usage.days.first?.day ?? "", last = usage.days.last?.day ?? ""
        return """
            <dl class="usage">\(charts)</dl>
            <p class="muted">From \(first) to \(last). A build counts on the day it was asked for, a push on the day its image was pushed, a deploy and a scaling on the day they finished (apps' activity <code>deployed</code> and <code>scaled</code>).</p>
            <details><summary>The numbers</summary>\(table(["day", "builds", "pushes", "deploys", "scalings"], rows, empty: ""))</details>
            """
    }

    // MARK: etcd

    /// Each member's database against its quota as a bar: the file's size (light) and the part
    /// in use (dark); the alarms beside.
    static func etcdSize(_ etcd: EtcdHealthStatus?) -> HTML {
        guard let etcd else { return "<p class=\"muted\">This scheduler does not watch etcd's health.</p>" }
        guard !etcd.members.isEmpty else { return "<p class=\"muted\">etcd has not been looked at yet.</p>" }
        let members = etcd.members.map { m -> HTML in
            guard let db = m.dbBytes else {
                return "<li class=\"etcd-member\"><b>\(m.endpoint)</b>: did not answer\(m.error.map { ": " + $0 } ?? "")</li>"
            }
            let quota = max(1, m.quotaBytes)
            let size = min(100, Double(db) * 100 / Double(quota)), used = min(100, Double(m.dbInUseBytes ?? db) * 100 / Double(quota))
            let leader: HTML = m.isLeader == true ? " (leader)" : ""
            let summary = "database \(EtcdHealthState.bytes(db)), in use \(m.dbInUseBytes.map(EtcdHealthState.bytes) ?? "?"), quota \(EtcdHealthState.bytes(m.quotaBytes)): \(String(format: "%.1f", size)) %"
            return """
                <li class="etcd-member"><b>\(m.endpoint)</b>\(leader): \(summary)\
                <svg class="bar" data-size="\(percent(size))" data-in-use="\(percent(used))"><title>\(summary)</title>\
                <rect width="\(percent(size))%" height="100%" fill="#90caf9"/><rect width="\(percent(used))%" height="100%" fill="\(usageColor)"/></svg></li>
                """
        }.joined()
        let alarms: HTML = etcd.alarms.isEmpty ? "<p id=\"etcd-alarms\">No alarm.</p>"
            : "<p class=\"error\" id=\"etcd-alarms\">Alarms: \(etcd.alarms.joined(separator: ", "))</p>"
        let checked: HTML = etcd.checkedAt.map { d -> HTML in "<p class=\"muted\">Looked at \(when(d)).</p>" } ?? ""
        return "<ul class=\"legend\" id=\"etcd-members\">\(members)</ul>\(alarms)\(checked)"
    }

    // MARK: cells, lb groups, users

    static func cellsTable(_ cells: [CellView]) -> HTML {
        let rows = cells.sorted { $0.cell.name < $1.cell.name }.map { c -> HTML in
            let credential: HTML = c.credentialSet.map { set -> HTML in set ? "set" : "<span class=\"warning\">none</span>" } ?? "—"
            let apps: HTML = c.apps.isEmpty ? "—" : c.apps.map { r -> HTML in
                "<div class=\"running\"><b>\(r.app)</b> version \(r.version) (\(r.state.rawValue)): \(r.healthy)/\(r.instances) healthy, \(r.image)</div>"
            }.joined()
            // A local endpoint could hold user information; a password in it is never shown.
            let endpoint = Validation.withoutPassword(c.cell.endpoint) ?? c.cell.endpoint
            return "<tr id=\"cell-\(c.cell.name)\"><td class=\"cell\">\(c.cell.name)</td><td>\(c.cell.backend)</td><td>\(endpoint)</td><td>\(credential)</td><td>\(apps)</td></tr>"
        }
        return table(["cell", "backend", "endpoint", "credential", "what runs there"], rows,
                     empty: "No cell: add one with <code>kiln cell add</code>.")
    }

    static func lbGroupsTable(_ groups: [LBGroupView]) -> HTML {
        let rows = groups.map { g -> HTML in
            let domains: HTML = g.domains.isEmpty ? "—" : g.domains.map { d -> HTML in
                let app: HTML = d.domain.app.map { a -> HTML in " → \(a)\(d.domain.version.map { " v" + String($0) } ?? "")" } ?? ""
                return "<div>\(d.domain.domain)\(app): \(d.domain.servers.count) server\(d.domain.servers.count == 1 ? "" : "s")</div>"
            }.joined()
            let agents: HTML = g.agents.isEmpty ? "<span class=\"warning\">no lb-agent</span>" : g.agents.sorted { $0.id < $1.id }.map { a -> HTML in
                let current: HTML = a.appliedRevision >= g.latestRevision ? "current" : "<span class=\"warning\">behind</span>"
                let rejected: HTML = a.rejected.isEmpty ? "" : " <span class=\"error\">nginx refused: \(a.rejected.keys.sorted().joined(separator: ", "))</span>"
                return "<div class=\"lb-agent\"><b>\(a.id)</b>\(a.listen.map { " on " + $0 } ?? ""): revision \(String(a.appliedRevision)) (\(current)), \(when(a.appliedAt))\(rejected)</div>"
            }.joined()
            return "<tr id=\"lb-\(g.name)\"><td>\(g.name)</td><td>\(domains)</td><td>\(agents)</td></tr>"
        }
        return table(["group", "domains", "lb-agents: what each applied"], rows, empty: "No load-balancer group.")
    }

    static func usersTable(_ users: [UserView]) -> HTML {
        let rows = users.map { u -> HTML in
            "<tr><td class=\"user\">\(u.name)</td><td>\(u.admin ? "admin" : "—")</td><td>\(u.hasPassword ? "password" : "tokens only")</td><td>\(when(u.createdAt))</td></tr>"
        }
        return table(["user", "admin", "logs in with", "created"], rows, empty: "No user.")
    }

    /// Adding a user (the API's `POST /api/v1/users`): a name, a password (empty: tokens only)
    /// and the admin flag. After a refusal the name comes back, the password never.
    static func userForm(_ form: AdminUserForm, csrf: String) -> HTML {
        let message: HTML = form.message.map { m -> HTML in "<p class=\"error\" id=\"user-error\">\(m)</p>" } ?? ""
        let admin: HTML = form.admin ? " checked" : ""
        return """
            <h2>Add a user</h2>
            \(message)
            <form method="post" action="/ui/admin/users" id="user-form" class="settings">\(ConsoleForm.hiddenToken(csrf))
            <div class="field"><label for="u-name">Name</label><input id="u-name" name="name" value="\(form.name)" autocomplete="off" required></div>
            <div class="field"><label for="u-password">Password</label><input id="u-password" name="password" type="password" autocomplete="new-password"><small>Empty: the user logs in with API tokens only.</small></div>
            <label class="check"><input type="checkbox" name="admin" id="u-admin"\(admin)> Admin (may do everything)</label>
            <p><button type="submit">Add user</button></p>
            </form>
            """
    }
}
