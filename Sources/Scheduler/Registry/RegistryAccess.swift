import Foundation
import KilnCore
import RegistryAuth

/// Who asked the token service for a token, once their credentials were checked.
public enum RegistryCaller: Sendable, Equatable {
    /// A user with the admin flag: everything, the catalog included, but Kiln's own repositories.
    case admin(String)
    /// A user, with their rights on each repository they asked for.
    case user(String, rights: [String: RepositoryRights])
    /// No credentials: public repositories only.
    case anonymous(rights: [String: RepositoryRights])
    /// An agent, with the repositories of the builds assigned to it now.
    case agent(String, repositories: Set<String>)
    /// A deploy backend.
    case deployer(String)

    public var account: String {
        switch self {
        case .admin(let name), .user(let name, _), .agent(let name, _), .deployer(let name): name
        case .anonymous: "(anonymous)"
        }
    }
}

/// A user's standing on one repository: their role on the project (and group) it belongs to,
/// and whether its group is public.
public struct RepositoryRights: Sendable, Equatable {
    public var role: Role?
    public var isPublic: Bool
    public init(role: Role?, isPublic: Bool) {
        self.role = role
        self.isPublic = isPublic
    }
}

/// What a caller gets of what it asked for. Pure: no clock, no etcd.
///
/// The rules, in order:
/// 0. Kiln's own repositories (names beginning `kiln_`: the log archive's, `kiln_logs/archive`)
///    are granted to no one, admins included: only tokens the scheduler signs itself reach
///    them, so logs of private projects are not readable through the registry. No group or
///    project can be named so ('_' is not allowed in their names), so no image is kept out.
/// 1. An admin gets every action it asked for on every other resource (repositories, the catalog).
/// 2. A user gets, on a repository: `pull` as reporter or above, or when its group is
///    public; `push` as developer or above; `delete` as master or above (docs/roles.md).
///    Nothing else (no catalog).
/// 3. Anyone without credentials gets `pull` on the repositories of public groups.
/// 4. An agent gets `pull` and `push` on the repository of a build assigned to it now, and
///    nothing on any other resource: a build cannot overwrite another project's image, and an
///    agent whose task is gone cannot push any more.
/// 5. A deployer gets `pull` on any repository, nothing else.
/// 6. Anything not granted is left out of the answer (the registry then answers 401
///    `insufficient_scope`), as Docker's token specification says; duplicate actions are merged.
public enum RegistryAccessPolicy {
    /// Where Kiln's own repositories' names begin (rule 0).
    public static let kilnOwnPrefix = "kiln_"

    /// True for a repository of Kiln's own (rule 0): the token service grants nothing on it.
    public static func isKilnOwn(_ repository: String) -> Bool { repository.hasPrefix(kilnOwnPrefix) }

    public static func grant(_ requested: [ResourceAccess], to caller: RegistryCaller) -> [ResourceAccess] {
        var out: [ResourceAccess] = []
        for request in requested {
            let allowed: Set<String>
            let isRepository = request.type == "repository"
            if isRepository, isKilnOwn(request.name) { continue }
            switch caller {
            case .admin:
                allowed = Set(request.actions)
            case .user(_, let rights):
                allowed = isRepository ? actions(rights[request.name]) : []
            case .anonymous(let rights):
                allowed = isRepository && rights[request.name]?.isPublic == true ? ["pull"] : []
            case .agent(_, let repositories):
                allowed = isRepository && repositories.contains(request.name) ? ["pull", "push"] : []
            case .deployer:
                allowed = isRepository ? ["pull"] : []
            }
            var actions: [String] = []
            for action in request.actions where allowed.contains(action) && !actions.contains(action) { actions.append(action) }
            guard !actions.isEmpty else { continue }
            if let i = out.firstIndex(where: { $0.type == request.type && $0.name == request.name }) {
                for a in actions where !out[i].actions.contains(a) { out[i].actions.append(a) }
            } else {
                out.append(ResourceAccess(type: request.type, name: request.name, actions: actions))
            }
        }
        return out
    }

    /// A user's actions on a repository with `rights`.
    static func actions(_ rights: RepositoryRights?) -> Set<String> {
        guard let rights else { return [] }
        var out: Set<String> = []
        if rights.isPublic || rights.role.map({ $0 >= Permission.read.minimumRole }) == true { out.insert("pull") }
        if let role = rights.role, role >= Permission.build.minimumRole { out.insert("push") }
        if let role = rights.role, role >= Permission.manage.minimumRole { out.insert("delete") }
        return out
    }
}

/// HTTP Basic credentials from an `Authorization` header; nil when absent or malformed.
enum BasicAuthorization {
    static func parse(_ header: String?) -> UserPassword? {
        guard let header, header.count > 6, header.prefix(6).lowercased() == "basic " else { return nil }
        let encoded = header.dropFirst(6).trimmingCharacters(in: .whitespaces)
        guard let data = Data(base64Encoded: encoded), let text = String(data: data, encoding: .utf8) else { return nil }
        return UserPassword(text)
    }
}
