import ArgumentParser
import Foundation
import KilnCore
import Scheduler

extension KilnBench {
    struct Ring: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "The hash ring: movement on join and leave, balance under Zipf(1.1), lookup time.",
            discussion: """
            Pure computation, no I/O. Figures, each against its target (issue 3):
              movement   share of projects that move when one agent joins or leaves, against the
                         ideal 1/n (target ≤ 1.1 × ideal), and whether any project moved that was
                         not on the changed agent (target: none)
              balance    max / average running builds when builds arrive with Zipf(1.1) project
                         popularity and none finish, with and without bounded loads (target ≤ 1.25)
              lookup     time of one placement at 10, 100 and 1,000 agents (target < 2 µs at 1,000)

            Example: swift build -c release --package-path Benchmarks && Benchmarks/.build/release/kiln-bench ring
            """)

        @Option(help: "Projects.") var projects: Int = 10_000
        @Option(help: "Builds placed for the balance figure.") var builds: Int = 2_000
        @Option(help: "Agents for the movement and balance figures.") var agents: Int = 20
        @Option(help: "Bounded-load factor c.") var c: Double = 1.25
        @Option(help: "Lookups timed per ring size.") var lookups: Int = 200_000

        func run() async throws {
            let names = (0..<projects).map { "project-\($0)" }
            print("kiln-bench ring: \(projects) projects, \(agents) agents of capacity 4, c = \(c)\n")

            // Movement.
            let members = (1...agents).map { HashRing.Member(id: "agent-\($0)", weight: 4) }
            let before = HashRing(members: members)
            let joined = HashRing(members: members + [.init(id: "agent-new", weight: 4)])
            let left = HashRing(members: Array(members.dropLast()))
            var movedJoin = 0, strayJoin = 0, movedLeave = 0, strayLeave = 0
            for p in names {
                let a = before.pick(p)!
                let j = joined.pick(p)!
                if a != j { movedJoin += 1; if j != "agent-new" { strayJoin += 1 } }
                let l = left.pick(p)!
                if a != l { movedLeave += 1; if a != members.last!.id { strayLeave += 1 } }
            }
            let idealJoin = 1.0 / Double(agents + 1), idealLeave = 1.0 / Double(agents)
            let shareJoin = Double(movedJoin) / Double(projects), shareLeave = Double(movedLeave) / Double(projects)
            print("movement (target ≤ 1.10 × ideal, no stray moves)")
            print(String(format: "  join:  %.4f of projects moved, ideal %.4f, ratio %.3f, moved between old agents: %d", shareJoin, idealJoin, shareJoin / idealJoin, strayJoin))
            print(String(format: "  leave: %.4f of projects moved, ideal %.4f, ratio %.3f, moved off other agents: %d", shareLeave, idealLeave, shareLeave / idealLeave, strayLeave))

            // Balance under Zipf(1.1).
            let zipf = (1...projects).map { 1.0 / pow(Double($0), 1.1) }
            let total = zipf.reduce(0, +)
            var cumulative: [Double] = []
            var sum = 0.0
            for w in zipf { sum += w; cumulative.append(sum / total) }
            var rng = SystemRandomNumberGenerator()
            let arrivals = (0..<builds).map { _ -> String in
                let x = Double.random(in: 0..<1, using: &rng)
                var lo = 0, hi = cumulative.count - 1
                while lo < hi { let mid = (lo + hi) / 2; if cumulative[mid] < x { lo = mid + 1 } else { hi = mid } }
                return names[lo]
            }
            // Capacity large enough that only the bound limits placement.
            let wide = HashRing(members: (1...agents).map { .init(id: "agent-\($0)", weight: 1_000) })
            var bounded: [String: Int] = [:], plain: [String: Int] = [:]
            var running = 0
            for p in arrivals {
                if let a = wide.pick(p, loads: bounded, c: c, running: running) { bounded[a, default: 0] += 1; running += 1 }
                plain[wide.pick(p)!, default: 0] += 1
            }
            let avg = Double(builds) / Double(agents)
            print("\nbalance under Zipf(1.1), \(builds) builds running on \(agents) agents (target max/avg ≤ \(c))")
            print(String(format: "  with bounded loads:    max %d, average %.1f, max/avg %.3f", bounded.values.max() ?? 0, avg, Double(bounded.values.max() ?? 0) / avg))
            print(String(format: "  plain consistent hash: max %d, average %.1f, max/avg %.3f", plain.values.max() ?? 0, avg, Double(plain.values.max() ?? 0) / avg))

            // Lookup time.
            print("\nlookup time (target < 2 µs at 1,000 agents)")
            for n in [10, 100, 1_000] {
                let ring = HashRing(members: (1...n).map { .init(id: "agent-\($0)", weight: 4) })
                var loads: [String: Int] = [:]
                for (i, m) in ring.members.enumerated() { loads[m.id] = i % 4 }
                let running = loads.values.reduce(0, +)
                let keys = (0..<lookups).map { names[$0 % names.count] }
                var sink = 0
                let clock = ContinuousClock()
                let plainTime = clock.measure { for k in keys { sink &+= ring.pick(k)!.utf8.count } }
                let boundedTime = clock.measure { for k in keys { sink &+= ring.pick(k, loads: loads, c: c, running: running)?.utf8.count ?? 0 } }
                func ns(_ d: Duration) -> Double { d.inSeconds * 1e9 / Double(lookups) }
                print(String(format: "  %5d agents: %.0f ns a lookup (plain), %.0f ns (bounded, agents a quarter to three quarters full)", n, ns(plainTime), ns(boundedTime)))
                if sink == 42 { print("") }
            }
        }
    }
}
