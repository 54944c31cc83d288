import Foundation
import KilnCore
import RegistryAuth

/// Who asked the token service for a token, once their credentials were checked.
public enum RegistryCaller: Sendable, Equatable {
    /// User `admin` with the admin token: everything, the catalog included.
    case admin
    /// An agent, with the projects of the builds assigned to it now.
    case agent(String, projects: Set<String>)
    /// A deploy backend.
    case deployer(String)

    public var account: String {
        switch self {
        case .admin: MachineCredential.adminUser
        case .agent(let name, _), .deployer(let name): name
        }
    }
}

/// What a caller gets of what it asked for. Pure: no clock, no etcd.
///
/// The rules, in order:
/// 1. The admin gets every action it asked for on every resource (repositories, the catalog).
/// 2. An agent gets `pull` and `push` on a repository named like the project of a build
///    assigned to it now, and nothing on any other resource: a build cannot overwrite
///    another project's image, and an agent whose task is gone cannot push any more.
/// 3. A deployer gets `pull` on any repository, nothing else.
/// 4. Anything not granted is left out of the answer (the registry then answers 401
///    `insufficient_scope`), as Docker's token specification says; duplicate actions are merged.
public enum RegistryAccessPolicy {
    public static func grant(_ requested: [ResourceAccess], to caller: RegistryCaller) -> [ResourceAccess] {
        var out: [ResourceAccess] = []
        for request in requested {
            let allowed: Set<String>
            switch caller {
            case .admin:
                allowed = Set(request.actions)
            case .agent(_, let projects):
                allowed = request.type == "repository" && projects.contains(request.name) ? ["pull", "push"] : []
            case .deployer:
                allowed = request.type == "repository" ? ["pull"] : []
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
