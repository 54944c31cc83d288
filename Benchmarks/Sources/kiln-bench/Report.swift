import Foundation
import Synchronization

/// Measurements in milliseconds, with nearest-rank percentiles.
struct Samples: Sendable {
    private(set) var values: [Double] = []
    private var sorted: [Double] { values.sorted() }

    init(_ values: [Double] = []) { self.values = values }

    mutating func add(_ ms: Double) { values.append(ms) }

    var count: Int { values.count }
    var isEmpty: Bool { values.isEmpty }

    /// The nearest-rank percentile: the smallest value with at least `p` % of the samples at
    /// or below it.
    func percentile(_ p: Double) -> Double {
        let s = sorted
        guard !s.isEmpty else { return .nan }
        let rank = Swift.max(1, Int((p / 100 * Double(s.count)).rounded(.up)))
        return s[Swift.min(rank, s.count) - 1]
    }

    var p50: Double { percentile(50) }
    var p99: Double { percentile(99) }
    var max: Double { values.max() ?? .nan }
    var mean: Double { values.isEmpty ? .nan : values.reduce(0, +) / Double(values.count) }

    /// "p50 1.2 ms, p99 3.4 ms, max 5.6 ms (n = 500)"
    var summary: String {
        "p50 \(Fmt.ms(p50)), p99 \(Fmt.ms(p99)), max \(Fmt.ms(max)) (n = \(count))"
    }
}

enum Fmt {
    static func ms(_ v: Double) -> String {
        if v.isNaN { return "-" }
        if abs(v) >= 100 { return String(format: "%.0f ms", v) }
        if abs(v) >= 10 { return String(format: "%.1f ms", v) }
        return String(format: "%.2f ms", v)
    }
    static func s(_ v: Double) -> String { v.isNaN ? "-" : String(format: "%.2f s", v) }
    static func pct(_ v: Double) -> String { v.isNaN ? "-" : String(format: "%.1f %%", v * 100) }
    static func rate(_ v: Double) -> String { v.isNaN ? "-" : String(format: "%.0f /s", v) }
}

/// One figure of a phase, with its target (if it has one).
struct Figure: Sendable {
    let name: String
    let measured: String
    let target: String
    /// nil: a figure for context, with no target.
    let met: Bool?

    init(_ name: String, _ measured: String, target: String = "", met: Bool? = nil) {
        self.name = name
        self.measured = measured
        self.target = target
        self.met = met
    }

    var line: String {
        let verdict = met.map { $0 ? "  [target met]" : "  [TARGET MISSED]" } ?? ""
        return "  \(name): \(measured)\(target.isEmpty ? "" : "   (target \(target))")\(verdict)"
    }
}

/// What one phase measured, printed at its end and written to the result file.
struct PhaseReport: Sendable {
    let title: String
    var setup: [String] = []
    var figures: [Figure] = []
    var notes: [String] = []

    init(_ title: String) { self.title = title }

    func printed() -> String {
        ([" ", "== \(title): results"] + figures.map(\.line) + notes.map { "  note: \($0)" }).joined(separator: "\n")
    }

    var markdown: String {
        var lines = ["## \(title)", ""]
        lines += setup.map { "- \($0)" }
        lines += ["", "| figure | measured | target | |", "|---|---:|---|---|"]
        for f in figures {
            let verdict = f.met.map { $0 ? "met" : "**missed**" } ?? ""
            lines.append("| \(f.name) | \(f.measured) | \(f.target) | \(verdict) |")
        }
        if !notes.isEmpty {
            lines.append("")
            lines += notes.map { "- \($0)" }
        }
        lines.append("")
        return lines.joined(separator: "\n")
    }
}

/// Prints a line at once (standard output may be a file or a pipe).
func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

/// Zipf(s) over ranks 0..<n: rank k is drawn with probability ∝ 1 / (k + 1)^s.
struct ZipfSampler: Sendable {
    private let cumulative: [Double]

    init(n: Int, s: Double) {
        var sum = 0.0
        var c: [Double] = []
        c.reserveCapacity(n)
        for k in 1...n {
            sum += 1 / pow(Double(k), s)
            c.append(sum)
        }
        cumulative = c.map { $0 / sum }
    }

    /// The probability of rank `k`.
    func share(_ k: Int) -> Double { k == 0 ? cumulative[0] : cumulative[k] - cumulative[k - 1] }

    func draw() -> Int {
        let x = Double.random(in: 0..<1)
        var lo = 0, hi = cumulative.count - 1
        while lo < hi {
            let mid = (lo + hi) / 2
            if cumulative[mid] < x { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }
}

/// Prints a progress line every `every` while `body` runs.
func withProgress<T: Sendable>(every: Duration = .seconds(5), _ line: @escaping @Sendable () async -> String,
                               _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await whileRunning({
        while true {
            try await Task.sleep(for: every)
            say("  … \(await line())")
        }
    }, body)
}

