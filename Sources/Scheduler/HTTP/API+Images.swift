import Foundation
import Hummingbird
import KilnCore
import Logging

/// A group's images: `GET /api/v1/groups/{group}/images` and
/// `DELETE /api/v1/groups/{group}/images/{image}/tags/{tag}[?digest=sha256:…]`, and the same
/// two functions for the console's group page (docs/console.md, docs/roles.md).
///
/// What Kiln knows of an image comes from three places: the registry's own API (tags, the
/// digest each names, sizes from the manifests; `RegistryClient`), the build records (the
/// build whose push recorded a digest) and the apps (the versions that run a digest). Without
/// a registry client (no `--registry-url`), or when the registry does not answer, the page is
/// made from the build records alone and says so.
///
/// Who may: seeing the group (any role) shows its projects; reading its images needs `read`
/// (reporters and up, as pulling does); deleting needs `manage` (masters and up) on the
/// repository's project, else on the group: the rights the token service gives for a
/// registry `delete` (`RegistryAccessPolicy`).
struct ImagesAPI: Sendable {
    let store: SchedulerStore
    let auth: Authenticator
    let identity: IdentityAPI
    /// nil: the scheduler was started without `--registry-url`.
    let registry: RegistryClient?
    let logger: Logger
    var access: Access { identity.access }

    init(store: SchedulerStore, registry: RegistryClient?, logger: Logger) {
        self.store = store
        self.auth = Authenticator(store: store, logger: logger)
        self.identity = IdentityAPI(store: store, auth: auth, access: Access(store: store), logger: logger)
        self.registry = registry
        self.logger = logger
    }

    /// Builds read per project to find which build pushed a digest.
    static let buildsPerProject = 200

    func addRoutes(to api: RouterGroup<KilnRequestContext>) {
        api.get("groups/:name/images") { request, context in
            let caller = try await auth.caller(request, context: context)
            return json(try await images(of: try context.parameters.require("name"), caller: caller))
        }
        api.delete("groups/:name/images/:image/tags/:tag") { request, context in
            let caller = try await auth.caller(request, context: context)
            let group = try context.parameters.require("name")
            let deleted = try await deleteTag(group: group, repository: "\(group)/\(try context.parameters.require("image"))",
                                              tag: try context.parameters.require("tag"),
                                              digest: request.uri.queryParameters["digest"].map(String.init), by: caller)
            return json(deleted)
        }
    }

    /// The group's images as `caller` may see them (`read` on the group; 404 without a role).
    func images(of name: String, caller: Caller) async throws -> GroupImages {
        try await identity.requireExisting(.group, name, .read, caller)
        let group = try await store.group(name)
        let everyProject = try await store.projects()
        let projects = everyProject.filter { $0.group == name }.sorted { $0.name < $1.name }
        let known = try await Known(store: store, projects: projects)
        var fromRegistry = false
        var registryError: String?
        var repositories: [ImageRepository] = []
        var more: Int?
        if let registry {
            do {
                (repositories, more) = try await fromTheRegistry(registry, group: name, projects: projects, known: known)
                fromRegistry = true
            } catch let error as KilnError {
                registryError = error.message
            }
        } else {
            registryError = "the scheduler was started without --registry-url, so it cannot ask the registry: tags, digests and builds come from the build records (no sizes, no tags pushed by hand)"
        }
        if !fromRegistry { repositories = known.repositoriesFromBuilds(projects) }
        // Which versions run a tag: the apps the caller has no role on are not named.
        let roles = try await access.roles(of: caller)
        let byName = Dictionary(everyProject.map { ($0.name, $0) }) { a, _ in a }
        let visible = Set(known.apps.filter { roles.role(of: $0, projects: byName) != nil }.map(\.name))
        for r in repositories.indices {
            for t in repositories[r].tags.indices {
                for u in repositories[r].tags[t].runningIn.indices where !visible.contains(repositories[r].tags[t].runningIn[u].app) {
                    repositories[r].tags[t].runningIn[u].app = ImageUse.hidden
                }
            }
        }
        var answer = GroupImages(group: group, projects: projects.map(\.name), repositories: repositories, fromRegistry: fromRegistry, registryError: registryError)
        answer.moreRepositories = more
        return answer
    }

    /// Deletes the manifest `tag` names in `repository` (`GROUP/…`) for `caller`, unless an
    /// app version runs it. `digest`: the digest the caller saw (the console sends the one its
    /// page showed): if the tag names another by now, nothing is deleted (409). The registry
    /// deletes by digest, so every tag of that digest goes; the answer lists them.
    func deleteTag(group: String, repository: String, tag: String, digest expected: String?, by caller: Caller) async throws -> DeletedImage {
        try await identity.requireExisting(.group, group, .view, caller)
        try Self.checkRepository(repository, in: group)
        guard Self.isTag(tag) else { throw KilnError.invalid("'\(Validation.printable(tag))' is not a tag: up to 128 letters, digits, '_', '.' and '-', not starting with '.' or '-'") }
        if let expected, !Self.isDigest(expected) { throw KilnError.invalid("'\(Validation.printable(expected))' is not a digest (sha256: and 64 hex digits)") }
        let owner = try await requireDelete(repository, group: group, caller)
        guard let registry else {
            throw KilnError.unavailable("this scheduler cannot reach the registry: start it with --registry-url (and --registry-signing-key for a registry with token authentication)")
        }
        guard let digest = try await registry.digest(repository, tag) else {
            throw KilnError.notFound("\(repository) has no tag '\(tag)' (deleted meanwhile?)")
        }
        if let expected, expected != digest {
            throw KilnError.conflict("\(repository):\(tag) names \(digest) now, not \(expected) as when you looked: nothing was deleted; look again")
        }
        try Known.refuseIfRunning(try await store.apps(), repository: repository, tag: tag, digest: digest)
        let tags = [tag] + (try await sharing(digest, in: repository, besides: tag, registry: registry))
        try await registry.deleteManifest(repository, digest: digest, for: caller.user)
        try await store.record(ActivityEvent(user: caller.user, action: "image deleted", detail: "\(repository)@\(digest) (tags \(tags.joined(separator: ", ")))"),
                               on: owner.kind, owner.name)
        logger.info("image deleted", metadata: ["repository": "\(repository)", "digest": "\(digest)", "tags": "\(tags.joined(separator: ","))", "by": "\(caller.user)"])
        return DeletedImage(repository: repository, digest: digest, tags: tags)
    }

    /// The other tags of `repository` that name `digest` (they go with it: the registry deletes
    /// by digest). 409 when a multi-platform tag (an index) lists it: deleting it would leave
    /// that tag naming a manifest that is gone.
    func sharing(_ digest: String, in repository: String, besides tag: String, registry: RegistryClient) async throws -> [String] {
        var same: [String] = [], indexes: [String] = []
        for other in try await registry.tags(repository).prefix(ImageRepository.maxTags * 2) where other != tag {
            guard let found = try await registry.entries(repository, other) else { continue }
            if found.digest == digest { same.append(other) } else if found.children.contains(digest) { indexes.append(other) }
        }
        guard indexes.isEmpty else {
            throw KilnError.conflict("\(repository):\(tag) (\(digest)) is one platform of \(indexes.map { "\(repository):\($0)" }.joined(separator: ", ")): delete that tag first, or keep this one")
        }
        return same
    }

    /// Whether `caller` may delete tags of `repository` (for the console's buttons; the
    /// delete itself checks again).
    func mayDelete(_ repository: String, group: String, _ caller: Caller, projects: [Project]? = nil) async throws -> Bool {
        (try? await requireDelete(repository, group: group, caller, projects: projects)) != nil
    }

    /// The resource whose role decides a delete (the repository's project, else the group),
    /// once `caller` holds `manage` on it; 403 otherwise.
    @discardableResult
    /// `projects`: every project, when the caller has read them already (a page asks for each
    /// repository it shows).
    func requireDelete(_ repository: String, group: String, _ caller: Caller, projects: [Project]? = nil) async throws -> (kind: ResourceKind, name: String) {
        let all: [Project]
        if let projects { all = projects } else { all = try await store.projects() }
        let project = all.first { $0.group == group && $0.repositoryName == repository }
        let owner: (kind: ResourceKind, name: String) = project.map { (.project, $0.name) } ?? (.group, group)
        let role = try await access.role(caller, on: owner.kind, owner.name, project: project)
        guard let role, role >= Permission.manage.minimumRole else {
            throw KilnError.forbidden("you are \(role?.rawValue ?? "no member") of \(owner.kind.rawValue) '\(owner.name)'; deleting its images needs \(Permission.manage.minimumRole.rawValue) or above (kiln help roles)")
        }
        return owner
    }

    // MARK: the registry

    /// The group's repositories from the registry's catalog (and the group's projects' own,
    /// which may have no image yet), each tag's manifest read.
    /// At most ``GroupImages/maxRepositories`` repositories are read, the projects' own first;
    /// returns how many more there are.
    func fromTheRegistry(_ registry: RegistryClient, group: String, projects: [Project], known: Known) async throws -> ([ImageRepository], more: Int?) {
        let own = Set(projects.map(\.repositoryName))
        let names = Set(try await registry.catalog(prefix: group + "/")).union(own).sorted { a, b in
            own.contains(a) != own.contains(b) ? own.contains(a) : a < b
        }
        let read = names.prefix(GroupImages.maxRepositories)
        var out: [ImageRepository] = []
        for name in read.sorted() {
            let all = try await registry.tags(name)
            let shown = Array(all.prefix(ImageRepository.maxTags))
            let read = try await withThrowingTaskGroup(of: (Int, ImageTag, [String]).self) { tasks in
                // At most 8 manifests at once: a page must not flood the registry.
                var results: [Int: (ImageTag, [String])] = [:]
                var next = 0
                func add() {
                    let i = next, tag = shown[i]
                    next += 1
                    tasks.addTask {
                        do {
                            let m = try await registry.manifest(name, tag)
                            return (i, known.tag(tag, digest: m.digest, size: m.size, repository: name), m.children)
                        } catch let error as KilnError {
                            return (i, ImageTag(tag: tag, digest: nil, error: error.message), [])
                        }
                    }
                }
                while next < min(8, shown.count) { add() }
                while let (i, tag, children) = try await tasks.next() {
                    results[i] = (tag, children)
                    if next < shown.count { add() }
                }
                return shown.indices.compactMap { results[$0] }
            }
            // Which multi-platform tags list each digest.
            var indexes: [String: [String]] = [:]
            for (tag, children) in read { for child in children { indexes[child, default: []].append(tag.tag) } }
            let tags = read.map { entry -> ImageTag in
                var tag = entry.0
                tag.platformOf = tag.digest.flatMap { indexes[$0] }
                return tag
            }
            out.append(ImageRepository(name: name, project: projects.first { $0.repositoryName == name }?.name, tags: tags,
                                       moreTags: all.count > shown.count ? all.count - shown.count : nil))
        }
        return (out, names.count > read.count ? names.count - read.count : nil)
    }

    // MARK: names

    /// A repository of `group`: `GROUP/` then path components of lower-case letters and digits
    /// joined by '.', '_', '__' or '-' (the registry's grammar), at most 255 characters.
    static func checkRepository(_ repository: String, in group: String) throws {
        let components = repository.split(separator: "/", omittingEmptySubsequences: false)
        let valid = repository.count <= 255 && components.count >= 2 && components.allSatisfy { c in
            !c.isEmpty && c.allSatisfy { ("a"..."z").contains($0) || ("0"..."9").contains($0) || "._-".contains($0) }
                && c.first.map { $0.isLetter || $0.isNumber } == true && c.last.map { $0.isLetter || $0.isNumber } == true
        }
        guard valid else { throw KilnError.invalid("'\(Validation.printable(repository))' is not a repository name (lower-case letters, digits, '.', '_', '-' in parts joined by '/')") }
        guard components[0] == group else { throw KilnError.invalid("repository '\(repository)' is not in group '\(group)'") }
    }

    static func isTag(_ tag: String) -> Bool {
        guard let first = tag.first, tag.count <= 128, first != ".", first != "-" else { return false }
        return tag.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "_.-".contains($0)) }
    }

    static func isDigest(_ digest: String) -> Bool {
        digest.hasPrefix("sha256:") && digest.count == 71 && digest.dropFirst(7).allSatisfy { $0.isHexDigit && !$0.isUppercase }
    }
}

/// What Kiln's own records say about a group's images: the build that pushed each digest (and
/// each tag), the app versions that run each digest.
struct Known: Sendable {
    /// `REPOSITORY@DIGEST` → the newest build that recorded it.
    var builds: [String: String] = [:]
    /// `REPOSITORY:TAG` → the newest build that pushed it, with its digest.
    var tagged: [String: Build] = [:]
    var apps: [App] = []

    init(store: SchedulerStore, projects: [Project]) async throws {
        apps = try await store.apps()
        for p in projects {
            for b in try await store.builds(project: p.name, limit: ImagesAPI.buildsPerProject) where b.status == .succeeded {
                guard let digest = b.digest, let image = b.image, Known.repository(of: image) == p.repositoryName else { continue }
                if builds["\(p.repositoryName)@\(digest)"] == nil { builds["\(p.repositoryName)@\(digest)"] = b.id }
                if let tag = b.tag, tagged["\(p.repositoryName):\(tag)"] == nil { tagged["\(p.repositoryName):\(tag)"] = b }
            }
        }
    }

    /// A tag as the registry named it, with its build and where it runs.
    func tag(_ tag: String, digest: String, size: Int64?, repository: String) -> ImageTag {
        ImageTag(tag: tag, digest: digest, size: size, build: builds["\(repository)@\(digest)"],
                 runningIn: Known.uses(apps, repository: repository, digest: digest))
    }

    /// Without the registry: each project's tags from its builds.
    func repositoriesFromBuilds(_ projects: [Project]) -> [ImageRepository] {
        projects.map { p in
            let tags = tagged.filter { $0.key.hasPrefix(p.repositoryName + ":") }.map { entry -> ImageTag in
                let tag = String(entry.key.dropFirst(p.repositoryName.count + 1))
                return ImageTag(tag: tag, digest: entry.value.digest, build: entry.value.id,
                                runningIn: entry.value.digest.map { Known.uses(apps, repository: p.repositoryName, digest: $0) } ?? [])
            }
            return ImageRepository(name: p.repositoryName, project: p.name, tags: tags.sorted { $0.tag < $1.tag })
        }
    }

    /// The repository part of an image reference without its registry host
    /// (`127.0.0.1:5000/g/shop:v1` → `g/shop`).
    static func repository(of image: String) -> String {
        let full = Build.repository(of: image)
        let parts = full.split(separator: "/", maxSplits: 1)
        // A first part with '.' or ':' (or `localhost`) is a registry host, as Docker reads it.
        if parts.count == 2, parts[0].contains(".") || parts[0].contains(":") || parts[0] == "localhost" { return String(parts[1]) }
        return full
    }

    /// 409 when a version runs `repository@digest` (`tag` names it), naming the versions.
    static func refuseIfRunning(_ apps: [App], repository: String, tag: String, digest: String) throws {
        let running = uses(apps, repository: repository, digest: digest)
        guard running.isEmpty else {
            let versions = running.map { "app \($0.app) version \($0.version) (\($0.state.rawValue))" }.joined(separator: ", ")
            throw KilnError.conflict("\(repository):\(tag) (\(digest)) is what \(versions) runs: deploy another version or retire it before deleting the image")
        }
    }

    /// The versions whose instances run `repository@digest`.
    static func uses(_ apps: [App], repository: String, digest: String) -> [ImageUse] {
        apps.flatMap { app in
            app.versions.filter { v in
                [.deploying, .ready, .live, .retiring].contains(v.state) && v.image.hasSuffix("@" + digest) && Known.repository(of: v.image) == repository
            }.map { ImageUse(app: app.name, version: $0.number, state: $0.state) }
        }
    }
}
