import Foundation

// The deploy side of Kiln (issue 5): cells, apps and their versions, the post-build
// pipeline's run, and the nginx load balancer's keys. Shared by the Scheduler (API, pipeline
// runs), the Deploy module (backends, plugins, lb-agent) and the CLI.

/// One place where an app's instances run: a Docker Engine API endpoint (backend `local`) or
/// a Kubernetes API server (backend `kubernetes`). Stored at `/kiln/cells/{name}`. An app is
/// deployed in two or more cells, as LeEngine deployed every app in at least two.
public struct Cell: Codable, Sendable, Equatable {
    public var name: String
    /// `local` or `kubernetes`.
    public var backend: String
    /// `unix:///path/to/docker.sock` for `local`; `http(s)://host:port` of the API server for `kubernetes`.
    public var endpoint: String
    /// Host ports the local backend may publish instances on (inclusive); nil: 20000…29999.
    public var firstPort: Int?
    public var lastPort: Int?
    /// The address nginx reaches published ports on (local backend); default 127.0.0.1.
    public var advertiseHost: String?
    public var createdAt: Date?

    public init(name: String, backend: String = "local", endpoint: String, firstPort: Int? = nil, lastPort: Int? = nil, advertiseHost: String? = nil, createdAt: Date? = nil) {
        self.name = name
        self.backend = backend
        self.endpoint = endpoint
        self.firstPort = firstPort
        self.lastPort = lastPort
        self.advertiseHost = advertiseHost
        self.createdAt = createdAt
    }

    public var ports: ClosedRange<Int> { (firstPort ?? 20000)...(lastPort ?? 29999) }

    public func validate() throws {
        try Validation.projectName(name, what: "cell name")
        guard ["local", "kubernetes"].contains(backend) else {
            throw KilnError.invalid("cell \(name): backend '\(Validation.printable(backend))' is unknown; use local (a Docker Engine API endpoint) or kubernetes (an API server)")
        }
        switch backend {
        case "local":
            guard endpoint.hasPrefix("unix:///") || endpoint.hasPrefix("http://") else {
                throw KilnError.invalid("cell \(name): endpoint '\(Validation.printable(endpoint))' is not a Docker Engine API address; use unix:///path/to/docker.sock or http://host:port")
            }
        default:
            guard let u = URL(string: endpoint), ["http", "https"].contains(u.scheme ?? ""), u.host?.isEmpty == false else {
                throw KilnError.invalid("cell \(name): endpoint '\(Validation.printable(endpoint))' is not a Kubernetes API server URL; use https://host:port")
            }
        }
        if firstPort != nil || lastPort != nil {
            let r = (firstPort ?? 20000, lastPort ?? 29999)
            guard 1024 <= r.0, r.0 <= r.1, r.1 <= 65535 else {
                throw KilnError.invalid("cell \(name): host port range \(r.0)-\(r.1) is invalid; use FIRST-LAST within 1024-65535")
            }
        }
        if let h = advertiseHost, h.isEmpty || h.contains(where: { $0 == "/" || $0 == " " || $0 == ";" }) {
            throw KilnError.invalid("cell \(name): advertise host '\(Validation.printable(h))' is not a host name or IP address")
        }
    }
}

/// How each instance of a version runs. A new version takes these from the previous
/// version of the app unless the pipeline's `deploy` step sets them.
public struct DeploySettings: Codable, Sendable, Equatable {
    /// The port the app listens on inside its container.
    public var port: Int
    /// Instances per cell.
    public var replicas: Int
    public var cpu: Double?
    public var memoryMB: Int?
    public var env: [String: String]
    /// Answers 2xx when an instance is healthy.
    public var healthPath: String

    public init(port: Int, replicas: Int = 1, cpu: Double? = nil, memoryMB: Int? = nil, env: [String: String] = [:], healthPath: String = "/health") {
        self.port = port
        self.replicas = replicas
        self.cpu = cpu
        self.memoryMB = memoryMB
        self.env = env
        self.healthPath = healthPath
    }
}

/// One running instance of a version: a container (local) or a pod (Kubernetes).
public struct Instance: Codable, Sendable, Equatable {
    /// Container id or pod name.
    public var id: String
    /// Container or pod name, for people.
    public var name: String
    public var cell: String
    /// `host:port` nginx sends requests to.
    public var address: String
    /// Whether it passed its health check when last checked.
    public var healthy: Bool
    public var checkedAt: Date?
    /// The last health answer, or why there is none.
    public var detail: String?

    public init(id: String, name: String, cell: String, address: String, healthy: Bool = false, checkedAt: Date? = nil, detail: String? = nil) {
        self.id = id
        self.name = name
        self.cell = cell
        self.address = address
        self.healthy = healthy
        self.checkedAt = checkedAt
        self.detail = detail
    }
}

public enum VersionState: String, Codable, Sendable {
    /// Instances starting, not all healthy yet.
    case deploying
    /// All instances passed their health check; may take traffic.
    case ready
    /// In the load balancer.
    case live
    /// Leaving the load balancer, then stopping.
    case retiring
    /// Stopped and removed.
    case retired
    /// Never became ready; its instances were removed.
    case failed
}

/// One version of an app: one build's image with its settings, in its cells.
public struct AppVersion: Codable, Sendable, Equatable {
    /// 1, 2, 3… per app.
    public var number: Int
    public var build: String
    /// The pipeline run of `build` that made it: a run started over after a crash finds its
    /// version again instead of making another.
    public var pipelineRun: Int?
    public var project: String
    public var image: String
    public var backend: String
    public var cells: [String]
    public var settings: DeploySettings
    public var state: VersionState
    public var instances: [Instance]
    public var error: String?
    public var createdAt: Date
    public var updatedAt: Date

    public init(number: Int, build: String, project: String, image: String, backend: String, cells: [String], settings: DeploySettings, state: VersionState = .deploying, instances: [Instance] = [], error: String? = nil, createdAt: Date = Date(), updatedAt: Date = Date()) {
        self.number = number
        self.build = build
        self.project = project
        self.image = image
        self.backend = backend
        self.cells = cells
        self.settings = settings
        self.state = state
        self.instances = instances
        self.error = error
        self.createdAt = createdAt
        self.updatedAt = updatedAt
    }
}

/// Where an app is served: a domain of an nginx group.
public struct LBBinding: Codable, Sendable, Equatable {
    public var group: String
    public var domain: String
    public init(group: String, domain: String) {
        self.group = group
        self.domain = domain
    }
}

/// An app and all its versions, at `/kiln/apps/{name}`.
public struct App: Codable, Sendable, Equatable {
    public var name: String
    /// Oldest first.
    public var versions: [AppVersion]
    public var lb: [LBBinding]
    public var updatedAt: Date

    public init(name: String, versions: [AppVersion] = [], lb: [LBBinding] = [], updatedAt: Date = Date()) {
        self.name = name
        self.versions = versions
        self.lb = lb
        self.updatedAt = updatedAt
    }

    public func version(_ n: Int) -> AppVersion? { versions.first { $0.number == n } }
    /// The newest version that is live, if any.
    public var live: AppVersion? { versions.last { $0.state == .live } }
    /// The newest version that is not failed or retired: the settings a next version inherits.
    public var current: AppVersion? { versions.last { $0.state != .failed && $0.state != .retired } }
    public var nextNumber: Int { (versions.map(\.number).max() ?? 0) + 1 }
}

// MARK: - the post-build pipeline's run, kept in the build record

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

// MARK: - the nginx load balancer (`/slb/{group}/…`, outside Kiln's prefix)

/// One upstream server of a domain.
public struct SLBServer: Codable, Sendable, Equatable, Hashable {
    /// `host:port` (an IPv4 address or a host name).
    public var address: String
    public var weight: Int?

    public init(address: String, weight: Int? = nil) {
        self.address = address
        self.weight = weight
    }
}

/// One domain of an nginx group, at `/slb/{group}/domains/{domain}`: where nginx sends its
/// requests. Written by the `lb` plugin (or by hand); rendered by every lb-agent of the group.
public struct SLBDomain: Codable, Sendable, Equatable {
    public var domain: String
    public var servers: [SLBServer]
    /// nginx settings for this domain, from a short list (see `SLBDomain.allowedSettings`).
    public var settings: [String: String]?
    /// The app and version serving it, when the `lb` plugin wrote it.
    public var app: String?
    public var version: Int?
    public var updatedAt: Date?

    public init(domain: String, servers: [SLBServer], settings: [String: String]? = nil, app: String? = nil, version: Int? = nil, updatedAt: Date? = nil) {
        self.domain = domain
        self.servers = servers
        self.settings = settings
        self.app = app
        self.version = version
        self.updatedAt = updatedAt
    }

    /// The nginx directives a domain may set, each placed in its `server` block. Their values
    /// are checked for characters that could end the directive; nginx itself (`nginx -t`)
    /// judges the rest, and a value it refuses leaves the last good config in place.
    public static let allowedSettings: Set<String> = [
        "client_max_body_size", "proxy_connect_timeout", "proxy_read_timeout", "proxy_send_timeout",
        "proxy_next_upstream_tries", "keepalive_timeout",
    ]
}

/// What one lb-agent last applied, at `/slb/{group}/agents/{id}` under the agent's lease.
public struct SLBAgentReport: Codable, Sendable, Equatable {
    public var id: String
    /// The etcd revision of `/slb/{group}/` that nginx now serves.
    public var appliedRevision: Int64
    public var appliedAt: Date
    /// Domains whose latest config failed `nginx -t` (domain → nginx's message): they keep
    /// serving their last good config.
    public var rejected: [String: String]
    /// Where nginx listens (`127.0.0.1:8088`).
    public var listen: String?

    public init(id: String, appliedRevision: Int64, appliedAt: Date = Date(), rejected: [String: String] = [:], listen: String? = nil) {
        self.id = id
        self.appliedRevision = appliedRevision
        self.appliedAt = appliedAt
        self.rejected = rejected
        self.listen = listen
    }
}

/// The `/slb` keys: not under Kiln's prefix, since nginx groups may be shared by farms.
public struct SLBKeys: Sendable, Equatable {
    public let root: String
    public init(root: String = "/slb") {
        var r = root
        while r.hasSuffix("/") { r.removeLast() }
        self.root = r.isEmpty ? "/slb" : r
    }
    public func domains(_ g: String) -> String { "\(root)/\(g)/domains/" }
    public func domain(group g: String, _ d: String) -> String { "\(root)/\(g)/domains/\(d)" }
    public func agents(_ g: String) -> String { "\(root)/\(g)/agents/" }
    public func agent(group g: String, _ id: String) -> String { "\(root)/\(g)/agents/\(id)" }
}

extension Validation {
    /// A domain name nginx can serve: lowercase labels of letters, digits and '-', dot-separated.
    public static func domain(_ d: String) throws {
        func bad(_ why: String) -> KilnError { KilnError.invalid("domain '\(printable(d))' is refused: \(why); use a name such as demo.example.com or demo.localhost") }
        if d.isEmpty || d.utf8.count > 253 { throw bad("it must be 1 to 253 characters") }
        for label in d.split(separator: ".", omittingEmptySubsequences: false) {
            if label.isEmpty || label.count > 63 { throw bad("each dot-separated part must be 1 to 63 characters") }
            if label.hasPrefix("-") || label.hasSuffix("-") { throw bad("a part may not start or end with '-'") }
            if !label.utf8.allSatisfy({ isLower($0) || isDigit($0) || $0 == 45 }) { throw bad("only lowercase letters, digits, '-' and '.' are allowed") }
        }
    }

    /// An nginx group name: used as an etcd key component and a folder name.
    public static func groupName(_ g: String) throws { try projectName(g, what: "group name") }

    /// `host:port` with an IPv4 address or a host name, as nginx's `server` takes it.
    public static func serverAddress(_ a: String) throws {
        func bad(_ why: String) -> KilnError { KilnError.invalid("server '\(printable(a))' is refused: \(why); use host:port, such as 127.0.0.1:20001") }
        guard let colon = a.lastIndex(of: ":") else { throw bad("it has no port") }
        let host = a[..<colon], port = a[a.index(after: colon)...]
        guard port.utf8.allSatisfy(isDigit), let p = Int(port), (1...65535).contains(p) else { throw bad("the port must be 1 to 65535") }
        if host.isEmpty || host.utf8.count > 253 { throw bad("the host is empty or too long") }
        if !host.utf8.allSatisfy({ isLower($0) || isUpper($0) || isDigit($0) || $0 == 45 || $0 == 46 }) { throw bad("the host may hold only letters, digits, '-' and '.'") }
    }
}
