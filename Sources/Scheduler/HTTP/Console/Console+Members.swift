import Foundation
import Hummingbird
import KilnCore

/// The members and activity tabs of projects, apps and groups (docs/console.md):
/// `/ui/{projects,apps,groups}/{name}/members` with the form to add a member or change a role
/// (`POST …/members`) and the remove and leave buttons (`POST …/members/remove`), and
/// `/ui/{…}/{name}/activity`. Each acts through the function of the API's `…/members` routes
/// (`IdentityAPI.setMember`, `.removeMember`, `.activity`): the same checks (manage to change
/// others, owners alone touch owners, the last owner stays, anyone may leave), the same
/// messages, the same activity lines.
extension Console {
    func addMemberRoutes(to router: Router<KilnRequestContext>) {
        for kind in ResourceKind.allCases {
            router.get("ui/\(kind.plural)/:name/members") { request, context in
                try await page(request) { me in try await membersPage(kind, try context.parameters.require("name"), me) }
            }
            form("ui/\(kind.plural)/:name/members", to: router) { _, context, me, fields in
                let name = try context.parameters.require("name")
                let user = (fields["user"] ?? "").trimmingCharacters(in: .whitespaces), role = fields["role"] ?? ""
                do {
                    guard !user.isEmpty else { throw KilnError.invalid("name the user to add") }
                    _ = try await identityAPI.setMember(kind, name, user: user, role: role, by: me.caller)
                    return ConsoleHTTP.redirect(ConsolePages.resourcePath(kind, name) + "/members")
                } catch let error as KilnError {
                    // The tab again with what was typed and why it was refused (a resource the
                    // viewer cannot see stays the 404 page: `membersPage` checks that first).
                    return ConsoleHTTP.html(try await membersPage(kind, name, me, error: error.message, typed: (user, role)), status: error.httpStatus)
                }
            }
            form("ui/\(kind.plural)/:name/members/remove", to: router) { _, context, me, fields in
                let name = try context.parameters.require("name")
                let user = fields["user"] ?? ""
                do {
                    _ = try await identityAPI.removeMember(kind, name, user: user, by: me.caller)
                } catch let error as KilnError {
                    return ConsoleHTTP.html(try await membersPage(kind, name, me, error: error.message), status: error.httpStatus)
                }
                // Someone who left may no longer see the resource: then the overview.
                let stillSees = (try? await identityAPI.requireExisting(kind, name, .view, me.caller)) != nil
                return ConsoleHTTP.redirect(stillSees ? ConsolePages.resourcePath(kind, name) + "/members" : "/")
            }
            router.get("ui/\(kind.plural)/:name/activity") { request, context in
                try await page(request) { me in
                    let name = try context.parameters.require("name")
                    let entries = try await identityAPI.activity(kind, name, limit: 100, caller: me.caller)
                    return ConsolePages.activity(kind, name, entries: entries, viewer: me.viewer)
                }
            }
        }
    }

    /// The members tab for `me` (404 without a role on the resource).
    func membersPage(_ kind: ResourceKind, _ name: String, _ me: SignedIn, error: String? = nil, typed: (user: String, role: String)? = nil) async throws -> HTML {
        let role = try await identityAPI.requireExisting(kind, name, .view, me.caller)
        let members = try await identityAPI.members(kind, name, caller: me.caller)
        let actions = MemberActions(mayManage: role >= Permission.manage.minimumRole, mayManageOwners: role >= Permission.own.minimumRole)
        let deployers = kind == .app ? Array((try await store.members(.app, name).members.projects ?? [:]).keys) : []
        return ConsolePages.members(kind, name, members: members, actions: actions, viewer: me.viewer, error: error, typed: typed, deployers: deployers)
    }
}
