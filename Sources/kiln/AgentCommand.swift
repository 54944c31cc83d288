import ArgumentParser
import BuildAgent
import DockerAPI
import Etcd
import Foundation
import KilnCore
import Logging
import Processes
import ServiceLifecycle

struct AgentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "agent",
        abstract: "Register as a builder in etcd and run the builds assigned to it.",
        discussion: """
        Registers /kiln/agents/ID under a lease (renewed every third of --ttl; registered \
        again if lost), watches /kiln/tasks/ID/, and runs each build: fetch with libgit2 into \
        a mirror per project, compile in a container through the Docker Engine API (with the \
        project's own caches when mvncache is on), build the image, push it.

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

    @Flag(name: .long, inversion: .prefixedNo, help: """
        Push and pull over plain HTTP (a registry without TLS). Default: plain HTTP only for a \
        registry on loopback (127.0.0.1, ::1, localhost), TLS for any other.
        """)
    var insecureRegistry: Bool?

    /// Plain HTTP when asked for, else only on loopback: a registry elsewhere speaks TLS, and
    /// a push over plain HTTP would send its bearer token in clear.
    var registryIsPlainHTTP: Bool {
        if let insecureRegistry { return insecureRegistry }
        let host = registry.hasPrefix("[") ? String(registry.dropFirst().prefix { $0 != "]" }) : String(registry.prefix { $0 != ":" })
        return host == "localhost" || host == "::1" || host.hasPrefix("127.")
    }

    @Option(name: .long, help: ArgumentHelp("""
        File (mode 0600) holding this agent's registry credentials as ID:TOKEN, the user being \
        --id (env KILN_REGISTRY_CREDENTIALS). Sent to the registry's token service (the \
        scheduler's /auth/token) on push, which grants push only to the repositories of the \
        builds assigned to this agent; never given to a build. `kiln up` writes one per agent; \
        make one with `kiln machine add ID --kind agent --out FILE`. Without it pushes are \
        anonymous, which a registry with token authentication refuses.
        """, valueName: "file"))
    var registryCredentials: String? = ProcessInfo.processInfo.environment["KILN_REGISTRY_CREDENTIALS"]

    @Option(name: .long, help: ArgumentHelp("""
        The scheduler's API address, or several comma-separated, tried in turn (env \
        KILN_SCHEDULER): at the start of every build the agent asks it for that build's \
        secrets (the project's git credential, registry logins and build secrets), logging in \
        with --registry-credentials; the scheduler gives them only to the agent it assigned \
        the build to. http:// only for a scheduler on this machine's loopback, https:// \
        elsewhere (its CA in --ca-file, if it is the farm's own; docs/tls.md). Without it builds get no secrets or credentials (a warning at start and in \
        every build's log), and projects that need them fail.
        """, valueName: "url[,url…]"))
    var scheduler: String? = ProcessInfo.processInfo.environment["KILN_SCHEDULER"].flatMap { $0.isEmpty ? nil : $0 }

    /// `--ca-file`: the CA of the schedulers' certificates (`https://` --scheduler), besides the system's roots.
    @OptionGroup var ca: CAFileOption

    @Option(name: .long, help: ArgumentHelp("Maven repository mirror URL for compile containers (env KILN_MAVEN_MIRROR).", valueName: "url"))
    var mavenMirror: String? = ProcessInfo.processInfo.environment["KILN_MAVEN_MIRROR"]

    @Option(name: .long, help: ArgumentHelp("""
        Network of build containers (compile step and the Dockerfile's RUN steps): bridge (default) \
        reaches the outside and services listening on the bridge (host.containers.internal) but \
        not this machine's loopback, where etcd, the scheduler and the registry listen; none has \
        no network; host hands every build all of this machine's network and is for a farm whose \
        every build is trusted (a warning is logged). Env KILN_COMPILE_NETWORK.
        """, valueName: "mode"))
    var compileNetwork: CompileNetwork = CompileNetwork(rawValue: env("KILN_COMPILE_NETWORK", "bridge")) ?? .bridge

    @Option(name: .long, help: ArgumentHelp("Memory of each build container, such as 4g or 512m; a project may ask for less, never more. 0: no limit (env KILN_BUILD_MEMORY).", valueName: "size"))
    var buildMemory: String = env("KILN_BUILD_MEMORY", "4g")

    @Option(name: .long, help: ArgumentHelp("CPUs each build container may keep busy, such as 2 or 1.5; 0: no limit (env KILN_BUILD_CPUS).", valueName: "cpus"))
    var buildCpus: String = env("KILN_BUILD_CPUS", "2")

    @Option(name: .long, help: ArgumentHelp("Processes and threads at once in a build container (stops a fork bomb; for the Dockerfile's RUN steps see --image-pids-cgroup); 0: no limit (env KILN_BUILD_PIDS).", valueName: "n"))
    var buildPids: Int = Int(env("KILN_BUILD_PIDS", "4096")) ?? 4096

    @Flag(name: .long, inversion: .prefixedNo, help: ArgumentHelp("""
        Bound the processes of the Dockerfile's RUN steps (to --build-pids) through a cgroup the \
        agent makes under /sys/fs/cgroup/pids (the container API has no such limit for image \
        builds). Needs cgroup v1 and an engine using cgroupfs; turn it off for one using systemd \
        (env KILN_IMAGE_PIDS_CGROUP=0). Besides, the engine's runtime can limit each RUN \
        container and give it no-new-privileges on any cgroup version: docs/build-sandbox.md.
        """))
    var imagePidsCgroup = env("KILN_IMAGE_PIDS_CGROUP", "1") != "0"

    @Option(name: .long, help: ArgumentHelp("""
        A folder whose git repositories projects may name with file:// (repeat for more; env \
        KILN_ALLOW_FILE_REPOS, colon-separated). Without it file:// repositories are refused: one \
        on the agent's disk could be another project's. Never allowed inside --data-dir.
        """, valueName: "dir"))
    var allowFileRepos: [String] = env("KILN_ALLOW_FILE_REPOS", "").split(separator: ":").map(String.init)

    @Option(name: .long, help: ArgumentHelp("""
        A git server the agent may fetch from whatever its name resolves to, as HOST:PORT the \
        way repository URLs name it (repeat for more; env KILN_ALLOW_FETCH_FROM, \
        comma-separated). HOST alone means git's standard ports 22, 80, 443 and 9418; an IPv6 \
        address goes in brackets ([::1]:3000). The agent fetches on this machine's network, \
        so without this it refuses any server that resolves to a loopback, link-local (cloud \
        metadata), multicast or reserved address, or to an address of this machine: that is \
        where etcd, the scheduler and the registry answer. Matched exactly: 127.0.0.1:3000 \
        allows neither localhost:3000 nor 127.0.0.1:3001.
        """, valueName: "host:port"))
    var allowFetchFrom: [String] = env("KILN_ALLOW_FETCH_FROM", "").split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }

    @Flag(name: .long, help: ArgumentHelp("""
        Also refuse git servers in private ranges (10/8, 172.16/12, 192.168/16, 100.64/10, \
        fc00::/7), for an agent whose repositories are all on the internet; allow the ones \
        you need with --allow-fetch-from. By default private servers are fetched from, since \
        a company's own GitLab usually lives there (env KILN_DENY_PRIVATE_FETCH=1).
        """))
    var denyPrivateFetch = env("KILN_DENY_PRIVATE_FETCH", "0") == "1"

    @Option(name: .long, help: ArgumentHelp("Time limits of the steps, in seconds: fetch,compile,image,push.", valueName: "f,c,i,p"))
    var timeouts: String = "600,1800,900,600"

    @Option(name: .long, help: ArgumentHelp("Most a build's log may hold (env KILN_MAX_LOG_SIZE): bytes, or with a K, M or G suffix (powers of 1024). Past it the log says where it was cut and how much was dropped; the build goes on.", valueName: "size"))
    var maxLogSize: String = env("KILN_MAX_LOG_SIZE", "64M")

    @Option(name: .long, help: ArgumentHelp("""
        What the git mirrors and Maven caches in --data-dir may hold, such as 50GiB or 800M \
        (env KILN_DISK_BUDGET). Past it the ones used least recently are deleted after a build \
        (never those of a project building on this agent); they are made again when needed. \
        Default: half of the free space of the data dir's filesystem at start plus what they \
        already hold, leaving the other half to checkouts, the images the engine builds and \
        the rest of the machine. docs/agents.md.
        """, valueName: "size"))
    var diskBudget: String? = ProcessInfo.processInfo.environment["KILN_DISK_BUDGET"].flatMap { $0.isEmpty ? nil : $0 }

    @Option(name: .long, help: ArgumentHelp("""
        Free space to keep on the data dir's filesystem (and on the container engine's storage \
        when that is another one on this machine), such as 10GiB (env KILN_MIN_FREE). Below it \
        the agent evicts mirrors, caches and kept images beyond its budget, and if that is not \
        enough it refuses new builds, with the reason in its registration (`kiln agents`), until \
        space is back; running builds go on. Default: a tenth of the filesystem, at most 10GiB.
        """, valueName: "size"))
    var minFree: String? = ProcessInfo.processInfo.environment["KILN_MIN_FREE"].flatMap { $0.isEmpty ? nil : $0 }

    @Option(name: .long, help: ArgumentHelp("""
        Images kept per project in the engine's storage after a successful push, so that the \
        next build of the project reuses their layers instead of running every Dockerfile step \
        again (env KILN_KEEP_IMAGES). They keep only a name no build may use; 0 removes every \
        image once pushed. Kept images go with their project's mirror when it is evicted, and \
        first when space runs short.
        """, valueName: "n"))
    var keepImages: Int = Int(env("KILN_KEEP_IMAGES", "\(AgentConfiguration.defaultKeepImages)")) ?? AgentConfiguration.defaultKeepImages

    @Option(name: .long, help: ArgumentHelp("""
        How builds write their project's caches (env KILN_CACHE_WRITES). on-success (the \
        default): each build writes into an overlay layer of its own, which joins the cache only \
        if the build succeeds, so a failed, cancelled or timed-out build leaves the cache as it \
        was, and builds of one project run at once. Needs root and a data dir on a filesystem \
        overlayfs writes into (ext4, xfs); the agent checks at start. direct: builds write the \
        cache in place, one build of a project at a time, and a failed build's writes stay.
        """, valueName: "on-success|direct"))
    var cacheWrites: String = env("KILN_CACHE_WRITES", AgentConfiguration.CacheWrites.onSuccess.rawValue)

    @Flag(name: .long, inversion: .prefixedNo, help: ArgumentHelp("""
        Let a build whose inputs (the commit's tree, the build image, the command, the caches \
        switch, the Dockerfile's base images, …) equal an earlier successful build's of the same \
        project take that build's image: the registry gets the new tag for the same manifest, \
        and nothing is compiled (docs/reuse.md). --no-reuse-builds builds everything for real \
        (env KILN_REUSE_BUILDS=0).
        """))
    var reuseBuilds = env("KILN_REUSE_BUILDS", "1") != "0"

    // Hidden: for the benchmarks (kiln-bench) and FarmTests, not for a farm's users.
    @Option(name: .long, help: ArgumentHelp("Build nothing: run each task for this many seconds (a number, or a range such as 0.5-3 drawn per build) and finish it succeeded, through the same etcd writes as a real build. For benchmarks and chaos tests; the container, registry and Maven options are ignored.", valueName: "seconds", visibility: .hidden))
    var simulate: String?

    @Option(name: .long, help: ArgumentHelp("With --simulate: bytes of output each build writes to its log, a size (64K) or a range drawn log-uniformly per build (10K-4M).", valueName: "size", visibility: .hidden))
    var simulateLog: String?

    @Option(name: .long, help: ArgumentHelp("With --simulate: bytes each build adds to its project's mirror and Maven cache folders, as real files the disk budget measures and evicts; a size or a range (1M-8M).", valueName: "size", visibility: .hidden))
    var simulateDisk: String?

    func validate() throws {
        do { try Validation.agentID(id) } catch { throw ValidationError("--id: \(error)") }
        guard capacity >= 1 else { throw ValidationError("--capacity must be at least 1") }
        guard ttl >= 2 else { throw ValidationError("--ttl must be at least 2 seconds (etcd's shortest useful lease)") }
        for l in parsedLabels { do { try Validation.label(l) } catch { throw ValidationError("--labels: \(error)") } }
        guard parsedTimeouts != nil else { throw ValidationError("--timeouts must be four positive numbers of seconds: fetch,compile,image,push (for example 600,1800,900,600)") }
        guard parsedLimits != nil else {
            throw ValidationError("--build-memory must be a size such as 4g, 512m or 0 (no limit) of at least 64m; --build-cpus a number such as 2 or 1.5 (0: no limit); --build-pids at least 32 (0: no limit)")
        }
        for dir in allowFileRepos where !dir.hasPrefix("/") {
            throw ValidationError("--allow-file-repos needs an absolute folder, not '\(dir)'")
        }
        do { _ = try parsedFetchPolicy() } catch let error as FetchAllowanceError { throw ValidationError(error.message) }
        guard let size = AgentConfiguration.parseSize(maxLogSize), size >= AgentConfiguration.minimumMaxLogBytes else {
            throw ValidationError("--max-log-size must be a size of at least 64K: bytes, or a number with K, M or G (for example 64M), not '\(maxLogSize)'")
        }
        if let path = registryCredentials {
            let credentials: UserPassword
            do { credentials = try UserPassword.read(path) } catch { throw ValidationError("--registry-credentials: \(error)") }
            guard credentials.user == id else {
                throw ValidationError("--registry-credentials: \(path) holds the credentials of '\(credentials.user)', not of this agent '\(id)': the token service grants an agent the repositories of its own builds only")
            }
        }
        if let scheduler {
            do { _ = try SchedulerURLs.parse(scheduler) } catch { throw ValidationError("--scheduler: \(error)") }
            guard registryCredentials != nil || simulate != nil else {
                throw ValidationError("--scheduler needs --registry-credentials: the scheduler gives a build's secrets only to the agent it knows by that machine credential (make one with `kiln machine add \(id) --kind agent --out FILE`)")
            }
        }
        if let diskBudget, AgentConfiguration.parseSize(diskBudget).map({ $0 >= 1 << 20 }) != true {
            throw ValidationError("--disk-budget must be a size of at least 1M: bytes, or a number with K, M, G or T (for example 50GiB), not '\(diskBudget)'")
        }
        if let minFree, AgentConfiguration.parseSize(minFree) == nil {
            throw ValidationError("--min-free must be a size: bytes, or a number with K, M, G or T (for example 10GiB; 0 never refuses), not '\(minFree)'")
        }
        guard AgentConfiguration.CacheWrites(rawValue: cacheWrites) != nil else {
            throw ValidationError("--cache-writes must be on-success or direct, not '\(cacheWrites)'")
        }
        guard keepImages >= 0 else { throw ValidationError("--keep-images must be 0 or more (0: remove every image once pushed)") }
        if let simulate, SimulatedDuration(simulate) == nil {
            throw ValidationError("--simulate must be seconds (for example 0 or 2) or a range of seconds (for example 0.5-3), not '\(simulate)'")
        }
        for (name, value) in [("--simulate-log", simulateLog), ("--simulate-disk", simulateDisk)] {
            guard let value else { continue }
            guard simulate != nil else { throw ValidationError("\(name) goes with --simulate only") }
            guard SimulatedSize(value) != nil else {
                throw ValidationError("\(name) must be a size (for example 64K) or a range of sizes (for example 10K-4M), not '\(value)'")
            }
        }
    }

    var parsedLabels: [String] { labels.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty } }
    var parsedLimits: BuildLimits? {
        var limits = BuildLimits()
        if buildMemory.trimmingCharacters(in: .whitespaces) != "0" {
            guard let bytes = BuildLimits.parseBytes(buildMemory) else { return nil }
            limits.memoryBytes = bytes
        }
        guard let cpus = Double(buildCpus), cpus >= 0 else { return nil }
        if cpus > 0 { limits.cpus = cpus }
        guard buildPids >= 0 else { return nil }
        if buildPids > 0 { limits.pids = buildPids }
        do { try limits.validate(field: "agent limits") } catch { return nil }
        return limits
    }

    func parsedFetchPolicy() throws -> FetchPolicy {
        try FetchPolicy(parsing: allowFetchFrom, denyPrivate: denyPrivateFetch)
    }

    var parsedTimeouts: StepTimeouts? {
        let n = timeouts.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard n.count == 4, n.allSatisfy({ $0 > 0 }) else { return nil }
        return StepTimeouts(fetch: .seconds(n[0]), compile: .seconds(n[1]), image: .seconds(n[2]), push: .seconds(n[3]))
    }

    /// What this agent hands to other hosts or to its builds that they cannot reach
    /// (docs/hosts.md): the registry name it records in every image (cells pull it), and a
    /// Maven mirror on loopback, which a bridged build container reaches as itself.
    var addressWarnings: [String] {
        var warnings: [String] = []
        if let w = HostReach.warning(option: "--registry", address: registry, readers: "cells and schedulers, which pull and check the images it records",
                                     etcd: etcd.etcd, fix: "Give --registry (env KILN_REGISTRY) the name every builder, cell and scheduler host resolves to the registry, and the same on the schedulers (docs/hosts.md).") {
            warnings.append(w)
        }
        for url in (scheduler ?? "").split(separator: ",").map(String.init) {
            if let w = HostReach.warning(option: "--scheduler", address: url, readers: "this agent, which asks it for each build's secrets",
                                         etcd: etcd.etcd, fix: "Give the schedulers' https:// addresses (docs/hosts.md), unless a scheduler of this farm runs on this very host.") {
                warnings.append(w)
            }
        }
        if let mirror = mavenMirror, compileNetwork != .host, let host = HostReach.host(of: mirror), HostReach.isLoopback(host) {
            warnings.append("--maven-mirror names \(host), a loopback address, which a build container on the \(compileNetwork.rawValue) network reaches as itself: give a name the container resolves (host.containers.internal for this machine, or the mirror's host name; docs/hosts.md)")
        }
        return warnings
    }

    func run() async throws {
        let logger = KilnLogging.bootstrap(etcd.logLevel)
        var config = AgentConfiguration(
            id: id, capacity: capacity, labels: parsedLabels, ttlSeconds: Int64(ttl),
            dataDir: URL(fileURLWithPath: dataDir).standardizedFileURL, etcdEndpoint: etcd.etcd, keyPrefix: etcd.prefix,
            dockerSocket: dockerSocket, registry: registry, registryInsecure: registryIsPlainHTTP, mavenMirror: mavenMirror,
            compileNetwork: compileNetwork, limits: parsedLimits!,
            allowFileRepos: allowFileRepos.map { URL(fileURLWithPath: $0).standardizedFileURL }, fetchPolicy: try parsedFetchPolicy(), imagePidsCgroup: imagePidsCgroup,
            timeouts: parsedTimeouts!, version: KilnVersion.current,
            simulate: simulate.flatMap(SimulatedDuration.init),
            // This very program runs the fetches (`kiln git-fetch`), whatever its file is named.
            kilnExecutable: KilnExecutable.current, maxLogBytes: AgentConfiguration.parseSize(maxLogSize)!,
            registryCredentials: try registryCredentials.map(RegistryCredentials.read))
        if simulate == nil, let scheduler { config.schedulers = try SchedulerURLs.parse(scheduler) }
        config.schedulerCA = try ca.trusted()
        config.diskBudget = diskBudget.flatMap(AgentConfiguration.parseSize).map(Int64.init)
        config.minFree = minFree.flatMap(AgentConfiguration.parseSize).map(Int64.init)
        config.keepImages = keepImages
        config.cacheWrites = AgentConfiguration.CacheWrites(rawValue: cacheWrites) ?? .onSuccess
        config.reuseBuilds = reuseBuilds
        config.simulateLog = simulateLog.flatMap(SimulatedSize.init)
        config.simulateDisk = simulateDisk.flatMap(SimulatedSize.init)
        config.etcdCredentials = try etcd.access.readCredentials()
        config.etcdTLS = etcd.access.tls
        let agent = AgentService(configuration: config, logger: logger)
        if let duration = config.simulate {
            logger.notice("kiln agent \(id): SIMULATED builds of \(duration) (nothing is built), capacity \(capacity), data \(config.dataDir.path), etcd \(etcd.etcd)")
        } else {
            logger.notice("kiln agent \(id): capacity \(capacity), data \(config.dataDir.path), etcd \(etcd.etcd), containers \(dockerSocket), registry \(registry); builds: network \(compileNetwork.rawValue), \(config.limits.description); \(config.fetchPolicy.summary); secrets from \(config.schedulers.isEmpty ? "nowhere (no --scheduler)" : config.schedulers.joined(separator: ", "))")
            for warning in addressWarnings { logger.warning("kiln agent \(id): \(warning)") }
            if compileNetwork == .host {
                logger.warning("kiln agent \(id): --compile-network host: every build runs on this machine's network and can reach etcd, the scheduler and the registry on loopback. Use it only when every build on this agent is trusted; the default is bridge")
            }
        }
        let group = ServiceGroup(configuration: .init(services: [.init(service: agent)], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
    }
}
