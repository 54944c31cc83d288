import Foundation
import KilnCore

/// The deploy form of an app's page: a build of the app's project and the new version's
/// settings, as typed; and the `DeploySettings` they make. Pure; unit-tested without a server.
///
/// Shown first with the live version's settings (as LeEngine's "new version" form was: most
/// upgrades change only the image). Inputs are named after `DeploySettings`' JSON fields, so
/// a problem the deploy plugin's validation reports (`API.settingsProblems`) lands beside its
/// input. `env` is typed one `NAME=value` a line, `secretEnv` as names separated by commas.
struct DeployForm: Sendable, Equatable {
    var values: [String: String]
    var problems: [FieldProblem] = []
    /// Why the scheduler refused the deploy (not one field's problem).
    var message: String?

    static let names: Set<String> = ["build", "port", "replicas", "cpu", "memoryMB", "env", "healthPath", "secretEnv"]

    /// The form pre-filled from `settings` (the live version's; nil: the deploy step's defaults).
    init(_ settings: DeploySettings?) {
        guard let s = settings else {
            values = ["port": "8080", "replicas": "1", "healthPath": "/health"]
            return
        }
        var v = ["port": String(s.port), "replicas": String(s.replicas), "healthPath": s.healthPath,
                 "env": s.env.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: "\n"),
                 "secretEnv": (s.secretEnv ?? []).joined(separator: ", ")]
        v["cpu"] = s.cpu.map { $0 == $0.rounded() ? String(Int($0)) : String($0) }
        v["memoryMB"] = s.memoryMB.map(String.init)
        values = v
    }

    init(fields: [String: String]) {
        values = fields.filter { Self.names.contains($0.key) }
    }

    subscript(_ name: String) -> String { values[name] ?? "" }

    /// The build chosen and the settings typed, with every problem, each beside its field: a
    /// value that is not a number or a line of env that is not `NAME=value`, then the deploy
    /// plugin's own checks (`API.settingsProblems`, what the API answers). `base`: the live
    /// version's settings; its counts per cell go on when `replicas` is left as shown.
    func read(app: String, base: DeploySettings?) -> (build: String, settings: DeploySettings, problems: [FieldProblem]) {
        var problems: [FieldProblem] = []
        func text(_ name: String) -> String { self[name].trimmingCharacters(in: .whitespacesAndNewlines) }
        func number<T: LosslessStringConvertible>(_ name: String, required: Bool, as type: T.Type) -> T? {
            let t = text(name)
            if t.isEmpty {
                if required { problems.append(FieldProblem(field: name, message: "\(name) is required: give a number")) }
                return nil
            }
            guard let n = T(t) else {
                problems.append(FieldProblem(field: name, message: "\(name) '\(Validation.printable(String(t.prefix(40))))' is not a number: give digits\(required ? "" : ", or leave it empty")"))
                return nil
            }
            return n
        }
        let build = text("build")
        if build.isEmpty { problems.append(FieldProblem(field: "build", message: "choose the build to deploy: one of the app's project that succeeded")) }
        let port = number("port", required: true, as: Int.self)
        let replicas = number("replicas", required: true, as: Int.self)
        let cpu = number("cpu", required: false, as: Double.self)
        let memory = number("memoryMB", required: false, as: Int.self)
        var env: [String: String] = [:]
        // Browsers send a textarea's line ends as CRLF.
        for line in self["env"].replacingOccurrences(of: "\r\n", with: "\n").split(separator: "\n") {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            guard !trimmed.isEmpty else { continue }
            let parts = trimmed.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let name = parts[0].trimmingCharacters(in: .whitespaces)
            guard parts.count == 2, !name.isEmpty else {
                problems.append(FieldProblem(field: "env", message: "env line '\(Validation.printable(String(trimmed.prefix(40))))' is not NAME=value: one variable a line"))
                continue
            }
            if env[name] != nil { problems.append(FieldProblem(field: "env", message: "env names \(Validation.printable(name)) twice: keep one line for it")) }
            env[name] = String(parts[1])
        }
        let secretEnv = self["secretEnv"].split(whereSeparator: { $0 == "," || $0.isNewline || $0 == " " }).map(String.init).filter { !$0.isEmpty }
        let typed = replicas ?? base?.replicas ?? 1
        let settings = DeploySettings(port: port ?? base?.port ?? 8080, replicas: typed, cpu: cpu, memoryMB: memory, env: env,
                                      healthPath: text("healthPath"), secretEnv: secretEnv.isEmpty ? nil : secretEnv,
                                      cellReplicas: typed == base?.replicas ? base?.cellReplicas : nil)
        let parsed = Set(problems.map(\.field))
        problems += API.settingsProblems(settings, app: app, skipping: parsed)
        return (build, settings, problems)
    }
}

/// The scale form of an app's page: instances per cell, in every cell of the live version or
/// in one. Pure.
struct ScaleForm: Sendable, Equatable {
    var values: [String: String]
    var problems: [FieldProblem] = []
    /// Why the scaling was refused or failed (not one field's problem).
    var message: String?

    static let names: Set<String> = ["replicas", "cell"]

    /// Shown first with the live version's count (empty cell: every cell).
    init(_ live: AppVersion?) {
        values = ["replicas": live.map { String($0.settings.replicas) } ?? "1", "cell": ""]
    }

    init(fields: [String: String]) {
        values = fields.filter { Self.names.contains($0.key) }
    }

    subscript(_ name: String) -> String { values[name] ?? "" }

    /// The request the form makes and its problems (`ScaleRequest.validate()`, the API's).
    func request() -> (request: ScaleRequest?, problems: [FieldProblem]) {
        let t = self["replicas"].trimmingCharacters(in: .whitespaces)
        guard let n = Int(t) else {
            return (nil, [FieldProblem(field: "replicas", message: "replicas '\(Validation.printable(String(t.prefix(40))))' is not a number: give 0 to \(DeploySettings.maxReplicas) instances per cell")])
        }
        let cell = self["cell"].trimmingCharacters(in: .whitespaces)
        let request = ScaleRequest(replicas: n, cell: cell.isEmpty ? nil : cell)
        if let problem = FieldProblem.check("replicas", { try request.validate() }) {
            return (nil, [FieldProblem(field: problem.message.hasPrefix("replicas") ? "replicas" : "cell", message: problem.message)])
        }
        return (request, [])
    }
}
