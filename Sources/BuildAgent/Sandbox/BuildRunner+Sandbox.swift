import Foundation
import KilnCore

/// The build runner's checks that keep a build in its own folders (see docs/architecture.md,
/// "The build sandbox").
extension BuildRunner {
    /// Refuses a `file://` repository this agent was not told to allow (`FileRepositories`).
    func checkFileRepository(_ url: String) throws {
        guard let path = FileRepositories.localPath(of: url) else { return }
        let allowed = configuration.allowFileRepos.map { Containment.realPath($0.path) ?? $0.standardizedFileURL.path }
        let dataDir = Containment.realPath(configuration.dataDir.path) ?? configuration.dataDir.standardizedFileURL.path
        if let why = FileRepositories.refusal(url: url, resolvedPath: Containment.realPath(path), allowed: allowed, dataDir: dataDir) {
            throw StepFailure(step: .fetch, message: why)
        }
    }

    /// The Maven cache this build mounts (`MavenCachePlacement`).
    func cachePlacement(task: BuildTask) async throws -> MavenCachePlacement.Choice {
        MavenCachePlacement.choose(project: task.project, ref: task.ref, pinnedCommit: task.commit?.isEmpty == false,
                                   commitOnRef: try await pinnedCommitOnRef(task: task))
    }

    /// Whether the build counts as one of a protected ref (`MavenCachePlacement.isProtectedBuild`).
    func isProtectedBuild(task: BuildTask) async throws -> Bool {
        MavenCachePlacement.isProtectedBuild(project: task.project, ref: task.ref, pinnedCommit: task.commit?.isEmpty == false,
                                             commitOnRef: try await pinnedCommitOnRef(task: task))
    }

    /// Whether the commit the build pins is on its ref, as the fetched mirror has it; reads the
    /// mirror only when a protected ref's build pins a commit (false otherwise, unused then).
    private func pinnedCommitOnRef(task: BuildTask) async throws -> Bool {
        let project = task.project
        guard let commit = task.commit, !commit.isEmpty, project.isProtected(ref: task.ref) else { return false }
        let mirror = GitMirror(path: mirrorsDir.appendingPathComponent("\(project.name).git"), url: project.repository)
        return try await mirrorLocks.withLock(project.name) {
            try await blocking(cancel: nil) { try mirror.isCommit(commit, onRef: task.ref) }
        }
    }

    /// The context folder and the Dockerfile's path relative to it, both resolved through
    /// every link and inside the checkout, and the Dockerfile's text, free of instructions the
    /// image builder would carry out outside the sandbox (`DockerfilePolicy`): the text the
    /// image step sends (the file is not read again).
    func resolveImageInputs(project: Project, workspace: URL) throws -> (context: URL, dockerfile: String, text: String) {
        let context = try Containment.resolve(project.context, in: workspace, what: "context folder", step: .image)
        let dockerfile = try Containment.resolve(project.dockerfile, in: workspace, what: "Dockerfile", step: .image)
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: context.path, isDirectory: &isDir), isDir.boolValue else {
            throw StepFailure(step: .image, message: "the context '\(project.context)' is not a folder")
        }
        guard FileManager.default.fileExists(atPath: dockerfile.path, isDirectory: &isDir), !isDir.boolValue else {
            throw StepFailure(step: .image, message: "the Dockerfile '\(project.dockerfile)' is a folder")
        }
        guard Containment.isInside(dockerfile.path, context.path), dockerfile.path != context.path else {
            throw StepFailure(step: .image, message: "the Dockerfile '\(project.dockerfile)' must be inside the context folder '\(project.context)'")
        }
        let attributes = try? FileManager.default.attributesOfItem(atPath: dockerfile.path)
        guard (attributes?[.type] as? FileAttributeType) == .typeRegular else {
            throw StepFailure(step: .image, message: "the Dockerfile '\(project.dockerfile)' is not a regular file")
        }
        guard ((attributes?[.size] as? NSNumber)?.intValue ?? 0) <= 1 << 20 else {
            throw StepFailure(step: .image, message: "the Dockerfile '\(project.dockerfile)' is larger than 1 MiB")
        }
        // Read lossily: bytes that are not UTF-8 must not hide the instructions around them.
        guard let data = FileManager.default.contents(atPath: dockerfile.path) else {
            throw StepFailure(step: .image, message: "the Dockerfile '\(project.dockerfile)' cannot be read")
        }
        let text = String(decoding: data, as: UTF8.self)
        if let violation = DockerfilePolicy.check(text) ?? DockerfilePolicy.checkImages(text, registry: configuration.registry, project: project.repositoryName) {
            throw StepFailure(step: .image, message: "\(project.dockerfile): \(violation)")
        }
        // The resolved path: a Dockerfile that is a link inside the context is read as the
        // file it names, which the builder then finds as a plain file in the archive.
        return (context, String(dockerfile.path.dropFirst(context.path.count + (context.path == "/" ? 0 : 1))), text)
    }
}

extension BuildRunner {
    /// The cgroup that bounds the processes of the image step's RUN steps (`ImageCgroup`),
    /// or nil, said in the log, when there is no limit to set or it cannot be set here.
    func imageCgroup(task: BuildTask, sandbox: BuildSandbox, reporter: BuildReporter) -> ImageCgroup? {
        guard let pids = sandbox.limits.pids, configuration.imagePidsCgroup else { return nil }
        guard let cgroup = ImageCgroup.make(name: "kiln-\(configuration.id)-\(task.build)-\(task.attempt)", pids: pids) else {
            reporter.log("note: the Dockerfile's RUN steps get no process limit from the agent: this machine has no cgroup v1 pids hierarchy the agent may write (the container API has no such limit for image builds); only the engine's own, when its runtime is kiln oci-runtime (docs/build-sandbox.md)")
            return nil
        }
        return cgroup
    }
}

extension BuildSandbox {
    /// One log line saying how the build is confined.
    var summary: String {
        let net = network == .host ? "HOST (the build reaches everything on this machine's loopback: --compile-network host)" : network.rawValue
        return "sandbox: network \(net); \(limits.description); capabilities \(BuildSandbox.capabilities.joined(separator: ",")); no-new-privileges"
    }
}
