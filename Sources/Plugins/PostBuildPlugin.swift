import Foundation
import KilnCore

/// A post-build plugin: one kind of pipeline step (`deploy`, `lb`, `retire`, `notify`).
///
/// The runner (`PipelineRunner`) calls `run` once per step, with the step's settings already
/// checked against `spec`, under the step's time limit (the task is cancelled when it runs
/// out). A plugin reports progress through `context.log`; it returns a one-line summary on
/// success and throws on failure (a `KilnError` whose message says what failed and what to
/// do). Plugins must be safe to run again for the same build: a run interrupted by a crash
/// is started over.
public protocol PostBuildPlugin: Sendable {
    var spec: PluginSpec { get }
    func run(_ context: PluginContext) async throws -> PluginResult
}

/// What a step gets: the build, its project, the step's settings, what earlier steps of the
/// same run produced, and a log.
public struct PluginContext: Sendable {
    public var build: Build
    public var project: Project
    public var settings: [String: JSONValue]
    /// Outputs of the earlier steps of this run, by plugin name (for example `deploy` →
    /// `["app": "demo", "version": 3]`), so `lb` and `retire` act on the version `deploy` made.
    public var outputs: [String: [String: JSONValue]]
    /// The run's number (1 for the run right after the build).
    public var run: Int
    /// Appends a line to the build's log.
    public var log: @Sendable (String) async -> Void

    public init(build: Build, project: Project, settings: [String: JSONValue], outputs: [String: [String: JSONValue]] = [:], run: Int = 1,
                log: @escaping @Sendable (String) async -> Void) {
        self.build = build
        self.project = project
        self.settings = settings
        self.outputs = outputs
        self.run = run
        self.log = log
    }

    // Settings, already validated against the plugin's spec.
    public func string(_ name: String) -> String? {
        if case .string(let s)? = settings[name] { return s }
        return nil
    }
    public func int(_ name: String) -> Int? {
        if case .number(let n)? = settings[name] { return Int(n) }
        return nil
    }
    public func double(_ name: String) -> Double? {
        if case .number(let n)? = settings[name] { return n }
        return nil
    }
    public func strings(_ name: String) -> [String]? {
        guard case .array(let items)? = settings[name] else { return nil }
        return items.compactMap { if case .string(let s) = $0 { s } else { nil } }
    }
    public func stringMap(_ name: String) -> [String: String]? {
        guard case .object(let fields)? = settings[name] else { return nil }
        return fields.compactMapValues { if case .string(let s) = $0 { s } else { nil } }
    }
}

/// What a step that succeeded says and hands on to later steps.
public struct PluginResult: Sendable, Equatable {
    public var summary: String
    public var outputs: [String: JSONValue]

    public init(summary: String, outputs: [String: JSONValue] = [:]) {
        self.summary = summary
        self.outputs = outputs
    }
}
