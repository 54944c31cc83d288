import Foundation

// The post-build pipeline: its steps (part of a project) and its runs (kept in the build
// record).

/// One step of a project's post-build pipeline: a plugin and its settings. The steps run in
/// order after a build succeeds (see the Plugins module).
public struct PipelineStep: Codable, Sendable, Equatable {
    /// `deploy`, `lb`, `retire` or `notify`.
    public var plugin: String
    public var settings: [String: JSONValue]
    /// Longest the step may run (default: the plugin's own).
    public var timeoutSeconds: Int?

    public init(plugin: String, settings: [String: JSONValue] = [:], timeoutSeconds: Int? = nil) {
        self.plugin = plugin
        self.settings = settings
        self.timeoutSeconds = timeoutSeconds
    }

    enum CodingKeys: String, CodingKey { case plugin, settings, timeoutSeconds }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        plugin = try c.decode(String.self, forKey: .plugin)
        settings = try c.decodeIfPresent([String: JSONValue].self, forKey: .settings) ?? [:]
        timeoutSeconds = try c.decodeIfPresent(Int.self, forKey: .timeoutSeconds)
    }
}

public enum PipelineStatus: String, Codable, Sendable {
    case pending, running, succeeded, failed

    public var isFinal: Bool { self == .succeeded || self == .failed }
}

/// What one plugin step did.
public struct PipelineStepResult: Codable, Sendable, Equatable {
    public var plugin: String
    public var status: StepStatus
    public var startedAt: Date?
    public var finishedAt: Date?
    public var durationMs: Int?
    /// One line on what it did (`version 3 of demo: 2 instances healthy in 2 cells`).
    public var summary: String?
    public var error: String?
    /// What the step handed on to later steps (kept so a resumed run can skip it).
    public var outputs: [String: JSONValue]?

    public init(plugin: String, status: StepStatus = .pending, startedAt: Date? = nil, finishedAt: Date? = nil, durationMs: Int? = nil, summary: String? = nil, error: String? = nil,
                outputs: [String: JSONValue]? = nil) {
        self.outputs = outputs
        self.plugin = plugin
        self.status = status
        self.startedAt = startedAt
        self.finishedAt = finishedAt
        self.durationMs = durationMs
        self.summary = summary
        self.error = error
    }
}

/// One run of a project's pipeline for a build: the first after the build succeeded, or a
/// later one asked for by a person (a roll back to this build's image).
public struct PipelineRun: Codable, Sendable, Equatable {
    /// 1 for the run after the build, then 2, 3…
    public var run: Int
    public var status: PipelineStatus
    public var steps: [PipelineStepResult]
    /// The pipeline as it was when the run was asked for.
    public var pipeline: [PipelineStep]
    public var requestedAt: Date
    public var startedAt: Date?
    public var finishedAt: Date?
    /// `build succeeded`, `api`, `cli`, …
    public var trigger: String
    /// The scheduler (leader term) running it; a run left `running` by another term is resumed.
    public var runner: String?
    public var error: String?

    public init(run: Int, pipeline: [PipelineStep], trigger: String, requestedAt: Date = Date()) {
        self.run = run
        self.status = .pending
        self.pipeline = pipeline
        self.steps = pipeline.map { PipelineStepResult(plugin: $0.plugin) }
        self.requestedAt = requestedAt
        self.trigger = trigger
    }

    public var durationMs: Int? {
        guard let s = startedAt, let f = finishedAt else { return nil }
        return Int((f.timeIntervalSince(s) * 1000).rounded())
    }
}
