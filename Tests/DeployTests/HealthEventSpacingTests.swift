@testable import Deploy
import Foundation
import Testing

/// Discovery writes at most one "health changed" entry per app per spacing, and the next
/// entry says how many changes it did not write meanwhile (activity is kept for days; a
/// flapping instance would otherwise add one every round).
@Suite("Health change entries are spaced per app")
struct HealthEventSpacingTests {
    @Test func oneEntryPerAppPerSpacingAndTheSkippedOnesCountedInTheNext() {
        let spacing = HealthEventSpacing()
        let t0 = Date(timeIntervalSince1970: 1_000_000)
        #expect(spacing.due("shop", now: t0, spacing: 300) == 0)
        #expect(spacing.due("shop", now: t0.addingTimeInterval(5), spacing: 300) == nil)
        #expect(spacing.due("shop", now: t0.addingTimeInterval(10), spacing: 300) == nil)
        // Another app has its own spacing.
        #expect(spacing.due("blog", now: t0.addingTimeInterval(10), spacing: 300) == 0)
        #expect(spacing.due("shop", now: t0.addingTimeInterval(300), spacing: 300) == 2)
        #expect(spacing.due("shop", now: t0.addingTimeInterval(301), spacing: 300) == nil)
        #expect(spacing.due("shop", now: t0.addingTimeInterval(700), spacing: 300) == 1)
    }

    @Test func noSpacingWritesEveryChange() {
        let spacing = HealthEventSpacing()
        let t0 = Date()
        #expect(spacing.due("shop", now: t0, spacing: 0) == 0)
        #expect(spacing.due("shop", now: t0, spacing: 0) == 0)
    }
}
