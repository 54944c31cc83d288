import KilnCore
import Testing

struct Late: Error {}

@Suite("withTimeout, outlivingCancellation, Duration in milliseconds")
struct ConcurrencyTests {
    @Test("a body that ends in time gives its value; its own error is rethrown as it is")
    func inTime() async throws {
        #expect(try await withTimeout(.seconds(10), { Late() }) { 42 } == 42)
        await #expect(throws: CancellationError.self) {
            try await withTimeout(.seconds(10), { Late() }) { () async throws -> Int in throw CancellationError() }
        }
    }

    @Test("past the limit the body is cancelled, its clean-up finishes first, then the limit's error")
    func pastTheLimit() async throws {
        let cleanedUp = Locked(false)
        await #expect(throws: Late.self) {
            try await withTimeout(.milliseconds(50), { Late() }) { () async throws -> Int in
                do {
                    try await Task.sleep(for: .seconds(30))
                } catch {
                    try? await outlivingCancellation { try await Task.sleep(for: .milliseconds(20)) }
                    cleanedUp.value = true
                    throw error
                }
                return 1
            }
        }
        #expect(cleanedUp.value)
    }

    @Test("the limit wins even when the cancelled body returns a value")
    func limitWins() async throws {
        await #expect(throws: Late.self) {
            try await withTimeout(.milliseconds(20), { Late() }) { () async -> Int in
                try? await Task.sleep(for: .seconds(30))  // cancelled, then returns anyway
                return 7
            }
        }
    }

    @Test("acceptingLateValue: a value the cancelled body returns after the limit is kept")
    func lateValueAccepted() async throws {
        let value = try await withTimeout(.milliseconds(20), acceptingLateValue: true, { Late() }) { () async -> Int in
            try? await Task.sleep(for: .seconds(30))  // cancelled, then returns anyway
            return 7
        }
        #expect(value == 7)
        await #expect(throws: Late.self) {
            try await withTimeout(.milliseconds(20), acceptingLateValue: true, { Late() }) { () async throws -> Int in
                try await Task.sleep(for: .seconds(30))
                return 7
            }
        }
    }

    @Test("outlivingCancellation runs to its end inside a cancelled task")
    func outlives() async throws {
        let task = Task { () async -> Bool in
            try? await Task.sleep(for: .seconds(30))  // cancelled at once
            return await outlivingCancellation {
                (try? await Task.sleep(for: .milliseconds(10))) != nil && !Task.isCancelled
            }
        }
        task.cancel()
        #expect(await task.value)
    }

    @Test("milliseconds round toward zero; seconds and their description")
    func durations() {
        #expect(Duration.milliseconds(1234).inMilliseconds == 1234)
        #expect(Duration.microseconds(1999).inMilliseconds == 1)
        #expect(Duration.seconds(3).inMilliseconds == 3000)
        #expect(Duration.milliseconds(1500).inSeconds == 1.5)
        #expect(Duration.milliseconds(1234).secondsDescription == "1.23 s")
        #expect(Duration.zero.secondsDescription == "0.00 s")
    }
}
