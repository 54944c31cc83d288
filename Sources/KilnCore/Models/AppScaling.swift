import Foundation

// Scaling an app's live version out or in, per cell (`POST /api/v1/apps/{app}/scale`,
// `kiln apps scale`): the record of a scaling under way, the per-cell counts of a version's
// settings, and the plan (pure) the Deploy module's `AppScaler` carries out (docs/scaling.md).

/// A scaling under way on an app (`App.scaling`): one at a time per app, and a deploy step
/// waits for it before it makes its version (so the new version takes the new counts). A
/// scheduler that dies while scaling leaves it behind: it stops counting at `expiresAt`.
public struct ScaleOperation: Codable, Sendable, Equatable {
    /// Tells this scaling's own record from a later one's.
    public var id: String
    public var version: Int
    public var replicas: Int
    public var cell: String?
    /// The user who asked.
    public var by: String
    public var startedAt: Date
    public var expiresAt: Date

    public init(id: String, version: Int, replicas: Int, cell: String?, by: String, startedAt: Date, expiresAt: Date) {
        self.id = id
        self.version = version
        self.replicas = replicas
        self.cell = cell
        self.by = by
        self.startedAt = startedAt
        self.expiresAt = expiresAt
    }

    public func isActive(at now: Date) -> Bool { now < expiresAt }

    /// "scaled by alice since 10:04:05 UTC (to 3 per cell in a)", for the refusals it causes.
    public var description: String {
        let f = DateFormatter()
        f.dateFormat = "HH:mm:ss 'UTC'"
        f.timeZone = TimeZone(identifier: "UTC")
        return "being scaled by \(by) since \(f.string(from: startedAt)) (version \(version) to \(replicas) per cell\(cell.map { " in \($0)" } ?? ""))"
    }
}

extension DeploySettings {
    /// The most instances a version may run per cell (the deploy step's `replicas` has the same limit).
    public static let maxReplicas = 100
    /// What a scaling may ask for: 0 empties a cell.
    public static let scaleRange = 0...maxReplicas

    /// Instances per cell in `cell`.
    public func replicas(in cell: String) -> Int { cellReplicas?[cell] ?? replicas }

    /// These settings with `counts` in the cells it names and the other cells of `cells` (every
    /// cell of the version) as they are: one `replicas` when every cell runs the same number,
    /// else `replicas` as it was and `cellReplicas` for the cells that differ from it.
    public func withReplicas(_ counts: [String: Int], cells: [String]) -> DeploySettings {
        var s = self
        var effective: [String: Int] = [:]
        for c in cells { effective[c] = counts[c] ?? replicas(in: c) }
        let distinct = Set(effective.values)
        if distinct.count == 1, let n = distinct.first {
            s.replicas = n
            s.cellReplicas = nil
            return s
        }
        let differing = effective.filter { $0.value != s.replicas }
        s.cellReplicas = differing.isEmpty ? nil : differing
        return s
    }
}

/// What one scaling changes, decided from the app's record alone (no I/O, no clock but `now`).
///
/// Rules, in order (``make(app:request:cellExists:now:)``):
/// 1. The request must be possible at all (``ScaleRequest/validate()``): 400.
/// 2. A named cell must exist: 404.
/// 3. Another scaling still under way (``ScaleOperation/isActive(at:)``): 409.
/// 4. A deploy under way (a version `deploying` or `retiring`): 409; the new version takes the
///    live version's counts when it is made, so a scaling then would be lost.
/// 5. No live version: 409 (scaling changes the version in the load balancer).
/// 6. A named cell the live version does not run in: 400 (a deploy chooses cells).
/// 7. Per cell, instances to stop are chosen unhealthy first, then the newest (highest index).
/// 8. Every cell at 0 while the app has domains: 409 (a domain is never emptied).
public struct ScalePlan: Sendable, Equatable {
    public struct CellChange: Sendable, Equatable {
        public var cell: String
        /// The version's instances in the cell now.
        public var before: [Instance]
        public var target: Int
        /// To take out of the load balancer, drain and stop (scaling in).
        public var stopping: [Instance]
        /// How many to start (scaling out).
        public var adding: Int

        public var keeping: [Instance] { before.filter { i in !stopping.contains { $0.id == i.id } } }
    }

    public var version: Int
    public var cells: [CellChange]
    /// The version's settings once every cell has its target.
    public var settings: DeploySettings

    public static func make(app: App, request: ScaleRequest, cellExists: (String) -> Bool, now: Date) throws -> ScalePlan {
        try request.validate()
        if let cell = request.cell, !cellExists(cell) {
            throw KilnError.notFound("cell '\(cell)' does not exist: `kiln cell list` shows the cells")
        }
        if let op = app.scaling, op.isActive(at: now) {
            throw KilnError.conflict("app \(app.name) is \(op.description): one scaling at a time; try again once it has ended")
        }
        if let busy = app.versions.first(where: { $0.state == .deploying || $0.state == .retiring }) {
            throw KilnError.conflict("a deploy of app \(app.name) is under way (version \(busy.number) is \(busy.state.rawValue)): scale once its pipeline run has ended")
        }
        guard let live = app.live else {
            throw KilnError.conflict("app \(app.name) has no live version (none is in its load balancer): scaling changes the live version; deploy one first")
        }
        let cells: [String]
        if let cell = request.cell {
            guard live.cells.contains(cell) else {
                throw KilnError.invalid("version \(live.number) of \(app.name) runs in \(live.cells.joined(separator: ", ")), not in cell \(cell): a scaling changes counts in the cells a version runs in; a deploy step's `cells` decides them")
            }
            cells = [cell]
        } else {
            cells = live.cells
        }
        var changes: [CellChange] = []
        for cell in cells {
            let before = live.instances.filter { $0.cell == cell }
            let surplus = max(0, before.count - request.replicas)
            let stopping = Array(before.sorted(by: stopFirst).prefix(surplus))
            changes.append(CellChange(cell: cell, before: before, target: request.replicas, stopping: stopping,
                                      adding: max(0, request.replicas - before.count)))
        }
        let untouched = live.instances.filter { !cells.contains($0.cell) }.count
        if request.replicas == 0, untouched == 0, let binding = app.lb.first {
            throw KilnError.conflict("scaling every cell of \(app.name) to 0 would leave domain \(binding.domain) (group \(binding.group)) with no servers: keep at least one instance")
        }
        let settings = live.settings.withReplicas(Dictionary(uniqueKeysWithValues: cells.map { ($0, request.replicas) }), cells: live.cells)
        return ScalePlan(version: live.number, cells: changes, settings: settings)
    }

    /// The order instances leave in: unhealthy ones first (they serve nothing), then the newest
    /// (highest index in `kiln-{app}-v{n}-{cell}-{index}`; a pod's name, last first).
    static func stopFirst(_ a: Instance, _ b: Instance) -> Bool {
        if a.healthy != b.healthy { return !a.healthy }
        let ia = index(of: a.name), ib = index(of: b.name)
        if ia != ib { return (ia ?? -1) > (ib ?? -1) }
        return a.name > b.name
    }

    public static func index(of name: String) -> Int? {
        name.split(separator: "-").last.flatMap { Int($0) }
    }
}
