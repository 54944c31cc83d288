import Foundation
import KilnCore
@testable import Scheduler
import Testing

/// The search for the newest keys without a sorted read, against key sets of every shape: the
/// answer must be exactly the newest `limit` below the bound, whatever the spread of times.
@Suite("newest window")
struct NewestWindowTests {
    static let now: Int64 = 1_790_000_000_000
    static let day: Int64 = 86_400_000

    /// Runs the search over `ids` (sorted) as etcd would answer it: what it returns, and how many counts it made.
    func search(_ ids: [String], limit: Int, below cursor: String? = nil) -> (ids: [String], more: Bool, counts: Int) {
        let upper = cursor ?? "c"
        var w = NewestWindow(limit: limit, upperMs: cursor.flatMap(NewestWindow.timeMs) ?? Self.now)
        func lower(_ from: Int64?) -> String { NewestWindow.firstID(atMs: from ?? 0) }
        var step = w.start(), counts = 0
        while true {
            switch step {
            case .count(let from):
                counts += 1
                let n = ids.filter { $0 >= lower(from) && $0 < upper }.count
                step = w.counted(Int64(n))
            case .fetch(let from):
                let window = ids.filter { $0 >= lower(from) && $0 < upper }
                return (window.suffix(limit).reversed(), w.more(fetched: window.count, window: from), counts)
            }
        }
    }

    func truth(_ ids: [String], limit: Int, below cursor: String? = nil) -> (ids: [String], more: Bool) {
        let below = ids.filter { $0 < (cursor ?? "c") }.sorted(by: >)
        return (Array(below.prefix(limit)), below.count > limit)
    }

    func ids(_ times: [Int64]) -> [String] {
        times.map { BuildID.generate(now: Date(timeIntervalSince1970: Double($0) / 1000)) }.sorted()
    }

    func check(_ ids: [String], limit: Int = 50, below cursor: String? = nil, maxCounts: Int = 24, sourceLocation: SourceLocation = #_sourceLocation) {
        let got = search(ids, limit: limit, below: cursor), want = truth(ids, limit: limit, below: cursor)
        #expect(got.ids == want.ids, sourceLocation: sourceLocation)
        #expect(got.more == want.more, sourceLocation: sourceLocation)
        #expect(got.counts <= maxCounts, "\(got.counts) counts", sourceLocation: sourceLocation)
    }

    @Test func smallRangesAreReadWholeAfterOneCount() {
        check([], maxCounts: 1)
        check(ids([Self.now - 5]), maxCounts: 1)
        check(ids((0..<50).map { Self.now - $0 * 1000 }), maxCounts: 1)
        check(ids((0..<51).map { Self.now - $0 * 1000 }), maxCounts: 1)
        check(ids((0..<200).map { Self.now - $0 * Self.day }), maxCounts: 1)
    }

    @Test func aYearOfBuildsFindsTheNewestPageInAFewCounts() {
        let year = ids((0..<20_000).map { Self.now - Int64($0) * (365 * Self.day / 20_000) })
        check(year, maxCounts: 6)
        check(year, limit: 1, maxCounts: 8)
        check(year, limit: 1000)
        // Page after page from the middle of the year, and the last ones.
        check(year, below: year[10_000])
        check(year, below: year[30])
        check(year, below: year[0])
    }

    @Test func burstsAndGapsStillGiveExactlyTheNewest() {
        // Thousands in the last minute after a quiet year, then a burst a year ago. Below the
        // recent ones, the counts narrow the old burst (5 s in a year) down by halves: many
        // steps, each a count of etcd's index, never more than `maxSteps`.
        let bursty = ids((0..<5000).map { Self.now - $0 * 10 } + (0..<5000).map { Self.now - 365 * Self.day - $0 })
        check(bursty)
        check(bursty, below: bursty[5000], maxCounts: NewestWindow.maxSteps)
        check(bursty, below: bursty[4990], maxCounts: NewestWindow.maxSteps)
        // A thousand builds in one millisecond: the window cannot be narrower, so it is read whole.
        let sameMs = ids(Array(repeating: Self.now - 7, count: 1000) + (0..<300).map { Self.now - 10_000 - $0 })
        check(sameMs, maxCounts: 48)
        // Builds from 1971 and from now only.
        check(ids([31_536_000_000, 31_536_000_001, 31_536_000_002] + (0..<300).map { Self.now - $0 }), limit: 299)
        check(ids([31_536_000_000, 31_536_000_001] + (0..<300).map { Self.now - $0 }), limit: 300)
    }

    @Test func buildsStampedAfterNowAreNewest() {
        // A scheduler whose clock is ahead: its builds sort after "now" and still come first.
        let skewed = ids((0..<300).map { Self.now - $0 * 1000 } + (1...20).map { Self.now + $0 * 3_600_000 })
        check(skewed)
        check(skewed, limit: 10)
    }

    @Test func aCursorThatIsNoTimeStillBoundsTheRange() {
        let some = ids((0..<300).map { Self.now - $0 * 1000 })
        // Valid as a cursor (letters, digits, '-') but not a build id: its time is unknown.
        check(some, below: "zzzz")
        check(some, below: "a")
        check(some, below: "b")
    }

    @Test func idsAndTimesRoundTrip() {
        let id = BuildID.generate(now: Date(timeIntervalSince1970: 1_790_000_000.123))
        #expect(NewestWindow.timeMs(of: id) == 1_790_000_000_123)
        #expect(NewestWindow.firstID(atMs: 1_790_000_000_123) < id)
        #expect(NewestWindow.firstID(atMs: 1_790_000_000_124) > id)
        #expect(NewestWindow.timeMs(of: "zzzz") == nil && NewestWindow.timeMs(of: "b00") == nil && NewestWindow.timeMs(of: "b0000000000_-x") == nil)
    }
}
