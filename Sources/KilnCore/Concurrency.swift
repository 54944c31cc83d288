import Foundation

// Small helpers for time limits, clean-up that must outlive a cancellation, and durations in
// records. One copy each, used by the agent, the scheduler, the plugins, the deploy side, the
// tests and the benchmarks.

/// Runs `body`; if it has not ended after `limit`, cancels it, lets it finish its clean-up
/// (it sees the cancellation), and throws `timedOut()`.
///
/// Rules: once the limit has passed, a value the cancelled body still returns is dropped and
/// the limit is reported, unless `acceptingLateValue` (a pipeline step that finished its work
/// while being stopped did that work: its outcome is recorded); an error `body` throws before
/// the limit is rethrown as it is; cancelling the caller cancels both and throws
/// `CancellationError` (or whatever `body` throws on cancellation). Nothing is left running
/// when this returns: a task group waits for its children.
public func withTimeout<T: Sendable>(
    _ limit: Duration, acceptingLateValue: Bool = false, _ timedOut: @escaping @Sendable () -> any Error,
    _ body: @escaping @Sendable () async throws -> T
) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: limit)
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next() else { throw CancellationError() }
        if let value = first { return value }
        group.cancelAll()
        // Let the body clean up (a container stopped, a half-done deploy removed) before the
        // limit is reported.
        while let late = try? await group.next() {
            if acceptingLateValue, let value = late { return value }
        }
        throw timedOut()
    }
}

/// Runs `body` to its end even when the calling task is cancelled, and returns its result.
///
/// For work that must not be cut short by a cancellation: removing a container, revoking a
/// lease, writing a build's final record (every etcd or HTTP call made from a cancelled task
/// fails at once). `body` runs in a detached task: it sees neither the caller's cancellation
/// nor its task-local values; the caller still waits for it.
public func outlivingCancellation<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await Task.detached(operation: body).value
}

/// `outlivingCancellation` for a body that cannot fail.
public func outlivingCancellation<T: Sendable>(_ body: @escaping @Sendable () async -> T) async -> T {
    await Task.detached(operation: body).value
}

extension Duration {
    /// The duration in whole milliseconds, rounded toward zero: what build records, pipeline
    /// steps and log lines carry.
    public var inMilliseconds: Int {
        let (seconds, attoseconds) = components
        return Int(seconds) * 1000 + Int(attoseconds / 1_000_000_000_000_000)
    }

    /// The duration in seconds as a floating-point number, for measurements and clocks.
    public var inSeconds: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) * 1e-18
    }

    /// "1.23 s": how the agent's and the pipeline's log lines give a duration.
    public var secondsDescription: String { String(format: "%.2f s", Double(inMilliseconds) / 1000) }
}
