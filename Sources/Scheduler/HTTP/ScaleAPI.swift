import Foundation
import Hummingbird
import KilnCore
import Logging
import Plugins

/// `POST /api/v1/apps/{name}/scale` (``KilnCore/ScaleRequest`` in, ``KilnCore/ScaleResult``
/// out; docs/scaling.md): the app's live version to `replicas` instances per cell, in one cell
/// or in every cell it runs in. Who may deploy the app may scale it (`deploy`: master and up,
/// inherited from the owning project); anyone else gets the app's 404 or a 403.
///
/// The answer comes once the scaling has ended: new instances healthy and in the load
/// balancer, or old ones out of it, drained and stopped. The scaling itself is the Deploy
/// module's `AppScaler`, handed in by `kiln scheduler` (``SchedulerConfiguration/scaler``);
/// it goes on to its end even when the client goes away.
struct ScaleAPI: Sendable {
    let store: SchedulerStore
    let auth: Authenticator
    let identity: IdentityAPI
    let scaler: (any AppScaling)?
    let logger: Logger
    let maxBody = 4096

    func addRoutes(to api: RouterGroup<KilnRequestContext>) {
        api.post("apps/:name/scale") { request, context in
            let caller = try await auth.caller(request, context: context)
            let name = try context.parameters.require("name")
            try await identity.requireExisting(.app, name, .deploy, caller)
            var request = request
            let asked = try decodeBody(ScaleRequest.self, from: try await request.collectBody(upTo: maxBody))
            try asked.validate()
            guard let scaler else {
                throw KilnError.unavailable("this scheduler runs no deploy backends, so it cannot scale apps: ask one started with `kiln scheduler`")
            }
            logger.info("scaling", metadata: ["app": "\(name)", "replicas": "\(asked.replicas)", "cell": "\(asked.cell ?? "all")", "by": "\(caller.user)"])
            let user = caller.user
            let result = try await outlivingCancellation { try await scaler.scale(app: name, asked, by: user) }
            logger.info("scaled", metadata: ["app": "\(name)", "summary": "\(result.summary)", "by": "\(caller.user)"])
            return json(result)
        }
    }
}
