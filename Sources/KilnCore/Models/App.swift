import Foundation

/// How each instance of a version runs. A new version takes these from the previous
/// version of the app unless the pipeline's `deploy` step sets them.
public struct DeploySettings: Codable, Sendable, Equatable {
    /// The port the app listens on inside its container.
    public var port: Int
    /// Instances per cell, in every cell not named in ``cellReplicas``.
    public var replicas: Int
    /// Cells whose count differs from ``replicas`` (set by `kiln apps scale APP --cell C`);
    /// nil: every cell runs ``replicas``. Read it through ``replicas(in:)``.
    public var cellReplicas: [String: Int]?
    public var cpu: Double?
    public var memoryMB: Int?
    public var env: [String: String]
    /// Answers 2xx when an instance is healthy.
    public var healthPath: String
    /// Names of the project's secrets (`kiln secret set`) given to the instances as
    /// environment variables. Only the names are kept here (this record is in etcd in clear);
    /// the deploy step looks the values up when it starts the version, and the backend hands
    /// them to the instances (a container's Env, a Kubernetes Secret). Nil: none.
    public var secretEnv: [String]?

    public init(port: Int, replicas: Int = 1, cpu: Double? = nil, memoryMB: Int? = nil, env: [String: String] = [:], healthPath: String = "/health",
                secretEnv: [String]? = nil, cellReplicas: [String: Int]? = nil) {
        self.port = port
        self.cellReplicas = cellReplicas
        self.replicas = replicas
        self.cpu = cpu
        self.memoryMB = memoryMB
        self.env = env
        self.healthPath = healthPath
        self.secretEnv = secretEnv
    }
}

/// One running instance of a version: a container (local) or a pod (Kubernetes).
public struct Instance: Codable, Sendable, Equatable {
    /// Container id or pod name.
    public var id: String
    /// Container or pod name, for people.
    public var name: String
    public var cell: String
    /// `host:port` nginx sends requests to.
    public var address: String
    /// Whether it passed its health check when last checked.
    public var healthy: Bool
    public var checkedAt: Date?
    /// The last health answer, or why there is none.
    public var detail: String?

    public init(id: String, name: String, cell: String, address: String, healthy: Bool = false, checkedAt: Date? = nil, detail: String? = nil) {
        self.id = id
        self.name = name
        self.cell = cell
        self.address = address
        self.healthy = healthy
        self.checkedAt = checkedAt
        self.detail = detail
    }
}

public enum VersionState: String, Codable, Sendable {
    /// Instances starting, not all healthy yet.
    case deploying
    /// All instances passed their health check; may take traffic.
    case ready
    /// In the load balancer.
    case live
    /// Leaving the load balancer, then stopping.
    case retiring
    /// Stopped and removed.
    case retired
    /// Never became ready; its instances were removed.
    case failed
}

/// One version of an app: one build's image with its settings, in its cells.
public struct AppVersion: Codable, Sendable, Equatable {
    /// 1, 2, 3… per app.
    public var number: Int
    public var build: String
    /// The pipeline run of `build` that made it: a run started over after a crash finds its
    /// version again instead of making another.
    public var pipelineRun: Int?
    public var project: String
    /// The image by digest, `registry/project@sha256:…`: what every instance runs.
    public var image: String
    /// The build's tag, for people only (`kiln apps` shows it); the tag may move, `image` does not.
    public var tag: String?
    public var backend: String
    public var cells: [String]
    public var settings: DeploySettings
    public var state: VersionState
    public var instances: [Instance]
    public var error: String?
    /// Instances a scaling is starting (not yet healthy) or stopping (out of the load balancer,
    /// draining): never in a domain, never checked by discovery. Retire stops them with the
    /// version; a scaling that finds some here (its predecessor stopped half way) stops them
    /// first. nil: none.
    public var scalingInstances: [Instance]?
    public var createdAt: Date
    public var updatedAt: Date

    public init(number: Int, build: String, project: String, image: String, backend: String, cells: [String], settings: DeploySettings, state: VersionState = .deploying, instances: [Instance] = [], error: String? = nil, createdAt: Date = Date(), updatedAt: Date = Date()) {
        self.number = number
        self.build = build
        self.project = project
        self.image = image
        self.backend = backend
        self.cells = cells
        self.settings = settings
        self.state = state
        self.instances = instances
        self.error = error
        self.createdAt = createdAt
        self.updatedAt = updatedAt
    }
}

/// Where an app is served: a domain of an nginx group.
public struct LBBinding: Codable, Sendable, Equatable {
    public var group: String
    public var domain: String
    public init(group: String, domain: String) {
        self.group = group
        self.domain = domain
    }
}

/// An app and all its versions, at `/kiln/apps/{name}`.
public struct App: Codable, Sendable, Equatable {
    /// The app as a viewer below master sees it: every version's env values masked (`***`).
    public var maskedForViewers: App {
        var app = self
        for i in app.versions.indices { app.versions[i].settings.env = app.versions[i].settings.env.mapValues { _ in "***" } }
        return app
    }

    public var name: String
    /// Oldest first.
    public var versions: [AppVersion]
    public var lb: [LBBinding]
    /// The project whose pipeline first deployed the app: it owns the app. Another project's
    /// pipeline may deploy into it, point a domain at it or retire it only if the app's
    /// members name that project with `master` (docs/roles.md). nil: an app from before
    /// owners existed; the next deploy claims it.
    public var project: String?
    /// How many versions the record keeps (nil: 10): older retired and failed versions beyond
    /// it are pruned at the app's next write, versions that run never (``prunedVersions()``).
    /// The builds of the versions kept are roll-back candidates, never pruned.
    public var keepVersions: Int?
    /// The scaling under way, if any (``ScaleOperation``): one at a time per app; a deploy step
    /// waits for it to end before it makes its version.
    public var scaling: ScaleOperation?
    public var updatedAt: Date

    public init(name: String, versions: [AppVersion] = [], lb: [LBBinding] = [], project: String? = nil, updatedAt: Date = Date()) {
        self.project = project
        self.name = name
        self.versions = versions
        self.lb = lb
        self.updatedAt = updatedAt
    }

    public func version(_ n: Int) -> AppVersion? { versions.first { $0.number == n } }
    /// The newest version that is live, if any.
    public var live: AppVersion? { versions.last { $0.state == .live } }
    /// The newest version that is not failed or retired: the settings a next version inherits.
    public var current: AppVersion? { versions.last { $0.state != .failed && $0.state != .retired } }
    public var nextNumber: Int { (versions.map(\.number).max() ?? 0) + 1 }

    /// Whether `project`'s pipeline may deploy into this app, point domains at it or retire
    /// its versions: the project that owns it, or one its members name with `master` or above.
    /// An app from before owners were recorded belongs to the project of its first version; an
    /// app with no version yet is open: the first deploy claims it.
    public var owner: String? { project ?? versions.first?.project }

    public func allows(project: String, members: Members?) -> Bool {
        guard let owner else { return true }
        return owner == project || (members?.projects?[project].map { $0 >= .master } ?? false)
    }

    /// The error of a pipeline whose project ``allows(project:members:)`` refuses.
    public func refusal(project: String) -> KilnError {
        KilnError.forbidden("app '\(name)' belongs to project '\(owner ?? "?")': the pipeline of project '\(project)' may deploy into it, point its domains or retire it only if the app's owners allow it (PUT /api/v1/apps/\(name)/projects/\(project))")
    }
}
