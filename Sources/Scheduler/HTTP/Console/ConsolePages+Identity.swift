import Foundation
import KilnCore

/// Who is looking at a console page: named in the header; their session's CSRF token goes
/// into every form the page carries.
struct ConsoleViewer: Sendable, Equatable {
    var user: String
    var admin: Bool
    var csrf: String
}

/// The pages of people and roles: the header, the login page, the role table.
extension ConsolePages {
    /// The bar at the top: links, and for a viewer their name and the log out button.
    static func header(_ viewer: ConsoleViewer?) -> HTML {
        guard let v = viewer else { return "<nav><a href=\"/\"><b>Kiln</b></a></nav>" }
        let admin: HTML = v.admin ? " (admin)" : ""
        let adminLink: HTML = v.admin ? " <a href=\"/ui/admin\" id=\"admin-link\">Admin</a>" : ""
        return """
            <nav><a href="/"><b>Kiln</b></a> <a href="/">Overview</a> <a href="/ui/apps">Apps</a> <a href="/ui/agents">Agents</a> <a href="/ui/groups" id="groups">Groups</a> <a href="/ui/roles">Roles</a> <a href="/ui/new-project" id="new-project">New project</a>\(adminLink)\
            <span class="me">Logged in as <b id="user">\(v.user)</b>\(admin) \(ConsoleForm.render(action: "/ui/logout", button: "Log out", csrf: v.csrf, id: "logout"))</span></nav>
            """
    }

    /// The login form. `token`: the login cookie's value (the form's CSRF token before any
    /// session exists); `next`: where to go once logged in (already checked to be local);
    /// `user`: the name typed before, kept after a refusal; `message`: why it was refused.
    static func login(token: String, next: String, user: String, message: String?) -> HTML {
        let error: HTML = message.map { m -> HTML in "<p class=\"error\" id=\"error\">\(m)</p>" } ?? ""
        return layout(title: "Log in · Kiln", refresh: nil, viewer: nil, body: """
            <h1>Log in</h1>
            \(error)
            <form method="post" action="/ui/login" id="login" class="login">\(ConsoleForm.hiddenToken(token))\
            <input type="hidden" name="next" value="\(next)">
            <label>User name <input name="user" autocomplete="username" value="\(user)" required autofocus></label>
            <label>Password or API token <input type="password" name="password" autocomplete="current-password" required></label>
            <button type="submit">Log in</button>
            </form>
            <p class="muted">A user without a password (the first admin, <code>admin</code>) logs in with one of their API tokens:
            <code>kiln up</code> prints where the admin's token is kept.</p>
            """)
    }

    /// The role table (docs/roles.md, `kiln help roles`): which role may do what, from
    /// `Permission`, so the page cannot drift from the checks.
    static func roles(viewer: ConsoleViewer) -> HTML {
        let rows = Permission.allCases.map { p -> HTML in
            let marks = Role.allCases.map { r -> HTML in
                r >= p.minimumRole ? "<td class=\"yes\">yes</td>" : "<td class=\"no\">—</td>"
            }.joined()
            return "<tr data-permission=\"\(p.rawValue)\"><td><b>\(p.rawValue)</b></td>\(marks)<td>\(p.summary)</td></tr>"
        }
        return layout(title: "Roles · Kiln", refresh: nil, viewer: viewer, body: """
            <h1>Roles</h1>
            <p>Projects, apps and groups each have members with one of five roles; each role may do what the
            roles to its left may, and more. You see only the resources you are a member of: directly, through
            a project's group, or (for an app) through the project that owns it. Admins may do everything,
            and alone manage users, cells, load-balancer groups and agents.</p>
            \(table(["permission"] + Role.allCases.map(\.rawValue) + ["what it covers"], rows, empty: ""))
            """)
    }
}
