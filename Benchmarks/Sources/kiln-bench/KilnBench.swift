import ArgumentParser
import Foundation
import KilnCore
import Logging
import Processes

@main
struct KilnBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kiln-bench",
        abstract: "Kiln's benchmarks, run by hand (build with -c release for timings; Benchmarks/README.md).",
        discussion: """
        Build what is measured and the benchmarks, from the repository:
          swift build -c release --product kiln
          swift build -c release --package-path Benchmarks
        Then:
          Benchmarks/.build/release/kiln-bench ring
          Benchmarks/.build/release/kiln-bench farm --only latency
          Benchmarks/.build/release/kiln-bench year --builds 2000
          Benchmarks/.build/release/kiln-bench multihost   (as root: network namespaces)
        """,
        subcommands: [Ring.self, Farm.self, Year.self, Scale.self, Deploy.self, MultiHost.self])
}

/// Where the repository and its builds are, from this file's place in it
/// (`Benchmarks/Sources/kiln-bench/`), so that kiln-bench finds them from any folder.
enum Repository {
    static let root = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// Where result files go by default.
    static var results: String { root.appendingPathComponent("Benchmarks/results").path }

    /// This build's configuration, which is also the default of the `kiln` it starts.
    static var configuration: String {
        #if DEBUG
        return "debug"
        #else
        return "release"
        #endif
    }

    /// The root package's `kiln` of the same configuration as this kiln-bench.
    static var kiln: String { root.appendingPathComponent(".build/\(configuration)/kiln").path }

    /// How to build `kiln` where the default looks for it.
    static var buildKiln: String {
        "build it with `swift build\(configuration == "release" ? " -c release" : "") --product kiln` in \(root.path)"
    }
}

/// Logs of the libraries (etcd client, processes) at error only: the benchmark's own lines
/// are its output.
func bootstrapLogging() {
    LoggingSystem.bootstrap { label in
        var handler = StreamLogHandler.standardError(label: label)
        handler.logLevel = .error
        return handler
    }
}

func env(_ name: String, _ fallback: String) -> String {
    ProcessInfo.processInfo.environment[name].flatMap { $0.isEmpty ? nil : $0 } ?? fallback
}

/// Where a run's result file goes and what its heading names: `<dir>/<kind>-<date>.md` (the
/// folder made), the repository's short commit, and etcd's version line.
enum ResultFile {
    static func place(in dir: String, kind: String, startedAt: Date) throws -> (file: URL, commit: String?, etcdVersion: String) {
        let folder = URL(fileURLWithPath: dir)
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.dateFormat = "yyyy-MM-dd-HHmmss"
        let etcdVersion = (try? ManagedProcess.run("etcd", ["--version"]))?.output.split(separator: "\n").first.map(String.init) ?? "etcd ?"
        let commit = (try? ManagedProcess.run("git", ["-C", Repository.root.path, "rev-parse", "--short", "HEAD"]))
            .flatMap { $0.status == 0 ? $0.output.trimmingCharacters(in: .whitespacesAndNewlines) : nil }
        return (folder.appendingPathComponent("\(kind)-\(f.string(from: startedAt)).md"), commit, etcdVersion)
    }

    /// Writes a result file of `reports` (each phase's markdown) headed by the command, the
    /// build, the cores, `load` (what the machine carried) and `setting` (how the components
    /// ran); `complete` false marks a run that stopped early.
    static func write(_ reports: [PhaseReport], kind: String, in dir: String, startedAt: Date, load: String, setting: String, complete: Bool) throws -> URL {
        let (file, commit, etcdVersion) = try place(in: dir, kind: kind, startedAt: startedAt)
        var lines = [
            "# kiln-bench \(kind), \(KilnJSON.formatDate(startedAt))",
            "",
            "`\((["kiln-bench \(kind)"] + CommandLine.arguments.dropFirst(2)).joined(separator: " "))` (\(Repository.configuration) build\(commit.map { ", commit \($0)" } ?? "")); "
                + "\(ProcessInfo.processInfo.activeProcessorCount) cores, load average \(load); \(etcdVersion). \(setting)",
            "",
        ]
        if !complete { lines += ["**Incomplete run**: it stopped early (error or interrupt); the parts below are those that finished.", ""] }
        lines += reports.map(\.markdown)
        try lines.joined(separator: "\n").write(to: file, atomically: true, encoding: .utf8)
        return file
    }
}
