import Foundation

/// The body of `POST /api/v1/apps/{app}/scale` (`kiln apps scale APP --replicas N [--cell C]`):
/// how many instances the app's live version should run per cell, in one cell or in every
/// cell it runs in.
public struct ScaleRequest: Codable, Sendable, Equatable {
    /// Instances per cell after the scaling: 0 to ``DeploySettings/maxReplicas``.
    public var replicas: Int
    /// The one cell to scale; nil: every cell the live version runs in.
    public var cell: String?
    /// How long instances taken out of the load balancer still get to finish the requests
    /// they hold before they are stopped (0 to 300; default 2, as the retire step).
    public var drainSeconds: Int?
    /// How long new instances get to pass their health check (1 to 600; default 60, as the
    /// deploy step).
    public var healthTimeoutSeconds: Int?

    public init(replicas: Int, cell: String? = nil, drainSeconds: Int? = nil, healthTimeoutSeconds: Int? = nil) {
        self.replicas = replicas
        self.cell = cell
        self.drainSeconds = drainSeconds
        self.healthTimeoutSeconds = healthTimeoutSeconds
    }

    public static let drainRange = 0...300
    public static let healthTimeoutRange = 1...600

    /// Refuses what no app could be scaled to (400), before anything is read.
    public func validate() throws {
        guard DeploySettings.scaleRange.contains(replicas) else {
            throw KilnError.invalid("replicas \(replicas) is out of range: give 0 to \(DeploySettings.maxReplicas) instances per cell")
        }
        if let cell { try Validation.projectName(cell, what: "cell name") }
        if let d = drainSeconds, !Self.drainRange.contains(d) {
            throw KilnError.invalid("drainSeconds \(d) is out of range: give 0 to \(Self.drainRange.upperBound) seconds")
        }
        if let t = healthTimeoutSeconds, !Self.healthTimeoutRange.contains(t) {
            throw KilnError.invalid("healthTimeoutSeconds \(t) is out of range: give 1 to \(Self.healthTimeoutRange.upperBound) seconds")
        }
    }
}

/// The answer of `POST /api/v1/apps/{app}/scale`: what each cell ran before and runs now.
public struct ScaleResult: Codable, Sendable, Equatable {
    public struct CellCount: Codable, Sendable, Equatable {
        public var cell: String
        public var before: Int
        public var after: Int
        public init(cell: String, before: Int, after: Int) {
            self.cell = cell
            self.before = before
            self.after = after
        }
    }

    public var app: String
    public var version: Int
    public var cells: [CellCount]
    /// Names of the instances started and stopped.
    public var started: [String]
    public var stopped: [String]
    /// One line for people (the activity feed's detail).
    public var summary: String

    public init(app: String, version: Int, cells: [CellCount], started: [String], stopped: [String], summary: String) {
        self.app = app
        self.version = version
        self.cells = cells
        self.started = started
        self.stopped = stopped
        self.summary = summary
    }
}
