import Foundation
import KilnCore

/// What a backend needs to start one version of an app in one cell.
public struct VersionSpec: Sendable, Equatable {
    public var app: String
    public var version: Int
    /// The image to pull from the registry and run: by digest (`registry/project@sha256:…`),
    /// as the deploy plugin records it, so a tag pushed again since changes nothing.
    public var image: String
    public var settings: DeploySettings
    /// The values of `settings.secretEnv`, looked up by the deploy step for `start` (empty in
    /// the other calls): held in memory for the start only, never written to etcd.
    public var secretValues: SecretValues

    public init(app: String, version: Int, image: String, settings: DeploySettings, secretValues: SecretValues = SecretValues()) {
        self.app = app
        self.version = version
        self.image = image
        self.settings = settings
        self.secretValues = secretValues
    }

    /// The spec a recorded version was started from.
    public init(app: String, _ v: AppVersion) {
        self.init(app: app, version: v.number, image: v.image, settings: v.settings)
    }

    /// The name every instance of this version carries, with its cell and index added.
    public var baseName: String { "kiln-\(app)-v\(version)" }
}

/// Secret values by name, for one start of a version. Its description and mirror show the
/// names only, so printing or dumping a `VersionSpec` never shows a value.
public struct SecretValues: Sendable, Equatable, CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    private var values: [String: String]

    public init(_ values: [String: String] = [:]) { self.values = values }

    public subscript(name: String) -> String? {
        get { values[name] }
        set { values[name] = newValue }
    }

    /// Every name with its value: for the backend that hands them to an instance.
    public var all: [String: String] { values }
    public var names: [String] { values.keys.sorted() }
    public var description: String { "secret values of [\(names.joined(separator: ", "))]" }
    public var debugDescription: String { description }
    public var customMirror: Mirror { Mirror(self, children: ["names": names]) }
}

/// Runs an app's versions in a cell. One implementation per backend: `LocalDeployer` (a
/// Docker Engine API: on this machine, or on another host behind a TLS proxy) and
/// `KubernetesDeployer` (the Kubernetes REST API).
///
/// Every call is about one cell. Errors are `KilnError`s that say what failed and where
/// (`cell b: port 20000 is already taken`), so the deploy step can report them as they are.
public protocol Deployer: Sendable {
    /// Starts the version's `settings.replicas` instances in `cell` from `spec.image`, pulled
    /// from the registry. Returns them as soon as they are started (not yet known healthy).
    /// On failure it removes whatever it started for this version in this cell. The instances
    /// get `settings.env` and, under the names of `settings.secretEnv`, the values in
    /// `spec.secretValues` (the caller looks up every one) as environment variables.
    func start(_ spec: VersionSpec, in cell: Cell) async throws -> [Instance]

    /// Checks one instance now: healthy when its health check passes (an HTTP 2xx from
    /// `settings.healthPath`, or Kubernetes' readiness). `detail` says what was seen.
    func check(_ instance: Instance, of spec: VersionSpec, in cell: Cell) async -> (healthy: Bool, detail: String)

    /// Stops and removes these instances (already out of the load balancer). Instances that
    /// are already gone are not an error.
    func stop(_ instances: [Instance], of spec: VersionSpec, in cell: Cell) async throws

    /// The instances of `app` that exist in `cell`, by version number: what discovery and
    /// `kiln apps` see, whatever etcd says.
    func instances(of app: String, in cell: Cell) async throws -> [Int: [Instance]]

    /// Starts `count` more instances of a version that runs in `cell`, beside `running` (its
    /// instances the app's record lists, left as they are). Whatever else of this version is
    /// in the cell was left by an interrupted scaling (never in a load balancer) and goes
    /// first. Returns only the new instances, started, not yet known healthy; on failure it
    /// removes what it started. They get `settings.env` and `spec.secretValues` as in `start`.
    func scaleOut(_ spec: VersionSpec, in cell: Cell, running: [Instance], adding count: Int) async throws -> [Instance]

    /// Leaves `keeping` of the version running in `cell` and stops the rest, which the caller
    /// has taken out of the load balancer and drained. Returns the instances that run
    /// afterwards: `keeping`, unless the backend chose otherwise (Kubernetes' ReplicaSet picks
    /// the pods it deletes; `KubernetesDeployer` says how it steers that choice).
    func scaleIn(_ spec: VersionSpec, in cell: Cell, keeping: [Instance]) async throws -> [Instance]
}
