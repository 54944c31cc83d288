import Foundation
import Hummingbird
import KilnCore
import Logging
import Sealing

/// The API of secrets and credentials (docs/secrets.md), all write-only: a value goes in and
/// never comes out; listings and answers carry names and metadata (`SecretInfo`) only.
///
/// - `PUT|DELETE /api/v1/{projects|groups}/{name}/secrets/{NAME}` (`SecretRequest`)
/// - `PUT|DELETE /api/v1/{projects|groups}/{name}/credentials/registry/{host}`
/// - `PUT|DELETE /api/v1/projects/{name}/credentials/git` (`GitCredentialRequest`)
/// - `GET /api/v1/{projects|groups}/{name}/secrets`: a project's listing shows its group's too
/// - `PUT|DELETE /api/v1/cells/{name}/credentials` (`CellCredential`; admins)
/// - `POST /api/v1/admin/secrets/reseal` (admins)
///
/// Setting and removing needs `setSecrets` (master and up), listing `listSecrets` (developer
/// and up) on the project or group (docs/roles.md). Each change is an activity event that
/// names the secret, never its value. A scheduler without a key file answers 503 once the
/// caller has passed the checks.
struct SecretsAPI: Sendable {
    let store: SchedulerStore
    let secrets: SchedulerSecrets
    let auth: Authenticator
    let access: Access
    let identity: IdentityAPI
    let logger: Logger
    /// A value may be 64 KiB; its JSON escaping may double it.
    let maxBody = 160 << 10

    func addRoutes(to api: RouterGroup<KilnRequestContext>) {
        for kind in [ResourceKind.project, .group] {
            api.get("\(kind.plural)/:name/secrets") { request, context in
                let caller = try await auth.caller(request, context: context)
                let (scope, group) = try await resource(kind, try context.parameters.require("name"), .listSecrets, caller)
                return json(try await secrets.require(to: "list secrets").list(scope, group: group))
            }
            api.put("\(kind.plural)/:name/secrets/:secret") { request, context in
                let caller = try await auth.caller(request, context: context)
                let name = try context.parameters.require("name"), secret = try context.parameters.require("secret")
                let (scope, _) = try await resource(kind, name, .setSecrets, caller)
                var request = request
                let body = try decodeBody(SecretRequest.self, from: try await request.collectBody(upTo: maxBody))
                let sealed = try secrets.require(to: "keep secrets")
                let created = try await sealed.setSecret(secret, body, scope: scope, by: caller.user)
                let detail = secret + (body.protectedOnly == true ? " (protected refs only)" : "") + (body.file == true ? " (as a file)" : "")
                return try await changed(kind, name, scope, "secret \(created ? "added" : "changed")", detail, caller, info: ("env", secret), status: created ? .created : .ok)
            }
            api.delete("\(kind.plural)/:name/secrets/:secret") { request, context in
                let caller = try await auth.caller(request, context: context)
                let name = try context.parameters.require("name"), secret = try context.parameters.require("secret")
                let (scope, _) = try await resource(kind, name, .setSecrets, caller)
                guard try await secrets.require(to: "remove secrets").deleteSecret(secret, scope: scope) else {
                    throw KilnError.notFound("\(kind.rawValue) '\(name)' has no secret \(secret)")
                }
                return try await removed(kind, name, "secret removed", secret, caller)
            }
            api.put("\(kind.plural)/:name/credentials/registry/:host") { request, context in
                let caller = try await auth.caller(request, context: context)
                let name = try context.parameters.require("name"), host = try context.parameters.require("host")
                let (scope, _) = try await resource(kind, name, .setSecrets, caller)
                var request = request
                let body = try decodeBody(RegistryCredentialRequest.self, from: try await request.collectBody(upTo: maxBody))
                let created = try await secrets.require(to: "keep credentials").setRegistryLogin(body, host: host, scope: scope, by: caller.user)
                return try await changed(kind, name, scope, "registry credential \(created ? "added" : "changed")", "\(host) as \(body.username)", caller,
                                         info: ("registry", host), status: created ? .created : .ok)
            }
            api.delete("\(kind.plural)/:name/credentials/registry/:host") { request, context in
                let caller = try await auth.caller(request, context: context)
                let name = try context.parameters.require("name"), host = try context.parameters.require("host")
                let (scope, _) = try await resource(kind, name, .setSecrets, caller)
                guard try await secrets.require(to: "remove credentials").deleteRegistryLogin(host: host, scope: scope) else {
                    throw KilnError.notFound("\(kind.rawValue) '\(name)' has no credential for registry \(Validation.printable(host))")
                }
                return try await removed(kind, name, "registry credential removed", host, caller)
            }
        }
        api.put("projects/:name/credentials/git") { request, context in
            let caller = try await auth.caller(request, context: context)
            let name = try context.parameters.require("name")
            let (scope, _) = try await resource(.project, name, .setSecrets, caller)
            var request = request
            let credential = try decodeBody(GitCredentialRequest.self, from: try await request.collectBody(upTo: maxBody)).credential()
            let created = try await secrets.require(to: "keep credentials").setGitCredential(credential, project: name, by: caller.user)
            return try await changed(.project, name, scope, "git credential \(created ? "added" : "changed")", credential.summary, caller,
                                     info: ("git", "git"), status: created ? .created : .ok)
        }
        api.delete("projects/:name/credentials/git") { request, context in
            let caller = try await auth.caller(request, context: context)
            let name = try context.parameters.require("name")
            _ = try await resource(.project, name, .setSecrets, caller)
            guard try await secrets.require(to: "remove credentials").deleteGitCredential(project: name) else {
                throw KilnError.notFound("project '\(name)' has no git credential")
            }
            return try await removed(.project, name, "git credential removed", nil, caller)
        }

        // Cells: admins, as for the cells themselves.
        api.put("cells/:name/credentials") { request, context in
            let caller = try await auth.caller(request, context: context)
            try access.requireAdmin(caller, to: "set cells' credentials")
            let name = try context.parameters.require("name")
            guard try await store.cells().contains(where: { $0.name == name }) else {
                throw KilnError.notFound("cell '\(Validation.printable(name))' does not exist: add it first (kiln cell add)")
            }
            var request = request
            let credential = try decodeBody(CellCredential.self, from: try await request.collectBody(upTo: maxBody))
            let created = try await secrets.require(to: "keep credentials").setCellCredential(credential, cell: name, by: caller.user)
            logger.info("cell credential set", metadata: ["cell": "\(name)", "by": "\(caller.user)"])
            let info = SecretInfo(kind: "cell", name: name, scope: "cell", detail: credential.token != nil ? "token" : "clientCertificate",
                                  updatedAt: Date(), updatedBy: caller.user)
            return json(info, status: created ? .created : .ok)
        }
        api.delete("cells/:name/credentials") { request, context in
            let caller = try await auth.caller(request, context: context)
            try access.requireAdmin(caller, to: "remove cells' credentials")
            let name = try context.parameters.require("name")
            guard try await secrets.require(to: "remove credentials").deleteCellCredential(name) else {
                throw KilnError.notFound("cell '\(Validation.printable(name))' has no credential")
            }
            logger.info("cell credential removed", metadata: ["cell": "\(name)", "by": "\(caller.user)"])
            return json(["deleted": name])
        }
        api.post("admin/secrets/reseal") { request, context in
            let caller = try await auth.caller(request, context: context)
            try access.requireAdmin(caller, to: "seal the secrets again")
            let report = try await secrets.require(to: "seal the secrets again").reseal()
            logger.notice("secrets sealed again", metadata: [
                "key": "\(report.key)", "resealed": "\(report.resealed.map { "\($0.key):\($0.value)" }.sorted().joined(separator: ","))",
                "current": "\(report.current)", "failed": "\(report.failed.count)", "by": "\(caller.user)",
            ])
            return json(report)
        }
    }

    /// The project or group, if the caller may do `permission` on it (404 as for a missing one
    /// if they have no role on it; 403 below the role): its scope, and a project's group.
    func resource(_ kind: ResourceKind, _ name: String, _ permission: Permission, _ caller: Caller) async throws -> (SecretScope, group: String?) {
        if kind == .project {
            guard let project = try await notFoundAsNil({ try await store.projectIfExists(name) })??.project else { throw projectNotFound(name) }
            try await access.require(permission, caller, on: .project, name, project: project, hidden: projectNotFound(name))
            return (.project(name), project.group)
        }
        try await identity.requireExisting(.group, name, permission, caller)
        return (.group(name), nil)
    }

    /// The answer to a set: what the listing now shows of it; the change in the activity feed.
    func changed(_ kind: ResourceKind, _ name: String, _ scope: SecretScope, _ action: String, _ detail: String, _ caller: Caller,
                 info: (kind: String, name: String), status: HTTPResponse.Status) async throws -> Response {
        try await store.record(ActivityEvent(user: caller.user, action: action, detail: detail), on: kind, name)
        logger.info("\(action)", metadata: ["\(kind.rawValue)": "\(name)", "secret": "\(info.name)", "by": "\(caller.user)"])
        let listed = try await secrets.require(to: "list secrets").list(scope).first { $0.kind == info.kind && $0.name == info.name }
        return json(listed, status: status)
    }

    func removed(_ kind: ResourceKind, _ name: String, _ action: String, _ detail: String?, _ caller: Caller) async throws -> Response {
        try await store.record(ActivityEvent(user: caller.user, action: action, detail: detail), on: kind, name)
        logger.info("\(action)", metadata: ["\(kind.rawValue)": "\(name)", "secret": "\(detail ?? "git")", "by": "\(caller.user)"])
        return json(["deleted": detail ?? "git"])
    }
}
