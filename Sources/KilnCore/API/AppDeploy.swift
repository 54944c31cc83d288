import Foundation

/// The body of `POST /api/v1/apps/{app}/deploy` (the console's deploy form): a build of the
/// app's project, run as the app's next version through the project's pipeline (its steps
/// for this app), with `settings` as the deploy step's when given.
public struct AppDeployRequest: Codable, Sendable, Equatable {
    /// The build to deploy: one that succeeded and pushed an image.
    public var build: String
    /// The new version's settings. Nil: the deploy step's own, which take the previous
    /// version's for what they leave out. `cellReplicas` given: the step sets no `replicas`,
    /// so the counts per cell the current version has go on. An empty `secretEnv`, like a
    /// nil `cpu` or `memoryMB`, keeps the previous version's (a deploy step cannot unset them).
    public var settings: DeploySettings?

    public init(build: String, settings: DeploySettings? = nil) {
        self.build = build
        self.settings = settings
    }
}
