import Crypto
import DockerAPI
import Etcd
import Foundation
import KilnCore

/// No rebuild of what was already built (docs/reuse.md).
///
/// Where it is decided: here, on the agent, right after the fetch step. The agent is the one
/// part that has everything the key needs at hand and trustworthy: the commit resolved in its
/// own mirror (so its tree), the container engine that would run the build (so the ids of the
/// build image and of the Dockerfile's base images, as the compile and image steps would use
/// them), the task the scheduler wrote (project, command, paths, caches switch), the secrets it
/// was given (their names), and registry credentials that push this project's repository while
/// it holds the build. The scheduler has no mirror and no engine; deciding there would need
/// both, or trust what an agent published earlier. Nothing the build's own code does can reach
/// the key: that code runs only in the compile and image steps, after the key was read, and
/// the key reads git's ids and the engine's, not files the repository could shape.
///
/// The order (`reuse(task:build:workspace:secrets:reporter:)`):
/// 1. read the inputs (`readInputs`); one that cannot be read leaves the build without a key:
///    it runs for real and is not recorded for reuse;
/// 2. read the reuse index's entries for the project and key, decide (`ReuseDecision`);
/// 3. check the entry against its build's record (succeeded, same project, same key and
///    protection, same digest, not itself a reuse, an image of this project's repository in
///    this farm's registry); an entry that fails is deleted (guarded by its revision);
/// 4. retag in the registry (`DockerClient.retag`: the manifest by digest, PUT under the new
///    tag, the digest checked after); a manifest the registry no longer has (tag deleted,
///    garbage-collected) deletes the entry. Any failure in 3 or 4 is logged and the build runs
///    for real;
/// 5. the record: fetch as it ran, compile and image `skipped` with a note naming the build
///    reused, push `succeeded` (the retag), `reusedFrom`, the same digest. The end is written
///    as any success's, so the post-build pipeline starts as after a real build.
extension BuildRunner {
    /// After the fetch: reuses an earlier build's image when the rules allow it and returns
    /// true (the build then has its image, digest and steps), else records the build's inputs
    /// (`build.inputs`, for a later reuse of this one) and returns false.
    func reuse(task: BuildTask, build: inout Build, workspace: URL, secrets: BuildSecrets, reporter: BuildReporter) async throws -> Bool {
        let project = task.project
        build.reusedFrom = nil
        // Read even when the build may not reuse (a rebuild): its own success is then recorded
        // for the builds after it.
        let inputs = await readInputs(task: task, commit: build.commit ?? "", workspace: workspace, secrets: secrets, reporter: reporter)
        build.inputs = inputs
        var entries: [(entry: ReuseEntry, key: String, revision: Int64)] = []
        let refusal = ReuseDecision.refusal(rebuild: build.rebuild == true, project: project, agentAllows: configuration.reuseBuilds)
        if refusal == nil, let inputs {
            do {
                let found = try await etcd.range(prefix: keys.reuseEntries(project: project.name, key: inputs.key))
                entries = found.kvs.compactMap { kv in (try? KilnJSON.decode(ReuseEntry.self, from: kv.value)).map { ($0, kv.key, kv.modRevision) } }
            } catch {
                reporter.log("reuse: could not read the reuse index (\(error)); building")
                return false
            }
        }
        let decision = ReuseDecision.decide(rebuild: build.rebuild == true, project: project, agentAllows: configuration.reuseBuilds,
                                            inputs: inputs, entries: entries.map(\.entry))
        guard case .reuse(let entry) = decision, let inputs else {
            if case .build(let reason) = decision { reporter.log("reuse: none, \(reason)\(inputs.map { "; inputs \($0.key)" } ?? "")") }
            return false
        }
        let stored = entries.first { $0.entry == entry }!
        let started = ContinuousClock.now
        let startedAt = Date()
        let stale: (String, drop: Bool)?
        do {
            stale = try await staleness(of: entry, inputs: inputs, project: project, build: build.id)
        } catch {
            reporter.log("reuse: could not read the record of build \(entry.build) (\(error)); building")
            return false
        }
        if let (why, drop) = stale {
            reporter.log("reuse: the index names build \(entry.build), but \(why); \(drop ? "removing that entry and " : "")building")
            if drop { await dropEntry(stored.key, revision: stored.revision) }
            return false
        }
        let tag = build.tag ?? String((build.commit ?? "").prefix(7))
        reporter.log("reuse: build \(entry.build) had the same inputs (\(inputs.key)); tagging its image \(entry.digest) as \(configuration.registry)/\(project.repositoryName):\(tag)")
        do {
            try Task.checkCancellation()
            try await withTimeout(configuration.timeouts.push, { StepTimeout(step: .push, limit: self.configuration.timeouts.push) }) {
                try await DockerClient.retag(registry: self.configuration.registry, repository: project.repositoryName, digest: entry.digest, tag: tag,
                                             insecure: self.configuration.registryInsecure, credentials: self.configuration.registryCredentials,
                                             httpClient: self.registryHTTP)
            }
        } catch let e as DockerError where e.statusCode == 404 {
            reporter.log("reuse: the registry no longer has \(entry.digest) of build \(entry.build) (\(e)); removing that entry and building")
            await dropEntry(stored.key, revision: stored.revision)
            return false
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            reporter.log("reuse: could not tag the image of build \(entry.build) (\(error)); building")
            return false
        }
        let elapsed = ContinuousClock.now - started
        let note = "reused the image of build \(entry.build) (same inputs)"
        for i in build.steps.indices where build.steps[i].name == .compile || build.steps[i].name == .image {
            build.steps[i].status = .skipped
            build.steps[i].note = note
        }
        if let i = build.steps.firstIndex(where: { $0.name == .push }) {
            build.steps[i].status = .succeeded
            build.steps[i].startedAt = startedAt
            build.steps[i].finishedAt = Date()
            build.steps[i].durationMs = elapsed.inMilliseconds
            build.steps[i].note = "tagged \(entry.digest) as \(tag) in the registry (no layer moved)"
        }
        build.image = "\(configuration.registry)/\(project.repositoryName):\(tag)"
        build.digest = entry.digest
        build.reusedFrom = entry.build
        reporter.log("==> compile skipped, image skipped: \(note)")
        reporter.log("==> push succeeded in \(elapsed.secondsDescription): \(build.image!) is \(entry.digest)")
        return true
    }

    /// After a real build's image step: the inputs read again, from the Dockerfile the image
    /// step used and the engine as it is now. The build's own code ran in between and may have
    /// rewritten its Dockerfile (another FROM, a COPY --from an image), and a build or base
    /// image's tag may have moved during the compile: then the image is not the one its key
    /// describes, and the build is not recorded for reuse (`build.inputs` cleared).
    func confirmInputs(task: BuildTask, build: inout Build, workspace: URL, secrets: BuildSecrets, reporter: BuildReporter) async {
        guard let before = build.inputs else { return }
        let after = await readInputs(task: task, commit: build.commit ?? "", workspace: workspace, secrets: secrets, reporter: reporter)
        guard after?.key != before.key else { return }
        build.inputs = nil
        reporter.log("reuse: the build's inputs changed while it ran (its Dockerfile, or the engine's build or base images); it is not recorded for reuse")
    }

    /// Why an index entry may not be used (nil: it may): its build's record must back it.
    /// `drop`: the entry will never serve (a build whose end is still being written may).
    private func staleness(of entry: ReuseEntry, inputs: BuildInputs, project: Project, build: String) async throws -> (String, drop: Bool)? {
        if entry.build == build { return ("that is this build", true) }
        guard let kv = try await etcd.get(keys.build(entry.build)) else { return ("that build's record is gone (retention)", true) }
        // Reasons of this agent's own (a record of a newer schema it cannot decode, another name
        // for the registry) keep the entry for the agents it serves.
        guard let source = try? KilnJSON.decode(Build.self, from: kv.value) else { return ("that build's record cannot be read by this agent", false) }
        if source.project != project.name { return ("that build is of project \(source.project)", true) }
        // The entry is written just before its build's end: not final yet is not stale yet.
        if !source.status.isFinal { return ("that build has not ended yet", false) }
        if source.status != .succeeded { return ("that build is \(source.status.rawValue)", true) }
        if source.reusedFrom != nil { return ("that build reused another's image", true) }
        guard let recorded = source.inputs, recorded.key == inputs.key, recorded.protected == entry.protected else { return ("that build's record names other inputs", true) }
        guard source.digest == entry.digest, let image = source.image else { return ("that build's record names another digest", true) }
        guard Build.repository(of: image) == "\(configuration.registry)/\(project.repositoryName)" else {
            return ("that build's image \(image) is not in this project's repository of this agent's registry", false)
        }
        return nil
    }

    /// Deletes an index entry that led nowhere, unless it changed since it was read.
    private func dropEntry(_ key: String, revision: Int64) async {
        _ = try? await etcd.txn(Txn(compare: [.modRevision(key, .equal, revision)], success: [.delete(key)]))
    }

    /// The build's inputs (`BuildInputs`), read before its compile; nil, with the reason in the
    /// log, when one cannot be read:
    /// - the build image or a base image the project pulls with its own login (pulled again on
    ///   every build, so the registry decides, not the engine), one of the farm's registry
    ///   (pulled for the step and removed after), or one the engine does not hold now (the
    ///   compile or image step would pull it);
    /// - a Dockerfile that copies from an image (`COPY --from=<image>`), whose id is not read;
    /// - a Dockerfile the image step would refuse (that step says why).
    func readInputs(task: BuildTask, commit: String, workspace: URL, secrets: BuildSecrets, reporter: BuildReporter) async -> BuildInputs? {
        let project = task.project
        do {
            let mirror = GitMirror(path: mirrorsDir.appendingPathComponent("\(project.name).git"), url: project.repository)
            // The Dockerfile first (no I/O but the file), then the mirror and the engine's
            // inspections at once: they are most of this time, and a reused build waits for it.
            let (_, _, text) = try resolveImageInputs(project: project, workspace: workspace)
            let bases: [DockerfilePolicy.BaseImage]
            switch DockerfilePolicy.baseImages(text) {
            case .success(let found): bases = found
            case .failure(let violation): throw InputUnread("\(project.dockerfile): \(violation)")
            }
            if let copied = Self.copiedImage(text) { throw InputUnread("\(project.dockerfile) copies from the image \(copied)") }
            async let readTree = mirrorLocks.withLock(project.name) { try await blocking(cancel: nil) { try mirror.tree(of: commit) } }
            async let readProtected = isProtectedBuild(task: task)
            let images = [project.buildImage] + bases.map(\.image)
            let ids = try await withThrowingTaskGroup(of: (Int, String?).self) { group in
                for (i, image) in images.enumerated() { group.addTask { (i, try await imageID(image, secrets: secrets)) } }
                var ids = [String?](repeating: nil, count: images.count)
                for try await (i, id) in group { ids[i] = id }
                return ids
            }
            if let missing = ids.firstIndex(where: { $0 == nil }) {
                throw InputUnread("the \(missing == 0 ? "build" : "base") image \(images[missing]) is not in the container engine, or is pulled for each build")
            }
            let buildImage = ids[0]!
            let baseIDs = ids.dropFirst().map { $0! }
            let (tree, protected) = try await (readTree, readProtected)
            let canonical = BuildInputs.canonicalText(project: project, tree: tree, buildImage: buildImage, baseImages: baseIDs, mvncache: task.mvncache,
                                                 secretNames: secrets.env.map { $0.file ? "\($0.name) (file)" : $0.name },
                                                 registryLogins: secrets.registries.map { $0.host.lowercased() })
            return BuildInputs(key: Self.key(of: canonical), tree: tree, buildImage: buildImage, baseImages: baseIDs, protected: protected)
        } catch {
            reporter.log("reuse: the build's inputs could not all be read (\(error)); it runs for real and is not recorded for reuse")
            return nil
        }
    }

    /// `sha256:<hex>` of the canonical text.
    static func key(of canonicalText: String) -> String {
        "sha256:" + SHA256.hash(data: Data(canonicalText.utf8)).map { String(format: "%02x", $0) }.joined()
    }

    /// The engine's id of `image` as the steps would use it; nil when the steps would pull it
    /// (a login of the project's for its registry, the farm's registry, or not in the engine).
    private func imageID(_ image: String, secrets: BuildSecrets) async throws -> String? {
        let host = ImageRegistry.host(of: image)
        if secrets.login(for: host) != nil { return nil }
        if host.lowercased() == configuration.registry.lowercased() { return nil }
        return try await docker.imageID(image)
    }

    /// The first `COPY --from=` (or `ADD --from=`) that names an image rather than a stage.
    static func copiedImage(_ text: String) -> String? {
        var stages: Set<String> = []
        for instruction in DockerfilePolicy.instructions(text) {
            if let from = DockerfilePolicy.fromArguments(instruction.text) {
                if let stage = from.stage { stages.insert(stage) }
                continue
            }
            let words = instruction.text.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
            guard let keyword = words.first?.uppercased(), keyword == "COPY" || keyword == "ADD" else { continue }
            for word in words.dropFirst() where word.lowercased().hasPrefix("--from=") {
                let source = String(word.dropFirst("--from=".count))
                if !stages.contains(source.lowercased()) && Int(source) == nil { return source }
            }
        }
        return nil
    }
}

/// An input of the reuse key that could not be read; the message says which.
struct InputUnread: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
