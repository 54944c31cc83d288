import Etcd
import Foundation
import KilnCore
import Logging
import Synchronization

/// Why a running build is being stopped, set before its task is cancelled.
final class BuildControl: Sendable {
    enum Reason: Sendable, Equatable {
        case requested          // `kiln cancel` / POST …/cancel
        case taskLost           // the scheduler took the build away
        case shutdown           // the agent is stopping; the build goes back to the queue
    }
    private let state = Mutex<Reason?>(nil)
    var reason: Reason? { state.withLock { $0 } }
    /// Records the first reason only.
    func set(_ r: Reason) { state.withLock { if $0 == nil { $0 = r } } }
}

/// A step ended badly; `message` is what the person reading the build record needs.
struct StepFailure: Error, CustomStringConvertible {
    let step: StepName
    let message: String
    var description: String { "\(step.rawValue): \(message)" }
}

struct StepTimeout: Error, CustomStringConvertible {
    let step: StepName
    let limit: Duration
    var description: String { "\(step.rawValue): timed out after \(limit.components.seconds) s" }
}

/// Runs one build on this agent: fetch, compile, image, push, each timed and logged,
/// its record kept current in etcd.
struct BuildRunner: TaskRunner {
    let configuration: AgentConfiguration
    let etcd: EtcdClient
    let keys: Keys
    let docker: DockerClient
    let mirrorLocks: KeyedLock
    /// One build of a project at a time writes its caches in place (`--cache-writes direct`).
    let cacheLocks: KeyedLock
    /// The overlay layers that keep a failed build's cache changes out (`--cache-writes on-success`).
    let cacheLayers: CacheLayers
    let logger: Logger
    /// Where builds get their secrets (the schedulers); nil: an agent without `--scheduler`,
    /// whose builds get none.
    let secretsSource: (any BuildSecretsSource)?
    /// Accounts for the mirrors and caches builds use and keeps images for layer reuse; nil:
    /// no accounting, and every built image leaves the engine once pushed.
    var disk: DiskKeeper? = nil
    /// Takes over the ends this runner cannot write (`PendingEnds`); nil: such a build is only
    /// logged, and its task stays until the agent's lease goes.
    var pendingEnds: PendingEnds? = nil
    /// The ONBUILD triggers of base images this agent has read, by image ID.
    let triggerCache = ImageTriggerCache()
    /// The refs each project's builds last published (`RepositoryRefs`).
    let publishedRefs = PublishedRefs()

    var mirrorsDir: URL { configuration.dataDir.appendingPathComponent("mirrors") }
    var cachesDir: URL { configuration.dataDir.appendingPathComponent("mvncache") }
    var workspacesDir: URL { configuration.dataDir.appendingPathComponent("workspaces") }
    var mavenSettings: URL { configuration.dataDir.appendingPathComponent("maven-settings.xml") }

    /// Writes the Maven settings, checks that the container API answers, and removes the
    /// containers an earlier run of this agent left (`removeOrphans`).
    func prepare() async throws {
        if !configuration.schedulers.isEmpty && secretsSource == nil {
            throw KilnError.invalid("agent \(configuration.id): --scheduler needs --registry-credentials, the machine credential the scheduler knows this agent by (make one with `kiln machine add \(configuration.id) --kind agent --out FILE`)")
        }
        guard configuration.kilnExecutable != nil else {
            throw KilnError.unavailable("agent \(configuration.id): no kiln executable to run git fetches in (they run as `kiln git-fetch` so that a time limit can stop them): set KILN_BIN to the kiln program")
        }
        try writeMavenSettings()
        // Secret files and checkouts a crashed run of this agent left behind.
        try? FileManager.default.removeItem(at: configuration.dataDir.appendingPathComponent("secrets"))
        try? FileManager.default.removeItem(at: workspacesDir)
        if secretsSource == nil { logger.warning("kiln agent \(configuration.id): \(Self.noSecretsNote)") }
        do {
            try await docker.ping()
        } catch {
            throw KilnError.unavailable("agent \(configuration.id): the container API at \(configuration.dockerSocket) does not answer (\(error)). Start podman's service (`podman system service --time=0 unix://\(configuration.dockerSocket)`) or dockerd, or pass --docker-socket")
        }
        try await removeOrphans()
        try await prepareCaches()
    }

    /// With `--cache-writes on-success`: checks that an overlay can be mounted in the data dir
    /// (a clear error at start, not a failed build later), then settles what a dead run of
    /// this agent left in the cache layers (`CacheLayers.recover`).
    /// Both ways, the layers a run with on-success left are settled first, so that switching
    /// never folds old layers over caches that moved on.
    private func prepareCaches() async throws {
        try FileManager.default.createDirectory(at: cacheLayers.layersDir, withIntermediateDirectories: true)
        for note in await cacheLayers.recover() { logger.notice("caches: \(note)") }
        guard configuration.cacheWrites == .onSuccess else {
            logger.notice("kiln agent \(configuration.id): --cache-writes direct: builds write their project's caches in place, one build of a project at a time; a failed build's writes stay")
            return
        }
        if let reason = CacheLayers.probe(in: cacheLayers.layersDir) {
            throw KilnError.unavailable("agent \(configuration.id): builds keep their cache changes only when they succeed, through an overlay mount, and this agent cannot mount one: \(reason)")
        }
    }

    private func writeMavenSettings() throws {
        let path = mavenSettings
        guard let mirror = configuration.mavenMirror else {
            try? FileManager.default.removeItem(at: path)
            return
        }
        let xml = """
        <?xml version="1.0" encoding="UTF-8"?>
        <!-- Written by kiln agent \(configuration.id): every repository through the mirror. -->
        <settings>
          <mirrors>
            <mirror>
              <id>kiln-mirror</id>
              <mirrorOf>*</mirrorOf>
              <url>\(mirror.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;"))</url>
            </mirror>
          </mirrors>
        </settings>

        """
        try xml.write(to: path, atomically: true, encoding: .utf8)
    }


    /// Runs the build to its end. Never throws: every outcome is written to the record,
    /// except when the build was taken away (then nothing may be written).
    func run(task: BuildTask, taskKey: String, taskCreateRevision: Int64, control: BuildControl) async {
        let reporter = BuildReporter(task: task, taskKey: taskKey, taskCreateRevision: taskCreateRevision, etcd: etcd, keys: keys, agentLogger: logger,
                                     maxLogBytes: configuration.maxLogBytes, retryLimit: configuration.etcdRetryLimit)
        let log = reporter.logger
        // Its mirror and caches stay until it ends, and are measured and stamped then.
        await disk?.hold(task.project.name)
        do {
            try await runGuarded(task: task, reporter: reporter, control: control, logger: log)
        } catch is TaskLostError {
            log.warning("build taken away from this agent; abandoning it")
        } catch {
            await giveUp(error, reporter: reporter, control: control, pendingEnds: pendingEnds, logger: log)
        }
        if let disk { _ = await outlivingCancellation { await disk.release(task.project.name) } }
    }

    private func runGuarded(task: BuildTask, reporter: BuildReporter, control: BuildControl, logger: Logger) async throws {
        // The build starts when its task reaches this agent; reading the record is its work.
        let began = Date()
        guard var build = try await reporter.currentBuild() else { return }
        if build.status.isFinal {
            try await reporter.finish(build)
            return
        }
        build.start(agent: configuration.id, attempt: task.attempt, at: began)
        reporter.log("kiln: build \(build.id) of \(task.project.name) (ref \(task.ref)\(task.commit.map { ", commit \($0)" } ?? "")), attempt \(task.attempt), on agent \(configuration.id)")
        try await reporter.update(build)

        let workspace = workspacesDir.appendingPathComponent("\(build.id)-\(task.attempt)")
        defer { try? FileManager.default.removeItem(at: workspace) }
        let started = ContinuousClock.now

        // The steps run here, in this task; a child writes new log lines every 50 ms meanwhile
        // (when there are any), so an agent killed mid-build loses at most the last 50 ms.
        let failure: Error? = await withTaskGroup(of: Void.self) { group in
            group.addTask {
                while !Task.isCancelled {
                    try? await Task.sleep(for: .milliseconds(50))
                    try? await reporter.flush()
                }
            }
            defer { group.cancelAll() }
            do {
                try await runSteps(task: task, build: &build, workspace: workspace, reporter: reporter, control: control)
                return nil
            } catch {
                return error
            }
        }
        if failure is TaskLostError || control.reason == .taskLost { throw TaskLostError(build: build.id) }
        // A cancelled build's task is cancelled too, and so would be every etcd call made
        // from it: record the end from a task of its own.
        let ending = build
        try await outlivingCancellation {
            try await finishRecord(ending, failure: failure, control: control, reporter: reporter, started: started, logger: logger)
        }
    }

    private func finishRecord(_ ending: Build, failure: Error?, control: BuildControl, reporter: BuildReporter, started: ContinuousClock.Instant, logger: Logger) async throws {
        var build = ending
        if control.reason == .shutdown {
            // The agent is stopping: leave the task in place; when this agent's lease is
            // revoked the scheduler gives the build to another agent.
            reporter.log("kiln: agent \(configuration.id) is stopping; the build goes back to the queue")
            try? await reporter.flush()
            return
        }
        let now = Date()
        let total = ContinuousClock.now - started
        if let failure {
            if control.reason == .requested {
                build.end(.cancelled, error: "cancelled during \(build.steps.first { $0.status == .cancelled }?.name.rawValue ?? "the build")", at: now)
            } else {
                build.end(.failed, error: "\(failure)", at: now)
            }
            reporter.log("kiln: build \(build.status.rawValue) after \(total.secondsDescription): \(build.error ?? "")")
        } else {
            // Every step ran and succeeded, and the error was cleared when the build started.
            build.end(.succeeded, error: nil, at: now)
            reporter.log("kiln: build succeeded in \(total.secondsDescription): \(build.image ?? "") \(build.digest ?? "")")
        }
        reporter.log("kiln: steps: " + build.steps.map { "\($0.name.rawValue) \($0.durationMs.map { Duration.milliseconds($0).secondsDescription } ?? $0.status.rawValue)" }.joined(separator: ", "))
        try await reporter.finish(build)
        logger.info("build \(build.status.rawValue)", metadata: ["duration": "\(total.secondsDescription)"])
    }

    // MARK: steps

    private func runSteps(task: BuildTask, build: inout Build, workspace: URL, reporter: BuildReporter, control: BuildControl) async throws {
        let project = task.project
        let (commit, secrets, refs) = try await step(.fetch, limit: configuration.timeouts.fetch, build: &build, reporter: reporter, control: control) {
            let secrets = try await receiveSecrets(task: task, reporter: reporter)
            let (commit, refs) = try await fetch(task: task, workspace: workspace, secrets: secrets, reporter: reporter)
            return Fetched(commit: commit, secrets: secrets, refs: refs)
        }.pair
        build.commit = commit
        // The repository's branches and tags, for the console's build form (`RepositoryRefs`).
        build.repositoryRefs = refs.flatMap { publishedRefs.publish($0, project: project.name) }
        let tag = task.tag ?? String(commit.prefix(7))
        let repository = "\(configuration.registry)/\(project.repositoryName)"
        build.tag = tag
        // The same inputs as an earlier successful build: its image, tagged again (BuildRunner+Reuse.swift).
        if try await reuse(task: task, build: &build, workspace: workspace, secrets: secrets, reporter: reporter) { return }
        try await reporter.update(build)

        let sandbox = BuildSandbox(network: configuration.compileNetwork, agentLimits: configuration.limits, project: project)
        // The compile step's cache changes wait here for the build's end (`CacheChanges`).
        let cacheChanges = CacheChanges()
        do {
            try await step(.compile, limit: configuration.timeouts.compile, build: &build, reporter: reporter, control: control) {
                try await compile(task: task, workspace: workspace, sandbox: sandbox, secrets: secrets, changes: cacheChanges, reporter: reporter)
            }
        } catch {
            await dropCacheChanges(cacheChanges, reporter: reporter)
            throw error
        }
        // The image leaves the engine's storage once pushed (or failed): every project's builds
        // share that storage, and another build's `FROM registry/<this project>:<tag>` or build
        // image would otherwise be served from it without asking the registry, whose tokens
        // keep one project's images from another.
        let reference = "\(repository):\(tag)"
        // The names pushTo gives the image go first: removing the farm's name then removes
        // the image itself.
        let names = (project.pushTo ?? []).map { "\($0):\(tag)" } + [reference]
        let removeLocal: @Sendable () async -> Void = { [docker] in
            await outlivingCancellation { for name in names { try? await docker.removeImage(name, force: true) } }
        }
        let pushed: Pushed
        do {
            try await step(.image, limit: configuration.timeouts.image, build: &build, reporter: reporter, control: control) {
                try await image(task: task, workspace: workspace, reference: reference, sandbox: sandbox, secrets: secrets, reporter: reporter)
            }
            pushed = try await step(.push, limit: configuration.timeouts.push, build: &build, reporter: reporter, control: control) {
                try await push(repository: repository, project: project, tag: tag, secrets: secrets, reporter: reporter)
            }
        } catch {
            await removeLocal()
            await dropCacheChanges(cacheChanges, reporter: reporter)
            throw error
        }
        // Every step succeeded: the compile step's cache changes join the project's caches.
        await keepCacheChanges(cacheChanges, reporter: reporter)
        // Recorded for reuse only if the inputs it was keyed by are still the ones it built from.
        await confirmInputs(task: task, build: &build, workspace: workspace, secrets: secrets, reporter: reporter)
        // A few stay under a name no build can reach, for their layers (`KeptImages`).
        if await disk?.keep(image: reference, project: project.name) == true {
            reporter.log("kept the image in this agent's storage for the layers of the next builds of \(project.name) (at most \(configuration.keepImages))")
        }
        await removeLocal()
        build.image = reference
        build.digest = pushed.digest
        build.pushedTo = pushed.elsewhere.isEmpty ? nil : pushed.elsewhere
    }

    /// What the fetch step gives the later ones.
    private struct Fetched: Sendable {
        let commit: String
        let secrets: BuildSecrets
        /// The mirror's branches and tags (nil: they could not be read, which fails nothing).
        let refs: [String]?
        var pair: (String, BuildSecrets, [String]?) { (commit, secrets, refs) }
    }

    /// Runs one step with its time limit, recording start, end, duration and outcome.
    @discardableResult
    private func step<T: Sendable>(_ name: StepName, limit: Duration, build: inout Build, reporter: BuildReporter, control: BuildControl,
                                   _ body: @escaping @Sendable () async throws -> T) async throws -> T {
        let i = build.steps.firstIndex(where: { $0.name == name })!
        build.steps[i].status = .running
        build.steps[i].startedAt = Date()
        reporter.log("==> \(name.rawValue) started at \(KilnJSON.formatDate(build.steps[i].startedAt!))")
        try await reporter.update(build)
        let start = ContinuousClock.now
        var failure: Error?
        var value: T?
        do {
            try Task.checkCancellation()
            value = try await withTimeout(limit, { StepTimeout(step: name, limit: limit) }, body)
        } catch {
            failure = error
        }
        let elapsed = ContinuousClock.now - start
        build.steps[i].finishedAt = Date()
        build.steps[i].durationMs = elapsed.inMilliseconds
        if let failure {
            if failure is TaskLostError { throw failure }
            let cancelled = control.reason != nil || failure is CancellationError
            build.steps[i].status = cancelled ? .cancelled : .failed
            let message: String
            if cancelled {
                message = "\(name.rawValue): cancelled"
            } else if let f = failure as? StepFailure {
                message = f.description
            } else if let t = failure as? StepTimeout {
                message = t.description
            } else {
                message = "\(name.rawValue): \(failure)"
            }
            build.steps[i].error = message
            reporter.log("==> \(name.rawValue) \(build.steps[i].status.rawValue) at \(KilnJSON.formatDate(build.steps[i].finishedAt ?? Date())) after \(elapsed.secondsDescription): \(message)")
            if control.reason != .taskLost { try? await reporter.update(build) }
            throw StepFailure(step: name, message: String(message.dropFirst(name.rawValue.count + 2)))
        }
        build.steps[i].status = .succeeded
        reporter.log("==> \(name.rawValue) succeeded at \(KilnJSON.formatDate(build.steps[i].finishedAt ?? Date())) in \(elapsed.secondsDescription)")
        try await reporter.update(build)
        return value!
    }

    // fetch: libgit2 mirror per project, incremental fetch, exact checkout.
    private func fetch(task: BuildTask, workspace: URL, secrets: BuildSecrets, reporter: BuildReporter) async throws -> (commit: String, refs: [String]?) {
        let project = task.project
        try checkFileRepository(project.repository)
        let mirror = GitMirror(path: mirrorsDir.appendingPathComponent("\(project.name).git"), url: project.repository)
        guard let kiln = configuration.kilnExecutable else { throw StepFailure(step: .fetch, message: "no kiln executable to fetch with") }
        await disk?.used("mirrors/\(project.name).git", by: project.name)
        return try await mirrorLocks.withLock(project.name) {
            let flag = CancelFlag()
            // In a child process: a silent server cannot hold the step past its limit or a cancel.
            // The project's git credential goes to the child on its standard input.
            if let git = secrets.git { reporter.log("fetching with the project's git credential (\(git.summary))") }
            let stats = try await GitFetcher(executable: kiln, policy: configuration.fetchPolicy).fetch(mirror, credential: secrets.git)
            reporter.log("fetched \(stats.receivedObjects) objects (\(stats.receivedBytes / 1024) KiB) from \(RepositoryEndpoint.redacted(project.repository))")
            let sha = try await blocking(cancel: flag) { try mirror.resolve(ref: task.ref, commit: task.commit) }
            try FileManager.default.createDirectory(at: workspace, withIntermediateDirectories: true)
            try await blocking(cancel: flag) { try mirror.checkout(commit: sha, into: workspace) }
            reporter.log("checked out \(sha) (\(task.commit == nil ? "tip of \(task.ref)" : "exact commit"))")
            // Read under the mirror's lock, as the fetch left it.
            let refs = try? await blocking(cancel: flag) { RepositoryRefs.bounded(try mirror.refs()) }
            return (sha, refs)
        }
    }
}

/// A build whose outcome could not be recorded (etcd refused or was gone for the reporter's
/// retries): unless it was stopped on purpose (the agent stops: its task goes back with the
/// lease), `pendingEnds` releases its task and settles its end in the background, so that it
/// neither holds the slot nor stays `running` without an owner.
func giveUp(_ error: Error, reporter: BuildReporter, control: BuildControl, pendingEnds: PendingEnds?, logger: Logger) async {
    let stopped = control.reason == .shutdown || control.reason == .taskLost
    guard let pendingEnds, !stopped, !(error is CancellationError) else {
        logger.error("could not record the build's outcome: \(error)")
        return
    }
    if let end = error as? UnrecordedEnd {
        pendingEnds.hand(end)
    } else {
        pendingEnds.hand(await reporter.unrecorded(cause: error))
    }
}

/// Runs blocking work (libgit2) on its own thread; cancelling the caller sets `cancel`,
/// which libgit2's progress callbacks read.
func blocking<T: Sendable>(cancel: CancelFlag?, _ work: @escaping @Sendable () throws -> T) async throws -> T {
    try await withTaskCancellationHandler {
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<T, Error>) in
            Thread.detachNewThread { c.resume(with: Result { try work() }) }
        }
    } onCancel: {
        cancel?.cancel()
    }
}
