import Foundation
import KilnCore
import Plugins

/// Stops the app's versions older than the one in the load balancer (all but `keep`), or the
/// one version its `version` setting names (never the live one; the console's retire button):
/// each first leaves every domain that still lists it, every lb-agent applies that, in-flight
/// requests get `drainSeconds`, and only then are its instances stopped.
public struct RetirePlugin: PostBuildPlugin {
    let env: DeployEnvironment
    public var spec: PluginSpec { PluginCatalog.spec("retire")! }

    public func run(_ ctx: PluginContext) async throws -> PluginResult {
        let result = try await perform(ctx)
        // The app's activity: what the step did, by which project's pipeline, for which build.
        try await env.store.record(ActivityEvent(user: "pipeline of \(ctx.project.name)", action: "retired", detail: result.summary, build: ctx.build.id),
                                   onApp: ctx.string("app")!)
        return result
    }

    func perform(_ ctx: PluginContext) async throws -> PluginResult {
        let store = env.store
        let appName = ctx.string("app")!
        let keep = ctx.int("keep") ?? 0
        let drain = ctx.int("drainSeconds") ?? 2
        let kept: [AppVersion], retiring: [AppVersion]
        let app: App, live: AppVersion?
        if let number = ctx.int("version") {
            // One version by its number (the console's retire button): never the live one,
            // which leaves the load balancer only when another takes its place.
            guard let found = try await store.appChangeable(appName, by: ctx.project.name), let version = found.version(number) else {
                throw KilnError.notFound("version \(number) of \(appName) does not exist")
            }
            guard number != found.live?.number else {
                throw KilnError.conflict("version \(number) of \(appName) is live: it leaves the load balancer only when another version takes its place (deploy one, or roll back); nothing was stopped")
            }
            guard [.ready, .live, .retiring].contains(version.state) else {
                return PluginResult(summary: "nothing to retire: version \(number) of \(appName) is \(version.state.rawValue)")
            }
            app = found; live = found.live; kept = []; retiring = [version]
        } else {
            guard let found = try await store.appChangeable(appName, by: ctx.project.name), let newest = found.live else {
                return PluginResult(summary: "nothing to retire: \(appName) has no version in the load balancer")
            }
            let older = found.versions.filter { $0.number < newest.number && [.ready, .live, .retiring].contains($0.state) }.sorted { $0.number > $1.number }
            app = found; live = newest; kept = Array(older.prefix(keep)); retiring = Array(older.dropFirst(keep))
            guard !retiring.isEmpty else {
                return PluginResult(summary: "nothing to retire: version \(newest.number) is live\(kept.isEmpty ? "" : ", kept \(kept.map { "v\($0.number)" }.joined(separator: ", "))")")
            }
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
            // With any a scaling left starting or stopping (never in a domain). The cells at
            // once: an app that ignores SIGTERM costs each stop the engine's 10 s, once, not
            // once per cell.
            var byCell: [(Cell, [Instance])] = []
            for (cellName, instances) in Dictionary(grouping: v.instances + (v.scalingInstances ?? []), by: \.cell) {
                guard let cell = cells.first(where: { $0.name == cellName }) else {
                    await ctx.log("retire: cell \(cellName) no longer exists; \(instances.count) instance(s) of v\(v.number) there were not stopped")
                    continue
                }
                byCell.append((cell, instances))
            }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for (cell, instances) in byCell {
                    let deployer = try env.deployer(cell.backend)
                    group.addTask { try await deployer.stop(instances, of: spec, in: cell) }
                }
                try await group.waitForAll()
            }
            stopped += byCell.reduce(0) { $0 + $1.1.count }
            try await store.updateVersion(appName, v.number) { $0.state = .retired; $0.instances = []; $0.scalingInstances = nil }
        }
        return PluginResult(summary: "retired \(retiring.map { "v\($0.number)" }.joined(separator: ", ")) (\(stopped) instance\(stopped == 1 ? "" : "s") stopped)\(live.map { "; v\($0.number) is live" } ?? "")\(kept.isEmpty ? "" : ", kept \(kept.map { "v\($0.number)" }.joined(separator: ", "))")")
    }
}
