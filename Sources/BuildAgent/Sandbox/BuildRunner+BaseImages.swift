import DockerAPI
import Foundation
import KilnCore
import Synchronization

/// The ONBUILD triggers of images, by image ID, as read from their exports
/// (`DockerClient.imageTriggers`): an ID is the digest of one configuration, so its triggers
/// never change, and reading them is slow (the export carries every layer). Holds at most
/// 256 IDs (then starts again). Shared by the builds of one agent.
final class ImageTriggerCache: Sendable {
    private let entries = Mutex<[String: [String]]>([:])

    func triggers(id: String, read: () async throws -> [String]) async throws -> [String] {
        if let known = entries.withLock({ $0[id] }) { return known }
        let triggers = try await read()
        entries.withLock {
            if $0.count >= 256 { $0.removeAll() }
            $0[id] = triggers
        }
        return triggers
    }
}

extension BuildRunner {
    /// The Dockerfile as the image step sends it, after the base images' ONBUILD triggers were
    /// checked. For each `FROM` that names an image (`DockerfilePolicy.baseImages`):
    /// 1. the image is made present in the engine. On a registry the project has a login for
    ///    (`BuildSecrets.login(for:)`) it is always pulled with that login, so that the registry,
    ///    not the engine's storage, decides, and hidden from other builds
    ///    (`pullWithLogin`). Otherwise as the build itself would: the build sends no pull
    ///    policy, which podman's compat `/build` reads as "if missing", and no registry
    ///    credentials; so it is pulled only when the engine does not have it, and
    ///    anonymously, except that an image of the farm's registry (only the build's own
    ///    project's passes `checkImages`) is pulled with the agent's credentials, whose token
    ///    the registry scopes to this build's project. Either pull is written into `pulled`:
    ///    it leaves the engine's storage after the step, like the built image;
    /// 2. its triggers (read from its configuration by ID, `ImageTriggerCache`) are checked by
    ///    the Dockerfile's own rules (`DockerfilePolicy.triggerRefusal`): buildah runs them as
    ///    if they stood in the Dockerfile, before the stage's own instructions;
    /// 3. the FROM is rewritten to name that image's ID (`DockerfilePolicy.pinning`): a tag
    ///    re-pushed after the check, and pulled meanwhile by another build or a deploy, still
    ///    cannot put an unchecked image under this build. The builder never pulls an ID.
    func checkBaseImages(_ text: String, project: Project, secrets: BuildSecrets, pulled: Locked<[String]>, reporter: BuildReporter) async throws -> String {
        let bases: [DockerfilePolicy.BaseImage]
        switch DockerfilePolicy.baseImages(text) {
        case .success(let found): bases = found
        case .failure(let violation): throw StepFailure(step: .image, message: "\(project.dockerfile): \(violation)")
        }
        var ids: [Int: String] = [:]
        var checked: [String: String] = [:]
        do {
            for base in bases {
                if let id = checked[base.image] {
                    ids[base.line] = id
                    continue
                }
                var id: String?
                if let login = secrets.login(for: ImageRegistry.host(of: base.image)) {
                    let hidden = try await pullWithLogin(base.image, login: login, project: project.name, step: .image, reporter: reporter)
                    pulled.withLock { $0.append(hidden) }
                    id = try await docker.imageID(hidden)
                } else {
                    id = try await docker.imageID(base.image)
                }
                if id == nil {
                    let inFarmRegistry = base.image.split(separator: "/").first.map { $0.lowercased() == configuration.registry.lowercased() } ?? false
                    reporter.log("pulling the base image \(base.image)\(inFarmRegistry ? " with this agent's registry credentials" : "")")
                    if inFarmRegistry { pulled.withLock { $0.append(base.image) } }
                    do {
                        try await docker.pull(base.image, insecure: inFarmRegistry && configuration.registryInsecure,
                                              credentials: inFarmRegistry ? configuration.registryCredentials : nil) { reporter.output($0) }
                    } catch let e as DockerError where !inFarmRegistry && Self.looksRefused(e.message) {
                        let host = ImageRegistry.host(of: base.image)
                        throw StepFailure(step: .image, message: "\(e); the registry \(host) asks for credentials the project has not got: set a login with `kiln credential set registry \(host) --project \(project.name)`"
                            + (secretsSource == nil ? " (and start this agent with --scheduler: without it builds get no credentials)" : ""))
                    }
                    id = try await docker.imageID(base.image)
                }
                guard let id else {
                    throw StepFailure(step: .image, message: "the base image \(base.image) is not in the container engine even after a pull")
                }
                let triggers = try await triggerCache.triggers(id: id) { try await docker.imageTriggers(id: id) }
                if let (trigger, reason) = DockerfilePolicy.triggerRefusal(triggers, registry: configuration.registry, project: project.name) {
                    throw StepFailure(step: .image, message: "the base image \(base.image) (FROM on line \(base.line) of \(project.dockerfile)) has the ONBUILD trigger '\(trigger.prefix(300))', which the image builder would run before the Dockerfile's own instructions: \(reason)")
                }
                reporter.log("base image \(base.image) is \(id)" + (triggers.isEmpty ? "" : "; its ONBUILD triggers passed the sandbox's checks: " + triggers.joined(separator: " | ")))
                checked[base.image] = id
                ids[base.line] = id
            }
        } catch let e as DockerError {
            throw StepFailure(step: .image, message: "\(e)")
        }
        return DockerfilePolicy.pinning(text, ids: ids)
    }
}
