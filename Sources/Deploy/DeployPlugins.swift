import AsyncHTTPClient
import Foundation
import KilnCore
import NIOCore
import NIOFoundationCompat
import Plugins

/// The backends by name (`local`, `kubernetes`) and what the deploy plugins share.
public struct DeployEnvironment: Sendable {
    public let store: AppStore
    public let deployers: [String: any Deployer]
    /// How long `lb` and `retire` wait for every lb-agent of a group to apply a change.
    public var lbTimeout: Duration = .seconds(60)
    /// Between two rounds of health checks while a version starts.
    public var healthInterval: Duration = .milliseconds(200)

    public init(store: AppStore, deployers: [String: any Deployer]) {
        self.store = store
        self.deployers = deployers
    }

    /// The backends `kiln scheduler` offers: `local` (Docker Engine API endpoints) and
    /// `kubernetes` (API servers, with the bearer token in KILN_KUBE_TOKEN if set).
    public static func standardDeployers(kubeToken: String? = ProcessInfo.processInfo.environment["KILN_KUBE_TOKEN"]) -> [String: any Deployer] {
        ["local": LocalDeployer(), "kubernetes": KubernetesDeployer(token: kubeToken)]
    }

    func deployer(_ backend: String) throws -> any Deployer {
        guard let d = deployers[backend] else {
            throw KilnError.invalid("no '\(backend)' backend is configured in this scheduler; the backends here are \(deployers.keys.sorted().joined(separator: ", "))")
        }
        return d
    }

    /// Checks every instance of a version now, in parallel: discovery's answer to "which
    /// instances of this version can take traffic".
    public func checkInstances(app: String, version v: AppVersion, cells known: [Cell]? = nil) async -> [Instance] {
        let cells: [Cell]
        if let known { cells = known } else { cells = (try? await store.cells()) ?? [] }
        return await Self.checkInstances(app: app, version: v, cells: cells, deployers: deployers)
    }

    /// The same check with the cells and backends given (`kiln apps --check` has no etcd).
    public static func checkInstances(app: String, version v: AppVersion, cells: [Cell], deployers: [String: any Deployer]) async -> [Instance] {
        let spec = VersionSpec(app: app, v)
        return await withTaskGroup(of: (Int, Instance).self) { group in
            for (i, instance) in v.instances.enumerated() {
                group.addTask {
                    var checked = instance
                    checked.checkedAt = Date()
                    guard let cell = cells.first(where: { $0.name == instance.cell }) else {
                        checked.healthy = false
                        checked.detail = "cell \(instance.cell) no longer exists"
                        return (i, checked)
                    }
                    guard let deployer = deployers[cell.backend] else {
                        checked.healthy = false
                        checked.detail = "no \(cell.backend) backend here"
                        return (i, checked)
                    }
                    let (healthy, detail) = await deployer.check(instance, of: spec, in: cell)
                    checked.healthy = healthy
                    checked.detail = detail
                    return (i, checked)
                }
            }
            var out = v.instances
            for await (i, checked) in group { out[i] = checked }
            return out
        }
    }

    /// The deploy, lb, retire and notify plugins.
    public var plugins: [any PostBuildPlugin] {
        [DeployPlugin(env: self), LBPlugin(env: self), RetirePlugin(env: self), NotifyPlugin()]
    }
}

// MARK: - deploy

/// Runs the build's image as a new version of an app in every cell, and waits until each
/// instance passes its health check. The previous version keeps running and keeps its
/// traffic; a version that fails is removed and marked `failed`, with the reason.
public struct DeployPlugin: PostBuildPlugin {
    let env: DeployEnvironment
    public var spec: PluginSpec { PluginCatalog.spec("deploy")! }

    public func run(_ ctx: PluginContext) async throws -> PluginResult {
        let store = env.store
        let appName = ctx.string("app")!
        let backend = ctx.string("backend") ?? "local"
        guard let image = ctx.build.image else {
            throw KilnError.invalid("build \(ctx.build.id) has no image to deploy (it did not push one)")
        }
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
        let (_, made) = try await store.update(appName) { app -> (AppVersion, Bool) in
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
                healthPath: ctx.string("healthPath") ?? previous?.healthPath ?? "/health")
            var v = AppVersion(number: app.nextNumber, build: ctx.build.id, project: ctx.project.name, image: image,
                               backend: backend, cells: cells.map(\.name), settings: settings)
            v.pipelineRun = ctx.run
            app.versions.append(v)
            return (v, true)
        }
        var version = made.0
        if !made.1, version.state == .ready || version.state == .live {
            return result(appName, version, note: " (made by an earlier attempt of this run)")
        }
        if !made.1 {
            // Started over: whatever the earlier attempt started is removed by start().
            try await store.updateVersion(appName, version.number) { $0.state = .deploying; $0.error = nil; $0.instances = [] }
        }
        let s = version.settings
        await ctx.log("deploy: version \(version.number) of \(appName) from \(image): \(s.replicas) instance\(s.replicas == 1 ? "" : "s") per cell in \(cells.map(\.name).joined(separator: ", ")), port \(s.port), health \(s.healthPath)\(s.cpu.map { ", \($0) CPU" } ?? "")\(s.memoryMB.map { ", \($0) MiB" } ?? "")\(s.env.isEmpty ? "" : ", env \(s.env.keys.sorted().joined(separator: ","))")")

        let spec = VersionSpec(app: appName, version)
        do {
            // Start in every cell at once. A failure in one cell lets the others finish (a
            // request cancelled half way could leave a container the engine creates after the
            // clean-up looked); then everything this version started is removed below.
            let outcomes = await withTaskGroup(of: Result<[Instance], any Error>.self) { group in
                for cell in cells {
                    group.addTask {
                        do {
                            let instances = try await deployer.start(spec, in: cell)
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

    func result(_ app: String, _ v: AppVersion, note: String) -> PluginResult {
        let cells = Set(v.instances.map(\.cell)).count
        return PluginResult(
            summary: "version \(v.number) of \(app): \(v.instances.count) instance\(v.instances.count == 1 ? "" : "s") healthy in \(cells) cell\(cells == 1 ? "" : "s")\(note)",
            outputs: ["app": .string(app), "version": .number(Double(v.number))])
    }
}

// MARK: - lb

/// Points a domain of an nginx group at a version's instances that pass their health check
/// now, then waits until every lb-agent of the group has applied it. Instances that fail
/// their check do not join.
public struct LBPlugin: PostBuildPlugin {
    let env: DeployEnvironment
    public var spec: PluginSpec { PluginCatalog.spec("lb")! }

    public func run(_ ctx: PluginContext) async throws -> PluginResult {
        let store = env.store
        let appName = ctx.string("app")!, group = ctx.string("group")!, domain = ctx.string("domain")!
        guard let app = try await store.app(appName) else {
            throw KilnError.notFound("app \(appName) has no versions: put a deploy step for it before the lb step")
        }
        let number: Int
        if case .number(let n)? = ctx.outputs["deploy"]?["version"], case .string(appName)? = ctx.outputs["deploy"]?["app"] {
            number = Int(n)
        } else if let newest = app.versions.last(where: { $0.state == .ready || $0.state == .live }) {
            number = newest.number
        } else {
            throw KilnError.notFound("app \(appName) has no healthy version to send traffic to")
        }
        guard let version = app.version(number), version.state == .ready || version.state == .live else {
            throw KilnError.conflict("version \(number) of \(appName) is \(app.version(number)?.state.rawValue ?? "gone"), not ready: it cannot take traffic")
        }
        let checked = await env.checkInstances(app: appName, version: version)
        let healthy = checked.filter(\.healthy)
        guard !healthy.isEmpty else {
            throw KilnError.unavailable("no instance of version \(number) of \(appName) passes its health check now (\(checked.prefix(4).map { "\($0.name): \($0.detail ?? "?")" }.joined(separator: "; "))); the domain keeps its servers")
        }
        if healthy.count < checked.count {
            await ctx.log("lb: \(checked.count - healthy.count) instance(s) fail their health check and stay out: \(checked.filter { !$0.healthy }.map(\.name).joined(separator: ", "))")
        }
        let existing = try await store.domain(group: group, domain)?.0
        let value = SLBDomain(domain: domain, servers: healthy.map { SLBServer(address: $0.address) }.sorted { $0.address < $1.address },
                              settings: existing?.settings, app: appName, version: number, updatedAt: Date())
        let revision = try await store.putDomain(group: group, value)
        await ctx.log("lb: \(domain) in group \(group) → \(value.servers.map(\.address).joined(separator: ", ")) (etcd revision \(revision)); waiting for the group's lb-agents")
        try await store.update(appName) { a in
            for i in a.versions.indices {
                if a.versions[i].number == number {
                    a.versions[i].state = .live
                    a.versions[i].instances = checked
                } else if a.versions[i].state == .live {
                    a.versions[i].state = .ready  // out of the LB, still running until retired
                }
            }
            if !a.lb.contains(LBBinding(group: group, domain: domain)) { a.lb.append(LBBinding(group: group, domain: domain)) }
        }
        let reports = try await LBAgents.waitApplied(etcd: store.etcd, keys: store.slb, group: group, revision: revision, timeout: env.lbTimeout)
        if let refused = reports.first(where: { $0.rejected[domain] != nil }) {
            throw KilnError.invalid("lb-agent \(refused.id) refused the new config of \(domain): \(refused.rejected[domain]!); nginx keeps serving the previous one")
        }
        return PluginResult(
            summary: "\(domain) (group \(group)) → version \(number) of \(appName), \(healthy.count) server\(healthy.count == 1 ? "" : "s"), applied by \(reports.count) lb-agent\(reports.count == 1 ? "" : "s")",
            outputs: ["app": .string(appName), "version": .number(Double(number)), "domain": .string(domain), "group": .string(group), "revision": .number(Double(revision))])
    }
}

// MARK: - retire

/// Stops the app's versions older than the one in the load balancer (all but `keep`): each
/// first leaves every domain that still lists it, every lb-agent applies that, in-flight
/// requests get `drainSeconds`, and only then are its instances stopped.
public struct RetirePlugin: PostBuildPlugin {
    let env: DeployEnvironment
    public var spec: PluginSpec { PluginCatalog.spec("retire")! }

    public func run(_ ctx: PluginContext) async throws -> PluginResult {
        let store = env.store
        let appName = ctx.string("app")!
        let keep = ctx.int("keep") ?? 0
        let drain = ctx.int("drainSeconds") ?? 2
        guard let app = try await store.app(appName), let live = app.live else {
            return PluginResult(summary: "nothing to retire: \(appName) has no version in the load balancer")
        }
        let older = app.versions.filter { $0.number < live.number && [.ready, .live, .retiring].contains($0.state) }.sorted { $0.number > $1.number }
        let kept = Array(older.prefix(keep)), retiring = Array(older.dropFirst(keep))
        guard !retiring.isEmpty else {
            return PluginResult(summary: "nothing to retire: version \(live.number) is live\(kept.isEmpty ? "" : ", kept \(kept.map { "v\($0.number)" }.joined(separator: ", "))")")
        }
        // An address a retiring version had may be a newer version's now (a host port freed by
        // a container that is gone and taken again): such an address stays.
        let retiringNumbers = Set(retiring.map(\.number))
        let staying = Set(app.versions.filter { !retiringNumbers.contains($0.number) && $0.state != .retired && $0.state != .failed }.flatMap { $0.instances.map(\.address) })
        let leaving = Set(retiring.flatMap { $0.instances.map(\.address) }).subtracting(staying)
        // 1. Out of every domain of the app, and every lb-agent has applied it.
        for binding in app.lb {
            var revision: Int64
            if let (domain, modRevision) = try await store.domain(group: binding.group, binding.domain) {
                revision = modRevision
                let staying = domain.servers.filter { !leaving.contains($0.address) }
                if staying.count < domain.servers.count {
                    guard !staying.isEmpty else {
                        throw KilnError.conflict("retiring would leave \(binding.domain) (group \(binding.group)) with no servers; nothing was stopped")
                    }
                    var changed = domain
                    changed.servers = staying
                    changed.updatedAt = Date()
                    revision = try await store.putDomain(group: binding.group, changed)
                    await ctx.log("retire: \(binding.domain) no longer lists \(domain.servers.count - staying.count) old server(s) (revision \(revision))")
                }
            } else {
                continue
            }
            _ = try await LBAgents.waitApplied(etcd: store.etcd, keys: store.slb, group: binding.group, revision: revision, timeout: env.lbTimeout)
        }
        for v in retiring { try await store.updateVersion(appName, v.number) { $0.state = .retiring } }
        await ctx.log("retire: every lb-agent has left \(retiring.map { "v\($0.number)" }.joined(separator: ", ")); draining \(drain) s")
        try await Task.sleep(for: .seconds(drain))
        // 2. Stop them.
        let cells = try await store.cells()
        var stopped = 0
        for v in retiring {
            let spec = VersionSpec(app: appName, v)
            for (cellName, instances) in Dictionary(grouping: v.instances, by: \.cell) {
                guard let cell = cells.first(where: { $0.name == cellName }) else {
                    await ctx.log("retire: cell \(cellName) no longer exists; \(instances.count) instance(s) of v\(v.number) there were not stopped")
                    continue
                }
                try await env.deployer(cell.backend).stop(instances, of: spec, in: cell)
                stopped += instances.count
            }
            try await store.updateVersion(appName, v.number) { $0.state = .retired; $0.instances = [] }
        }
        return PluginResult(summary: "retired \(retiring.map { "v\($0.number)" }.joined(separator: ", ")) (\(stopped) instance\(stopped == 1 ? "" : "s") stopped); v\(live.number) is live\(kept.isEmpty ? "" : ", kept \(kept.map { "v\($0.number)" }.joined(separator: ", "))")")
    }
}

// MARK: - notify

/// POSTs the build's outcome as JSON to a URL; a 2xx answer is success.
public struct NotifyPlugin: PostBuildPlugin {
    let http: HTTPClient
    public init(http: HTTPClient = NotifyPlugin.httpClient) { self.http = http }

    /// Gives up connecting after 3 s (AsyncHTTPClient tries a refused connection again until
    /// then) and waiting for the answer after 20 s. Never shut down.
    public static let httpClient = HTTPClient(
        eventLoopGroup: HTTPClient.defaultEventLoopGroup,
        configuration: .init(timeout: .init(connect: .seconds(3), read: .seconds(20))))
    public var spec: PluginSpec { PluginCatalog.spec("notify")! }

    struct Payload: Encodable {
        var build: String, project: String, status: String, ref: String
        var commit: String?, image: String?, digest: String?
        var finishedAt: Date?
        var pipelineRun: Int
        var deployed: [String: JSONValue]?
        var lb: [String: JSONValue]?
    }

    public func run(_ ctx: PluginContext) async throws -> PluginResult {
        let url = ctx.string("url")!
        let b = ctx.build
        let payload = Payload(build: b.id, project: b.project, status: b.status.rawValue, ref: b.ref, commit: b.commit, image: b.image,
                              digest: b.digest, finishedAt: b.finishedAt, pipelineRun: ctx.run, deployed: ctx.outputs["deploy"], lb: ctx.outputs["lb"])
        var request = HTTPClientRequest(url: url)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        request.headers.add(name: "User-Agent", value: "kiln-notify")
        request.body = .bytes(ByteBuffer(data: try KilnJSON.encoder().encode(payload)))
        let response: HTTPClientResponse
        do {
            response = try await http.execute(request, timeout: .seconds(20))
        } catch {
            throw KilnError.unavailable("POST \(url) got no answer: \(error)")
        }
        let body = try? await response.body.collect(upTo: 4096)
        guard (200..<300).contains(Int(response.status.code)) else {
            let text = body.map { String(buffer: $0) }?.prefix(200) ?? ""
            throw KilnError.unavailable("POST \(url) answered \(response.status.code)\(text.isEmpty ? "" : ": \(text)")")
        }
        return PluginResult(summary: "POST \(url): \(response.status.code)")
    }
}
