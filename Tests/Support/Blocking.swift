import Foundation

/// Runs `body`, which blocks (a libgit2 fetch, a key generation, a short command), on a thread
/// of its own and waits for it without holding one of the concurrency pool's threads: there
/// are as many as cores (2 here), and a test that blocks them delays every other suite's
/// timers running beside it.
public func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread.detachNewThread { continuation.resume(with: Result { try body() }) }
    }
}
