import DockerAPI
import Etcd
import Foundation
import KilnCore
import TLSTrust
import Processes

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
    /// This agent's `name:token` for the registry's token service (`--registry-credentials`),
    /// handed to the engine on push only: never to a build container. Nil: push anonymously
    /// (a registry without authentication).
    public var registryCredentials: RegistryCredentials?
    /// The schedulers' API addresses (`SchedulerURLs.parse`) the agent asks for each build's
    /// secrets, with `registryCredentials` as its login. Empty: builds get no secrets or
    /// credentials (said at start and in each build's log).
    public var schedulers: [String] = []
    /// A CA trusted besides the system's roots for `https://` schedulers and the agent's own
    /// calls to the registry's API (`--ca-file`).
    public var schedulerCA: TrustedCA?
    /// A Maven repository mirror (for example Nexus) written into the global settings.xml
    /// mounted into compile containers; nil leaves the build image's settings alone.
    public var mavenMirror: String?
    /// Network of compile containers and of the image step's `RUN` instructions. `bridge`
    /// (the default) keeps builds off the host's loopback, where etcd, the scheduler and the
    /// registry listen; `host` hands them all of it and is for a trusted farm only.
    public var compileNetwork: CompileNetwork
    /// Memory, CPU and process limits of every build container; a project may ask for less.
    public var limits: BuildLimits
    /// Folders whose git repositories projects may name with `file://`; empty: none. A
    /// repository inside `dataDir` (mirrors, caches, workspaces) is refused whatever this says.
    public var allowFileRepos: [URL]
    /// Which git servers a fetch may connect to (`FetchPolicy`): by default none on loopback,
    /// link-local, metadata, multicast or this machine's own addresses.
    public var fetchPolicy: FetchPolicy
    /// Bound the processes of the Dockerfile's RUN steps through a cgroup of the agent's own
    /// (`ImageCgroup`; needs cgroup v1 and a container engine using cgroupfs, not systemd).
    public var imagePidsCgroup: Bool
    public var timeouts: StepTimeouts
    public var version: String
    /// Set: the agent builds nothing and runs each task with `SimulatedBuildRunner` for this
    /// long (benchmarks and chaos tests). Nil: real builds.
    public var simulate: SimulatedDuration?
    /// With `simulate`: bytes of output each simulated build writes to its log, drawn per
    /// build (`--simulate-log`); nil writes only the agent's two lines.
    public var simulateLog: SimulatedSize?
    /// With `simulate`: bytes each simulated build adds to its project's git mirror and Maven
    /// cache folders, as real files the `DiskKeeper` measures and evicts (`--simulate-disk`).
    public var simulateDisk: SimulatedSize?
    /// The `kiln` executable a fetch runs in (its hidden `git-fetch`, so a step's time limit
    /// or a cancel can kill it): by default this process when it is `kiln`, else `KILN_BIN`,
    /// else the `kiln` built beside this executable (`KilnExecutable.locate`). Nil: none was
    /// found, and the agent refuses to start real builds.
    public var kilnExecutable: URL?
    /// The most a build's log may hold, in bytes; past it the log says where it was cut and
    /// how much was dropped, and the build goes on.
    public var maxLogBytes: Int
    /// Bytes the git mirrors and Maven caches may hold (`--disk-budget`); past it the least
    /// recently used go. Nil: half of the data dir's free space at start plus what they hold.
    public var diskBudget: Int64?
    /// Free bytes below which the agent refuses new builds (`--min-free`). Nil: a tenth of the
    /// data dir's filesystem, at most 10 GiB.
    public var minFree: Int64?
    /// Images kept per project after a successful push, for layer reuse (`--keep-images`).
    public var keepImages: Int = AgentConfiguration.defaultKeepImages
    /// How builds write their project's caches (`--cache-writes`): `.onSuccess` keeps what a
    /// build wrote only when it succeeds (`CacheLayers`), `.direct` writes in place.
    public var cacheWrites: CacheWrites = .onSuccess
    /// How often the agent measures its free space (and publishes it when it changed).
    public var diskCheckInterval: Duration = .seconds(30)
    /// How long the agent tries to write a build's record or log before it gives the build
    /// up (`BuildReporter`): then it releases the build's task so that the slot does not stay
    /// taken, and goes on trying to record the end in the background (`PendingEnds`).
    public var etcdRetryLimit: Duration = .seconds(600)
    /// Whether a build whose inputs equal an earlier successful build's takes that build's image
    /// instead of compiling (`--no-reuse-builds` turns it off for this agent; docs/reuse.md).
    public var reuseBuilds: Bool = true

    public enum CacheWrites: String, Sendable, CaseIterable {
        /// Each build writes into an overlay layer of its own, kept only if the build succeeds.
        case onSuccess = "on-success"
        /// Builds write the cache in place, one build of a project at a time.
        case direct
    }

    /// 2: the layers of a project's last two images, enough for a branch and its main line.
    public static let defaultKeepImages = 2

    /// 64 MiB: a log larger than that is read by nobody, and etcd keeps every byte.
    public static let defaultMaxLogBytes = 64 << 20
    /// Below this a cap would cut the agent's own step lines.
    public static let minimumMaxLogBytes = 64 << 10

    /// A size as `--max-log-size` and `--disk-budget` take it: bytes (`1048576`), or a number
    /// with `K`, `M`, `G` or `T` (powers of 1024, an optional `iB`/`B` after it: `64M`,
    /// `64MiB`, `50GiB`). Nil for anything else.
    public static func parseSize(_ text: String) -> Int? {
        var t = text.trimmingCharacters(in: .whitespaces).uppercased()
        for suffix in ["IB", "B"] where t.hasSuffix(suffix) && t.count > suffix.count {
            t.removeLast(suffix.count)
            break
        }
        var shift = 0
        if let last = t.last, let s = ["K": 10, "M": 20, "G": 30, "T": 40][String(last)] {
            shift = s
            t.removeLast()
        }
        guard !t.isEmpty, t.allSatisfy(\.isASCII), t.allSatisfy(\.isNumber), let n = Int(t), n <= (Int.max >> shift) else { return nil }
        return n << shift
    }

    public init(
        id: String, capacity: Int = 2, labels: [String] = [], ttlSeconds: Int64 = 10, dataDir: URL,
        etcdEndpoint: String = "http://127.0.0.1:2379", keyPrefix: String = "/kiln",
        dockerSocket: String = "/run/podman/podman.sock", registry: String = "127.0.0.1:5000",
        registryInsecure: Bool = true, mavenMirror: String? = nil, compileNetwork: CompileNetwork = .bridge,
        limits: BuildLimits = .agentDefault, allowFileRepos: [URL] = [], fetchPolicy: FetchPolicy = FetchPolicy(), imagePidsCgroup: Bool = true, timeouts: StepTimeouts = .init(),
        version: String = "0.1.0", simulate: SimulatedDuration? = nil,
        kilnExecutable: URL? = KilnExecutable.locate(), maxLogBytes: Int = AgentConfiguration.defaultMaxLogBytes,
        registryCredentials: RegistryCredentials? = nil
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
        self.limits = limits
        self.allowFileRepos = allowFileRepos
        self.fetchPolicy = fetchPolicy
        self.imagePidsCgroup = imagePidsCgroup
        self.timeouts = timeouts
        self.version = version
        self.simulate = simulate
        self.kilnExecutable = kilnExecutable
        self.maxLogBytes = maxLogBytes
        self.registryCredentials = registryCredentials
    }
}

/// The network of build containers, as the Docker Engine API names it (`HostConfig.NetworkMode`).
public enum CompileNetwork: String, Codable, Sendable, CaseIterable {
    /// The host's network: the build reaches everything on the host's loopback (etcd, the
    /// scheduler, the registry). Only for a farm whose every build is trusted.
    case host
    /// The runtime's default bridge: outside access and the host's services that listen on
    /// the bridge (`host.containers.internal`), but not the host's loopback.
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

/// How many bytes a simulated build writes (its log, or to its project's folders): a fixed size
/// (`64K`) or a range (`10K-4M`) from which each build draws log-uniformly, so that every
/// power of ten between the bounds is as likely as the next (most logs are small, a few big).
public struct SimulatedSize: Sendable, Equatable, CustomStringConvertible {
    public let lower: Int
    public let upper: Int

    /// `"64K"` or `"10K-4M"` (sizes as `AgentConfiguration.parseSize` reads them); nil for
    /// anything else, zero or reversed.
    public init?(_ text: String) {
        let parts = text.split(separator: "-", omittingEmptySubsequences: false).map(String.init)
        guard (1...2).contains(parts.count), let lo = AgentConfiguration.parseSize(parts[0]), let hi = AgentConfiguration.parseSize(parts.last!),
              lo > 0, lo <= hi else { return nil }
        self.lower = lo
        self.upper = hi
    }

    /// One build's size.
    public func draw() -> Int {
        guard lower < upper else { return lower }
        return Int(exp(Double.random(in: log(Double(lower))...log(Double(upper)))).rounded())
    }

    public var description: String { lower == upper ? "\(lower) bytes" : "\(lower)-\(upper) bytes (log-uniform)" }
}
