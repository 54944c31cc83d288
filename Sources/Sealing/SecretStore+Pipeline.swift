import Foundation
import KilnCore
import Plugins

/// The post-build plugins' view of the store (`PluginContext`'s secrets): one build secret
/// by name, with the same rules as a build gets them, and a cell's credential.
extension SecretStore: PipelineSecrets {
    /// The project's secret `name`, else its group's; a secret for protected refs only is
    /// `.withheld` for a build of any other ref (and the group's of the same name is not
    /// used instead: the project's setting wins).
    public func secret(_ name: String, of project: Project, ref: String?) async throws -> SecretLookup {
        try SecretRules.name(name)
        var scopes: [SecretScope] = [.project(project.name)]
        if let group = project.group { scopes.append(.group(group)) }
        for scope in scopes {
            let key = keys.secret(scope, env: name)
            guard let kv = try await etcd.get(key) else { continue }
            let stored = try decode(kv)
            if stored.protectedOnly == true, !(ref.map(project.isProtected(ref:)) ?? false) { return .withheld }
            return .value(try openString(stored, at: key))
        }
        return .missing
    }
}
