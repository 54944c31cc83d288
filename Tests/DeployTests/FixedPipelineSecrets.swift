import Foundation
import KilnCore
import Plugins
import Synchronization

/// Stands in for the scheduler's sealed `SecretStore` (the Sealing module, tested in
/// SealingTests), which the plugins and deployers reach through `PipelineSecrets`: secrets and
/// cell credentials held in memory, given by the store's rules (a project's value wins over
/// its group's; a `protectedOnly` one only for a protected ref, else `.withheld`). Tests can
/// change a cell's credential while a deployer runs, as `kiln cell credential set` would.
final class FixedPipelineSecrets: PipelineSecrets {
    struct Value: Sendable {
        var value: String
        var protectedOnly = false
    }

    private struct State {
        /// "project P:NAME" or "group G:NAME" → the value.
        var values: [String: Value] = [:]
        var cells: [String: CellCredential] = [:]
        /// Every name looked up, in order (to show what a step asked for).
        var lookedUp: [String] = []
    }

    private let state = Mutex(State())

    init(cells: [String: CellCredential] = [:]) {
        state.withLock { $0.cells = cells }
    }

    func set(_ name: String, _ value: String, project: String, protectedOnly: Bool = false) {
        state.withLock { $0.values["project \(project):\(name)"] = Value(value: value, protectedOnly: protectedOnly) }
    }

    func set(_ name: String, _ value: String, group: String, protectedOnly: Bool = false) {
        state.withLock { $0.values["group \(group):\(name)"] = Value(value: value, protectedOnly: protectedOnly) }
    }

    func setCell(_ cell: String, _ credential: CellCredential?) {
        state.withLock { $0.cells[cell] = credential }
    }

    var lookedUp: [String] { state.withLock { $0.lookedUp } }

    func secret(_ name: String, of project: Project, ref: String?) async throws -> SecretLookup {
        state.withLock { s in
            s.lookedUp.append(name)
            let found = s.values["project \(project.name):\(name)"] ?? project.group.flatMap { s.values["group \($0):\(name)"] }
            guard let found else { return .missing }
            if found.protectedOnly && !(ref.map(project.isProtected(ref:)) ?? false) { return .withheld }
            return .value(found.value)
        }
    }

    func cellCredential(_ cell: String) async throws -> CellCredential? {
        state.withLock { $0.cells[cell] }
    }
}
