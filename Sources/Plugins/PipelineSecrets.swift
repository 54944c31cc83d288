import Foundation
import KilnCore

/// The secrets a post-build plugin may use, handed in by the scheduler (the Sealing module's
/// `SecretStore`, which opens them with the farm's secrets key). Plugins never see etcd's
/// sealed values and never log what this returns.
///
/// Rules for implementations: a project's value wins over its group's of the same name; a
/// `protectedOnly` secret is returned only for a build of a protected ref
/// (`Project.isProtected(ref:)`), else `SecretLookup.withheld`.
public protocol PipelineSecrets: Sendable {
    /// The build secret `name` of `project` (or of its group) for a build of `ref`
    /// (`Build.protectionRef`: nil when a request pinned the commit, which holds no protection).
    func secret(_ name: String, of project: Project, ref: String?) async throws -> SecretLookup
    /// The credential of the cell `cell` (a Kubernetes cell, or a local cell reached over
    /// https), nil when none was set.
    func cellCredential(_ cell: String) async throws -> CellCredential?
}

/// The outcome of looking a secret up by name.
public enum SecretLookup: Sendable, Equatable {
    case value(String)
    /// It exists but is for protected refs only, and the build's ref is not one.
    case withheld
    case missing
}
