import DockerAPI
import Foundation
import KilnCore
import Logging

/// The few images an agent keeps in the engine's storage after a successful push, for the
/// layers the next builds of the same project reuse (`kiln agent --keep-images N`, per project).
///
/// Removing the built image also removes the intermediate images of its Dockerfile's steps
/// (podman removes the untagged parents an image leaves without children), which are the
/// builder's layer cache: the next build would run every step again. A kept image keeps them.
///
/// Why a kept image is safe to keep (the built image leaves the storage because the engine
/// serves what it has by name without asking the registry, see `BuildRunner.runSteps`): it
/// loses the farm's name and keeps only `localhost/kiln-kept/<agent>/<project>:<ms>`, a name
/// that `DockerfilePolicy.refusal` refuses in every `FROM`, `COPY --from` and build image, also
/// written short (`kiln-kept/…`, which the engine looks up as `localhost/kiln-kept/…`). The
/// name is no secret: a build whose image came whole from the cache prints every name of that
/// image in its log. An image ID, which logs show too, is refused in any length.
/// `<agent>` is the agent's id in hex, so agents sharing an engine keep apart and an agent
/// restarted with an empty data dir still finds its own. The names say which project and
/// when, so the engine's own list is the record: nothing else to keep in step.
///
/// Every method talks to the engine and never throws: a failure leaves the image for the
/// next call (a removal refused because a build's container still uses the image's layers is
/// tried again later).
struct KeptImages: Sendable {
    /// One kept image, by the name the agent gave it.
    struct Kept: Sendable, Equatable {
        var name: String
        var project: String
        /// When it was kept (milliseconds since 1970, its tag).
        var milliseconds: Int64
    }

    let docker: DockerClient
    /// Per project; 0 keeps none (every image goes once pushed).
    let count: Int
    /// `localhost/kiln-kept/<agent id in hex>/`.
    let prefix: String
    let logger: Logger

    static let root = "localhost/kiln-kept/"

    init(docker: DockerClient, count: Int, agentID: String, logger: Logger) {
        self.docker = docker
        self.count = max(0, count)
        // Hex: an agent id may hold capitals, '_' and '.', which a repository name may not.
        self.prefix = Self.root + agentID.utf8.map { String(format: "%02x", $0) }.joined() + "/"
        self.logger = logger
    }

    /// The name a kept image of `project` gets at `milliseconds`.
    func name(project: String, milliseconds: Int64) -> String { "\(prefix)\(project):\(milliseconds)" }

    /// The kept image a name stands for, if it is one of this agent's.
    func parse(_ name: String) -> Kept? {
        guard name.hasPrefix(prefix) else { return nil }
        let rest = name.dropFirst(prefix.count)
        guard let colon = rest.lastIndex(of: ":"), let ms = Int64(rest[rest.index(after: colon)...]) else { return nil }
        let project = String(rest[..<colon])
        guard (try? Validation.projectName(project)) != nil else { return nil }
        return Kept(name: name, project: project, milliseconds: ms)
    }

    /// Every image this agent keeps, oldest first.
    func all() async -> [Kept] {
        do {
            return try await docker.images().flatMap { $0.names.compactMap(parse) }.sorted { ($0.milliseconds, $0.name) < ($1.milliseconds, $1.name) }
        } catch {
            logger.warning("cannot list the kept images: \(error)")
            return []
        }
    }

    /// Keeps the image `reference` (just pushed) as `project`'s newest, then removes that
    /// project's kept images beyond `count`. Returns whether it kept it.
    @discardableResult
    func keep(_ reference: String, project: String, at now: Date = Date()) async -> Bool {
        guard count > 0 else { return false }
        let ms = Int64((now.timeIntervalSince1970 * 1000).rounded())
        let kept = name(project: project, milliseconds: ms)
        do {
            try await docker.tag(reference, repository: String(kept.prefix { $0 != ":" }), tag: String(ms))
        } catch {
            logger.warning("cannot keep the image of \(project) for layer reuse: \(error)")
            return false
        }
        await prune(project: project, keeping: count)
        return true
    }

    /// Removes `project`'s kept images but the newest `keeping`.
    func prune(project: String, keeping: Int) async {
        let mine = await all().filter { $0.project == project }
        for old in mine.dropLast(max(0, keeping)) { await remove(old) }
    }

    /// Removes every project's kept images beyond `count` (at start: the count may have been
    /// lowered since they were kept).
    func pruneAll() async {
        let all = await all()
        for project in Set(all.map(\.project)) {
            for old in all.filter({ $0.project == project }).dropLast(count) { await remove(old) }
        }
    }

    /// Removes one kept image (its name; the image itself and its layer cache when no other
    /// name or child holds them).
    func remove(_ kept: Kept) async {
        do {
            try await docker.removeImage(kept.name, force: false)
        } catch {
            logger.notice("kept image of \(kept.project) not removed yet: \(error)")
        }
    }
}
