import Foundation
import KilnCore

/// Scales an app's live version out or in (the Deploy module's `AppScaler`), handed to the
/// scheduler by `kiln scheduler` as the post-build plugins are, so that the Scheduler module
/// never imports Deploy. `POST /api/v1/apps/{app}/scale` calls it.
///
/// Rules for implementations: the caller has checked that `user` may deploy the app and that
/// it exists; the implementation checks everything else (``KilnCore/ScalePlan``), records the
/// outcome in the app's activity, and throws `KilnError`s whose status the API answers with.
/// It returns once the scaling has ended (instances started and healthy in the load balancer,
/// or out of it, drained and stopped); a call that fails half way leaves the app as the
/// record says (no instance in the load balancer that the record does not list).
public protocol AppScaling: Sendable {
    func scale(app: String, _ request: ScaleRequest, by user: String) async throws -> ScaleResult
}
