import Foundation
import KilnCore
import Plugins

/// Points a domain of an nginx group at a version's instances that pass their health check
/// now, then waits until every lb-agent of the group has applied it. Instances that fail
/// their check do not join.
public struct LBPlugin: PostBuildPlugin {
    let env: DeployEnvironment
    public var spec: PluginSpec { PluginCatalog.spec("lb")! }

    public func run(_ ctx: PluginContext) async throws -> PluginResult {
        let result = try await perform(ctx)
        // The app's activity: what the step did, by which project's pipeline, for which build.
        try await env.store.record(ActivityEvent(user: "pipeline of \(ctx.project.name)", action: "traffic moved", detail: result.summary, build: ctx.build.id),
                                   onApp: ctx.string("app")!)
        return result
    }

    func perform(_ ctx: PluginContext) async throws -> PluginResult {
        let store = env.store
        let appName = ctx.string("app")!, group = ctx.string("group")!, domain = ctx.string("domain")!
        guard let app = try await store.appChangeable(appName, by: ctx.project.name) else {
            throw KilnError.notFound("app \(appName) has no versions: put a deploy step for it before the lb step")
        }
        // A domain that serves another app is that app's: taking it needs the same right on it.
        // One that names no app, or an app that is gone, was made by hand or is left over: an
        // admin removes it first (`/slb/{group}/domains/{domain}`), so no pipeline can take it.
        if let current = try await store.domain(group: group, domain)?.0, current.app != appName {
            guard let other = current.app, try await store.app(other) != nil else {
                throw KilnError.forbidden("domain \(domain) of group \(group) exists and serves no app Kiln knows\(current.app.map { " (it names \($0), which is gone)" } ?? ""): an admin must remove it before a pipeline may point it at \(appName)")
            }
            _ = try await store.appChangeable(other, by: ctx.project.name)
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
