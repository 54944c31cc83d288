import Foundation
import KilnCore

/// What the members tab offers its viewer, decided by the console from their role with the
/// same rules the API applies when they act (`Members.set`, `Members.remove`).
struct MemberActions: Sendable, Equatable {
    /// Masters and up: the add form, and change and remove on members below owner.
    var mayManage = false
    /// Owners (and admins): the same on owners, and "owner" among the roles offered.
    var mayManageOwners = false
}

/// The members and activity tabs of projects, apps and groups (docs/console.md): who holds
/// which role, the forms to change that beside the role table, and the resource's feed.
extension ConsolePages {
    /// The page of the resource itself (its first tab).
    static func resourcePath(_ kind: ResourceKind, _ name: String) -> String { "/ui/\(kind.plural)/\(name)" }

    /// The tab links of a resource page; `current`: "", "members" or "activity".
    static func resourceTabs(_ kind: ResourceKind, _ name: String, current: String) -> HTML {
        let first = kind == .group ? "Images" : kind == .app ? "App" : "Project"
        let links = [("", first), ("members", "Members"), ("activity", "Activity")].map { tab -> HTML in
            let path = resourcePath(kind, name) + (tab.0.isEmpty ? "" : "/" + tab.0)
            let id = "tab-" + (tab.0.isEmpty ? kind.rawValue : tab.0)
            return tab.0 == current ? "<b id=\"\(id)\">\(tab.1)</b>" : "<a id=\"\(id)\" href=\"\(path)\">\(tab.1)</a>"
        }
        return "<p class=\"tabs\">\(links.joined(separator: " · "))</p>"
    }

    /// The members tab. `typed`: what a refused form had (user, role), shown again with
    /// `error`, the refusal; `notice`: what the last change did.
    /// `deployers`: for an app, the other projects its owners allow to deploy into it.
    static func members(_ kind: ResourceKind, _ name: String, members: [Member], actions: MemberActions, viewer: ConsoleViewer,
                        error: String? = nil, typed: (user: String, role: String)? = nil, deployers: [String] = []) -> HTML {
        let base = resourcePath(kind, name) + "/members"
        let offered = Role.allCases.filter { $0 != .owner || actions.mayManageOwners }
        let rows = members.map { m -> HTML in
            let mayTouch = actions.mayManage && (m.role != .owner || actions.mayManageOwners)
            var cells: HTML = ""
            if mayTouch {
                cells = """
                    <form method="post" action="\(base)" class="inline" data-user="\(m.user)">\(ConsoleForm.hiddenToken(viewer.csrf))\
                    <input type="hidden" name="user" value="\(m.user)">\(roleSelect(offered, selected: m.role.rawValue, id: nil))\
                    <button type="submit">Change</button></form> \
                    \(ConsoleForm.render(action: base + "/remove", button: "Remove", csrf: viewer.csrf, fields: [("user", m.user)]))
                    """
            } else if m.user == viewer.user {
                cells = ConsoleForm.render(action: base + "/remove", button: "Leave", csrf: viewer.csrf, id: "leave", fields: [("user", m.user)])
            }
            return "<tr data-member=\"\(m.user)\"><td class=\"user\">\(m.user)</td><td class=\"role\">\(m.role.rawValue)</td><td>\(cells)</td></tr>"
        }
        let problem: HTML = error.map { e -> HTML in "<p class=\"error\" id=\"error\">\(e)</p>" } ?? ""
        let add: HTML
        if actions.mayManage {
            add = """
                <h2>Add a member, or change one's role</h2>
                <form method="post" action="\(base)" id="member-form" class="settings">\(ConsoleForm.hiddenToken(viewer.csrf))
                <div class="field"><label for="m-user">User name</label><input id="m-user" name="user" value="\(typed?.user ?? "")" required autocomplete="off"></div>
                <div class="field"><label for="m-role">Role</label>\(roleSelect(offered, selected: typed?.role ?? Role.developer.rawValue, id: "m-role"))</div>
                <button type="submit">Save</button>
                </form>
                """
        } else {
            add = "<p class=\"muted\" id=\"no-member-form\">Masters and owners add members and change roles (see the table).</p>"
        }
        let inherited: HTML = kind == .group ? "Members of a group hold their role on every project and image in it."
            : kind == .project ? "Members of the project's group hold their group role here too."
            : "Members of the project that owns the app hold their project role here too."
        let allowed: HTML = deployers.isEmpty ? ""
            : "<p id=\"deployers\">Besides its own project, the pipelines of \(deployers.sorted().map(projectLink).joined(separator: ", ")) may deploy into this app (its owners decide: <code>PUT /api/v1/apps/\(name)/projects/PROJECT</code>).</p>"
        return layout(title: "Members of \(name) · Kiln", refresh: nil, viewer: viewer, body: """
            <h1>Members of \(kind.rawValue) <span id="resource">\(name)</span></h1>
            \(resourceTabs(kind, name, current: "members"))
            \(problem)
            <div class="split"><div>
            \(table(["user", "role", ""], rows, empty: "No members."))
            <p class="muted">\(inherited)</p>
            \(allowed)
            \(add)
            </div>
            <aside id="role-help"><h2>What each role may do</h2>\(roleTable())</aside>
            </div>
            """)
    }

    static func roleSelect(_ roles: [Role], selected: String, id: String?) -> HTML {
        let idAttribute: HTML = id.map { i -> HTML in " id=\"\(i)\"" } ?? ""
        let options = roles.map { r -> HTML in
            let mark: HTML = r.rawValue == selected ? " selected" : ""
            return "<option value=\"\(r.rawValue)\"\(mark)>\(r.rawValue)</option>"
        }
        return "<select name=\"role\"\(idAttribute)>\(options.joined())</select>"
    }

    /// The role table (as `/ui/roles` and docs/roles.md), compact, from `Permission`.
    static func roleTable() -> HTML {
        let rows = Permission.allCases.map { p -> HTML in
            let marks = Role.allCases.map { r -> HTML in r >= p.minimumRole ? "<td class=\"yes\">yes</td>" : "<td class=\"no\">—</td>" }.joined()
            return "<tr data-permission=\"\(p.rawValue)\"><td title=\"\(p.summary)\"><b>\(p.rawValue)</b><br><small>\(p.summary)</small></td>\(marks)</tr>"
        }
        return table(["permission"] + Role.allCases.map(\.rawValue), rows, empty: "")
    }

    /// The activity tab: the newest `entries`, builds with their status.
    static func activity(_ kind: ResourceKind, _ name: String, entries: [ActivityEntry], viewer: ConsoleViewer) -> HTML {
        layout(title: "Activity of \(name) · Kiln", refresh: 30, viewer: viewer, body: """
            <h1>Activity of \(kind.rawValue) <span id="resource">\(name)</span></h1>
            \(resourceTabs(kind, name, current: "activity"))
            \(activityFeed(entries))
            """)
    }

    static func activityFeed(_ entries: [ActivityEntry]) -> HTML {
        let rows = entries.map { a -> HTML in
            let what: HTML
            if let build = a.build, let status = a.status {
                let trigger = a.trigger ?? ""
                what = "build \(buildLink(build)) \(badge(status)) <small>\(trigger) · \(a.ref ?? "") \(a.tag.map { "· tag " + $0 } ?? "")</small>"
            } else if let build = a.build {
                what = "\(a.action) \(buildLink(build))"
            } else {
                what = "\(a.action)"
            }
            let detail = [a.detail, a.note].compactMap { $0 }.joined(separator: " — ")
            return "<tr class=\"activity\"><td>\(when(a.at))</td><td>\(a.user ?? "—")</td><td>\(what)</td><td>\(detail)</td></tr>"
        }
        return table(["at", "who", "what", "detail"], rows, empty: "No activity yet.")
    }
}
