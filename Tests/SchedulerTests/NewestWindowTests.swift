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

    /// Runs the search over `ids` (sorted) as etcd would answer it: what it returns, and how many reads it made.
    func search(_ ids: [String], limit: Int, below cursor: String? = nil, hints: NewestWindow.Hints? = nil) -> (ids: [String], more: Bool, reads: Int) {
        let upper = cursor ?? "c"
        var w = NewestWindow(limit: limit, upperMs: cursor.flatMap(NewestWindow.timeMs) ?? Self.now, hintMs: hints?.span(for: "r"))
        func window(_ from: Int64?) -> [String] { ids.filter { $0 >= NewestWindow.firstID(atMs: from ?? 0) && $0 < upper } }
        var step = w.start(), reads = 0
        while true {
            switch step {
            case .probe(let from):
                reads += 1
                let all = window(from), read = Array(all.prefix(w.maxFetch))
                step = w.probed(count: Int64(all.count), firstMs: read.first.flatMap(NewestWindow.timeMs))
                if case .done(let f) = step {
                    #expect(f == from && read.count == all.count)
                    hints?.remember(w.landedSpanMs, for: "r")
                    return (read.suffix(limit).reversed(), w.more(count: all.count, window: from), reads)
                }
            case .done:
                Issue.record("done without a probe")
                return ([], false, reads)
            case .fetchAll(let from):
                reads += 1
                let all = window(from)
                return (all.suffix(limit).reversed(), w.more(count: all.count, window: from), reads)
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

    func check(_ ids: [String], limit: Int = 50, below cursor: String? = nil, maxReads: Int = 24, hints: NewestWindow.Hints? = nil,
               sourceLocation: SourceLocation = #_sourceLocation) {
        let got = search(ids, limit: limit, below: cursor, hints: hints), want = truth(ids, limit: limit, below: cursor)
        #expect(got.ids == want.ids, sourceLocation: sourceLocation)
        #expect(got.more == want.more, sourceLocation: sourceLocation)
        #expect(got.reads <= maxReads, "\(got.reads) reads", sourceLocation: sourceLocation)
    }

    @Test func smallRangesAreReadWholeAtOnce() {
        check([], maxReads: 1)
        check(ids([Self.now - 5]), maxReads: 1)
        check(ids((0..<50).map { Self.now - $0 * 1000 }), maxReads: 1)
        check(ids((0..<51).map { Self.now - $0 * 1000 }), maxReads: 1)
        check(ids((0..<200).map { Self.now - $0 * Self.day }), maxReads: 1)
    }

    @Test func aYearOfBuildsFindsTheNewestPageInTwoReads() {
        // Spread about evenly: the whole range's count and oldest key make the next window land.
        let year = ids((0..<20_000).map { Self.now - Int64($0) * (365 * Self.day / 20_000) })
        check(year, maxReads: 2)
        check(year, limit: 1, maxReads: 2)
        check(year, limit: 1000, maxReads: 2)
        check(year, below: year[19_000], maxReads: 2)
        // Page after page from the middle of the year, and the last ones.
        check(year, below: year[10_000])
        check(year, below: year[30])
        check(year, below: year[0])
    }

    @Test func theLastWindowThatLandedIsTriedFirst() {
        let year = ids((0..<20_000).map { Self.now - Int64($0) * (365 * Self.day / 20_000) })
        let hints = NewestWindow.Hints()
        check(year, maxReads: 2, hints: hints)
        // The newest page again, and page after page: one read each.
        check(year, maxReads: 1, hints: hints)
        for i in stride(from: 19_900, to: 0, by: -2500) { check(year, below: year[i], maxReads: 1, hints: hints) }
        // A hint of far too few (the range is small now): the whole range next, read at once.
        check(ids((0..<30).map { Self.now - $0 * Self.day * 30 }), maxReads: 2, hints: hints)
        // A hint of far too many (a burst since): narrowed from there.
        let burst = ids((0..<100_000).map { Self.now - $0 })
        check(burst, maxReads: 4, hints: hints)
        check(burst, maxReads: 1, hints: hints)
    }

    @Test func burstsAndGapsStillGiveExactlyTheNewest() {
        // Thousands in the last minute after a quiet year, then a burst a year ago. Below the
        // recent ones, the probes narrow the old burst (5 s in a year) down by halves: many
        // reads of at most `maxFetch` keys, never more than `maxSteps`.
        let bursty = ids((0..<5000).map { Self.now - $0 * 10 } + (0..<5000).map { Self.now - 365 * Self.day - $0 })
        check(bursty)
        check(bursty, below: bursty[5000], maxReads: NewestWindow.maxSteps)
        check(bursty, below: bursty[4990], maxReads: NewestWindow.maxSteps)
        // A thousand builds in one millisecond: the window cannot be narrower, so it is read whole.
        let sameMs = ids(Array(repeating: Self.now - 7, count: 1000) + (0..<300).map { Self.now - 10_000 - $0 })
        check(sameMs, maxReads: 48)
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
