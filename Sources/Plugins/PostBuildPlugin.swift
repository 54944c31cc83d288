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
    /// The project's secrets (deploy's `secretEnv`, notify's `urlSecret`), or nil when this
    /// scheduler has no secret store: a step that needs a secret then fails saying so. A
    /// plugin never logs a value it gets here, nor puts one in its result.
    public var secrets: (any PipelineSecrets)?

    public init(build: Build, project: Project, settings: [String: JSONValue], outputs: [String: [String: JSONValue]] = [:], run: Int = 1,
                secrets: (any PipelineSecrets)? = nil, log: @escaping @Sendable (String) async -> Void) {
        self.build = build
        self.project = project
        self.settings = settings
        self.outputs = outputs
        self.run = run
        self.secrets = secrets
        self.log = log
    }

    /// The value of the project's secret `name` for this build's ref. Throws a `KilnError`
    /// that names the secret (never a value) when there is no store, or the secret is missing
    /// or held back from this ref; `use` says what it was for (`deploy's secretEnv`).
    public func secretValue(_ name: String, for use: String) async throws -> String {
        guard let secrets else {
            throw KilnError.unavailable("\(use) names secret \(name), but this scheduler has no secret store: start it with --secrets-key-file (the farm's secrets key)")
        }
        let lookup: SecretLookup
        do {
            lookup = try await secrets.secret(name, of: project, ref: build.protectionRef)
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            throw KilnError.unavailable("\(use): secret \(name) could not be read: \((error as? KilnError)?.message ?? "\(error)")")
        }
        switch lookup {
        case .value(let value):
            return value
        case .withheld:
            throw KilnError.invalid("\(use): secret \(name) is for protected refs only, and \(Validation.printable(build.ref)) is not protected in project \(project.name): build a protected ref, add the ref to the project's protectedRefs, or set the secret without --protected-only")
        case .missing:
            throw KilnError.notFound("\(use): secret \(name) is not set for project \(project.name)\(project.group.map { " or its group \($0)" } ?? ""): set it with `kiln secret set \(name) --project \(project.name)`")
        }
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
