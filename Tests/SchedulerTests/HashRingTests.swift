import Scheduler
import Testing

@Suite("Hash ring")
struct HashRingTests {
    let projects = (0..<2000).map { "project-\($0)" }

    func ring(_ ids: [String], weight: Int = 1) -> HashRing {
        HashRing(members: ids.map { .init(id: $0, weight: weight) })
    }

    @Test func sameProjectSameAgent() {
        let r = ring(["a", "b", "c"])
        for p in projects.prefix(100) {
            #expect(r.pick(p) == r.pick(p))
        }
        // Member order does not matter.
        let r2 = ring(["c", "a", "b"])
        #expect(projects.allSatisfy { r.pick($0) == r2.pick($0) })
    }

    @Test func everyAgentGetsAShare() {
        let ids = (1...5).map { "agent-\($0)" }
        let r = ring(ids)
        var counts: [String: Int] = [:]
        for p in projects { counts[r.pick(p)!, default: 0] += 1 }
        #expect(counts.count == 5)
        let avg = Double(projects.count) / 5
        for (_, c) in counts { #expect(Double(c) > avg * 0.6 && Double(c) < avg * 1.4, "\(counts)") }
    }

    @Test func joiningAgentTakesOnlyFromOthersAndAboutOneNth() {
        let before = ring(["a", "b", "c", "d"])
        let after = ring(["a", "b", "c", "d", "e"])
        var moved = 0
        for p in projects where before.pick(p) != after.pick(p) {
            moved += 1
            #expect(after.pick(p) == "e", "\(p) moved between old agents")
        }
        let share = Double(moved) / Double(projects.count)
        #expect(share > 0.1 && share < 0.3, "moved \(share)")
    }

    @Test func leavingAgentGivesUpOnlyItsOwn() {
        let before = ring(["a", "b", "c", "d"])
        let after = ring(["a", "b", "d"])
        for p in projects where before.pick(p) != "c" {
            #expect(before.pick(p) == after.pick(p))
        }
    }

    @Test func fullAgentPassesWorkAlongTheRing() {
        let r = ring(["a", "b", "c"])
        let p = projects[0]
        let order = r.preference(for: p)
        #expect(Set(order) == ["a", "b", "c"])
        #expect(r.pick(p, accept: { $0 != order[0] }) == order[1])
        #expect(r.pick(p, accept: { _ in false }) == nil)
        #expect(HashRing().pick(p) == nil)
    }

    @Test func capacityWeighsTheShare() {
        let r = HashRing(members: [.init(id: "big", weight: 3), .init(id: "small", weight: 1)])
        let big = projects.filter { r.pick($0) == "big" }.count
        let share = Double(big) / Double(projects.count)
        #expect(share > 0.65 && share < 0.85, "big got \(share)")
    }
}
