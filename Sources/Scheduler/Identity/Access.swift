import Foundation
import KilnCore

/// Who may do what (docs/roles.md): a caller's role on a resource, from its members and the
/// members it inherits, and the checks the routes make.
///
/// A caller's role on a project is the higher of their own and their role on the project's
/// group; on an app, the higher of their own and their role on the project that owns the app.
/// Admins may do everything. A resource the caller has no role on answers as if it did not
/// exist (404); one they see but may not change answers 403.
struct Access: Sendable {
    let store: SchedulerStore

    /// The caller's role on a resource, or nil for none. `project`/`app`: the record, if the
    /// route has read it already (for the inherited role).
    func role(_ caller: Caller, on kind: ResourceKind, _ name: String, project: Project? = nil, app: App? = nil) async throws -> Role? {
        if caller.admin { return .owner }
        var best = try await store.members(kind, name).members.users[caller.user]
        switch kind {
        case .project:
            let group: String?
            if let project { group = project.group } else { group = try await notFoundAsNil { try await store.project(name) }?.group }
            if let group, let inherited = try await store.members(.group, group).members.users[caller.user] { best = max(best ?? inherited, inherited) }
        case .app:
            let owner: String?
            if let app { owner = app.owner } else { owner = try await notFoundAsNil { try await store.app(name) }?.owner }
            if let owner, let inherited = try await role(caller, on: .project, owner) { best = max(best ?? inherited, inherited) }
        case .group:
            break
        }
        return best
    }

    /// Throws `hidden` (the resource's own 404) when the caller has no role on it, 403 when
    /// their role is below `permission`'s; returns the role (admins: owner).
    @discardableResult
    func require(_ permission: Permission, _ caller: Caller, on kind: ResourceKind, _ name: String,
                 project: Project? = nil, app: App? = nil, hidden: KilnError) async throws -> Role {
        guard let role = try await role(caller, on: kind, name, project: project, app: app) else { throw hidden }
        guard role >= permission.minimumRole else {
            throw KilnError.forbidden("you are \(role.rawValue) of \(kind.rawValue) '\(name)'; to \(permission.summary) you must be \(permission.minimumRole.rawValue) or above (kiln help roles)")
        }
        return role
    }

    /// Whether the caller may do `permission` on the resource: for offering an action (the
    /// console's buttons); the route that acts still calls ``require(_:_:on:_:project:app:hidden:)``.
    func may(_ permission: Permission, _ caller: Caller, on kind: ResourceKind, _ name: String,
             project: Project? = nil, app: App? = nil) async throws -> Bool {
        try await role(caller, on: kind, name, project: project, app: app).map { $0 >= permission.minimumRole } ?? false
    }

    /// Admins only, else 403.
    func requireAdmin(_ caller: Caller, to what: String) throws {
        guard caller.admin else { throw KilnError.forbidden("only an admin may \(what)") }
    }

    /// Every role of the caller, for filtering a listing with one read of the members.
    func roles(of caller: Caller) async throws -> RoleMap {
        RoleMap(caller: caller, members: caller.admin ? [:] : try await store.allMembers())
    }
}

/// A caller's roles on every resource, read once for a listing.
struct RoleMap: Sendable {
    let caller: Caller
    let members: [ResourceKind: [String: Members]]

    func direct(_ kind: ResourceKind, _ name: String) -> Role? { members[kind]?[name]?.users[caller.user] }

    func role(of project: Project) -> Role? {
        if caller.admin { return .owner }
        return [direct(.project, project.name), project.group.flatMap { direct(.group, $0) }].compactMap { $0 }.max()
    }

    /// `projects`: every project by name (an app's owner inherits through its project).
    func role(of app: App, projects: [String: Project]) -> Role? {
        if caller.admin { return .owner }
        let inherited = app.owner.flatMap { projects[$0] }.flatMap(role(of:))
        return [direct(.app, app.name), inherited].compactMap { $0 }.max()
    }

    func role(ofGroup name: String) -> Role? { caller.admin ? .owner : direct(.group, name) }

    func may(_ permission: Permission, _ role: Role?) -> Bool { role.map { $0 >= permission.minimumRole } ?? false }

    /// Whether the caller may read `build` (its project's records): `projects` by name. A
    /// build whose project is gone only admins see, as `GET /api/v1/builds/{id}` answers.
    func mayRead(_ build: Build, projects: [String: Project]) -> Bool {
        if caller.admin { return true }
        return projects[build.project].map { may(.read, role(of: $0)) } ?? false
    }
}
