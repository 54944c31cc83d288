import Etcd
import Foundation
import KilnCore
import Plugins

/// Scales an app's live version out or in, per cell (`POST /api/v1/apps/{app}/scale`,
/// `kiln apps scale`; docs/scaling.md). Steps, in order:
///
/// 1. Claim: one guarded write of the app record checks the request against the record
///    (``KilnCore/ScalePlan``: no other scaling, no deploy under way, a live version, known
///    cells) and sets `App.scaling`, which holds off other scalings and makes a deploy step
///    wait.
/// 2. Leftovers: instances an interrupted scaling left in the version's `scalingInstances`
///    (never in a domain) are stopped once the domains' current state is applied and drained.
/// 3. In, as LeEngine did: the instances to stop leave the version's instances (into
///    `scalingInstances`) and every domain of the app in ONE transaction, guarded by the app's
///    and each domain's revision (so discovery cannot put them back); every lb-agent of each
///    group applies it; they drain `drainSeconds`; only then the backend stops them.
/// 4. Out: the backend starts the new instances, recorded at once in `scalingInstances` (so a
///    crash leaves nothing unknown, and discovery does not send them traffic); once every one
///    passes its health check, one guarded transaction moves them into the version's
///    instances and into the domains that serve the version, and the lb-agents apply it. One
///    that does not pass in time: all new ones are stopped and the scaling fails.
/// 5. Release: the version's settings take the new counts (`replicas`, `cellReplicas`), so a
///    restart, discovery and the next version keep them; `App.scaling` is cleared; the
///    outcome goes to the app's activity (`scaled`, or `scaling failed` with the reason).
///
/// Errors are `KilnError`s with the status the API answers. A failure leaves the record true:
/// it lists what runs, and the domains list nothing it does not.
public struct AppScaler: AppScaling {
    let env: DeployEnvironment
    /// The secrets a version's `secretEnv` names (the scheduler's sealed store), for the
    /// instances a scale-out starts; nil: such a version cannot be scaled out here.
    let secrets: (any PipelineSecrets)?
    /// The margin on top of the longest a scaling may take (lb-agent waits, drain, health
    /// check) after which its claim on the app lapses (a scheduler that died while scaling).
    var holdMargin: Duration = .seconds(300)

    public init(env: DeployEnvironment, secrets: (any PipelineSecrets)?) {
        self.env = env
        self.secrets = secrets
    }

    public func scale(app name: String, _ request: ScaleRequest, by user: String) async throws -> ScaleResult {
        try request.validate()
        let store = env.store
        guard try await store.app(name) != nil else {
            throw KilnError.notFound("app '\(name)' does not exist: an app appears when a project's pipeline deploys it")
        }
        let cells = try await store.cells()
        let drain = request.drainSeconds ?? 2
        let health = request.healthTimeoutSeconds ?? 60
        let hold = env.lbTimeout * 2 + .seconds(drain + health) + holdMargin
        let id = Secret.random(bytes: 8)
        let (_, plan) = try await store.update(name) { app -> ScalePlan in
            let now = Date()
            let plan = try ScalePlan.make(app: app, request: request, cellExists: { c in cells.contains { $0.name == c } }, now: now)
            app.scaling = ScaleOperation(id: id, version: plan.version, replicas: request.replicas, cell: request.cell, by: user,
                                         startedAt: now, expiresAt: now.addingTimeInterval(hold.inSeconds))
            return plan
        }
        let run = ScaleRun(scaler: self, app: name, version: plan.version, id: id, cells: cells,
                           drain: .seconds(drain), healthTimeout: .seconds(health))
        do {
            // Past this point the work finishes even if the caller goes away: half a scaling
            // would leave instances out of the load balancer and running.
            let (started, stopped, counts) = try await outlivingCancellation { try await run.perform(plan) }
            let summary = Self.summary(name, plan, counts: counts)
            try await release(name, id: id, plan: plan)
            try await store.record(ActivityEvent(user: user, action: "scaled", detail: summary), onApp: name)
            return ScaleResult(app: name, version: plan.version,
                               cells: plan.cells.map { .init(cell: $0.cell, before: $0.before.count, after: counts[$0.cell] ?? $0.target) },
                               started: started.map(\.name), stopped: stopped.map(\.name), summary: summary)
        } catch {
            let reason = (error as? KilnError)?.message ?? "\(error)"
            try? await outlivingCancellation {
                try await release(name, id: id, plan: nil)
                try await store.record(ActivityEvent(user: user, action: "scaling failed",
                                                     detail: "version \(plan.version) to \(request.replicas) per cell\(request.cell.map { " in \($0)" } ?? ""): \(reason)"), onApp: name)
            }
            throw error
        }
    }

    /// Ends this scaling's claim; with `plan`, the version's settings take its counts.
    func release(_ name: String, id: String, plan: ScalePlan?) async throws {
        try await env.store.update(name) { app in
            if app.scaling?.id == id { app.scaling = nil }
            guard let plan, let i = app.versions.firstIndex(where: { $0.number == plan.version }) else { return }
            app.versions[i].settings.replicas = plan.settings.replicas
            app.versions[i].settings.cellReplicas = plan.settings.cellReplicas
            app.versions[i].updatedAt = Date()
        }
    }

    static func summary(_ app: String, _ plan: ScalePlan, counts: [String: Int]) -> String {
        let cells = plan.cells.map { "\($0.cell) \($0.before.count) → \(counts[$0.cell] ?? $0.target)" }.joined(separator: ", ")
        return "version \(plan.version) of \(app): \(cells)"
    }
}
