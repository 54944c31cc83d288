import Etcd
import Foundation

/// Settings of one `kiln agent` process.
public struct AgentConfiguration: Sendable {
    public var id: String
    /// How many builds may run at once.
    public var capacity: Int
    public var labels: [String]
    /// Lease time-to-live of the registration; the agent renews it every third of it.
    public var ttlSeconds: Int64
    /// Mirrors, Maven caches and workspaces live here. One agent per folder.
    public var dataDir: URL
    public var etcdEndpoint: String
    /// The agent's own etcd user (``KilnCore/EtcdAccess/agent(_:)``); nil: anonymous.
    public var etcdCredentials: EtcdCredentials?
    /// TLS to etcd (an `https://` endpoint); nil: plain HTTP on loopback or the system's roots.
    public var etcdTLS: EtcdTLS?
    public var keyPrefix: String
    /// The Docker Engine API socket (podman's compatible service or dockerd).
    public var dockerSocket: String
    /// Registry images are pushed to, as `host:port`.
    public var registry: String
    /// Push over plain HTTP (a local registry without TLS).
    public var registryInsecure: Bool
    /// A Maven repository mirror (for example Nexus) written into the global settings.xml
    /// mounted into compile containers; nil leaves the build image's settings alone.
    public var mavenMirror: String?
    /// Network mode of compile containers: `host` lets the build reach a mirror on loopback.
    public var compileNetwork: CompileNetwork
    public var timeouts: StepTimeouts
    public var version: String
    /// Set: the agent builds nothing and runs each task with `SimulatedBuildRunner` for this
    /// long (benchmarks and chaos tests). Nil: real builds.
    public var simulate: SimulatedDuration?

    public init(
        id: String, capacity: Int = 2, labels: [String] = [], ttlSeconds: Int64 = 10, dataDir: URL,
        etcdEndpoint: String = "http://127.0.0.1:2379", keyPrefix: String = "/kiln",
        dockerSocket: String = "/run/podman/podman.sock", registry: String = "127.0.0.1:5000",
        registryInsecure: Bool = true, mavenMirror: String? = nil, compileNetwork: CompileNetwork = .host,
        timeouts: StepTimeouts = .init(), version: String = "0.1.0", simulate: SimulatedDuration? = nil
    ) {
        self.id = id
        self.capacity = capacity
        self.labels = labels
        self.ttlSeconds = ttlSeconds
        self.dataDir = dataDir
        self.etcdEndpoint = etcdEndpoint
        self.keyPrefix = keyPrefix
        self.dockerSocket = dockerSocket
        self.registry = registry
        self.registryInsecure = registryInsecure
        self.mavenMirror = mavenMirror
        self.compileNetwork = compileNetwork
        self.timeouts = timeouts
        self.version = version
        self.simulate = simulate
    }
}

/// The network of compile containers, as the Docker Engine API names it (`HostConfig.NetworkMode`).
public enum CompileNetwork: String, Codable, Sendable, CaseIterable {
    /// The host's network: the build reaches a Maven mirror or registry on loopback.
    case host
    /// The runtime's default bridge: outside access, but not the host's loopback.
    case bridge
    /// No network at all: the build needs nothing it has not got.
    case none
}

/// Longest each step may run before the build fails with a timeout.
public struct StepTimeouts: Sendable {
    public var fetch: Duration
    public var compile: Duration
    public var image: Duration
    public var push: Duration

    public init(fetch: Duration = .seconds(600), compile: Duration = .seconds(1800), image: Duration = .seconds(900), push: Duration = .seconds(600)) {
        self.fetch = fetch
        self.compile = compile
        self.image = image
        self.push = push
    }
}

/// How long a simulated build lasts: a fixed number of seconds (`2`) or a range (`0.5-3`)
/// from which each build draws uniformly.
public struct SimulatedDuration: Sendable, Equatable, CustomStringConvertible {
    public let lower: Double
    public let upper: Double

    public init(seconds: Double) {
        self.lower = seconds
        self.upper = seconds
    }

    /// `"2"`, `"0"` or `"0.5-3"` (seconds); nil for anything else, negative or reversed.
    public init?(_ text: String) {
        let parts = text.split(separator: "-", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
        guard (1...2).contains(parts.count), let lo = Double(parts[0]), let hi = Double(parts.last!),
              lo.isFinite, hi.isFinite, lo >= 0, lo <= hi else { return nil }
        self.lower = lo
        self.upper = hi
    }

    /// One build's duration.
    public func draw() -> Duration {
        .milliseconds(Int((Double.random(in: lower...upper) * 1000).rounded()))
    }

    public var description: String { lower == upper ? "\(lower) s" : "\(lower)-\(upper) s" }
}
