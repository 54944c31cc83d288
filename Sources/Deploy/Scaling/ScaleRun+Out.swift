import Foundation
import KilnCore
import Plugins

// Step 4 of a scaling (``AppScaler``): new instances start outside the load balancer and join
// it only once every one passes its health check.
extension ScaleRun {
    func bringIn(_ growing: [ScalePlan.CellChange], spec: VersionSpec, deployer: any Deployer) async throws -> [Instance] {
        let (current, _) = try await read()
        let startSpec = VersionSpec(app: spec.app, version: spec.version, image: spec.image, settings: spec.settings,
                                    secretValues: try await secretValues(current))
        let targets = try growing.map { (change: $0, cell: try cell($0.cell)) }
        // Every cell at once; a failure in one lets the others finish, then all are removed.
        let outcomes = await withTaskGroup(of: Result<[Instance], any Error>.self) { group in
            for (change, cell) in targets {
                let running = current.instances.filter { $0.cell == change.cell }
                group.addTask {
                    do { return .success(try await deployer.scaleOut(startSpec, in: cell, running: running, adding: change.adding)) } catch { return .failure(error) }
                }
            }
            var all: [Result<[Instance], any Error>] = []
            for await outcome in group { all.append(outcome) }
            return all
        }
        let started = outcomes.flatMap { (try? $0.get()) ?? [] }
        let healthy: [Instance]
        do {
            // Recorded at once, outside the instances discovery sends traffic to.
            if !started.isEmpty { _ = try await write({ $0.scalingInstances = ($0.scalingInstances ?? []) + started }, domains: { _ in nil }) }
            for outcome in outcomes { _ = try outcome.get() }
            healthy = try await waitHealthy(started, of: current)
        } catch {
            await remove(started, of: current, spec: spec, deployer: deployer)
            throw error
        }
        try await join(healthy)
        return healthy
    }

    /// Checks the new instances until every one passes, for at most `healthTimeout`.
    func waitHealthy(_ started: [Instance], of current: AppVersion) async throws -> [Instance] {
        var probe = current
        probe.instances = started
        let deadline = ContinuousClock.now + healthTimeout
        while true {
            let checked = await env.checkInstances(app: app, version: probe, cells: cells)
            if checked.allSatisfy(\.healthy) { return checked }
            if ContinuousClock.now >= deadline {
                let failing = checked.filter { !$0.healthy }.prefix(4).map { "\($0.name): \($0.detail ?? "?")" }.joined(separator: "; ")
                throw KilnError.unavailable("\(checked.filter(\.healthy).count) of \(checked.count) new instances of version \(version) of \(app) passed the health check at \(current.settings.healthPath) within \(healthTimeout.components.seconds) s (\(failing)); they were stopped and the app runs as before")
            }
            try await Task.sleep(for: env.healthInterval)
        }
    }

    /// The healthy new instances join the version's instances and every domain that serves
    /// the version, in one transaction; the lb-agents apply it.
    func join(_ healthy: [Instance]) async throws {
        let ids = Set(healthy.map(\.id))
        let (groups, revision) = try await write({ v in
            v.dropScaling(ids)
            v.instances += healthy
        }, domains: { domain in
            guard domain.version == version else { return nil }
            let missing = healthy.filter { h in !domain.servers.contains { $0.address == h.address } }
            guard !missing.isEmpty else { return nil }
            var changed = domain
            changed.servers = (domain.servers + missing.map { SLBServer(address: $0.address) }).sorted { $0.address < $1.address }
            return changed
        })
        try await waitApplied(groups, revision)
    }

    /// Stops new instances that never joined, and forgets them.
    func remove(_ started: [Instance], of current: AppVersion, spec: VersionSpec, deployer: any Deployer) async {
        for name in Set(started.map(\.cell)) {
            guard let cell = try? self.cell(name) else { continue }
            _ = try? await deployer.scaleIn(spec, in: cell, keeping: current.instances.filter { $0.cell == name })
        }
        let ids = Set(started.map(\.id))
        _ = try? await write({ v in
            v.dropScaling(ids)
        }, domains: { _ in nil })
    }

    /// The values of the version's `secretEnv`, looked up as its deploy step did (for its
    /// build's ref), for the instances a scale-out starts.
    func secretValues(_ v: AppVersion) async throws -> SecretValues {
        var values = SecretValues()
        let names = v.settings.secretEnv ?? []
        guard !names.isEmpty else { return values }
        guard let build = try await store.etcd.get(store.keys.build(v.build)), let project = try await store.etcd.get(store.keys.project(v.project)) else {
            throw KilnError.conflict("version \(v.number) of \(app) names secrets in secretEnv, but its build \(v.build) or project \(v.project) is gone: deploy a new version instead")
        }
        let context = PluginContext(build: try KilnJSON.decode(Build.self, from: build.value), project: try KilnJSON.decode(Project.self, from: project.value),
                                    settings: [:], secrets: scaler.secrets, log: { _ in })
        for name in names { values[name] = try await context.secretValue(name, for: "version \(v.number)'s secretEnv") }
        return values
    }
}
