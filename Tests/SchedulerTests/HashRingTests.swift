import Foundation
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

@Suite("Hash ring with bounded loads")
struct BoundedLoadTests {
    /// Places builds one by one (none finishing), as a busy farm sees them.
    func place(_ projects: [String], on ring: HashRing, c: Double) -> [String: Int] {
        var loads: [String: Int] = [:]
        for p in projects {
            guard let a = ring.pick(p, loads: loads, c: c) else { continue }
            loads[a, default: 0] += 1
        }
        return loads
    }

    @Test func noAgentExceedsCTimesTheAverageEvenForOneHotProject() {
        let ring = HashRing(members: (1...10).map { .init(id: "agent-\($0)", weight: 100) })
        // One project asks for 500 builds at once: without bounds all would land on its home.
        let loads = place(Array(repeating: "hot", count: 500), on: ring, c: 1.25)
        let total = loads.values.reduce(0, +)
        #expect(total == 500)
        let bound = Int((1.25 * Double(total) / 10).rounded(.up))
        #expect(loads.values.max()! <= bound, "\(loads)")
        // Past the bound the builds walk on: as few agents as the bound allows, and no fewer.
        #expect(loads.count >= Int((Double(total) / Double(bound)).rounded(.up)))
    }

    @Test func aZipfPopularityStaysWithinTheBound() {
        let ring = HashRing(members: (1...20).map { .init(id: "agent-\($0)", weight: 50) })
        // Zipf(1.1) over 200 projects, drawn deterministically.
        let weights = (1...200).map { 1.0 / pow(Double($0), 1.1) }
        let total = weights.reduce(0, +)
        var generator = SplitMix(seed: 42)
        var builds: [String] = []
        for _ in 0..<800 {
            var x = Double(generator.next() % 1_000_000) / 1_000_000 * total
            var i = 0
            while i < weights.count - 1 && x > weights[i] { x -= weights[i]; i += 1 }
            builds.append("project-\(i)")
        }
        let loads = place(builds, on: ring, c: 1.25)
        let avg = Double(loads.values.reduce(0, +)) / 20
        #expect(Double(loads.values.max()!) <= (1.25 * avg).rounded(.up) + 1, "max \(loads.values.max()!) avg \(avg)")
    }

    @Test func aProjectStaysHomeWhileItsHomeIsWithinTheBound() {
        let ring = HashRing(members: (1...5).map { .init(id: "agent-\($0)", weight: 4) })
        let home = ring.home(of: "demo")!
        // A quiet farm: the project goes home.
        #expect(ring.pick("demo", loads: [:], c: 1.25) == home)
        // Others busy, home has room under the bound: still home.
        let busy = Dictionary(uniqueKeysWithValues: ring.members.map { ($0.id, $0.id == home ? 1 : 2) })
        #expect(ring.pick("demo", loads: busy, c: 1.25) == home)
        // Home at its capacity: the next agent along the ring.
        var full = busy
        full[home] = 4
        #expect(ring.pick("demo", loads: full, c: 1.25) == ring.preference(for: "demo").first { full[$0, default: 0] < 4 && $0 != home })
    }

    @Test func aFullHomePassesItsBuildToAWarmAgentBeforeACold() {
        let ring = HashRing(members: (1...6).map { .init(id: "agent-\($0)", weight: 4) })
        let order = ring.preference(for: "demo")
        let home = order[0]
        // Loads where the home is at capacity and everyone else has room.
        var loads = Dictionary(uniqueKeysWithValues: ring.members.map { ($0.id, 1) })
        loads[home] = 4
        let farWarm = order[4]
        // Without warm agents: the next along the ring (the plain rule).
        #expect(ring.pick("demo", loads: loads, c: 1.25) == order[1])
        #expect(ring.pick("demo", loads: loads, c: 1.25, warm: []) == order[1])
        // A warm agent further along is taken before the cold ones in between.
        #expect(ring.pick("demo", loads: loads, c: 1.25, warm: [farWarm]) == farWarm)
        // Two warm ones: the first along the ring.
        #expect(ring.pick("demo", loads: loads, c: 1.25, warm: [order[5], order[3]]) == order[3])
        // The home with room wins over a warm agent, warm or not itself.
        var homeFree = loads
        homeFree[home] = 0
        #expect(ring.pick("demo", loads: homeFree, c: 1.25, warm: [farWarm]) == home)
        #expect(ring.pick("demo", loads: homeFree, c: 1.25, warm: [home, farWarm]) == home)
        // A warm agent at its capacity is passed over for the next warm one with room.
        var warmFull = loads
        warmFull[order[3]] = 4
        #expect(ring.pick("demo", loads: warmFull, c: 1.25, warm: [order[3], farWarm]) == farWarm)
        // Every warm agent full (the home among them): the first with room along the ring, cold.
        #expect(ring.pick("demo", loads: warmFull, c: 1.25, warm: [home, order[3]]) == order[1])
        // A warm agent the caller does not accept (labels, refusing) is skipped like a full one.
        #expect(ring.pick("demo", loads: loads, c: 1.25, warm: [farWarm], eligible: { $0 != farWarm }) == order[1])
        // A warm agent that is not on the ring changes nothing.
        #expect(ring.pick("demo", loads: loads, c: 1.25, warm: ["gone"]) == order[1])
        // Nobody with room: nil, warm or not.
        let allFull = Dictionary(uniqueKeysWithValues: ring.members.map { ($0.id, 4) })
        #expect(ring.pick("demo", loads: allFull, c: 1.25, warm: [farWarm]) == nil)
    }

    @Test func theHomeIsTheFirstEligibleAgentAndItsBoundCounts() {
        let ring = HashRing(members: (1...4).map { .init(id: "agent-\($0)", weight: 4) })
        let order = ring.preference(for: "demo")
        // The first eligible agent stands in for the home the caller does not accept: with
        // room, it takes the build even though another is warm.
        #expect(ring.pick("demo", loads: [:], c: 1.25, warm: [order[3]], eligible: { $0 != order[0] }) == order[1])
        // At its bound (not its capacity): ceil(1.25 × (4 + 1) × 4 / 16) = 2 builds. The build
        // goes to the warm agent, not the next one.
        let loads = [order[1]: 2, order[0]: 2]
        #expect(ring.pick("demo", loads: loads, c: 1.25, warm: [order[3]], eligible: { $0 != order[0] }) == order[3])
    }

    @Test func capacityIsAHardLimitAndEligibilityFilters() {
        let ring = HashRing(members: [.init(id: "small", weight: 1), .init(id: "big", weight: 3)])
        #expect(ring.pick("x", loads: ["small": 1, "big": 3], c: 10) == nil)
        #expect(ring.pick("x", loads: [:], c: 1.25, eligible: { $0 == "small" }) == "small")
        #expect(ring.pick("x", loads: [:], c: 1.25, eligible: { _ in false }) == nil)
        let b = ring.bounds(loads: ["small": 0, "big": 2], c: 1.25)
        #expect(b["small"] == 1)  // min(capacity 1, ceil(1.25 × 3 × 1/4) = 1)
        #expect(b["big"] == 3)    // min(capacity 3, ceil(1.25 × 3 × 3/4) = 3)
    }
}

/// A small deterministic generator for tests (splitmix64).
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
