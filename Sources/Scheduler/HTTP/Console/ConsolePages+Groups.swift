import Foundation
import KilnCore

/// What the group page offers its viewer (from their role on the group and on each
/// repository's project; the routes that act check again).
struct GroupActions: Sendable, Equatable {
    /// Masters and up of the group: the visibility form.
    var mayManage = false
    /// Repositories whose tags the viewer may delete (masters and up of their project, else of the group).
    var mayDelete: Set<String> = []
}

/// The groups pages: the groups the viewer is a member of, and a group's projects, visibility
/// and image repositories with their tags (docs/console.md).
extension ConsolePages {
    /// `groups`: those the viewer may see, each with their role on it.
    static func groups(_ groups: [(group: Group, role: Role?)], viewer: ConsoleViewer) -> HTML {
        let rows = groups.map { g -> HTML in
            "<tr><td class=\"group\">\(groupLink(g.group.name))</td><td>\(g.group.visibility.rawValue)</td><td>\(g.role?.rawValue ?? "—")</td><td>\(when(g.group.createdAt))</td></tr>"
        }
        return layout(title: "Groups · Kiln", refresh: nil, viewer: viewer, body: """
            <h1>Groups</h1>
            <p class="muted">A group is a namespace of the registry (<code>GROUP/NAME</code>) and of projects; its members hold
            their role on every project and image in it. Make one with <code>POST /api/v1/groups</code>.</p>
            \(table(["group", "visibility", "your role", "created"], rows, empty: "No group you are a member of."))
            """)
    }

    /// The group's page: visibility (a form for masters and up), projects, and, for readers
    /// (`images` non-nil), its repositories. `notice`: what the last action did; `error`: why it was refused.
    static func group(_ group: Group, role: Role, projects: [String], images: GroupImages?, actions: GroupActions, viewer: ConsoleViewer,
                      notice: String? = nil, error: String? = nil) -> HTML {
        let base = "/ui/groups/\(group.name)"
        let visibility: HTML
        if actions.mayManage {
            let options = [Group.Visibility.private, .public].map { v -> HTML in
                let mark: HTML = v == group.visibility ? " selected" : ""
                return "<option value=\"\(v.rawValue)\"\(mark)>\(v.rawValue)</option>"
            }.joined()
            visibility = """
                <form method="post" action="\(base)/visibility" id="visibility-form" class="inline">\(ConsoleForm.hiddenToken(viewer.csrf))\
                <label>Visibility <select name="visibility" id="visibility">\(options)</select></label> <button type="submit">Save</button></form>
                """
        } else {
            visibility = "Visibility: <b id=\"visibility\">\(group.visibility.rawValue)</b>"
        }
        let projectList: HTML = projects.isEmpty ? "<p class=\"muted\">No project in this group.</p>"
            : "<ul id=\"projects\">\(projects.map { p -> HTML in "<li>\(projectLink(p))</li>" }.joined())</ul>"
        let shown: HTML = images.map { imagesSection($0, group: group.name, actions: actions) }
            ?? "<p class=\"muted\" id=\"no-images\">Your role on this group lets you see it, not its images: reporters and above read them (see <a href=\"/ui/roles\">roles</a>).</p>"
        let top: HTML = [notice.map { n -> HTML in "<p class=\"notice\" id=\"notice\">\(n)</p>" }, error.map { e -> HTML in "<p class=\"error\" id=\"error\">\(e)</p>" }]
            .compactMap { $0 }.joined()
        return layout(title: "\(group.name) · Kiln", refresh: nil, viewer: viewer, body: """
            <h1>Group <span id="group">\(group.name)</span> <small>your role: \(role.rawValue)</small></h1>
            \(resourceTabs(.group, group.name, current: ""))
            \(top)
            <p>\(visibility) <small class="muted">public: anyone may pull its images without logging in; private: reporters and above.</small></p>
            <h2>Projects</h2>
            \(projectList)
            \(shown)
            """)
    }

    static func imagesSection(_ images: GroupImages, group: String, actions: GroupActions) -> HTML {
        let source: HTML = images.fromRegistry ? ""
            : "<p class=\"warning\" id=\"registry-note\">Not from the registry: \(images.registryError ?? "it did not answer").</p>"
        let repositories = images.repositories.map { r -> HTML in
            let rows = r.tags.map { t -> HTML in
                let running: HTML = t.runningIn.isEmpty ? "—" : t.runningIn.map { u -> HTML in "\(u.app) v\(u.version) (\(u.state.rawValue))" }.joined(separator: "<br>")
                var delete: HTML = ""
                if !t.runningIn.isEmpty {
                    // Refused anyway while a version runs it: say so instead of offering it.
                    delete = "<span class=\"muted\">in use</span>"
                } else if let indexes = t.platformOf {
                    delete = "<span class=\"muted\">a platform of \(indexes.joined(separator: ", "))</span>"
                } else if images.fromRegistry, actions.mayDelete.contains(r.name), t.digest != nil {
                    let query = "repository=\(ConsoleHTTP.encodeQueryValue(r.name))&tag=\(ConsoleHTTP.encodeQueryValue(t.tag))"
                    delete = "<a class=\"delete\" href=\"/ui/groups/\(group)/images/delete?\(query)\">Delete…</a>"
                }
                let error: HTML = t.error.map { e -> HTML in "<br><span class=\"error\">\(e)</span>" } ?? ""
                return "<tr data-tag=\"\(t.tag)\"><td class=\"tag\">\(t.tag)\(error)</td><td>\(code(t.digest.map(shortDigest)))</td><td>\(t.size.map(imageSize) ?? "—")</td><td>\(t.build.map(buildLink) ?? "—")</td><td>\(running)</td><td>\(delete)</td></tr>"
            }
            let project: HTML = r.project.map { p -> HTML in " <small>of project \(projectLink(p))</small>" } ?? ""
            let more: HTML = r.moreTags.map { n -> HTML in "<p class=\"muted\">… and \(n) more tags.</p>" } ?? ""
            return """
                <h3 class="repository" data-repository="\(r.name)"><code>\(r.name)</code>\(project)</h3>
                \(table(["tag", "digest", "size", "built by", "runs in", ""], rows, empty: "No image yet."))
                \(more)
                """
        }
        let list: HTML = repositories.isEmpty ? "<p class=\"muted\">No image repository in this group.</p>" : repositories.joined(separator: "\n")
        let more: HTML = images.moreRepositories.map { n -> HTML in
            "<p class=\"muted\" id=\"more-repositories\">… and \(n) more repositories, not read (a page reads at most \(GroupImages.maxRepositories), the group's projects' first).</p>"
        } ?? ""
        return """
            <h2>Images</h2>
            \(source)
            \(list)
            \(more)
            """
    }

    /// The confirmation before a tag is deleted: what goes (the digest, every tag naming it).
    static func confirmDelete(group: String, repository: String, tag: String, digest: String, alsoTagged: [String], viewer: ConsoleViewer) -> HTML {
        let others: HTML = alsoTagged.isEmpty ? ""
            : "<p class=\"warning\" id=\"also-tagged\">The registry deletes by digest: the tags \(alsoTagged.joined(separator: ", ")) name the same image and go with it.</p>"
        return layout(title: "Delete \(repository):\(tag) · Kiln", refresh: nil, viewer: viewer, body: """
            <h1>Delete <code>\(repository):\(tag)</code>?</h1>
            <p>Its image, <code id="digest">\(digest)</code>, leaves the registry: nothing can pull it or deploy it afterwards.</p>
            \(others)
            \(ConsoleForm.render(action: "/ui/groups/\(group)/images/delete", button: "Delete the image", csrf: viewer.csrf, id: "delete-image",
                                 fields: [("repository", repository), ("tag", tag), ("digest", digest)]))
            <p><a href="/ui/groups/\(group)">Back to the group</a></p>
            """)
    }

    static func groupLink(_ name: String) -> HTML { "<a href=\"/ui/groups/\(name)\">\(name)</a>" }

    static func shortDigest(_ digest: String) -> String { String(digest.prefix(19)) }

    /// 1234567 → "1.2 MB" (powers of 1000, as registries and `podman images` show sizes).
    static func imageSize(_ n: Int64) -> String {
        let units = ["B", "kB", "MB", "GB", "TB"]
        var value = Double(n), unit = 0
        while value >= 1000, unit < units.count - 1 { value /= 1000; unit += 1 }
        return unit == 0 ? "\(n) B" : String(format: "%.1f", value) + " " + units[unit]
    }
}
