import AsyncHTTPClient
import Etcd
import Foundation
import KilnTestSupport
import LocalFarm
import Testing

/// Iterates `watch` (an ``EtcdWatch`` or ``EtcdFollow``) in a child task while `body` runs,
/// and hands `body` the updates through `Updates`, so `body` can write to etcd (or restart
/// it) while the watch is being read. The watch is cancelled when `body` returns.
func consuming<T: Sendable, Watch: AsyncSequence & Sendable>(
    _ watch: Watch,
    _ body: (inout Updates) async throws -> T
) async throws -> T where Watch.Element == WatchUpdate {
    let (stream, continuation) = AsyncThrowingStream.makeStream(of: WatchUpdate.self)
    return try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask {
            do {
                for try await update in watch { continuation.yield(update) }
                continuation.finish()
            } catch {
                continuation.finish(throwing: error)
            }
        }
        defer { group.cancelAll() }
        var updates = Updates(iterator: stream.makeAsyncIterator())
        return try await body(&updates)
    }
}

struct Updates {
    var iterator: AsyncThrowingStream<WatchUpdate, any Error>.AsyncIterator

    struct Ended: Error {}

    mutating func next() async throws -> WatchUpdate {
        guard let update = try await iterator.next() else { throw Ended() }
        return update
    }

    /// Reads updates until `count` events arrived; fails on a reset.
    mutating func events(_ count: Int) async throws -> [WatchEvent] {
        var events: [WatchEvent] = []
        while events.count < count {
            let update = try await next()
            guard case .events(let batch, _) = update else {
                Issue.record("expected events, got \(update)")
                throw Ended()
            }
            events += batch
        }
        return events
    }
}

/// The number of watchers etcd has open (from its metrics).
func openWatchers(_ server: EtcdServer) async throws -> Int {
    let response = try await HTTPClient.shared.execute(HTTPClientRequest(url: server.endpoint + "/metrics"), timeout: .seconds(5))
    let text = String(buffer: try await response.body.collect(upTo: 16 << 20))
    let line = text.split(separator: "\n").first { $0.hasPrefix("etcd_debugging_mvcc_watcher_total ") }
    return Int(line?.split(separator: " ").last ?? "") ?? -1
}

/// Waits until etcd counts `count` open watchers; false if it does not within 10 s.
/// (Polls: closing a connection gives no event a test can wait on.)
func waitForWatchers(_ server: EtcdServer, toBe count: Int) async throws -> Bool {
    let deadline = ContinuousClock.now + .seconds(10)
    while ContinuousClock.now < deadline {
        if try await openWatchers(server) == count { return true }
        try await Task.sleep(for: .milliseconds(50))
    }
    // This task may have been kept off the CPU past the deadline (other tests in the same
    // process): look once more before calling it a leak.
    return try await openWatchers(server) == count
}
