import Etcd
import Foundation
import KilnCore
import Plugins

/// One scaling's steps 2 to 4 (``AppScaler``), while it holds the app's claim.
struct ScaleRun: Sendable {
    let scaler: AppScaler
    let app: String
    let version: Int
    /// The claim's id (`App.scaling.id`): every write checks it is still this scaling's.
    let id: String
    let cells: [Cell]
    let drain: Duration
    let healthTimeout: Duration

    var env: DeployEnvironment { scaler.env }
    var store: AppStore { env.store }

    /// Returns the instances started and stopped, and how many run per scaled cell now.
    func perform(_ plan: ScalePlan) async throws -> (started: [Instance], stopped: [Instance], counts: [String: Int]) {
        let (current, _) = try await read()
        let deployer = try env.deployer(current.backend)
        let spec = VersionSpec(app: app, current)
        try await stopLeftovers(current, spec, deployer)

        var counts: [String: Int] = [:]
        let leaving = plan.cells.flatMap(\.stopping)
        if !leaving.isEmpty {
            try await takeOut(leaving)
            try await Task.sleep(for: drain)
            for change in plan.cells where !change.stopping.isEmpty {
                let remaining = try await deployer.scaleIn(spec, in: try cell(change.cell), keeping: change.keeping)
                try await recordStopped(change, remaining: remaining)
                counts[change.cell] = remaining.count
            }
        }
        let growing = plan.cells.filter { $0.adding > 0 }
        var started: [Instance] = []
        if !growing.isEmpty {
            started = try await bringIn(growing, spec: spec, deployer: deployer)
            for change in growing { counts[change.cell] = change.before.count + change.adding }
        }
        for change in plan.cells where counts[change.cell] == nil { counts[change.cell] = change.before.count }
        return (started, leaving, counts)
    }

    // MARK: reading and writing the record

    /// The version as the record holds it, and the record's revision; refuses when this
    /// scaling no longer holds the app or the version left the load balancer meanwhile.
    func read() async throws -> (AppVersion, KeyValue) {
        guard let kv = try await store.etcd.get(store.keys.app(app)) else { throw KilnError.notFound("app \(app) is gone") }
        let record = try KilnJSON.decode(App.self, from: kv.value)
        guard record.scaling?.id == id else {
            throw KilnError.conflict("app \(app) is no longer held by this scaling (it took longer than its claim allowed, and another began)")
        }
        guard let v = record.version(version), v.state == .live else {
            throw KilnError.conflict("version \(version) of \(app) is no longer live (a deploy moved its traffic meanwhile): scale the new live version")
        }
        return (v, kv)
    }

    func cell(_ name: String) throws -> Cell {
        guard let cell = cells.first(where: { $0.name == name }) else {
            throw KilnError.notFound("cell \(name) no longer exists: add it again with `kiln cell add \(name) …`")
        }
        return cell
    }

    /// Changes the version in the record and the app's domains (each given its current value)
    /// in one transaction guarded by all their revisions, tried again when discovery or a
    /// pipeline wrote in between. Returns the groups whose domains changed and the revision.
    func write(_ change: (inout AppVersion) -> Void,
               domains: (SLBDomain) throws -> SLBDomain?) async throws -> (groups: Set<String>, revision: Int64) {
        for _ in 0..<20 {
            let (_, kv) = try await read()
            var record = try KilnJSON.decode(App.self, from: kv.value)
            let i = record.versions.firstIndex { $0.number == version }!
            change(&record.versions[i])
            record.versions[i].updatedAt = Date()
            record.updatedAt = Date()
            var compares: [Compare] = [.modRevision(kv.key, .equal, kv.modRevision)]
            var ops: [TxnOp] = [.put(kv.key, try KilnJSON.encode(record))]
            var groups: Set<String> = []
            for binding in record.lb {
                guard let (domain, revision) = try await store.domain(group: binding.group, binding.domain),
                      domain.app == app, var changed = try domains(domain) else { continue }
                changed.updatedAt = Date()
                let key = store.slb.domain(group: binding.group, binding.domain)
                compares.append(.modRevision(key, .equal, revision))
                ops.append(.put(key, try KilnJSON.encode(changed)))
                groups.insert(binding.group)
            }
            let r = try await store.etcd.txn(Txn(compare: compares, success: ops))
            if r.succeeded { return (groups, r.revision) }
        }
        throw KilnError.unavailable("app \(app) and its domains kept changing while Kiln scaled it; try again")
    }

    func waitApplied(_ groups: Set<String>, _ revision: Int64) async throws {
        for group in groups.sorted() {
            _ = try await LBAgents.waitApplied(etcd: store.etcd, keys: store.slb, group: group, revision: revision, timeout: env.lbTimeout)
        }
    }

    // MARK: the steps

    /// Step 2: stops what an interrupted scaling left in `scalingInstances`.
    func stopLeftovers(_ v: AppVersion, _ spec: VersionSpec, _ deployer: any Deployer) async throws {
        guard let left = v.scalingInstances, !left.isEmpty else { return }
        // Never in a domain, but the one that took them out may have died before the
        // lb-agents applied it: the domains' current state is applied and drained first.
        let groups = Set((try await store.app(app))?.lb.map(\.group) ?? [])
        try await waitApplied(groups, try await store.etcd.status())
        try await Task.sleep(for: drain)
        for (name, _) in Dictionary(grouping: left, by: \.cell) {
            _ = try await deployer.scaleIn(spec, in: try cell(name), keeping: v.instances.filter { $0.cell == name })
        }
        _ = try await write({ $0.scalingInstances = nil }, domains: { _ in nil })
    }

    /// Step 3: the instances leave the record's instances and every domain at once, and the
    /// lb-agents apply it.
    func takeOut(_ leaving: [Instance]) async throws {
        let ids = Set(leaving.map(\.id)), addresses = Set(leaving.map(\.address))
        let (groups, revision) = try await write({ v in
            v.instances.removeAll { ids.contains($0.id) }
            v.scalingInstances = (v.scalingInstances ?? []) + leaving
        }, domains: { domain in
            let staying = domain.servers.filter { !addresses.contains($0.address) }
            guard staying.count < domain.servers.count else { return nil }
            guard !staying.isEmpty else {
                throw KilnError.conflict("scaling in would leave domain \(domain.domain) of \(app) with no servers (the instances that stay fail their health check now); nothing was stopped")
            }
            var changed = domain
            changed.servers = staying
            return changed
        })
        try await waitApplied(groups, revision)
    }

    /// After the backend stopped a cell's leaving instances: they leave `scalingInstances`; the
    /// cell's instances become what the backend says remains (Kubernetes may differ).
    func recordStopped(_ change: ScalePlan.CellChange, remaining: [Instance]) async throws {
        let gone = Set(change.stopping.map(\.id))
        _ = try await write({ v in
            v.dropScaling(gone)
            let recorded = v.instances.filter { $0.cell == change.cell }
            guard Set(recorded.map(\.id)) != Set(remaining.map(\.id)) else { return }
            let merged = remaining.map { r in recorded.first { $0.id == r.id } ?? r }
            v.instances = v.instances.filter { $0.cell != change.cell } + merged
        }, domains: { _ in nil })
    }
}

extension AppVersion {
    /// Drops these instances (by id) from `scalingInstances`, which is nil once empty.
    mutating func dropScaling(_ ids: Set<String>) {
        scalingInstances = scalingInstances?.filter { !ids.contains($0.id) }
        if scalingInstances?.isEmpty == true { scalingInstances = nil }
    }
}
