import Etcd
import Foundation
import KilnCore
import Logging
import ServiceLifecycle
import Synchronization

/// Discovery while the pipeline is idle: every `interval` it checks the instances of each
/// app's live version, writes their health into the app record when it changed, and keeps
/// each of the app's domains pointing at the live version's instances that pass: one that
/// fails its check leaves the domain, one that passes again comes back. A domain is never
/// emptied (with no instance passing, nginx keeps trying the ones it has). A change of an
/// instance's health goes into the app's activity ("health changed"), at most one entry per
/// app every ``healthEventSpacing`` (activity is kept for days, and a flapping instance would
/// write one every round): the changes between two entries are counted in the next.
///
/// It runs on the leading scheduler beside the pipelines, and stays out of their way: it only
/// touches a domain whose value names the app's live version (so never one an `lb` step has
/// just moved to a newer version), and it writes the app record and the domain in one
/// transaction guarded by both keys' revisions, so a pipeline's write in between wins.
///
/// A `Service`: `run()` checks until graceful shutdown or until its task is cancelled (the
/// leader cancels it when its term ends), and never throws: a failed round is logged and the
/// next one tries again.
public struct DiscoveryMonitor: Service {
    let env: DeployEnvironment
    let interval: Duration
    let logger: Logger
    /// Shortest time between two "health changed" entries of one app.
    let healthEventSpacing: TimeInterval
    private let healthEvents = HealthEventSpacing()

    public init(env: DeployEnvironment, interval: Duration = .seconds(5), healthEventSpacing: TimeInterval = 300, logger: Logger) {
        self.env = env
        self.interval = interval
        self.healthEventSpacing = healthEventSpacing
        self.logger = logger
    }

    /// Checks every `interval` until graceful shutdown or cancellation.
    public func run() async {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                do {
                    try await round()
                } catch {
                    if Task.isCancelled { return }
                    logger.warning("discovery: \(error)")
                }
                try? await Task.sleep(for: interval)
            }
        }
    }

    /// One check of every app's live version.
    public func round() async throws {
        let store = env.store
        let cells = try await store.cells()
        for kv in try await store.etcd.range(prefix: store.keys.apps).kvs {
            guard let app = try? KilnJSON.decode(App.self, from: kv.value), let live = app.live, !live.instances.isEmpty,
                  let index = app.versions.firstIndex(where: { $0.number == live.number }) else { continue }
            let checked = await env.checkInstances(app: app.name, version: live, cells: cells)
            let healthChanged = zip(live.instances, checked).contains { $0.healthy != $1.healthy }
            var ops: [TxnOp] = []
            var compares: [Compare] = [.modRevision(kv.key, .equal, kv.modRevision)]
            var changes: [String] = []
            let healthy = checked.filter(\.healthy).map(\.address).sorted()
            for binding in app.lb {
                let key = store.slb.domain(group: binding.group, binding.domain)
                guard let (domain, revision) = try await store.domain(group: binding.group, binding.domain),
                      domain.app == app.name, domain.version == live.number, !healthy.isEmpty,
                      Set(domain.servers.map(\.address)) != Set(healthy) else { continue }
                var changed = domain
                changed.servers = healthy.map { address in domain.servers.first { $0.address == address } ?? SLBServer(address: address) }
                changed.updatedAt = Date()
                compares.append(.modRevision(key, .equal, revision))
                ops.append(.put(key, try KilnJSON.encode(changed)))
                let left = Set(domain.servers.map(\.address)).subtracting(healthy), joined = Set(healthy).subtracting(domain.servers.map(\.address))
                changes.append("\(binding.domain): \(left.isEmpty ? "" : "out \(left.sorted().joined(separator: ", ")) ")\(joined.isEmpty ? "" : "in \(joined.sorted().joined(separator: ", "))")")
            }
            guard healthChanged || !ops.isEmpty else { continue }
            var updated = app
            updated.versions[index].instances = checked
            updated.versions[index].updatedAt = Date()
            ops.append(.put(kv.key, try KilnJSON.encode(updated)))
            let r = try await store.etcd.txn(Txn(compare: compares, success: ops))
            guard r.succeeded else { continue }  // a pipeline wrote meanwhile: the next round sees it
            let failing = checked.filter { !$0.healthy }.map { "\($0.name) (\($0.detail ?? "?"))" }
            if healthChanged {
                // The app's activity (its console page's events): which instances changed, and why.
                let flips = zip(live.instances, checked).filter { $0.healthy != $1.healthy }
                    .map { "\($1.name) \($1.healthy ? "healthy again" : "unhealthy (\($1.detail ?? "?"))")" }
                if let earlier = healthEvents.due(app.name, now: Date(), spacing: healthEventSpacing) {
                    let more = earlier > 0 ? "; \(earlier) more change\(earlier == 1 ? "" : "s") since the last entry" : ""
                    let detail = "v\(live.number): \(flips.joined(separator: ", ")); \(healthy.count) of \(checked.count) healthy\(changes.isEmpty ? "" : "; \(changes.joined(separator: "; "))")\(more)"
                    try? await store.record(ActivityEvent(user: "discovery", action: "health changed", detail: detail), onApp: app.name)
                }
            }
            logger.notice("discovery: v\(live.number) of \(app.name): \(healthy.count) of \(checked.count) instances healthy\(failing.isEmpty ? "" : "; failing: \(failing.joined(separator: ", "))")\(changes.isEmpty ? "" : "; \(changes.joined(separator: "; "))")")
        }
    }
}

/// When an app's next "health changed" entry may be written (``DiscoveryMonitor``): one per
/// app per spacing; the changes seen meanwhile are counted and said in the next entry.
final class HealthEventSpacing: Sendable {
    private let state = Mutex<[String: (last: Date, skipped: Int)]>([:])

    /// Nil: too soon after the app's last entry (this change is counted); else the number of
    /// changes skipped since that entry, and `now` becomes the last entry's time.
    func due(_ app: String, now: Date, spacing: TimeInterval) -> Int? {
        state.withLock { apps in
            if let entry = apps[app], now.timeIntervalSince(entry.last) < spacing {
                apps[app]?.skipped += 1
                return nil
            }
            let skipped = apps[app]?.skipped ?? 0
            apps[app] = (now, 0)
            return skipped
        }
    }
}
