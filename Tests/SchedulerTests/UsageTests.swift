import Foundation
import KilnCore
@testable import Scheduler
import Testing

/// The admin page's usage per day, counted without etcd: which record counts as what, on
/// which day, and what falls outside the window.
struct UsageTests {
    /// 2026-11-26T15:00:00Z.
    static let now = Date(timeIntervalSince1970: 1_795_705_200)
    static let day: TimeInterval = 86_400

    func build(_ id: Int, at created: Date, pushedAt: Date? = nil, digest: Bool = false) -> Build {
        var b = Build(id: String(format: "b%011d-%012d", id, id), project: "p", ref: "main", createdAt: created)
        if digest { b.digest = "sha256:" + String(repeating: "a", count: 64) }
        if let pushedAt {
            b.steps[3].status = .succeeded
            b.steps[3].finishedAt = pushedAt
            b.finishedAt = pushedAt
        }
        return b
    }

    @Test func theWindowIsThirtyUTCDaysEndingToday() {
        let usage = Usage(endingAt: Self.now)
        #expect(usage.days.count == 30)
        #expect(usage.days.last?.day == "2026-11-26" && usage.days.first?.day == "2026-10-28")
        #expect(usage.since == Date(timeIntervalSince1970: 1_795_651_200 - 29 * Self.day))
        #expect(usage.days.allSatisfy { $0.builds == 0 && $0.pushes == 0 && $0.deploys == 0 && $0.scalings == 0 })
    }

    @Test func buildsPushesDeploysAndScalingsCountOnTheirDays() {
        var usage = Usage(endingAt: Self.now)
        let today = Self.now, yesterday = Self.now - Self.day
        // Asked for yesterday just before midnight, pushed today: a build yesterday, a push today.
        usage.count(build(1, at: Date(timeIntervalSince1970: 1_795_651_199), pushedAt: Date(timeIntervalSince1970: 1_795_651_300), digest: true))
        // A failed build: a build, no push.
        usage.count(build(2, at: today))
        // A build that pushed (a digest) without a timed push step: its end, else its creation.
        usage.count(build(3, at: yesterday, digest: true))
        usage.count(ActivityEvent(at: today, user: "pipeline of p", action: "deployed"))
        usage.count(ActivityEvent(at: today, user: "pipeline of p", action: "deployed"))
        usage.count(ActivityEvent(at: yesterday, user: "ann", action: "scaled"))
        // Neither: other actions.
        usage.count(ActivityEvent(at: today, user: "ann", action: "scaling failed"))
        usage.count(ActivityEvent(at: today, user: "pipeline of p", action: "traffic moved"))
        let last = usage.days[29], before = usage.days[28]
        #expect(last == Usage.Day(day: "2026-11-26", builds: 1, pushes: 1, deploys: 2, scalings: 0))
        #expect(before == Usage.Day(day: "2026-11-25", builds: 2, pushes: 1, deploys: 0, scalings: 1))
        #expect(usage.days[..<28].allSatisfy { $0 == Usage.Day(day: $0.day) })
    }

    @Test func recordsOutsideTheWindowAreLeftOut() {
        var usage = Usage(endingAt: Self.now)
        usage.count(build(1, at: usage.since - 1, pushedAt: usage.since - 1, digest: true))
        usage.count(build(2, at: Self.now + Self.day))
        usage.count(ActivityEvent(at: usage.since - 1, user: "a", action: "deployed"))
        // The first second of the window counts.
        usage.count(ActivityEvent(at: usage.since, user: "a", action: "scaled"))
        #expect(usage.days.map(\.builds).reduce(0, +) == 0 && usage.days.map(\.pushes).reduce(0, +) == 0)
        #expect(usage.days.map(\.deploys).reduce(0, +) == 0)
        #expect(usage.days[0].scalings == 1)
    }

    @Test func closedDaysAreCountedOnceAndTakenFromWhatWasCounted() {
        var first = Usage(endingAt: Self.now)
        // Nothing remembered: every record of the window is read, and from a day before it.
        #expect(first.firstOpen(in: [:]) == 0)
        #expect(first.readFrom(0) == first.since - Self.day)
        first.count(build(1, at: Self.now - 3 * Self.day))
        first.count(build(2, at: Self.now - Self.day))
        // Today and yesterday stay open.
        let closed = first.closedDays
        #expect(closed.count == 28 && closed["2026-11-23"]?.builds == 1 && closed["2026-11-25"] == nil && closed["2026-11-26"] == nil)

        // The next view reads yesterday and today (from the day before yesterday on) and
        // keeps the rest as counted, though its records are no longer read.
        var next = Usage(endingAt: Self.now)
        let open = next.firstOpen(in: closed)
        #expect(open == 28)
        #expect(next.readFrom(open) == Date(timeIntervalSince1970: 1_795_651_200 - 2 * Self.day))
        next.count(build(2, at: Self.now - Self.day))
        next.count(build(3, at: Self.now))
        next.keep(closed, before: open)
        #expect(next.days.map(\.builds).suffix(4) == [1, 0, 1, 1])

        // A day later the window moves on: the day that was yesterday is closed now, and read.
        let tomorrow = Usage(endingAt: Self.now + Self.day)
        #expect(tomorrow.firstOpen(in: next.closedDays) == 27)
        #expect(tomorrow.days[27].day == "2026-11-25")
    }

    @Test func theChartsCarryEachDaysCountAndEscapeNothingUnsafe() {
        var usage = Usage(endingAt: Self.now)
        usage.count(build(1, at: Self.now))
        usage.count(build(2, at: Self.now))
        usage.count(build(3, at: Self.now - Self.day))
        let html = ConsolePages.usageCharts(usage).rendered
        #expect(html.contains(#"<rect data-day="2026-11-26" data-count="2" x="96.67%" width="2.67%" y="0.00%" height="100.00%""#), "\(html)")
        #expect(html.contains(#"<rect data-day="2026-11-25" data-count="1" x="93.33%" width="2.67%" y="50.00%" height="50.00%""#))
        #expect(html.contains("<b>Builds</b>: 3 in all, at most 2 a day"))
        #expect(!html.contains("style="))
    }
}
