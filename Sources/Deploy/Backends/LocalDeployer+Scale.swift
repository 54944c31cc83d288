import DockerAPI
import Foundation
import KilnCore

extension LocalDeployer {
    public func scaleOut(_ spec: VersionSpec, in cell: Cell, running: [Instance], adding count: Int) async throws -> [Instance] {
        let env = try Self.environment(of: spec, in: cell)
        return try await withDocker(cell) { docker in try await scaleOut(spec, env: env, in: cell, running: running, adding: count, docker) }
    }

    private func scaleOut(_ spec: VersionSpec, env: [String: String], in cell: Cell, running: [Instance], adding count: Int, _ docker: DockerClient) async throws -> [Instance] {
        try await prepare(spec, in: cell, docker)
        // A container of this version the record does not list was started by a scaling that
        // stopped before it recorded it: never in a load balancer, so it goes.
        let found = try await docker.containers(labeled: Self.labels(app: spec.app, version: spec.version, cell: cell.name))
        for c in found where !running.contains(where: { Self.sameContainer($0.id, c.id) }) {
            try await docker.remove(c.id, force: true)
        }
        // New instances take the lowest indices free, so names stay short and unique.
        let used = Set(running.compactMap { ScalePlan.index(of: $0.name) })
        var indices: [Int] = []
        var next = 0
        while indices.count < count {
            if !used.contains(next) { indices.append(next) }
            next += 1
        }
        return try await startInstances(spec, env: env, indices: indices, in: cell, docker)
    }

    public func scaleIn(_ spec: VersionSpec, in cell: Cell, keeping: [Instance]) async throws -> [Instance] {
        let found = try await withDocker(cell) { docker in
            try await docker.containers(labeled: Self.labels(app: spec.app, version: spec.version, cell: cell.name))
        }
        let leaving = found.filter { c in !keeping.contains { Self.sameContainer($0.id, c.id) } }
            .map { Instance(id: $0.id, name: $0.names.first ?? $0.id, cell: cell.name, address: "") }
        try await stop(leaving, of: spec, in: cell)
        return keeping
    }

    /// Container ids are compared by prefix: an engine may give the short form in one answer
    /// and the full one in another.
    static func sameContainer(_ a: String, _ b: String) -> Bool {
        !a.isEmpty && !b.isEmpty && (a.hasPrefix(b) || b.hasPrefix(a))
    }
}
