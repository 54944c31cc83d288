/// A consistent-hash ring of agents, keyed by project, so a project keeps landing on the
/// agent that holds its git mirror and Maven cache.
///
/// Pure: no I/O, no clock. Each agent gets `virtualNodes × capacity` points on the ring;
/// a lookup walks clockwise from the project's hash to the first point whose agent the
/// caller accepts (alive and below its bound), so a full agent passes its work on to the
/// next one along the ring rather than to a random one.
public struct HashRing: Sendable {
    public struct Member: Sendable, Equatable {
        public var id: String
        public var weight: Int
        public init(id: String, weight: Int) {
            self.id = id
            self.weight = max(1, weight)
        }
    }

    public let virtualNodes: Int
    private var points: [(hash: UInt64, agent: String)] = []
    public private(set) var members: [Member] = []
    private var weights: [String: Int] = [:]
    private var totalWeight = 0

    public init(members: [Member] = [], virtualNodes: Int = 64) {
        self.virtualNodes = virtualNodes
        self.members = members.sorted { $0.id < $1.id }
        for m in self.members { weights[m.id] = m.weight }
        totalWeight = self.members.reduce(0) { $0 + $1.weight }
        rebuild()
    }

    private mutating func rebuild() {
        var pts: [(hash: UInt64, agent: String)] = []
        pts.reserveCapacity(members.reduce(0) { $0 + $1.weight * virtualNodes })
        for m in members {
            for v in 0..<(m.weight * virtualNodes) {
                pts.append((HashRing.hash("\(m.id)#\(v)"), m.id))
            }
        }
        pts.sort { $0.hash != $1.hash ? $0.hash < $1.hash : $0.agent < $1.agent }
        points = pts
    }

    /// The agents in the order a lookup for `key` visits them, each once.
    public func preference(for key: String) -> [String] {
        guard !points.isEmpty else { return [] }
        var seen = Set<String>()
        var order: [String] = []
        var i = firstPoint(atOrAfter: HashRing.hash(key))
        for _ in 0..<points.count {
            let a = points[i % points.count].agent
            if seen.insert(a).inserted {
                order.append(a)
                if order.count == members.count { break }
            }
            i += 1
        }
        return order
    }

    /// The first agent along the ring from `key` that `accept` takes, or nil. Walks only as
    /// far as it must (one binary search, then the points up to the first accepted agent).
    public func pick(_ key: String, accept: (String) -> Bool = { _ in true }) -> String? {
        guard !points.isEmpty else { return nil }
        var i = firstPoint(atOrAfter: HashRing.hash(key))
        var rejected: Set<String> = []
        for _ in 0..<points.count {
            let a = points[i].agent
            if !rejected.contains(a) {
                if accept(a) { return a }
                rejected.insert(a)
                if rejected.count == members.count { return nil }
            }
            i += 1
            if i == points.count { i = 0 }
        }
        return nil
    }

    private func firstPoint(atOrAfter h: UInt64) -> Int {
        var lo = 0, hi = points.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if points[mid].hash < h { lo = mid + 1 } else { hi = mid }
        }
        return lo == points.count ? 0 : lo
    }

    /// The agent a project belongs to when every agent has room: its home.
    public func home(of key: String) -> String? { pick(key) }

    /// FNV-1a over the UTF-8 bytes, then the splitmix64 finaliser to spread nearby keys.
    public static func hash(_ s: String) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in s.utf8 {
            h ^= UInt64(b)
            h = h &* 0x0000_0100_0000_01b3
        }
        h ^= h >> 30
        h = h &* 0xbf58_476d_1ce4_e5b9
        h ^= h >> 27
        h = h &* 0x94d0_49bb_1331_11eb
        h ^= h >> 31
        return h
    }

    /// The agent for `key` under bounded loads (Mirrokni, Thorup, Zadimoghaddam, "Consistent
    /// Hashing with Bounded Loads"), preferring agents where the key is `warm`. An agent has
    /// room when `eligible` accepts it and its load is below its declared capacity and below
    /// its bound `ceil(c × (running + 1) × weight / total weight)`. `running` counts the builds
    /// running on every agent of the ring, so the bound grows with the farm's load, and an
    /// agent never holds more than `c` times its share. Pass `running` when the caller keeps
    /// the total, to spare a sum over the members.
    ///
    /// Walking the ring from the key's hash, over the agents `eligible` accepts:
    /// 1. the first one, the key's home, if it has room;
    /// 2. else the first one in `warm` (it holds the project's mirror and caches) with room;
    /// 3. else the first one with room, warm or not (with `warm` empty, the plain rule).
    /// Nil when no agent has room. Rule 3's agent is the same for the key until loads change,
    /// so a project that overflows its home tends to warm the same next agent, not a random one.
    public func pick(_ key: String, loads: [String: Int], c: Double, running: Int? = nil, warm: Set<String> = [],
                     eligible: (String) -> Bool = { _ in true }) -> String? {
        guard totalWeight > 0 else { return nil }
        let m = running ?? members.reduce(0) { $0 + loads[$1.id, default: 0] }
        let perWeight = c * Double(m + 1) / Double(totalWeight)
        let hasRoom = { (agent: String) -> Bool in
            guard let w = weights[agent] else { return false }
            let bound = min(w, max(1, Int((perWeight * Double(w)).rounded(.up))))
            return loads[agent, default: 0] < bound
        }
        if warm.isEmpty {
            return pick(key) { eligible($0) && hasRoom($0) }
        }
        var sawHome = false
        var chosen: String?
        var firstWithRoom: String?
        var fullWarm = 0
        _ = pick(key) { agent in
            guard eligible(agent) else { return false }
            let room = hasRoom(agent)
            if !sawHome {
                sawHome = true
                if room {
                    chosen = agent  // 1
                    return true
                }
            }
            if room && firstWithRoom == nil { firstWithRoom = agent }
            if warm.contains(agent) {
                if room {
                    chosen = agent  // 2
                    return true
                }
                fullWarm += 1
            }
            // Every warm agent is full and rule 3's agent is known: the rest need no visit.
            return fullWarm == warm.count && firstWithRoom != nil
        }
        return chosen ?? firstWithRoom  // 3
    }

    /// Each member's bound for the next placement: `min(capacity, ceil(c × (m + 1) × w / W))`
    /// where `m` is the builds running on the ring and `w`/`W` the member's and total weight
    /// (the weight is the agent's capacity).
    public func bounds(loads: [String: Int], c: Double) -> [String: Int] {
        let totalWeight = members.reduce(0) { $0 + $1.weight }
        guard totalWeight > 0 else { return [:] }
        let running = members.reduce(0) { $0 + loads[$1.id, default: 0] }
        var result: [String: Int] = [:]
        for m in members {
            let share = c * Double(running + 1) * Double(m.weight) / Double(totalWeight)
            result[m.id] = min(m.weight, max(1, Int(share.rounded(.up))))
        }
        return result
    }
}
