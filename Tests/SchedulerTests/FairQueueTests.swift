import Foundation
import Scheduler
import Testing

@Suite("Fair queueing")
struct FairQueueTests {
    func item(_ b: String, _ p: String, _ t: Double, priority: Int = 0) -> FairQueue.Item {
        .init(build: b, project: p, priority: priority, queuedAt: Date(timeIntervalSince1970: t))
    }

    @Test func aBusyProjectDoesNotStarveAnotherOne() {
        var items = (0..<100).map { item("a\($0)", "big", Double($0)) }
        items.append(item("b0", "small", 500))
        let order = FairQueue.order(items).map(\.build)
        // small's only build comes right after big's first, not after all hundred.
        #expect(order.prefix(2) == ["a0", "b0"])
        #expect(order.count == 101)
        #expect(Array(order.dropFirst(2)) == (1..<100).map { "a\($0)" })
    }

    @Test func projectsTakeTurnsAndKeepTheirOwnOrder() {
        let items = [item("a1", "a", 1), item("a2", "a", 2), item("a3", "a", 3),
                     item("b1", "b", 4), item("b2", "b", 5), item("c1", "c", 0)]
        #expect(FairQueue.order(items.shuffled()).map(\.build) == ["c1", "a1", "b1", "a2", "b2", "a3"])
    }

    @Test func priorityGoesBeforeAge() {
        let items = [item("old", "a", 1), item("urgent", "b", 100, priority: 10), item("newer", "a", 2), item("low", "c", 0, priority: -1)]
        #expect(FairQueue.order(items).map(\.build) == ["urgent", "old", "newer", "low"])
    }

    @Test func theProjectServedLongestAgoGoesFirst() {
        let items = [item("a2", "a", 2), item("a3", "a", 3), item("b1", "b", 10)]
        // a was just served: b's build goes before a's older one.
        let served = ["a": 7]  // the turn in which a was last served
        #expect(FairQueue.order(items, lastServed: served).map(\.build) == ["b1", "a2", "a3"])
        #expect(FairQueue.order(items).map(\.build) == ["a2", "b1", "a3"])
    }

    @Test func emptyAndSingle() {
        #expect(FairQueue.order([]).isEmpty)
        #expect(FairQueue.order([item("x", "p", 0)]).map(\.build) == ["x"])
    }
}
