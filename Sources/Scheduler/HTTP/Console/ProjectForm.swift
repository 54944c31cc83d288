import Foundation
import KilnCore
import Plugins

/// The console's project form (new project, edit settings): the values a person typed, by
/// field, and the project they describe. Pure; unit-tested without a server.
///
/// Inputs are named after the API's JSON fields (`repository`, `buildImage`, …) so that a
/// problem the model reports (`Project.problems()`) lands beside the input it is about; the
/// limits' and retention's inputs share the problem field of their JSON object (`limits`,
/// `retention`). Lists are typed one to a line or separated by commas; the pipeline is the
/// API's JSON list of steps; an optional field left empty is left out (the model's default).
/// The values stay as typed, to show again after a refusal.
struct ProjectForm: Sendable, Equatable {
    /// What was typed, by input name. Missing: empty (an unticked checkbox sends nothing).
    var values: [String: String]

    static let names: Set<String> = [
        "name", "repository", "buildImage", "buildCommand", "dockerfile", "context", "defaultBranch", "branches", "protectedRefs",
        "caches", "labels", "supersede", "maxConcurrent", "group", "pushTo", "limitsMemory", "limitsCpus", "limitsPids", "keepBuilds", "keepDays",
        "webhookSecret", "generateWebhookSecret", "removeWebhookSecret", "pipeline", "reuseBuilds",
    ]

    /// An empty form for a new project, with the model's defaults filled in.
    static let blank = ProjectForm(values: ["dockerfile": "Dockerfile", "context": ".", "defaultBranch": "main", "reuseBuilds": "on"])

    init(values: [String: String]) {
        self.values = values
    }

    /// The fields of a POST that belong to this form (others, such as the CSRF token, are not kept).
    init(fields: [String: String]) {
        values = fields.filter { Self.names.contains($0.key) }
    }

    /// The form of a project as it is (to edit it). `p`: as a master sees it, without its
    /// webhook token (which is write-only: the field stays empty and means "keep it").
    init(_ p: Project) {
        var v: [String: String] = [
            "name": p.name, "repository": p.repository, "buildImage": p.buildImage, "buildCommand": p.buildCommand,
            "dockerfile": p.dockerfile, "context": p.context, "defaultBranch": p.defaultBranch,
            "labels": p.labels.joined(separator: ", "), "supersede": p.supersede?.rawValue ?? "",
        ]
        v["branches"] = p.branches?.joined(separator: "\n")
        v["protectedRefs"] = p.protectedRefs?.joined(separator: "\n")
        v["pushTo"] = p.pushTo?.joined(separator: "\n")
        v["caches"] = p.caches.map { $0.isEmpty ? "none" : $0.joined(separator: "\n") }
        v["maxConcurrent"] = p.maxConcurrent.map(String.init)
        v["reuseBuilds"] = p.reuseBuilds == false ? nil : "on"
        v["group"] = p.group
        v["limitsMemory"] = p.limits?.memoryBytes.map(Self.size)
        v["limitsCpus"] = p.limits?.cpus.map { $0 == $0.rounded() ? String(Int($0)) : String($0) }
        v["limitsPids"] = p.limits?.pids.map(String.init)
        v["keepBuilds"] = p.retention.map { String($0.keepBuilds) }
        v["keepDays"] = p.retention.map { String($0.keepDays) }
        if let pipeline = p.pipeline, let data = try? KilnJSON.encoder(pretty: true).encode(pipeline) {
            v["pipeline"] = String(decoding: data, as: UTF8.self)
        }
        values = v
    }

    subscript(_ name: String) -> String { values[name] ?? "" }

    /// The project the form describes and every problem with it: those of reading the inputs,
    /// then the model's own (`Project.problems()`), then the pipeline's against the plugins'
    /// settings: the checks the API's save makes, each one beside its field.
    ///
    /// `base`: the project being edited (what the form does not show, its creation time,
    /// stays; its name cannot change); nil for a new one. `newToken`: the webhook token to set
    /// if the form asks for a new one to be made.
    func read(over base: Project?, newToken: String) -> (project: Project, problems: [FieldProblem]) {
        var problems: [FieldProblem] = []
        func problem(_ field: String, _ message: String) { problems.append(FieldProblem(field: field, message: message)) }
        func text(_ name: String) -> String { self[name].trimmingCharacters(in: .whitespacesAndNewlines) }
        func optional(_ name: String) -> String? { text(name).isEmpty ? nil : text(name) }
        func list(_ name: String) -> [String]? {
            let items = self[name].split(whereSeparator: { $0.isNewline || $0 == "," })
                .map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
            return items.isEmpty ? nil : items
        }
        func number<T: LosslessStringConvertible>(_ name: String, _ field: String, _ what: String, as type: T.Type) -> T? {
            guard let t = optional(name) else { return nil }
            guard let n = T(t) else {
                problem(field, "\(what) '\(Validation.printable(String(t.prefix(40))))' is not a number: give digits, or leave it empty")
                return nil
            }
            return n
        }

        var p = base ?? Project(name: text("name"), repository: "", buildImage: "", buildCommand: "")
        p.repository = text("repository")
        p.buildImage = text("buildImage")
        // Browsers send a textarea's line ends as CRLF; `sh -c` would read the CR as part of a word.
        p.buildCommand = self["buildCommand"].replacingOccurrences(of: "\r\n", with: "\n").trimmingCharacters(in: .whitespacesAndNewlines)
        p.dockerfile = text("dockerfile")
        p.context = text("context")
        p.defaultBranch = text("defaultBranch")
        p.branches = list("branches")
        p.protectedRefs = list("protectedRefs")
        p.labels = list("labels") ?? []
        p.pushTo = list("pushTo")
        // Empty: the default (Maven's cache); "none": no cache at all.
        p.caches = text("caches") == "none" ? [] : list("caches")
        p.group = optional("group")
        p.maxConcurrent = number("maxConcurrent", "maxConcurrent", "maxConcurrent", as: Int.self)
        // An unticked box sends nothing: off. Ticked: the default (nil), as the API leaves it.
        p.reuseBuilds = self["reuseBuilds"] == "on" ? nil : false
        switch text("supersede") {
        case "": p.supersede = nil
        case let mode:
            p.supersede = Supersede(rawValue: mode)
            if p.supersede == nil { problem("supersede", "supersede '\(Validation.printable(mode))' is not an option: choose none, queued or running") }
        }

        var memory: Int64?
        if let m = optional("limitsMemory") {
            memory = BuildLimits.parseBytes(m)
            if memory == nil { problem("limits", "memory '\(Validation.printable(String(m.prefix(40))))' is not a size: give 4g, 512m or a number of bytes") }
        }
        let cpus = number("limitsCpus", "limits", "cpus", as: Double.self)
        let pids = number("limitsPids", "limits", "pids", as: Int.self)
        p.limits = memory == nil && cpus == nil && pids == nil ? nil : BuildLimits(memoryBytes: memory, cpus: cpus, pids: pids)
        let keepBuilds = number("keepBuilds", "retention", "keepBuilds", as: Int.self)
        let keepDays = number("keepDays", "retention", "keepDays", as: Int.self)
        p.retention = optional("keepBuilds") == nil && optional("keepDays") == nil ? nil
            : BuildRetention(keepBuilds: keepBuilds ?? BuildRetention.defaultKeepBuilds, keepDays: keepDays ?? BuildRetention.defaultKeepDays)

        p.pipeline = nil
        if let json = optional("pipeline") {
            do {
                p.pipeline = try KilnJSON.decoder().decode([PipelineStep].self, from: Data(json.utf8))
            } catch let error as KilnError {
                problem("pipeline", error.message)
            } catch {
                problem("pipeline", "pipeline is not a JSON list of steps, each {\"plugin\": \"deploy\", \"settings\": {…}}: check its brackets, quotes and commas (kiln plugins lists the settings)")
            }
        }

        let token = self["webhookSecret"], generate = self["generateWebhookSecret"] == "on", remove = self["removeWebhookSecret"] == "on"
        switch (token.isEmpty, generate, remove) {
        case (true, false, false): p.webhookSecret = nil  // keep the one set, if any
        case (false, false, false): p.webhookSecret = token
        case (true, true, false): p.webhookSecret = newToken
        case (true, false, true): p.webhookSecret = ""
        default: problem("webhookSecret", "type a token, tick \"make a new one\" or tick \"remove it\": only one of the three")
        }

        problems += p.problems()
        if let steps = p.pipeline, let bad = FieldProblem.check("pipeline", { try PluginCatalog.validate(steps) }) { problems.append(bad) }
        return (p, problems)
    }

    /// A size as the memory input takes it: 4g, 512m, or bytes.
    static func size(_ bytes: Int64) -> String {
        if bytes % (1 << 30) == 0 { return "\(bytes >> 30)g" }
        if bytes % (1 << 20) == 0 { return "\(bytes >> 20)m" }
        return String(bytes)
    }
}

/// The manual build form on a project's page: ref, commit, image tag, Maven cache and
/// priority, as typed; and the `BuildRequest` they make. Pure.
struct BuildForm: Sendable, Equatable {
    var values: [String: String]
    var problems: [FieldProblem] = []
    /// Why the scheduler refused it (not one field's problem).
    var message: String?

    static let names: Set<String> = ["ref", "commit", "tag", "mvncache", "priority", "rebuild"]

    /// The form as the project's page first shows it: its default branch, the Maven cache on.
    init(_ project: Project) {
        values = ["ref": project.defaultBranch, "mvncache": "on"]
    }

    init(fields: [String: String]) {
        values = fields.filter { Self.names.contains($0.key) }
    }

    subscript(_ name: String) -> String { values[name] ?? "" }

    /// The request the form makes (trigger "console") and its problems, as the API would
    /// answer them (`BuildRequest.problems()`). An empty ref is the default branch; an empty
    /// tag is the commit's short id; an unticked box turns the Maven cache off.
    func request() -> (request: BuildRequest, problems: [FieldProblem]) {
        func optional(_ name: String) -> String? {
            let t = self[name].trimmingCharacters(in: .whitespaces)
            return t.isEmpty ? nil : t
        }
        var problems: [FieldProblem] = []
        var priority: Int?
        if let p = optional("priority") {
            priority = Int(p)
            if priority == nil { problems.append(FieldProblem(field: "priority", message: "priority '\(Validation.printable(String(p.prefix(40))))' is not a number: use -1000 to 1000 (higher goes first), or leave it empty")) }
        }
        let request = BuildRequest(ref: optional("ref"), commit: optional("commit"), tag: optional("tag"), mvncache: self["mvncache"] == "on",
                                   trigger: "console", priority: priority, rebuild: self["rebuild"] == "on" ? true : nil)
        return (request, problems + request.problems())
    }

    /// The refs the form offers: the default branch, then the branches and protected refs the
    /// project names that are not patterns, then `found`, the repository's own branches and
    /// tags as an agent's fetch published them (`RepositoryRefs.latest`; the scheduler never
    /// fetches). Any other ref can be typed.
    static func offeredRefs(_ p: Project, found: [String] = []) -> [String] {
        var seen = Set<String>()
        return ([p.defaultBranch] + (p.branches ?? []) + (p.protectedRefs ?? []) + found)
            .filter { !$0.contains("*") && seen.insert($0).inserted }
    }

    /// A new build of the same ref and options as `b`: its tag, Maven cache and priority, and
    /// its commit only if a person's request pinned it (else the ref's newest commit). A real
    /// build, never a reuse: a person presses "rebuild" to build again (after a secret or the
    /// caches changed, say), which a reuse of `b`'s own image would not do (docs/reuse.md).
    static func rebuild(of b: Build) -> BuildRequest {
        BuildRequest(ref: b.ref, commit: b.commitPinnedByRequest == true ? b.commit : nil, tag: b.tag, mvncache: b.mvncache,
                     trigger: "rebuild of \(b.id)", priority: b.priority, rebuild: true)
    }
}
