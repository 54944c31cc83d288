import Foundation

/// Memory, CPU and process limits of a build's containers (compile and image steps).
///
/// An agent has limits of its own (`kiln agent --build-memory/--build-cpus/--build-pids`); a
/// project may ask for less (`Project.limits`), never more: `capped(by:)` takes the lower of
/// each. Nil means "no limit of this kind" for an agent and "the agent's" for a project.
public struct BuildLimits: Codable, Sendable, Equatable {
    public var memoryBytes: Int64?
    /// CPUs the build may keep busy (1.5 = one and a half).
    public var cpus: Double?
    /// Processes and threads at once in one container; stops a fork bomb.
    public var pids: Int?

    public init(memoryBytes: Int64? = nil, cpus: Double? = nil, pids: Int? = nil) {
        self.memoryBytes = memoryBytes
        self.cpus = cpus
        self.pids = pids
    }

    public static let memoryRange: ClosedRange<Int64> = (64 << 20)...(1 << 40)
    public static let cpuRange: ClosedRange<Double> = 0.1...1024
    public static let pidsRange: ClosedRange<Int> = 32...4_194_304

    /// An agent's defaults: 4 GiB, 2 CPUs, 4096 processes (a Maven build with forked tests
    /// stays far below; a fork bomb reaches it in well under a second).
    public static let agentDefault = BuildLimits(memoryBytes: 4 << 30, cpus: 2, pids: 4096)

    /// The limits a build runs with: each field the lower of the two; a field the project
    /// leaves out (or asks more of) is the agent's.
    public func capped(by agent: BuildLimits) -> BuildLimits {
        func lower<T: Comparable>(_ mine: T?, _ theirs: T?) -> T? {
            guard let mine else { return theirs }
            guard let theirs else { return mine }
            return Swift.min(mine, theirs)
        }
        return BuildLimits(memoryBytes: lower(memoryBytes, agent.memoryBytes), cpus: lower(cpus, agent.cpus), pids: lower(pids, agent.pids))
    }

    /// Throws `KilnError.invalid` naming the first field out of range.
    public func validate(field: String) throws {
        if let m = memoryBytes, !BuildLimits.memoryRange.contains(m) {
            throw KilnError.invalid("\(field).memoryBytes \(m) is out of range: give 67108864 (64 MiB) to 1099511627776 (1 TiB), or leave it out")
        }
        if let c = cpus, !(c.isFinite && BuildLimits.cpuRange.contains(c)) {
            throw KilnError.invalid("\(field).cpus \(c) is out of range: give 0.1 to 1024 CPUs (1.5 is one and a half), or leave it out")
        }
        if let p = pids, !BuildLimits.pidsRange.contains(p) {
            throw KilnError.invalid("\(field).pids \(p) is out of range: give 32 to 4194304 processes, or leave it out")
        }
    }

    /// "4g", "512m", "1.5g", "65536k" or a number of bytes; nil for anything else.
    public static func parseBytes(_ text: String) -> Int64? {
        let t = text.trimmingCharacters(in: .whitespaces).lowercased()
        let units: [(String, Double)] = [("gib", 1_073_741_824), ("mib", 1_048_576), ("kib", 1024), ("g", 1_073_741_824), ("m", 1_048_576), ("k", 1024), ("b", 1)]
        var number = Substring(t), scale = 1.0
        for (suffix, factor) in units where t.hasSuffix(suffix) {
            number = t.dropLast(suffix.count)
            scale = factor
            break
        }
        guard !number.isEmpty, number.allSatisfy({ $0.isNumber || $0 == "." }), let value = Double(number), value.isFinite, value > 0 else { return nil }
        let bytes = (value * scale).rounded()
        guard bytes < 9.2e18 else { return nil }
        return Int64(bytes)
    }

    public var description: String {
        let memory = memoryBytes.map { $0 % (1 << 30) == 0 ? "\($0 >> 30) GiB" : "\($0 >> 20) MiB" } ?? "no limit"
        let cpu = cpus.map { "\($0)" } ?? "no limit"
        return "memory \(memory), CPUs \(cpu), processes \(pids.map(String.init) ?? "no limit")"
    }
}
