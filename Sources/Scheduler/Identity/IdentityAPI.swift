import Foundation
import Hummingbird
import KilnCore
import Logging

/// The API of people and roles: `/api/v1/users`, `/api/v1/tokens`, `/api/v1/groups` and the
/// members of projects, apps and groups (docs/roles.md).
struct IdentityAPI: Sendable {
    let store: SchedulerStore
    let auth: Authenticator
    let access: Access
    let logger: Logger
    let maxBody = 1 << 16

    /// Adds a user (admins only; 409 for a taken name): `POST /api/v1/users` and the console's
    /// admin page.
    func addUser(_ body: NewUser, by caller: Caller) async throws -> User {
        try access.requireAdmin(caller, to: "add users")
        let user = try await store.createUser(body, by: caller.user)
        logger.info("user added", metadata: ["user": "\(user.name)", "admin": "\(user.admin)", "by": "\(caller.user)"])
        return user
    }

    func addRoutes(to api: RouterGroup<KilnRequestContext>) {
        // Users: admins make them; anyone sees themselves.
        api.post("users") { request, context in
            let caller = try await auth.caller(request, context: context)
            try access.requireAdmin(caller, to: "add users")
            var request = request
            let body = try decodeBody(NewUser.self, from: try await request.collectBody(upTo: maxBody))
            return json(try await addUser(body, by: caller).view, status: .created)
        }
        api.get("users") { request, context in
            let caller = try await auth.caller(request, context: context)
            try access.requireAdmin(caller, to: "list users")
            return json(try await store.users().map(\.view))
        }
        api.delete("users/:name") { request, context in
            let caller = try await auth.caller(request, context: context)
            try access.requireAdmin(caller, to: "remove users")
            let name = try context.parameters.require("name")
            guard name != caller.user else { throw KilnError.invalid("an admin cannot remove themselves: another admin can") }
            try await store.deleteUser(name)
            logger.info("user removed", metadata: ["user": "\(name)", "by": "\(caller.user)"])
            return json(["deleted": name])
        }
        // Revokes every token of a user (a leaked laptop, someone leaving): admins, or the user.
        api.delete("users/:name/tokens") { request, context in
            let caller = try await auth.caller(request, context: context)
            let name = try context.parameters.require("name")
            if name != caller.user { try access.requireAdmin(caller, to: "revoke another user's tokens") }
            guard try await store.user(name) != nil else { throw KilnError.notFound("user '\(Validation.printable(name))' does not exist") }
            let count = try await store.revokeTokens(of: name)
            logger.info("tokens revoked", metadata: ["user": "\(name)", "count": "\(count)", "by": "\(caller.user)"])
            return json(["revoked": count])
        }
        // A new password: the user with the current one (HTTP Basic), or an admin for anyone.
        api.put("users/:name/password") { request, context in
            let name = try context.parameters.require("name")
            let caller = try await auth.caller(request, context: context, allowPassword: true)
            if name != caller.user {
                try access.requireAdmin(caller, to: "set another user's password")
            } else if !caller.byPassword && !caller.admin {
                throw KilnError.forbidden("to change your password, send the current one (HTTP Basic), not a token")
            }
            var request = request
            struct Body: Decodable { let password: String }
            let body = try decodeBody(Body.self, from: try await request.collectBody(upTo: maxBody))
            try await store.setPassword(of: name, to: body.password)
            logger.info("password set", metadata: ["user": "\(name)", "by": "\(caller.user)"])
            return json(["user": name])
        }
        api.get("users/me") { request, context in
            let caller = try await auth.caller(request, context: context)
            guard let user = try await store.user(caller.user) else { throw KilnError.unauthorized(Authenticator.refusal) }
            return json(user.view)
        }

        // Tokens: a user's own. Making one also takes the password (HTTP Basic): how a
        // person without a token gets their first (`kiln login`).
        api.post("tokens") { request, context in
            let caller = try await auth.caller(request, context: context, allowPassword: true)
            var request = request
            let body = try decodeBody(NewToken.self, from: try await request.collectBody(upTo: maxBody))
            let created = try await store.createToken(for: caller.user, name: body.name, expiresInDays: body.expiresInDays, notAfter: caller.tokenExpiresAt)
            logger.info("token made", metadata: ["user": "\(caller.user)", "token.id": "\(created.id)"])
            return json(created, status: .created)
        }
        api.get("tokens") { request, context in
            let caller = try await auth.caller(request, context: context)
            return json(try await store.tokens(of: caller.user))
        }
        api.delete("tokens/:id") { request, context in
            let caller = try await auth.caller(request, context: context)
            let revoked = try await store.revokeToken(id: try context.parameters.require("id"), of: caller.user)
            logger.info("token revoked", metadata: ["user": "\(caller.user)", "token.id": "\(revoked.id)"])
            return json(revoked)
        }

        // Groups.
        api.get("groups") { request, context in
            json(try await visibleGroups(try await auth.caller(request, context: context)))
        }
        api.post("groups") { request, context in
            let caller = try await auth.caller(request, context: context)
            var request = request
            let body = try decodeBody(GroupRequest.self, from: try await request.collectBody(upTo: maxBody))
            guard let name = body.name else { throw KilnError.invalid("missing field 'name'") }
            let group = Group(name: name, visibility: body.visibility ?? .private)
            try await store.createGroup(group, owner: caller.user)
            try await store.record(ActivityEvent(user: caller.user, action: "group created", detail: "visibility \(group.visibility.rawValue)"), on: .group, name)
            return json(group, status: .created)
        }
        api.get("groups/:name") { request, context in
            let caller = try await auth.caller(request, context: context)
            let name = try context.parameters.require("name")
            try await access.require(.view, caller, on: .group, name, hidden: groupNotFound(name))
            return json(try await store.group(name))
        }
        api.put("groups/:name") { request, context in
            let caller = try await auth.caller(request, context: context)
            let name = try context.parameters.require("name")
            try await access.require(.manage, caller, on: .group, name, hidden: groupNotFound(name))
            var request = request
            let body = try decodeBody(GroupRequest.self, from: try await request.collectBody(upTo: maxBody))
            if let other = body.name, other != name { throw KilnError.invalid("a group cannot be renamed: the body names '\(Validation.printable(other))'") }
            guard let visibility = body.visibility else { return json(try await store.group(name)) }
            return json(try await setVisibility(of: name, to: visibility, by: caller))
        }

        // Members of projects, apps and groups (IdentityAPI+Members.swift, shared with the console).
        for kind in ResourceKind.allCases {
            api.get("\(kind.plural)/:name/members") { request, context in
                let caller = try await auth.caller(request, context: context)
                return json(try await members(kind, try context.parameters.require("name"), caller: caller))
            }
            api.put("\(kind.plural)/:name/members/:user") { request, context in
                let caller = try await auth.caller(request, context: context)
                let name = try context.parameters.require("name"), user = try context.parameters.require("user")
                try await requireExisting(kind, name, .manage, caller)
                var request = request
                let role = try decodeBody(MemberRequest.self, from: try await request.collectBody(upTo: maxBody)).role
                return json(try await setMember(kind, name, user: user, role: role, by: caller))
            }
            api.delete("\(kind.plural)/:name/members/:user") { request, context in
                let caller = try await auth.caller(request, context: context)
                let name = try context.parameters.require("name"), user = try context.parameters.require("user")
                return json(try await removeMember(kind, name, user: user, by: caller))
            }
        }
        // The projects whose pipelines may deploy into an app besides its owner: its owners decide.
        api.put("apps/:name/projects/:project") { request, context in
            let caller = try await auth.caller(request, context: context)
            let name = try context.parameters.require("name"), project = try context.parameters.require("project")
            try await requireExisting(.app, name, .own, caller)
            _ = try await store.project(project)
            let members = try await store.updateMembers(.app, name) { $0.projects = ($0.projects ?? [:]).merging([project: .master]) { $1 } }
            try await store.record(ActivityEvent(user: caller.user, action: "project allowed to deploy", detail: project), on: .app, name)
            logger.info("project may deploy into app", metadata: ["app": "\(name)", "project": "\(project)", "by": "\(caller.user)"])
            return json(members.projects ?? [:])
        }
        api.delete("apps/:name/projects/:project") { request, context in
            let caller = try await auth.caller(request, context: context)
            let name = try context.parameters.require("name"), project = try context.parameters.require("project")
            try await requireExisting(.app, name, .own, caller)
            let members = try await store.updateMembers(.app, name) { $0.projects?[project] = nil }
            try await store.record(ActivityEvent(user: caller.user, action: "project no longer allowed to deploy", detail: project), on: .app, name)
            return json(members.projects ?? [:])
        }
    }

    /// The resource exists and the caller may do `permission` on it (404 if they see nothing
    /// of it, as if it did not exist); returns their role.
    @discardableResult
    func requireExisting(_ kind: ResourceKind, _ name: String, _ permission: Permission, _ caller: Caller) async throws -> Role {
        switch kind {
        case .project:
            let hidden = projectNotFound(name)
            guard let project = try await notFoundAsNil({ try await store.project(name) }) else { throw hidden }
            return try await access.require(permission, caller, on: .project, name, project: project, hidden: hidden)
        case .app:
            let hidden = KilnError.notFound("app '\(Validation.printable(name))' does not exist: an app appears when a project's pipeline deploys it")
            guard let app = try await notFoundAsNil({ try await store.app(name) }) else { throw hidden }
            return try await access.require(permission, caller, on: .app, name, app: app, hidden: hidden)
        case .group:
            guard try await notFoundAsNil({ try await store.group(name) }) != nil else { throw groupNotFound(name) }
            return try await access.require(permission, caller, on: .group, name, hidden: groupNotFound(name))
        }
    }
}

/// `lookup`'s value, or nil when it says the thing does not exist (or the name is malformed,
/// which no stored thing has); any other error, etcd failing above all, is thrown: a lookup
/// that failed must not read as "absent" (a 404, or a create over what is there).
func notFoundAsNil<T>(_ lookup: () async throws -> T) async throws -> T? {
    do { return try await lookup() } catch let error as KilnError where error.isNotFound || error.isInvalid { return nil }
}

func projectNotFound(_ name: String) -> KilnError {
    KilnError.notFound("project '\(Validation.printable(name))' does not exist: add it with `kiln project add` or POST /api/v1/projects")
}

func groupNotFound(_ name: String) -> KilnError {
    KilnError.notFound("group '\(Validation.printable(name))' does not exist: make it with POST /api/v1/groups")
}
