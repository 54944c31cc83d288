import KilnCore

/// Runs `body(i)` for every `i` in `0..<count`, `workers` at once: each worker takes the next
/// index until none is left. The first error thrown ends the run with it.
func inParallel(count: Int, workers: Int, _ body: @escaping @Sendable (Int) async throws -> Void) async throws {
    let next = Locked(0)
    try await withThrowingTaskGroup(of: Void.self) { group in
        for _ in 0..<max(1, workers) {
            group.addTask {
                while true {
                    let i = next.add(1)
                    if i >= count { return }
                    try await body(i)
                }
            }
        }
        try await group.waitForAll()
    }
}
