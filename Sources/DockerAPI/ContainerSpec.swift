import Foundation

/// What a container is made from. Only the fields Kiln uses; nil means the engine's default.
public struct ContainerSpec: Sendable, Equatable {
    public var image: String
    public var cmd: [String]
    public var workingDir: String?
    public var env: [String: String]
    /// "host:container" or "host:container:ro".
    public var binds: [String]
    /// "host", "none", "bridge", or a network's name.
    public var networkMode: String?
    public var labels: [String: String]
    public var memoryBytes: Int64?
    /// CPUs the container may use (1.5 = one and a half).
    public var cpus: Double?
    public var entrypoint: [String]?
    public var user: String?
    public var pidsLimit: Int?
    /// `HostConfig.SecurityOpt`, for example `no-new-privileges`.
    public var securityOptions: [String]
    /// Capabilities taken away (`ALL` for every one) and given back, without the `CAP_` prefix.
    public var capDrop: [String]
    public var capAdd: [String]
    /// Container TCP port → the host address and port it is published on.
    public var publish: [Int: PublishedPort]

    public struct PublishedPort: Sendable, Equatable {
        public var hostIP: String
        public var hostPort: Int
        public init(hostIP: String, hostPort: Int) {
            self.hostIP = hostIP
            self.hostPort = hostPort
        }
    }

    public init(
        image: String, cmd: [String] = [], workingDir: String? = nil, env: [String: String] = [:],
        binds: [String] = [], networkMode: String? = nil, labels: [String: String] = [:],
        memoryBytes: Int64? = nil, cpus: Double? = nil, entrypoint: [String]? = nil, user: String? = nil,
        pidsLimit: Int? = nil, publish: [Int: PublishedPort] = [:],
        securityOptions: [String] = [], capDrop: [String] = [], capAdd: [String] = []
    ) {
        self.image = image
        self.cmd = cmd
        self.workingDir = workingDir
        self.env = env
        self.binds = binds
        self.networkMode = networkMode
        self.labels = labels
        self.memoryBytes = memoryBytes
        self.cpus = cpus
        self.entrypoint = entrypoint
        self.user = user
        self.pidsLimit = pidsLimit
        self.publish = publish
        self.securityOptions = securityOptions
        self.capDrop = capDrop
        self.capAdd = capAdd
    }
}

/// One container in a `containers(labeled:)` answer.
public struct ContainerSummary: Decodable, Sendable, Equatable {
    public let id: String
    public let names: [String]
    public let labels: [String: String]
    /// `running`, `exited`, `created`, …
    public let state: String

    enum CodingKeys: String, CodingKey { case id = "Id", names = "Names", labels = "Labels", state = "State" }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        id = try c.decode(String.self, forKey: .id)
        names = (try c.decodeIfPresent([String].self, forKey: .names) ?? []).map { $0.hasPrefix("/") ? String($0.dropFirst()) : $0 }
        labels = try c.decodeIfPresent([String: String].self, forKey: .labels) ?? [:]
        state = try c.decodeIfPresent(String.self, forKey: .state) ?? "unknown"
    }
}

/// `State` of an inspected container.
public struct ContainerState: Decodable, Sendable, Equatable {
    public let running: Bool
    public let status: String
    public let exitCode: Int
    public let error: String

    enum CodingKeys: String, CodingKey { case running = "Running", status = "Status", exitCode = "ExitCode", error = "Error" }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        running = try c.decodeIfPresent(Bool.self, forKey: .running) ?? false
        status = try c.decodeIfPresent(String.self, forKey: .status) ?? "unknown"
        exitCode = try c.decodeIfPresent(Int.self, forKey: .exitCode) ?? 0
        error = try c.decodeIfPresent(String.self, forKey: .error) ?? ""
    }
}

// The API's field names.
struct CreateContainerBody: Encodable {
    struct HostConfigBody: Encodable {
        struct Binding: Encodable { var HostIp: String; var HostPort: String }
        var Binds: [String]
        var NetworkMode: String?
        var Memory: Int64?
        var NanoCpus: Int64?
        var PidsLimit: Int?
        var PortBindings: [String: [Binding]]?
        var SecurityOpt: [String]?
        var CapDrop: [String]?
        var CapAdd: [String]?
    }
    struct Empty: Encodable {}
    var Image: String
    var Cmd: [String]
    var Entrypoint: [String]?
    var WorkingDir: String?
    var Env: [String]
    var Labels: [String: String]
    var User: String?
    var Tty = false
    var AttachStdout = true
    var AttachStderr = true
    var ExposedPorts: [String: Empty]?
    var HostConfig: HostConfigBody

    init(_ spec: ContainerSpec) {
        Image = spec.image
        Cmd = spec.cmd
        Entrypoint = spec.entrypoint
        WorkingDir = spec.workingDir
        Env = spec.env.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
        Labels = spec.labels
        User = spec.user
        HostConfig = .init(
            Binds: spec.binds, NetworkMode: spec.networkMode, Memory: spec.memoryBytes,
            NanoCpus: spec.cpus.map { Int64(($0 * 1e9).rounded()) }, PidsLimit: spec.pidsLimit,
            PortBindings: spec.publish.isEmpty ? nil : Dictionary(uniqueKeysWithValues: spec.publish.map {
                ("\($0.key)/tcp", [HostConfigBody.Binding(HostIp: $0.value.hostIP, HostPort: String($0.value.hostPort))])
            }),
            SecurityOpt: spec.securityOptions.isEmpty ? nil : spec.securityOptions,
            CapDrop: spec.capDrop.isEmpty ? nil : spec.capDrop,
            CapAdd: spec.capAdd.isEmpty ? nil : spec.capAdd)
        ExposedPorts = spec.publish.isEmpty ? nil : Dictionary(uniqueKeysWithValues: spec.publish.keys.map { ("\($0)/tcp", Empty()) })
    }
}
