import Etcd
import Foundation
import KilnCore

/// Apps, cells and LB domains in etcd, for the deploy plugins. Every change to an app is a
/// read-modify-write guarded by the key's mod revision, tried again when another writer
/// got there first, so two pipelines never lose each other's versions. Each write also prunes
/// the app's oldest stopped versions past its `keepVersions` (``App/prunedVersions()``).
public struct AppStore: Sendable {
    public let etcd: EtcdClient
    public let keys: Keys
    public let slb: SLBKeys

    public init(etcd: EtcdClient, keys: Keys = Keys(), slb: SLBKeys = SLBKeys()) {
        self.etcd = etcd
        self.keys = keys
        self.slb = slb
    }

    public func app(_ name: String) async throws -> App? {
        guard let kv = try await etcd.get(keys.app(name)) else { return nil }
        return try KilnJSON.decode(App.self, from: kv.value)
    }

    /// The members of app `name` (which other projects may deploy into it), if any.
    public func members(ofApp name: String) async throws -> Members? {
        guard let kv = try await etcd.get(keys.members(.app, name)) else { return nil }
        return try? KilnJSON.decode(Members.self, from: kv.value)
    }

    /// App `name` if `project`'s pipeline may change it (nil if it does not exist yet); a 403
    /// naming the owner otherwise.
    public func appChangeable(_ name: String, by project: String) async throws -> App? {
        guard let app = try await app(name) else { return nil }
        guard app.allows(project: project, members: try await members(ofApp: name)) else { throw app.refusal(project: project) }
        return app
    }

    /// Records an event in app `name`'s activity (who: the pipeline of the build's project).
    public func record(_ event: ActivityEvent, onApp name: String) async throws {
        try await etcd.put(keys.activityEvent(.app, name, at: event.at, id: Secret.random(bytes: 4)), try KilnJSON.encode(event))
    }

    /// Changes app `name` (created empty if absent) with `change`, atomically; returns what was
    /// written and `change`'s own result.
    @discardableResult
    public func update<T: Sendable>(_ name: String, _ change: (inout App) throws -> T) async throws -> (App, T) {
        let key = keys.app(name)
        for _ in 0..<50 {
            let kv = try await etcd.get(key)
            var app = try kv.map { try KilnJSON.decode(App.self, from: $0.value) } ?? App(name: name)
            let result = try change(&app)
            // Every write keeps the record bounded: stopped versions past the app's number go.
            app = app.prunedVersions().app
            app.updatedAt = Date()
            let guardCompare: Compare = kv.map { .modRevision(key, .equal, $0.modRevision) } ?? .createRevision(key, .equal, 0)
            let r = try await etcd.txn(Txn(compare: [guardCompare], success: [.put(key, try KilnJSON.encode(app))]))
            if r.succeeded { return (app, result) }
        }
        throw KilnError.unavailable("app \(name) changed 50 times while Kiln tried to update it; try again")
    }

    /// Changes one version of an app (no-op if it is gone).
    public func updateVersion(_ app: String, _ number: Int, _ change: @escaping (inout AppVersion) -> Void) async throws {
        try await update(app) { a in
            guard let i = a.versions.firstIndex(where: { $0.number == number }) else { return }
            change(&a.versions[i])
            a.versions[i].updatedAt = Date()
        }
    }

    public func cells() async throws -> [Cell] {
        try await etcd.range(prefix: keys.cells).kvs.compactMap { try? KilnJSON.decode(Cell.self, from: $0.value) }.sorted { $0.name < $1.name }
    }

    public func domain(group: String, _ domain: String) async throws -> (SLBDomain, Int64)? {
        guard let kv = try await etcd.get(slb.domain(group: group, domain)) else { return nil }
        return (try KilnJSON.decode(SLBDomain.self, from: kv.value), kv.modRevision)
    }

    /// Writes a domain's servers; returns the revision of the write.
    public func putDomain(group: String, _ value: SLBDomain) async throws -> Int64 {
        try await etcd.put(slb.domain(group: group, value.domain), try KilnJSON.encode(value))
    }
}
