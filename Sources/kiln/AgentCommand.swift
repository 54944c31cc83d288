import ArgumentParser
import BuildAgent
import Etcd
import Foundation
import KilnCore
import Logging
import ServiceLifecycle

struct AgentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "agent",
        abstract: "Register as a builder in etcd and run the builds assigned to it.",
        discussion: """
        Registers /kiln/agents/ID under a lease (renewed every third of --ttl; registered \
        again if lost), watches /kiln/tasks/ID/, and runs each build: fetch with libgit2 into \
        a mirror per project, compile in a container through the Docker Engine API (with the \
        project's own Maven cache when mvncache is on), build the image, push it.

        Example:
          kiln agent --id agent-1 --capacity 2 --labels jdk17,maven --data-dir /var/lib/kiln/agent-1 \\
            --docker-socket /run/podman/podman.sock --registry 127.0.0.1:5000
        """)

    @OptionGroup var etcd: EtcdOptions

    @Option(name: .long, help: ArgumentHelp("Agent id, unique in the farm (env KILN_AGENT_ID; default: the host name).", valueName: "name"))
    var id: String = env("KILN_AGENT_ID", ProcessInfo.processInfo.hostName)

    @Option(name: .long, help: "Builds run at once.")
    var capacity: Int = Int(env("KILN_CAPACITY", "2")) ?? 2

    @Option(name: .long, help: ArgumentHelp("Labels, comma-separated.", valueName: "a,b"))
    var labels: String = env("KILN_LABELS", "")

    @Option(name: .long, help: ArgumentHelp("Registration lease TTL in seconds.", valueName: "seconds"))
    var ttl: Int = 10

    @Option(name: .long, help: ArgumentHelp("Folder for mirrors, Maven caches and workspaces; one agent per folder (env KILN_DATA_DIR).", valueName: "dir"))
    var dataDir: String = env("KILN_DATA_DIR", "./kiln-data/agent")

    @Option(name: .long, help: ArgumentHelp("Docker Engine API socket: podman's service or dockerd (env KILN_DOCKER_SOCKET).", valueName: "path"))
    var dockerSocket: String = env("KILN_DOCKER_SOCKET", "/run/podman/podman.sock")

    @Option(name: .long, help: ArgumentHelp("Registry to push to (env KILN_REGISTRY).", valueName: "host:port"))
    var registry: String = env("KILN_REGISTRY", "127.0.0.1:5000")

    @Flag(name: .long, inversion: .prefixedNo, help: "Push over plain HTTP (a registry without TLS).")
    var insecureRegistry = true

    @Option(name: .long, help: ArgumentHelp("Maven repository mirror URL for compile containers (env KILN_MAVEN_MIRROR).", valueName: "url"))
    var mavenMirror: String? = ProcessInfo.processInfo.environment["KILN_MAVEN_MIRROR"]

    @Option(name: .long, help: ArgumentHelp("Network of compile containers: host, bridge or none.", valueName: "mode"))
    var compileNetwork: CompileNetwork = .host

    @Option(name: .long, help: ArgumentHelp("Time limits of the steps, in seconds: fetch,compile,image,push.", valueName: "f,c,i,p"))
    var timeouts: String = "600,1800,900,600"

    // Hidden: for the benchmarks (kiln-bench) and FarmTests, not for a farm's users.
    @Option(name: .long, help: ArgumentHelp("Build nothing: run each task for this many seconds (a number, or a range such as 0.5-3 drawn per build) and finish it succeeded, through the same etcd writes as a real build. For benchmarks and chaos tests; the container, registry and Maven options are ignored.", valueName: "seconds", visibility: .hidden))
    var simulate: String?

    func validate() throws {
        do { try Validation.agentID(id) } catch { throw ValidationError("--id: \(error)") }
        guard capacity >= 1 else { throw ValidationError("--capacity must be at least 1") }
        guard ttl >= 2 else { throw ValidationError("--ttl must be at least 2 seconds (etcd's shortest useful lease)") }
        for l in parsedLabels { do { try Validation.label(l) } catch { throw ValidationError("--labels: \(error)") } }
        guard parsedTimeouts != nil else { throw ValidationError("--timeouts must be four positive numbers of seconds: fetch,compile,image,push (for example 600,1800,900,600)") }
        if let simulate, SimulatedDuration(simulate) == nil {
            throw ValidationError("--simulate must be seconds (for example 0 or 2) or a range of seconds (for example 0.5-3), not '\(simulate)'")
        }
    }

    var parsedLabels: [String] { labels.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty } }
    var parsedTimeouts: StepTimeouts? {
        let n = timeouts.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard n.count == 4, n.allSatisfy({ $0 > 0 }) else { return nil }
        return StepTimeouts(fetch: .seconds(n[0]), compile: .seconds(n[1]), image: .seconds(n[2]), push: .seconds(n[3]))
    }

    func run() async throws {
        let logger = KilnLogging.bootstrap(etcd.logLevel)
        var config = AgentConfiguration(
            id: id, capacity: capacity, labels: parsedLabels, ttlSeconds: Int64(ttl),
            dataDir: URL(fileURLWithPath: dataDir).standardizedFileURL, etcdEndpoint: etcd.etcd, keyPrefix: etcd.prefix,
            dockerSocket: dockerSocket, registry: registry, registryInsecure: insecureRegistry, mavenMirror: mavenMirror,
            compileNetwork: compileNetwork, timeouts: parsedTimeouts!, version: KilnVersion.current,
            simulate: simulate.flatMap(SimulatedDuration.init))
        config.etcdCredentials = try etcd.access.readCredentials()
        config.etcdTLS = etcd.access.tls
        let agent = AgentService(configuration: config, logger: logger)
        if let duration = config.simulate {
            logger.notice("kiln agent \(id): SIMULATED builds of \(duration) (nothing is built), capacity \(capacity), data \(config.dataDir.path), etcd \(etcd.etcd)")
        } else {
            logger.notice("kiln agent \(id): capacity \(capacity), data \(config.dataDir.path), etcd \(etcd.etcd), containers \(dockerSocket), registry \(registry)")
        }
        let group = ServiceGroup(configuration: .init(services: [.init(service: agent)], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
    }
}
