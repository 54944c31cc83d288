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
/// it goes on to its end even when the client goes away. The route and the console's scale
/// form both call `API.scaleApp` (`API+Apps.swift`).
struct ScaleAPI: Sendable {
    /// The API whose `scaleApp` (and scaler) the route calls.
    let shared: API
    let auth: Authenticator
    let access: Access
    let maxBody = 4096

    func addRoutes(to api: RouterGroup<KilnRequestContext>) {
        api.post("apps/:name/scale") { request, context in
            let caller = try await auth.caller(request, context: context)
            let name = try context.parameters.require("name")
            // Who may not scale the app learns nothing from the body's mistakes.
            _ = try await shared.visibleApp(name, .deploy, caller, access)
            var request = request
            let asked = try decodeBody(ScaleRequest.self, from: try await request.collectBody(upTo: maxBody))
            return json(try await shared.scaleApp(name, asked, by: caller, access: access))
        }
    }
}
