import Foundation
import KilnCore
import Plugins

/// Runs the build's image as a new version of an app in every cell, and waits until each
/// instance passes its health check. The previous version keeps running and keeps its
/// traffic; a version that fails is removed and marked `failed`, with the reason.
public struct DeployPlugin: PostBuildPlugin {
    let env: DeployEnvironment
    public var spec: PluginSpec { PluginCatalog.spec("deploy")! }

    public func run(_ ctx: PluginContext) async throws -> PluginResult {
        let result = try await perform(ctx)
        // The app's activity: what the step did, by which project's pipeline, for which build.
        try await env.store.record(ActivityEvent(user: "pipeline of \(ctx.project.name)", action: "deployed", detail: result.summary, build: ctx.build.id),
                                   onApp: ctx.string("app")!)
        return result
    }

    func perform(_ ctx: PluginContext) async throws -> PluginResult {
        let store = env.store
        let appName = ctx.string("app")!
        let backend = ctx.string("backend") ?? "local"
        guard let tagged = ctx.build.image else {
            throw KilnError.invalid("build \(ctx.build.id) has no image to deploy (it did not push one)")
        }
        // By digest, never by tag: the tag may have been pushed again since this build, and a
        // roll back must run exactly the image this build made.
        let image = try ctx.build.deployableImage(repository: ctx.project.repositoryName, registry: env.registry)
        let deployer = try env.deployer(backend)
        let all = try await store.cells()
        let names = ctx.strings("cells") ?? all.filter { $0.backend == backend }.map(\.name)
        guard !names.isEmpty else {
            throw KilnError.invalid("there are no \(backend) cells to deploy \(appName) in: add two with `kiln cell add NAME --endpoint unix:///path/to/docker.sock`")
        }
        var cells: [Cell] = []
        for name in names {
            guard let cell = all.first(where: { $0.name == name }) else {
                throw KilnError.notFound("cell \(name) does not exist (was it deleted?): add it again with `kiln cell add \(name) …`, or take it out of the deploy step's cells")
            }
            guard cell.backend == backend else {
                throw KilnError.invalid("cell \(name) is a \(cell.backend) cell; this deploy step uses the \(backend) backend")
            }
            cells.append(cell)
        }
        if cells.count < 2 { await ctx.log("deploy: warning: \(appName) runs in one cell only (\(cells[0].name)); LeEngine runs every app in at least two") }

        // Find this run's version again (a run started over), or make the next one with the
        // previous version's settings under the pipeline's own.
        // The app belongs to the project whose pipeline first deployed it (docs/roles.md).
        let appMembers = try await store.members(ofApp: appName)
        // A scaling under way first ends: the new version then takes its counts.
        var attempt: (AppVersion, Bool)?
        while attempt == nil {
            try await waitForScaling(appName, ctx)
            do {
                attempt = try await store.update(appName) { app -> (AppVersion, Bool) in
                    guard app.allows(project: ctx.project.name, members: appMembers) else { throw app.refusal(project: ctx.project.name) }
                    if let op = app.scaling, op.isActive(at: Date()) { throw ScalingUnderWay(operation: op) }
                    if app.project == nil { app.project = app.owner ?? ctx.project.name }
                    if let existing = app.versions.last(where: { $0.build == ctx.build.id && $0.pipelineRun == ctx.run }) {
                        return (existing, false)
                    }
                    let previous = app.current?.settings
                    let settings = DeploySettings(
                        port: ctx.int("port") ?? previous?.port ?? 8080,
                        replicas: ctx.int("replicas") ?? previous?.replicas ?? 1,
                        cpu: ctx.double("cpu") ?? previous?.cpu,
                        memoryMB: ctx.int("memoryMB") ?? previous?.memoryMB,
                        env: ctx.stringMap("env") ?? previous?.env ?? [:],
                        healthPath: ctx.string("healthPath") ?? previous?.healthPath ?? "/health",
                        // Secret names carry over only within one project: they are looked up
                        // in this build's project, and another project's names for the app are
                        // no consent of this project's to hand its secrets of those names out.
                        secretEnv: ctx.strings("secretEnv") ?? (app.current?.project == ctx.project.name ? previous?.secretEnv : nil),
                        // Counts a scaling set per cell go on, unless the step sets replicas itself.
                        cellReplicas: ctx.int("replicas") == nil ? previous?.cellReplicas : nil)
                    guard cells.contains(where: { settings.replicas(in: $0.name) > 0 }) else {
                        throw KilnError.invalid("version \(app.nextNumber) of \(appName) would run no instance: the previous version was scaled to 0 in \(cells.map(\.name).joined(separator: ", ")); set replicas in the deploy step")
                    }
                    var v = AppVersion(number: app.nextNumber, build: ctx.build.id, project: ctx.project.name, image: image,
                                       backend: backend, cells: cells.map(\.name), settings: settings)
                    v.tag = ctx.build.tag
                    v.pipelineRun = ctx.run
                    app.versions.append(v)
                    return (v, true)
                }.1
            } catch is ScalingUnderWay {
                continue  // one began meanwhile: wait for it too
            }
        }
        let made = attempt!
        var version = made.0
        if !made.1, version.state == .ready || version.state == .live {
            return result(appName, version, note: " (made by an earlier attempt of this run)")
        }
        if !made.1 {
            // Started over: whatever the earlier attempt started is removed by start().
            try await store.updateVersion(appName, version.number) { $0.state = .deploying; $0.error = nil; $0.instances = [] }
        }
        let s = version.settings
        let perCell: [String] = cells.map { "\($0.name) \(s.replicas(in: $0.name))" }
        let counts = s.cellReplicas == nil
            ? "\(s.replicas) instance\(s.replicas == 1 ? "" : "s") per cell in \(cells.map(\.name).joined(separator: ", "))"
            : "instances per cell: \(perCell.joined(separator: ", "))"
        await ctx.log("deploy: version \(version.number) of \(appName) from \(image) (\(tagged)): \(counts), port \(s.port), health \(s.healthPath)\(s.cpu.map { ", \($0) CPU" } ?? "")\(s.memoryMB.map { ", \($0) MiB" } ?? "")\(s.env.isEmpty ? "" : ", env \(s.env.keys.sorted().joined(separator: ","))")\((s.secretEnv ?? []).isEmpty ? "" : ", secret env \((s.secretEnv ?? []).joined(separator: ","))")")

        let spec = VersionSpec(app: appName, version)
        do {
            // The values only now, for this start: the version's record keeps the names.
            var values = SecretValues()
            for name in s.secretEnv ?? [] {
                values[name] = try await ctx.secretValue(name, for: "deploy's secretEnv")
            }
            let startSpec = VersionSpec(app: appName, version: version.number, image: version.image, settings: version.settings, secretValues: values)
            // Start in every cell at once. A failure in one cell lets the others finish (a
            // request cancelled half way could leave a container the engine creates after the
            // clean-up looked); then everything this version started is removed below.
            let outcomes = await withTaskGroup(of: Result<[Instance], any Error>.self) { group in
                for cell in cells {
                    // Each cell with its own count (`cellReplicas`, set by a scaling).
                    var cellSpec = startSpec
                    cellSpec.settings.replicas = s.replicas(in: cell.name)
                    group.addTask { [cellSpec] in
                        do {
                            let instances = try await deployer.start(cellSpec, in: cell)
                            await ctx.log("deploy: cell \(cell.name): started \(instances.map { "\($0.name) at \($0.address)" }.joined(separator: ", "))")
                            return .success(instances)
                        } catch {
                            return .failure(error)
                        }
                    }
                }
                var all: [Result<[Instance], any Error>] = []
                for await outcome in group { all.append(outcome) }
                return all
            }
            var started: [Instance] = []
            for outcome in outcomes { started += try outcome.get() }
            version.instances = started
            try await store.updateVersion(appName, version.number) { $0.instances = started }

            // Wait for every instance to pass its health check.
            let limit = Duration.seconds(ctx.int("healthTimeoutSeconds") ?? 60)
            let deadline = ContinuousClock.now + limit
            var lastReport = ContinuousClock.now
            while true {
                version.instances = await env.checkInstances(app: appName, version: version, cells: cells)
                let healthy = version.instances.filter(\.healthy).count
                if healthy == version.instances.count { break }
                if ContinuousClock.now >= deadline {
                    let failing = version.instances.filter { !$0.healthy }.prefix(4).map { "\($0.name): \($0.detail ?? "?")" }.joined(separator: "; ")
                    throw KilnError.unavailable("version \(version.number) of \(appName): \(healthy) of \(version.instances.count) instances passed the health check at \(s.healthPath) within \(limit.components.seconds) s (\(failing)); the running version is untouched")
                }
                if ContinuousClock.now - lastReport > .seconds(5) {
                    lastReport = ContinuousClock.now
                    await ctx.log("deploy: \(healthy) of \(version.instances.count) instances healthy; waiting")
                }
                try await Task.sleep(for: env.healthInterval)
            }
            let ready = version.instances
            try await store.updateVersion(appName, version.number) { $0.instances = ready; $0.state = .ready }
            version.state = .ready
            return result(appName, version, note: "")
        } catch {
            // Remove what this version started, in every cell, even when the step was cancelled
            // by its time limit; then say why it failed.
            let reason = Task.isCancelled
                ? "the deploy step was stopped (its time limit ran out, or this scheduler stopped leading)"
                : ((error as? KilnError)?.message ?? "\(error)")
            let cancelled = Task.isCancelled
            await Task {
                // Twice when the step was cancelled: a create request cut short may still be
                // finishing in the engine.
                for pass in 0..<(cancelled ? 2 : 1) {
                    if pass > 0 { try? await Task.sleep(for: .seconds(1)) }
                    for cell in cells {
                        let found = (try? await deployer.instances(of: appName, in: cell))?[version.number] ?? []
                        if !found.isEmpty { try? await deployer.stop(found, of: spec, in: cell) }
                    }
                }
                try? await store.updateVersion(appName, version.number) { $0.state = .failed; $0.error = reason; $0.instances = [] }
                await ctx.log("deploy: version \(version.number) of \(appName) failed and was removed: \(reason)")
            }.value
            throw error
        }
    }

    /// Waits while a scaling holds the app (`App.scaling`, at most until its claim lapses),
    /// saying so in the build's log once.
    func waitForScaling(_ appName: String, _ ctx: PluginContext) async throws {
        var said = false
        while let op = try await env.store.app(appName)?.scaling, op.isActive(at: Date()) {
            if !said { await ctx.log("deploy: app \(appName) is \(op.description); waiting for it to end") }
            said = true
            try await Task.sleep(for: .milliseconds(500))
        }
    }

    func result(_ app: String, _ v: AppVersion, note: String) -> PluginResult {
        let cells = Set(v.instances.map(\.cell)).count
        return PluginResult(
            summary: "version \(v.number) of \(app): \(v.instances.count) instance\(v.instances.count == 1 ? "" : "s") healthy in \(cells) cell\(cells == 1 ? "" : "s")\(note)",
            outputs: ["app": .string(app), "version": .number(Double(v.number))])
    }
}

/// A scaling began between the deploy step's wait and its write: it waits again.
struct ScalingUnderWay: Error {
    let operation: ScaleOperation
}
