/// Mutual exclusion per key (a project name) across the builds of one agent: two builds
/// of one project never fetch into the same mirror, or write the same Maven cache, at once.
///
/// Waiters are served in arrival order. A cancelled waiter leaves the line.
actor KeyedLock {
    private var held: Set<String> = []
    private var waiters: [String: [(id: Int, continuation: CheckedContinuation<Void, Error>)]] = [:]
    private var nextID = 0

    func withLock<T: Sendable>(_ key: String, _ body: @Sendable () async throws -> T) async throws -> T {
        try await acquire(key)
        do {
            let result = try await body()
            release(key)
            return result
        } catch {
            release(key)
            throw error
        }
    }

    /// True while someone holds `key` (for tests and status).
    func isHeld(_ key: String) -> Bool { held.contains(key) }

    private func acquire(_ key: String) async throws {
        if !held.contains(key) {
            held.insert(key)
            return
        }
        nextID += 1
        let id = nextID
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, Error>) in
                if Task.isCancelled {
                    c.resume(throwing: CancellationError())
                } else {
                    waiters[key, default: []].append((id, c))
                }
            }
        } onCancel: {
            Task { await self.cancelWaiter(key, id) }
        }
    }

    private func cancelWaiter(_ key: String, _ id: Int) {
        guard var list = waiters[key], let i = list.firstIndex(where: { $0.id == id }) else { return }
        let w = list.remove(at: i)
        waiters[key] = list
        w.continuation.resume(throwing: CancellationError())
    }

    private func release(_ key: String) {
        if var list = waiters[key], !list.isEmpty {
            let next = list.removeFirst()
            waiters[key] = list.isEmpty ? nil : list
            next.continuation.resume()  // ownership passes on; `held` stays set
        } else {
            held.remove(key)
        }
    }
}
