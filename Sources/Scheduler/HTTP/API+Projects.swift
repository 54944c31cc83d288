import Etcd
import Foundation
import KilnCore

/// Saving a project, starting and cancelling a build: what the API's routes and the console's
/// forms both do, so the two check the same roles, validate the same way and record the same
/// activity (docs/roles.md). The callers only read their input and shape the answer.
extension API {
    /// What a save may do to an existing project of the same name.
    enum ProjectSave: Sendable, Equatable {
        /// `POST /api/v1/projects`: a new project, or a change of the one that exists.
        case createOrChange
        /// The console's new-project form: a taken name is a conflict, never a change.
        case create
        /// The console's edit form: the project must exist and, if `revision` is given, still
        /// be as it was when the form was shown (its etcd mod revision), so a second person's
        /// save in between is not overwritten unseen.
        case change(revision: Int64?)
    }

    /// Saves `asked` for `caller`: a new project makes them its owner; a change needs
    /// `manage` (`own` to move it between groups); naming a group needs `setSecrets` on it.
    /// A non-empty `webhookSecret` is sealed apart from the record, an empty one removes the
    /// sealed one, none keeps it. Records the activity; returns the project as a master sees
    /// it (no webhook token) and whether it is new.
    func saveProject(_ asked: Project, by caller: Caller, access: Access, as save: ProjectSave = .createOrChange) async throws -> (project: Project, created: Bool) {
        try Validation.projectName(asked.name)
        var project = asked
        project.webhookSecret = nil
        // What this decision is made on is what the write compares against (no swap between).
        let existing = try await store.projectIfExists(project.name)
        if let existing {
            // A name is global: someone who cannot see the project learns only that it is taken.
            guard try await access.role(caller, on: .project, project.name, project: existing.project) != nil else {
                throw KilnError.conflict("a project named '\(project.name)' exists already and you are not its member: choose another name")
            }
            if save == .create {
                throw KilnError.conflict("a project named '\(project.name)' exists already: choose another name, or change that one from its page")
            }
            // Moving a project between groups changes who holds roles on it (a group's
            // owner would own it): owners only.
            let permission: Permission = project.group != existing.project.group ? .own : .manage
            try await access.require(permission, caller, on: .project, project.name, project: existing.project, hidden: projectNotFound(project.name))
            if case .change(let revision?) = save, revision != existing.modRevision {
                throw KilnError.conflict("project '\(project.name)' was changed by someone else since this form was shown: open its edit form again to see the new settings, then make your change")
            }
        } else if case .change = save {
            throw projectNotFound(project.name)
        }
        if let group = project.group, group != existing?.project.group {
            // Putting a project in a group gives it the group's images and secrets (protected-only
            // ones included, on refs the project's own settings call protected): masters of
            // the group only, who may set those secrets anyway.
            try await access.require(.setSecrets, caller, on: .group, group, hidden: groupNotFound(group))
        }
        var webhookWrite: TxnOp?
        if let token = asked.webhookSecret {
            try asked.validate()
            // An empty one removes it; none at all (a project saved back as the API shows it) keeps it.
            webhookWrite = token.isEmpty ? .delete(store.keys.webhookSecret(project: project.name))
                : try secrets.require(to: "keep a webhook token").webhookSecretWrite(token, project: project.name, by: caller.user)
        }
        let created = try await store.saveProject(project, creator: caller.user, replacing: existing, webhookWrite: webhookWrite)
        logger.info(created ? "project added" : "project changed", metadata: ["project": "\(project.name)", "by": "\(caller.user)"])
        try await store.record(ActivityEvent(user: caller.user, action: created ? "project created" : "settings changed",
                                             detail: created ? nil : ProjectChanges.describe(from: existing?.project, to: asked)), on: .project, project.name)
        return (try await store.project(project.name).redacted, created)
    }

    /// Queues a build of project `name` for `caller` (`build` on it). The trigger the request
    /// names (at most 40 characters; "api" if none) is recorded with the caller's name: a
    /// client cannot name another.
    func startBuild(_ name: String, _ request: BuildRequest, by caller: Caller, access: Access) async throws -> Build {
        let project = try await visibleProject(name, .build, caller, access)
        var request = request
        request.trigger = "\(Validation.printable(String((request.trigger ?? "api").prefix(40)))) by \(caller.user)"
        let build = try await store.enqueue(project, request: request, delivery: nil).build
        logger.info("queued", metadata: ["build.id": "\(build.id)", "project": "\(name)", "ref": "\(build.ref)", "by": "\(caller.user)"])
        return build
    }

    /// Cancels build `id` for `caller` (`build` on its project); `via` ("console") goes into
    /// the reason the record keeps. Records the activity.
    func cancelBuild(_ id: String, by caller: Caller, access: Access, via: String? = nil) async throws -> Build {
        let build = try await visibleBuild(id, .build, caller, access)
        logger.info("cancel requested", metadata: ["build.id": "\(build.id)", "by": "\(caller.user)", "via": "\(via ?? "api")"])
        let cancelled = try await store.cancel(build.id, reason: "cancelled by \(caller.user)" + (via.map { " in the \($0)" } ?? ""))
        try await store.record(ActivityEvent(user: caller.user, action: "build cancelled", build: build.id), on: .project, build.project)
        return cancelled
    }
}
