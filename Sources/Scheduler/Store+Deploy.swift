import Etcd
import Foundation
import KilnCore

/// Apps, cells and pipeline runs, as the API shows and changes them.
extension SchedulerStore {
    // MARK: pipeline runs

    /// Asks for another run of the project's pipeline for a build that succeeded: deploys that
    /// build's image again as a new version (a roll back when the build is older). The
    /// pipeline is the project's as it is now, unless `pipeline` gives the steps to run (the
    /// apps' deploy, roll back and retire actions, `API+Apps.swift`). Refused while a run of
    /// the build is under way.
    public func requestPipelineRun(build id: String, trigger: String, pipeline asked: [PipelineStep]? = nil) async throws -> Build {
        for _ in 0..<10 {
            let (build, rev) = try await buildWithRevision(id)
            guard build.status == .succeeded, build.image != nil else {
                throw KilnError.conflict("build \(id) is \(build.status.rawValue)\(build.status == .succeeded ? " but has no image" : ""): only a build that succeeded can be deployed")
            }
            let project = try await self.project(build.project)
            guard let pipeline = asked ?? project.pipeline, !pipeline.isEmpty else {
                throw KilnError.conflict("project \(project.name) has no pipeline: give it one (kiln project add … --pipeline FILE) to deploy its builds")
            }
            if let current = build.deploy, !current.status.isFinal {
                throw KilnError.conflict("build \(id)'s pipeline run \(current.run) is still \(current.status.rawValue); wait for it to end")
            }
            var b = build
            b.deploy = PipelineRun(run: (build.deploy?.run ?? 0) + 1, pipeline: pipeline, trigger: trigger)
            // With its entry in the pipeline index, which the leader's pipeline service follows.
            let r = try await etcd.txn(Txn(compare: [.modRevision(keys.build(id), .equal, rev)],
                                           success: [.put(keys.build(id), try KilnJSON.encode(b)), .put(keys.pipelineIndexEntry(build: id), "")]))
            if r.succeeded { return b }
        }
        throw KilnError.unavailable("build \(id) kept changing; try again")
    }

    // MARK: apps

    public func apps() async throws -> [App] {
        try await etcd.range(prefix: keys.apps).kvs.compactMap { try? KilnJSON.decode(App.self, from: $0.value) }.sorted { $0.name < $1.name }
    }

    public func app(_ name: String) async throws -> App {
        try Validation.projectName(name, what: "app name")
        guard let kv = try await etcd.get(keys.app(name)) else {
            throw KilnError.notFound("app '\(name)' does not exist: an app appears when a project's pipeline deploys it")
        }
        return try KilnJSON.decode(App.self, from: kv.value)
    }

    // MARK: cells

    public func cells() async throws -> [Cell] {
        try await etcd.range(prefix: keys.cells).kvs.compactMap { try? KilnJSON.decode(Cell.self, from: $0.value) }.sorted { $0.name < $1.name }
    }

    /// Adds or replaces a cell; true if it is new.
    public func saveCell(_ cell: Cell) async throws -> Bool {
        try cell.validate()
        var c = cell
        let existing = try await etcd.get(keys.cell(cell.name))
        c.createdAt = existing.flatMap { try? KilnJSON.decode(Cell.self, from: $0.value) }?.createdAt ?? Date()
        try await etcd.put(keys.cell(cell.name), try KilnJSON.encode(c))
        return existing == nil
    }

    /// Removes a cell. Versions running there keep running; later deploys that name it fail.
    public func deleteCell(_ name: String) async throws {
        try Validation.projectName(name, what: "cell name")
        guard try await etcd.delete(keys.cell(name)) > 0 else { throw KilnError.notFound("cell '\(name)' does not exist") }
    }
}

extension SchedulerStore {
    public func appStatus(_ name: String, slb: SLBKeys = SLBKeys()) async throws -> AppStatus {
        let app = try await app(name)
        var domains: [AppStatus.DomainStatus] = []
        for binding in app.lb {
            let kv = try await etcd.get(slb.domain(group: binding.group, binding.domain))
            let value = kv.flatMap { try? KilnJSON.decode(SLBDomain.self, from: $0.value) }
            let agents = try await etcd.range(prefix: slb.agents(binding.group)).kvs.compactMap { try? KilnJSON.decode(SLBAgentReport.self, from: $0.value) }
            domains.append(.init(
                group: binding.group, domain: binding.domain, servers: value?.servers.map(\.address) ?? [], version: value?.version,
                agents: agents.map { a in
                    .init(id: a.id, listen: a.listen, appliedRevision: a.appliedRevision,
                          current: a.appliedRevision >= (kv?.modRevision ?? 0) && a.rejected[binding.domain] == nil, rejected: a.rejected[binding.domain])
                }))
        }
        return AppStatus(app: app, domains: domains)
    }
}
