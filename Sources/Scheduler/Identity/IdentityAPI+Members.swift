import Foundation
import KilnCore

/// Members, activity and a group's visibility: what the API's routes (`…/members`,
/// `…/activity`, `PUT /api/v1/groups/{name}`) and the console's tabs and forms both do, so the
/// two check the same roles, refuse with the same messages and record the same activity
/// (docs/roles.md). The callers only read their input and shape the answer.
extension IdentityAPI {
    /// The members of a resource, by user name: `view` on it (404 without a role).
    func members(_ kind: ResourceKind, _ name: String, caller: Caller) async throws -> [Member] {
        try await requireExisting(kind, name, .view, caller)
        return Self.list(try await store.members(kind, name).members)
    }

    /// Gives `user` the role named `roleName` on the resource: `manage` on it; only owners
    /// (and admins) add, demote or remove owners, and the last owner stays (`Members.set`).
    /// The user must exist. Records "member set"; returns the members after the change.
    func setMember(_ kind: ResourceKind, _ name: String, user: String, role roleName: String, by caller: Caller) async throws -> [Member] {
        let actorRole = try await requireExisting(kind, name, .manage, caller)
        let role = try Role.parse(roleName)
        guard try await store.user(user) != nil else { throw KilnError.notFound("user '\(Validation.printable(user))' does not exist: an admin adds users with `kiln user add`") }
        let members = try await store.updateMembers(kind, name) { try $0.set(user, to: role, by: caller.admin ? nil : actorRole) }
        try await store.record(ActivityEvent(user: caller.user, action: "member set", detail: "\(user) is \(role.rawValue)"), on: kind, name)
        logger.info("member set", metadata: ["\(kind.rawValue)": "\(name)", "user": "\(user)", "role": "\(role.rawValue)", "by": "\(caller.user)"])
        return Self.list(members)
    }

    /// Removes `user` from the resource: anyone may leave (`view`); removing someone else
    /// needs `manage`, and an owner only an owner (`Members.remove`). Records the activity.
    func removeMember(_ kind: ResourceKind, _ name: String, user: String, by caller: Caller) async throws -> [Member] {
        let leaving = user == caller.user
        let actorRole = try await requireExisting(kind, name, leaving ? .view : .manage, caller)
        let members = try await store.updateMembers(kind, name) { try $0.remove(user, by: caller.admin || leaving ? nil : actorRole) }
        try await store.record(ActivityEvent(user: caller.user, action: leaving ? "member left" : "member removed", detail: user), on: kind, name)
        logger.info("member removed", metadata: ["\(kind.rawValue)": "\(name)", "user": "\(user)", "by": "\(caller.user)"])
        return Self.list(members)
    }

    /// A resource's activity, newest first (at most `limit`, 1 to 1000): `read` on it.
    func activity(_ kind: ResourceKind, _ name: String, limit: Int, caller: Caller) async throws -> [ActivityEntry] {
        try await requireExisting(kind, name, .read, caller)
        return try await store.activity(kind, name, limit: max(1, min(limit, 1000)))
    }

    /// The groups `caller` has a role on (admins: all), as `GET /api/v1/groups` lists them.
    func visibleGroups(_ caller: Caller) async throws -> [Group] {
        let roles = try await access.roles(of: caller)
        return try await store.groups().filter { roles.role(ofGroup: $0.name) != nil }
    }

    /// Sets a group's visibility: `manage` on it (masters and up). Records "settings changed".
    func setVisibility(of name: String, to visibility: Group.Visibility, by caller: Caller) async throws -> Group {
        try await requireExisting(.group, name, .manage, caller)
        var group = try await store.group(name)
        group.visibility = visibility
        try await store.saveGroup(group)
        try await store.record(ActivityEvent(user: caller.user, action: "settings changed", detail: "visibility \(group.visibility.rawValue)"), on: .group, name)
        logger.info("group changed", metadata: ["group": "\(name)", "visibility": "\(group.visibility.rawValue)", "by": "\(caller.user)"])
        return group
    }

    static func list(_ members: Members) -> [Member] {
        members.users.map { Member(user: $0.key, role: $0.value) }.sorted { $0.user < $1.user }
    }
}
