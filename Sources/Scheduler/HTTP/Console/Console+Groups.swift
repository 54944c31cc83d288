import Foundation
import Hummingbird
import KilnCore

/// The groups pages (docs/console.md): `/ui/groups` (the groups the viewer is a member of, as
/// `GET /api/v1/groups` lists them), `/ui/groups/{group}` (projects, visibility, images), the
/// visibility form and deleting a tag (a confirmation page, then the form). Each acts through
/// the API's own function (`IdentityAPI.setVisibility`, `ImagesAPI.deleteTag`): the same role
/// checks, messages and activity. The members and activity tabs: `Console+Members.swift`.
extension Console {
    /// The API's identity functions, with this console's store and checks.
    var identityAPI: IdentityAPI { IdentityAPI(store: store, auth: auth, access: access, logger: logger) }

    var imagesAPI: ImagesAPI { ImagesAPI(store: store, registry: registry, logger: logger) }

    func addGroupRoutes(to router: Router<KilnRequestContext>) {
        router.get("ui/groups") { request, _ in
            try await page(request) { me in
                let roles = try await access.roles(of: me.caller)
                let groups = try await identityAPI.visibleGroups(me.caller)
                return ConsolePages.groups(groups.map { ($0, roles.role(ofGroup: $0.name)) }, viewer: me.viewer)
            }
        }
        router.get("ui/groups/:name") { request, context in
            try await page(request) { me in try await groupPage(try context.parameters.require("name"), me) }
        }
        form("ui/groups/:name/visibility", to: router) { _, context, me, fields in
            let name = try context.parameters.require("name")
            guard let visibility = fields["visibility"].flatMap(Group.Visibility.init(rawValue:)) else {
                throw KilnError.invalid("visibility is 'private' or 'public'")
            }
            _ = try await identityAPI.setVisibility(of: name, to: visibility, by: me.caller)
            return ConsoleHTTP.redirect("/ui/groups/\(name)")
        }
        // The confirmation: what the delete takes away (every tag of the digest).
        router.get("ui/groups/:name/images/delete") { request, context in
            try await page(request) { me in
                let name = try context.parameters.require("name")
                let query = request.uri.queryParameters
                let repository = query["repository"].map(String.init) ?? "", tag = query["tag"].map(String.init) ?? ""
                try await identityAPI.requireExisting(.group, name, .view, me.caller)
                try ImagesAPI.checkRepository(repository, in: name)
                try await imagesAPI.requireDelete(repository, group: name, me.caller)
                guard let registry else { throw KilnError.unavailable("this scheduler cannot reach the registry: start it with --registry-url") }
                guard ImagesAPI.isTag(tag), let digest = try await registry.digest(repository, tag) else {
                    throw KilnError.notFound("\(repository) has no tag '\(tag)'")
                }
                try Known.refuseIfRunning(try await store.apps(), repository: repository, tag: tag, digest: digest)
                let others = try await imagesAPI.sharing(digest, in: repository, besides: tag, registry: registry)
                return ConsolePages.confirmDelete(group: name, repository: repository, tag: tag, digest: digest, alsoTagged: others, viewer: me.viewer)
            }
        }
        form("ui/groups/:name/images/delete", to: router) { _, context, me, fields in
            let name = try context.parameters.require("name")
            do {
                let deleted = try await imagesAPI.deleteTag(group: name, repository: fields["repository"] ?? "", tag: fields["tag"] ?? "",
                                                         digest: fields["digest"].flatMap { $0.isEmpty ? nil : $0 }, by: me.caller)
                let notice = "Deleted \(deleted.repository)@\(deleted.digest) (tags \(deleted.tags.joined(separator: ", ")))."
                return ConsoleHTTP.html(try await groupPage(name, me, notice: notice))
            } catch let error as KilnError {
                // Refused: the group's page again with why, if the viewer may see it at all.
                guard (try? await identityAPI.requireExisting(.group, name, .view, me.caller)) != nil else { throw groupNotFound(name) }
                return ConsoleHTTP.html(try await groupPage(name, me, error: error.message), status: error.httpStatus)
            }
        }
        addMemberRoutes(to: router)
    }

    /// The group's page for `me`: 404 without a role on it; images for readers.
    func groupPage(_ name: String, _ me: SignedIn, notice: String? = nil, error: String? = nil) async throws -> HTML {
        let role = try await identityAPI.requireExisting(.group, name, .view, me.caller)
        let group = try await store.group(name)
        let projects = try await store.projects().filter { $0.group == name }.map(\.name).sorted()
        var found: GroupImages?
        var actions = GroupActions(mayManage: role >= Permission.manage.minimumRole)
        if role >= Permission.read.minimumRole {
            let listed = try await imagesAPI.images(of: name, caller: me.caller)
            let everyProject = try await store.projects()
            for r in listed.repositories {
                if try await imagesAPI.mayDelete(r.name, group: name, me.caller, projects: everyProject) { actions.mayDelete.insert(r.name) }
            }
            found = listed
        }
        return ConsolePages.group(group, role: role, projects: projects, images: found, actions: actions, viewer: me.viewer, notice: notice, error: error)
    }
}
