import Etcd
import Foundation
import Hummingbird
import KilnCore
import Logging

/// The retention settings' routes (docs/retention.md):
///
/// - `GET|PUT /api/v1/projects/{name}/retention` (``BuildRetention``): how many builds the
///   project keeps. Reading needs `view`, changing `manage` (master and up). A field left out
///   of a PUT takes its default. The same setting is `retention` in the project's record
///   (`POST /api/v1/projects`).
/// - `GET|PUT /api/v1/apps/{name}/retention` (``AppRetention``): how many versions the app
///   keeps. A number below the versions that run is refused (409) with them named.
///
/// Each change is one write guarded by the record's revision (so it never undoes a deploy
/// or a save made meanwhile) and an activity event.
struct RetentionAPI: Sendable {
    let store: SchedulerStore
    let auth: Authenticator
    let access: Access
    let identity: IdentityAPI
    let logger: Logger
    let maxBody = 4096

    func addRoutes(to api: RouterGroup<KilnRequestContext>) {
        api.get("projects/:name/retention") { request, context in
            let caller = try await auth.caller(request, context: context)
            let (found, _) = try await project(try context.parameters.require("name"), .view, caller)
            return json(found.project.effectiveRetention)
        }
        api.put("projects/:name/retention") { request, context in
            let caller = try await auth.caller(request, context: context)
            let name = try context.parameters.require("name")
            var (found, _) = try await project(name, .manage, caller)
            var request = request
            let retention = try decodeBody(BuildRetention.self, from: try await request.collectBody(upTo: maxBody))
            try retention.validate()
            for attempt in 0..<10 {
                if attempt > 0 { found = try await project(name, .manage, caller).0 }
                var changed = found.project
                changed.retention = retention
                let key = store.keys.project(name)
                let r = try await store.etcd.txn(Txn(compare: [.modRevision(key, .equal, found.modRevision)], success: [.put(key, try KilnJSON.encode(changed))]))
                guard r.succeeded else { continue }
                logger.info("project retention changed", metadata: ["project": "\(name)", "by": "\(caller.user)"])
                try await store.record(ActivityEvent(user: caller.user, action: "settings changed", detail: "retention: keeps \(retention.summary)"), on: .project, name)
                return json(retention)
            }
            throw KilnError.conflict("project '\(name)' kept changing while its retention was being set: try again")
        }
        api.get("apps/:name/retention") { request, context in
            let caller = try await auth.caller(request, context: context)
            let name = try context.parameters.require("name")
            try await identity.requireExisting(.app, name, .read, caller)
            let app = try await store.app(name)
            return json(AppRetention(keepVersions: app.effectiveKeepVersions, versions: app.versions.map(\.number)))
        }
        api.put("apps/:name/retention") { request, context in
            let caller = try await auth.caller(request, context: context)
            let name = try context.parameters.require("name")
            try await identity.requireExisting(.app, name, .manage, caller)
            var request = request
            let asked = try decodeBody(AppRetention.self, from: try await request.collectBody(upTo: maxBody))
            let key = store.keys.app(name)
            for _ in 0..<10 {
                guard let kv = try await store.etcd.get(key) else { throw KilnError.notFound("app '\(name)' does not exist: an app appears when a project's pipeline deploys it") }
                var app = try KilnJSON.decode(App.self, from: kv.value)
                // Checked on the record the write compares against: a deploy meanwhile retries.
                try app.checkKeepVersions(asked.keepVersions)
                app.keepVersions = asked.keepVersions
                let (trimmed, removed) = app.prunedVersions()
                app = trimmed
                app.updatedAt = Date()
                let r = try await store.etcd.txn(Txn(compare: [.modRevision(key, .equal, kv.modRevision)], success: [.put(key, try KilnJSON.encode(app))]))
                guard r.succeeded else { continue }
                let pruned = removed.map(\.number)
                logger.info("app retention changed", metadata: ["app": "\(name)", "by": "\(caller.user)"])
                try await store.record(ActivityEvent(user: caller.user, action: "settings changed",
                                                     detail: "keeps \(asked.keepVersions) versions" + (pruned.isEmpty ? "" : "; pruned \(pruned.map { "v\($0)" }.joined(separator: ", "))")),
                                       on: .app, name)
                return json(AppRetention(keepVersions: asked.keepVersions, versions: app.versions.map(\.number), pruned: pruned))
            }
            throw KilnError.conflict("app '\(name)' kept changing while its retention was being set: try again")
        }
    }

    /// The project with its revision, if the caller may do `permission` on it (404 as for a
    /// missing project if they have no role on it).
    func project(_ name: String, _ permission: Permission, _ caller: Caller) async throws -> ((project: Project, modRevision: Int64), Role) {
        guard let found = try await store.projectIfExists(name) else { throw projectNotFound(name) }
        let role = try await access.require(permission, caller, on: .project, name, project: found.project, hidden: projectNotFound(name))
        return (found, role)
    }
}
