import Foundation
import KilnCore

/// What the CLI prints of builds and agents.
enum Show {
    static func seconds(_ ms: Int?) -> String {
        guard let ms else { return "-" }
        return String(format: "%.2fs", Double(ms) / 1000)
    }

    static func steps(_ b: Build) -> String {
        let steps = b.steps.map { "\($0.name.rawValue) \($0.status == .succeeded ? seconds($0.durationMs) : $0.status.rawValue)" }.joined(separator: "  ")
        return b.reusedFrom.map { steps + "  (reused \($0))" } ?? steps
    }

    static func summary(_ b: Build) -> String {
        var lines = ["build \(b.id)  \(b.project)  \(b.status.rawValue.uppercased())"]
        lines.append("  ref \(b.ref)  commit \(b.commit.map { String($0.prefix(12)) } ?? "-")  tag \(b.tag ?? "-")  mvncache \(b.mvncache ? "on" : "off")  agent \(b.agent ?? "-")  attempt \(b.attempt)")
        for s in b.steps {
            lines.append("  \(s.name.rawValue.padding(toLength: 8, withPad: " ", startingAt: 0)) \(s.status.rawValue.padding(toLength: 10, withPad: " ", startingAt: 0)) \(seconds(s.durationMs))\(s.error.map { "  \($0)" } ?? "")\(s.note.map { "  \($0)" } ?? "")")
        }
        if let from = b.reusedFrom { lines.append("  reused   the image of build \(from) (same inputs; nothing compiled)") }
        if let d = b.durationMs { lines.append("  total    \(seconds(d))") }
        if let image = b.image { lines.append("  image    \(image)") }
        if let digest = b.digest { lines.append("  digest   \(digest)") }
        if let e = b.error, b.status != .succeeded { lines.append("  error    \(e)") }
        if let run = b.deploy { lines += pipeline(run) }
        return lines.joined(separator: "\n")
    }

    /// A pipeline run's lines for a build's summary.
    static func pipeline(_ run: PipelineRun) -> [String] {
        var lines = ["  pipeline run \(run.run) (\(run.trigger))  \(run.status.rawValue.uppercased())\(run.durationMs.map { "  \(seconds($0))" } ?? "")"]
        for s in run.steps {
            let what = s.error ?? s.summary
            lines.append("    \(s.plugin.padding(toLength: 8, withPad: " ", startingAt: 0)) \(s.status.rawValue.padding(toLength: 10, withPad: " ", startingAt: 0)) \(seconds(s.durationMs))\(what.map { "  \($0)" } ?? "")")
        }
        return lines
    }

    static func printJSON<T: Encodable>(_ value: T) {
        if let data = try? KilnJSON.encoder(pretty: true).encode(value) { print(String(decoding: data, as: UTF8.self)) }
    }
}
