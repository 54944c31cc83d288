import Foundation

extension Infrastructure {
    /// Starts the podman API services of the local deploy backend's cells, all at once: one
    /// service (socket `<root>/cell-<name>.sock`) per name, on a storage of their own under
    /// `root`, apart from the builders'. What a cell pulls to deploy (every app image, by
    /// digest) then never lies in the storage builds run on, where a build's `FROM` would
    /// find it without the registry's token check. Their containers go through the same
    /// runtime wrapper (no-new-privileges, at most `pidsLimit` processes).
    ///
    /// The cells of one root share its images (a layer is pulled once for all of them).
    /// App containers outlive the services: remove them (label `kiln.app`) with
    /// `cellsPodman(root:_:)` before stopping.
    public static func startCells(_ names: [String], root: URL, logs: URL? = nil,
                                  pidsLimit: Int = OCIRuntimeWrapper.defaultPidsLimit) async throws -> [PodmanService] {
        try await withThrowingTaskGroup(of: (Int, PodmanService).self) { group in
            for (i, name) in names.enumerated() {
                group.addTask {
                    let service = try await PodmanService.start(root: root, name: "cell-\(name)",
                                                                logFile: logs?.appendingPathComponent("cell-\(name).log"), pidsLimit: pidsLimit)
                    return (i, service)
                }
            }
            var started: [(Int, PodmanService)] = []
            do {
                for try await s in group { started.append(s) }
            } catch {
                for (_, service) in started { service.stop() }
                throw error
            }
            return started.sorted { $0.0 < $1.0 }.map(\.1)
        }
    }

    /// The socket of cell `name` on `root` (as `startCells` makes it).
    public static func cellSocket(root: URL, name: String) -> String {
        root.standardizedFileURL.appendingPathComponent("cell-\(name).sock").path
    }

    /// Runs the podman CLI on the cells' storage (no service needs to run); its status and output.
    @discardableResult
    public static func cellsPodman(root: URL, _ arguments: [String]) throws -> (status: Int32, output: String) {
        try ManagedProcess.run("podman", arguments, environment: PodmanService.environment(root: root))
    }
}
