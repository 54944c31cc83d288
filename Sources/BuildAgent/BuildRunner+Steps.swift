import DockerAPI
import Foundation
import KilnCore

/// The compile and image steps of `BuildRunner` (the order and the records: BuildRunner.swift).
extension BuildRunner {
    // compile: the build command in the project's build image, the checkout mounted as
    // /workspace and, with mvncache, each of the project's caches (`Project.caches`, Maven's
    // /root/.m2 by default) from its folder on the agent (`CacheLayout`; the protected ones for
    // protected refs), in the build's sandbox. With `--cache-writes on-success` the caches are
    // an overlay (`CacheLayers`) and the build's changes go to `changes`, which the build's
    // end keeps (it succeeded) or drops (anything else).
    // The secrets (`compileSecrets`) as environment variables of the container (never its
    // command line) and files under /run/secrets, removed when the step ends, however it ends.
    // A build image on a registry the project has a login for is pulled with it and hidden
    // from other builds (`pullWithLogin`), and removed when the step ends.
    func compile(task: BuildTask, workspace: URL, sandbox: BuildSandbox, secrets: BuildSecrets, changes: CacheChanges, reporter: BuildReporter) async throws {
        let project = task.project
        // The build image passes the rules of a Dockerfile's FROM: the engine's storage holds
        // other projects' images (while they build, and the ones kept for layer reuse).
        if let reason = DockerfilePolicy.refusal(image: project.buildImage, registry: configuration.registry, project: project.repositoryName) {
            throw StepFailure(step: .compile, message: "the build image: \(reason)")
        }
        // nosuid, nodev: a root build could leave a setuid-root program in its checkout or
        // cache, which a user of the agent's machine could then run.
        var mounts = ["\(workspace.path):/workspace:rw,nosuid,nodev"]
        if FileManager.default.fileExists(atPath: mavenSettings.path) {
            mounts.append("\(mavenSettings.path):/etc/maven/settings.xml:ro,nosuid,nodev")
        }
        var image = project.buildImage
        if let login = secrets.login(for: ImageRegistry.host(of: image)) {
            image = try await pullWithLogin(image, login: login, project: project.name, step: .compile, reporter: reporter)
        }
        let pulled = image == project.buildImage ? nil : image
        let docker = self.docker
        do {
            try await compile(task: task, image: image, mounts: mounts, sandbox: sandbox, secrets: secrets, changes: changes, reporter: reporter)
        } catch {
            if let pulled { await outlivingCancellation { try? await docker.removeImage(pulled, force: false) } }
            throw error
        }
        if let pulled { try? await docker.removeImage(pulled, force: false) }
    }

    private func compile(task: BuildTask, image: String, mounts: [String], sandbox: BuildSandbox, secrets: BuildSecrets, changes: CacheChanges, reporter: BuildReporter) async throws {
        let project = task.project
        let folder = secretFolder(task: task)
        defer { try? FileManager.default.removeItem(at: folder) }
        let (secretEnv, secretBind) = try await compileSecrets(task: task, secrets: secrets, reporter: reporter)
        let baseMounts = mounts + (secretBind.map { [$0] } ?? [])
        let runIt: @Sendable ([String], String) async throws -> Void = { binds, caches in
            let spec = sandbox.confine(ContainerSpec(
                image: image, cmd: ["sh", "-c", project.buildCommand], workingDir: "/workspace",
                env: secretEnv.merging(["KILN_BUILD": task.build, "KILN_PROJECT": project.name]) { _, kiln in kiln }, binds: binds,
                labels: ["kiln.build": task.build, "kiln.agent": configuration.id]))
            reporter.log("$ \(project.buildCommand)   (in \(project.buildImage), \(caches))")
            let code = try await runContainer(spec, name: "kiln-\(task.build)-\(task.attempt)-compile", reporter: reporter)
            if code != 0 { throw StepFailure(step: .compile, message: "the build command exited with status \(code)") }
        }
        reporter.log(sandbox.summary)
        var declared: [(path: String, folder: String)] = []
        if task.mvncache {
            do { declared = try CacheLayout.mounts(of: project) } catch let e as KilnError {
                throw StepFailure(step: .compile, message: "the project's caches: \(e.message)")
            }
        }
        if task.mvncache && !declared.isEmpty {
            let choice = try await cachePlacement(task: task)
            await disk?.used("mvncache/\(choice.folder)", by: project.name)
            let root = cachesDir.appendingPathComponent(choice.folder)
            try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
            reporter.log("caches: \(choice.protected ? "the protected ones (\(task.ref) is a protected ref)" : "the ones of unprotected refs (only the default branch and protectedRefs use the protected ones)")")
            let names = declared.map(\.path).joined(separator: ", ")
            if configuration.cacheWrites == .onSuccess {
                return try await compileOverLayers(task: task, folder: choice.folder, declared: declared, names: names, baseMounts: baseMounts, runIt: runIt,
                                                   changes: changes, reporter: reporter)
            }
            // One build at a time writes a project's caches: Maven's local repository (and
            // Gradle's, npm's) is not safe for two processes.
            if await cacheLocks.isHeld(choice.folder) {
                reporter.log("waiting for the caches of \(project.name): another build of it is using them")
            }
            let declared = declared
            try await cacheLocks.withLock(choice.folder) {
                // Under the lock: no build of this folder runs now to swap a folder for a link.
                var binds = baseMounts
                for (path, folder) in declared {
                    let dir = try CacheLayout.prepare(folder, in: root)
                    binds.append("\(dir.path):\(path):rw,nosuid,nodev")
                }
                try await runIt(binds, "caches mounted: \(names)")
            }
        } else {
            try await runIt(baseMounts, task.mvncache ? "no caches declared" : "no caches")
        }
    }

    /// The build command over an overlay of the project's caches (`CacheLayers`): its changes
    /// go to `changes` once unmounted; on any failure they are dropped here.
    private func compileOverLayers(task: BuildTask, folder: String, declared: [(path: String, folder: String)], names: String, baseMounts: [String],
                                   runIt: @Sendable ([String], String) async throws -> Void, changes: CacheChanges, reporter: BuildReporter) async throws {
        let layers = cacheLayers
        let session = try await layers.mount(folder: folder, name: "\(task.build)-\(task.attempt)") { reporter.log($0) }
        do {
            var binds = baseMounts
            for (path, folder) in declared {
                // In the overlay: a link a build left is replaced in this build's layer only.
                let dir = try CacheLayout.prepare(folder, in: session.merged)
                binds.append("\(dir.path):\(path):rw,nosuid,nodev")
            }
            try await runIt(binds, "caches mounted: \(names); this build's changes to them are kept only if it succeeds")
        } catch {
            await outlivingCancellation {
                await layers.unmount(session)
                await layers.discard(session) { reporter.log($0) }
            }
            if !(error is CancellationError) { reporter.log("caches: the changes of this build to them are dropped (the compile step did not succeed)") }
            throw error
        }
        await layers.unmount(session)
        changes.set(session)
    }

    /// Creates, starts and waits for a container, streaming its output into the log.
    /// The container is removed in every case; on cancellation it is stopped first.
    /// The container is named, so that one created by a request this build cancelled
    /// halfway (podman made it, the answer never came) is still found and removed.
    func runContainer(_ spec: ContainerSpec, name: String, reporter: BuildReporter) async throws -> Int {
        let docker = self.docker
        // Left by an earlier run of this very attempt (an agent that crashed): remove it.
        try? await docker.remove(name, force: true)
        let id: String
        do {
            id = try await docker.createContainer(spec, name: name)
        } catch {
            await outlivingCancellation { try? await docker.remove(name, force: true) }
            if Task.isCancelled { throw CancellationError() }
            throw StepFailure(step: .compile, message: "could not create the build container from '\(spec.image)': \(error)")
        }
        do {
            try await docker.start(id)
            // The output to its end (the container has exited then), and only then the exit
            // code: podman 4.3's Docker-API `wait` spins a core for as long as it is open
            // (containers/podman#18150), which halved the build's CPU here.
            let code = try await streamOutput(of: id, docker: docker) { reporter.output($0) }
            try? await docker.remove(id, force: true)
            return code
        } catch {
            // Stop the container even though this task is cancelled.
            await outlivingCancellation {
                try? await docker.stop(id, timeoutSeconds: 2)
                try? await docker.remove(id, force: true)
            }
            throw error
        }
    }

    // image: the project's Dockerfile, built through the same API from the context folder,
    // both resolved through links and inside the checkout, RUN steps in the build's sandbox.
    func image(task: BuildTask, workspace: URL, reference: String, sandbox: BuildSandbox, secrets: BuildSecrets, reporter: BuildReporter) async throws {
        let project = task.project
        let (context, dockerfile, text) = try resolveImageInputs(project: project, workspace: workspace)
        // Base images pulled from the farm's registry, or with a login of the project's, leave
        // the engine's storage with the step, for the reason the built image does (see runSteps).
        let pulled = Locked<[String]>([])
        let docker = self.docker
        let removePulled: @Sendable () async -> Void = {
            await outlivingCancellation { for name in pulled.withLock({ $0 }) { try? await docker.removeImage(name, force: false) } }
        }
        do {
            let pinned = try await checkBaseImages(text, project: project, secrets: secrets, pulled: pulled, reporter: reporter)
            reporter.log("building \(reference) from \(project.dockerfile)")
            let cgroup = imageCgroup(task: task, sandbox: sandbox, reporter: reporter)
            defer { cgroup?.remove() }
            do {
                let id = try await docker.build(contextDirectory: context, dockerfile: dockerfile, dockerfileText: pinned, tag: reference,
                                                confinement: sandbox.imageConfinement(cgroupParent: cgroup?.parent)) { reporter.output($0) }
                reporter.log("image \(id)")
            } catch let e as DockerError {
                throw StepFailure(step: .image, message: "\(e)")
            }
        } catch {
            await removePulled()
            throw error
        }
        await removePulled()
    }
}
