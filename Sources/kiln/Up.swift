import ArgumentParser
@preconcurrency import Dispatch
import Etcd
import Foundation
import KilnClient
import KilnCore
import LocalFarm
import Logging
import Plugins
#if canImport(Glibc)
import Glibc
#endif

struct Up: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "up",
        abstract: "Start a whole farm on this machine and build the demo project.",
        discussion: """
        Starts etcd (127.0.0.1:2379), the registry (127.0.0.1:5000), podman's Docker API \
        service, a Maven mirror over Debian's maven-repo (127.0.0.1:8081), a git server over \
        HTTP holding fixtures/demo (127.0.0.1:8082), the scheduler (127.0.0.1:7070), two \
        agents, two cells (podman API endpoints the demo app is deployed in, on a podman \
        storage of their own: what they pull never lies where builds run) and an lb-agent \
        with its nginx (127.0.0.1:8088), each as its own process. Every container of both \
        engines runs through `kiln oci-runtime` (no-new-privileges, at most --build-pids \
        processes), the Dockerfile's RUN steps included. Registers the demo project \
        with a pipeline (deploy ▶ lb ▶ retire), builds it, prints the step timings, deploys \
        it and prints the URL nginx serves it on, then keeps running until Ctrl-C (or \
        SIGTERM) and stops everything it started, app containers included.

        The registry accepts only tokens from the scheduler's /auth/token. Credentials are \
        kept in --data-dir/credentials/ (mode 0600): the token signing key and its \
        certificate, admin-token (the registry password of user admin; the login command is \
        printed), one registry-* file per agent and for the deployer, and secrets-key (the \
        scheduler's key that seals secrets in etcd: docs/secrets.md). \
        etcd has authentication on: each process has its own etcd user with only the keys it \
        needs (docs/etcd-auth.md), its credential in <data-dir>/credentials/ (mode 0600); \
        etcd's root credential is <data-dir>/credentials/etcd-root, for example \
        `etcdctl --endpoints http://127.0.0.1:2379 --user "$(cat kiln-data/credentials/etcd-root)" get --prefix /kiln/projects/`.

        All data lives in --data-dir, so a second `kiln up` reuses images, mirrors and caches. \
        The first run makes two base images with debootstrap (about 2 minutes, once).
        Needs root and Debian's packages: run scripts/install-deps.sh first (scripts/up.sh does both).
        """)

    @Option(name: .long, help: ArgumentHelp("Folder for all the farm's data (env KILN_DATA_DIR).", valueName: "dir"))
    var dataDir: String = env("KILN_DATA_DIR", "./kiln-data")

    @Option(name: .long, help: "Number of agents.") var agents: Int = 2
    @Option(name: .long, help: "Builds each agent runs at once.") var capacity: Int = 2
    @Option(name: .long, help: "etcd client port.") var etcdPort: Int = 2379
    @Option(name: .long, help: "etcd peer port.") var etcdPeerPort: Int = 2380
    @Option(name: .long, help: ArgumentHelp("""
        How long etcd keeps the history of its keys: it compacts every this long to the         revision it had this long ago (a Go duration: 5m, 1h). A watch away longer reads its         keys again; docs/etcd-operations.md.
        """, valueName: "duration"))
    var etcdCompactionRetention: String = "5m"
    @Option(name: .long, help: ArgumentHelp("""
        etcd's space quota (--quota-backend-bytes), in bytes (default: etcd's 2147483648, 2 GiB).         Past it etcd refuses every write until an operator frees space; the scheduler warns at 80 %.
        """, valueName: "bytes"))
    var etcdQuotaBytes: Int64?
    @Option(name: .long, help: "Registry port.") var registryPort: Int = 5000
    @Option(name: .long, help: "Scheduler API port.") var apiPort: Int = 7070
    @Option(name: .long, help: "Maven mirror port.") var mavenPort: Int = 8081
    @Option(name: .long, help: "Git server port.") var gitPort: Int = 8082
    @Option(name: .long, help: "Port nginx serves deployed apps on (the lb-agent of group 'local').") var lbPort: Int = 8088
    @Flag(name: .long, help: "Exit after the demo build (status 0 if it succeeded) instead of running until Ctrl-C.") var once = false
    @Flag(name: .long, help: "Do not build the demo project.") var noDemo = false
    @Flag(name: .long, inversion: .prefixedNo, help: "Use the Maven cache for the demo build.") var mvncache = true
    @Option(name: .long, help: ArgumentHelp("Log level of Kiln's own processes.", valueName: "level")) var logLevel: String = "info"
    @Option(name: .long, help: ArgumentHelp("""
        Processes and threads at once in any container the farm's engines start: the agents' \
        --build-pids, and the limit kiln oci-runtime sets for the Dockerfile's RUN steps and \
        the cells' app containers (env KILN_BUILD_PIDS).
        """, valueName: "n"))
    var buildPids: Int = Int(env("KILN_BUILD_PIDS", "\(OCIRuntimeWrapper.defaultPidsLimit)")) ?? -1

    func validate() throws {
        guard agents >= 1 else { throw ValidationError("--agents must be at least 1") }
        guard capacity >= 1 else { throw ValidationError("--capacity must be at least 1") }
        do { try etcdMaintenance.validate() } catch { throw ValidationError("\(error)") }
        guard BuildLimits.pidsRange.contains(buildPids) else {
            throw ValidationError("--build-pids (or KILN_BUILD_PIDS) must be a number of processes from \(BuildLimits.pidsRange.lowerBound) to \(BuildLimits.pidsRange.upperBound), such as 4096")
        }
        guard getuid() == 0 else {
            throw ValidationError("kiln up needs root (podman's storage, debootstrap): run it as root, e.g. sudo scripts/up.sh")
        }
    }

    func run() async throws {
        let logger = KilnLogging.bootstrap("warning")
        let data = URL(fileURLWithPath: dataDir).standardizedFileURL
        let say: @Sendable (String) -> Void = { line in FileHandle.standardOutput.write(Data((line + "\n").utf8)) }
        let signals = SignalWaiter()
        say("kiln up: data in \(data.path)")
        for (name, port, option) in [("scheduler API", apiPort, "--api-port"), ("nginx", lbPort, "--lb-port")] where FreePort.isInUse(port) {
            throw ValidationError("port \(port) (\(name)) is already in use on 127.0.0.1: stop whatever listens there, or pass \(option)")
        }
        let registryCredentials = try UpRegistryCredentials(dataDir: data, agents: agents)
        let infra = try await Infrastructure.start(
            dataDir: data, ports: .init(etcd: etcdPort, etcdPeer: etcdPeerPort, registry: registryPort, mavenMirror: mavenPort, git: gitPort),
            registryAuth: try registryCredentials.registryAuth(apiPort: apiPort), pidsLimit: buildPids, etcdMaintenance: etcdMaintenance,
            logger: logger, progress: say)
        let cellsRoot = data.appendingPathComponent("cells")
        var processes: [ManagedProcess] = []
        var cells: [PodmanService] = []
        func shutdown() async {
            say("kiln up: stopping")
            for p in processes.reversed() { p.stop(grace: 15) }
            // App containers outlive the API services that started them.
            if let ids = try? Infrastructure.cellsPodman(root: cellsRoot, ["ps", "-aq", "--filter", "label=kiln.app"]).output
                .split(whereSeparator: \.isNewline).map(String.init), !ids.isEmpty {
                _ = try? Infrastructure.cellsPodman(root: cellsRoot, ["rm", "-f", "-t", "5"] + ids)
            }
            for c in cells { c.stop() }
            await infra.stop()
            say("kiln up: stopped")
        }
        let outcome: Int32
        do {
            let commit = try infra.publishDemo()
            say("  demo repo    \(infra.repositoryURL("demo")) (main at \(commit.prefix(12)))")
            let exe = try selfExecutable()
            let logs = data.appendingPathComponent("logs")
            let api = "http://127.0.0.1:\(apiPort)"
            try await registryCredentials.registerMachines(etcd: infra.etcdUsers.rootClient, keys: Keys())
            say("starting the scheduler and \(agents) agents")
            // Each process authenticates to etcd as its own user, with its role's grants only.
            let schedulerCredentials = try await infra.etcdUsers.ensure(.scheduler)
            // The key that seals secrets in etcd: the scheduler's alone, never an agent's.
            let secretsKey = try LocalSecretsKey.ensure(credentialsDir: data.appendingPathComponent("credentials"))
            let scheduler = try ManagedProcess(
                name: "scheduler", executable: exe,
                arguments: ["scheduler", "--listen", "127.0.0.1:\(apiPort)", "--etcd", infra.etcd.endpoint,
                            "--etcd-credentials", schedulerCredentials.path, "--registry", infra.registry.address, "--log-level", logLevel,
                            "--secrets-key-file", secretsKey, "--log-archive", data.appendingPathComponent("log-archive").path]
                    + registryCredentials.schedulerArguments,
                logFile: logs.appendingPathComponent("scheduler.log"))
            processes.append(scheduler)
            try await scheduler.waitUntilReadyHTTP("\(api)/api/v1/health", timeout: 30)
            say("  scheduler    \(api)   (log: \(scheduler.logFile.path))")
            say("  console      \(api)/   (GitLab webhooks: \(api)/hooks/gitlab, metrics: \(api)/metrics)")
            for i in 1...agents {
                let id = "agent-\(i)"
                let agentCredentials = try await infra.etcdUsers.ensure(.agent(id))
                let agent = try ManagedProcess(
                    name: id, executable: exe,
                    arguments: ["agent", "--id", id, "--capacity", String(capacity), "--data-dir", data.appendingPathComponent("agents/\(id)").path,
                                "--etcd", infra.etcd.endpoint, "--etcd-credentials", agentCredentials.path, "--docker-socket", infra.podman.socketPath, "--registry", infra.registry.address,
                                "--maven-mirror", infra.mavenMirrorForBuilds, "--allow-fetch-from", infra.gitServerForFetches,
                                "--build-pids", String(buildPids), "--scheduler", api, "--log-level", logLevel] + registryCredentials.agentArguments(id),
                    logFile: logs.appendingPathComponent("\(id).log"))
                processes.append(agent)
            }
            // The scheduler made the first admin with this token (its --admin-token-file).
            let client = APIClient(api, token: try CredentialFile.read(registryCredentials.adminToken))
            try await waitForAgents(client: client, count: agents, processes: processes)
            say("  agents       \((1...agents).map { "agent-\($0)" }.joined(separator: ", ")) registered")

            // Where the demo app is deployed: two cells (two podman API endpoints on a storage
            // of their own, started at once) and nginx driven by an lb-agent of group "local".
            say("starting two cells and nginx")
            let cellsStart = Date()
            cells = try await Infrastructure.startCells(["a", "b"], root: cellsRoot, logs: logs, pidsLimit: buildPids)
            say("  cells' podman storage \(cellsRoot.path) (apart from the builders'; up in \(String(format: "%.1f", Date().timeIntervalSince(cellsStart))) s)")
            for (i, (name, service)) in zip(["a", "b"], cells).enumerated() {
                let cell = Cell(name: name, endpoint: "unix://\(service.socketPath)", firstPort: 20000 + i * 500, lastPort: 20499 + i * 500)
                _ = try await client.raw("PUT", "/api/v1/cells/\(name)", body: try KilnJSON.encoder().encode(cell))
                say("  cell \(name)       \(cell.endpoint), host ports \(cell.ports.lowerBound)-\(cell.ports.upperBound)")
            }
            let lbCredentials = try await infra.etcdUsers.ensure(.lbAgent(group: "local", id: "lb-1"))
            let lb = try ManagedProcess(
                name: "lb-agent", executable: exe,
                arguments: ["lb-agent", "--group", "local", "--id", "lb-1", "--listen", "127.0.0.1:\(lbPort)", "--dir", data.appendingPathComponent("lb/local").path,
                            "--etcd", infra.etcd.endpoint, "--etcd-credentials", lbCredentials.path, "--log-level", logLevel],
                logFile: logs.appendingPathComponent("lb-agent.log"))
            processes.append(lb)
            try await waitForLBAgent(client: client, process: lb)
            say("  nginx        http://127.0.0.1:\(lbPort)/ (lb-agent lb-1 of group local; log: \(lb.logFile.path))")

            if noDemo {
                outcome = 0
            } else {
                let project = Project(name: "demo", repository: infra.repositoryURL("demo"), buildImage: Infrastructure.buildImage,
                                      buildCommand: "mvn -B -q package", dockerfile: "Dockerfile", context: ".",
                                      pipeline: Up.demoPipeline)
                _ = try await client.post("/api/v1/projects", body: project, as: Project.self)
                let build = try await client.post("/api/v1/projects/demo/builds", body: BuildRequest(ref: "main", mvncache: mvncache, trigger: "kiln up"), as: Build.self)
                say("building demo: build \(build.id)")
                try await client.followLog(build.id) { text in
                    for line in text.split(separator: "\n", omittingEmptySubsequences: false) where !line.isEmpty { say("  | \(line)") }
                }
                let done = try await client.get("/api/v1/builds/\(build.id)", as: Build.self)
                say(Show.summary(done))
                if done.status == .succeeded, let image = done.imageByDigest ?? done.image {
                    say("""
                    log in to the registry as admin, then pull it:
                      \(registryCredentials.loginCommand(registry: infra.registry.address))
                      podman pull --tls-verify=false \(image)
                    """)
                }
                var served = false
                if done.deploy?.status == .succeeded {
                    let url = "http://demo.localhost:\(lbPort)/"
                    let page = try? await APIClient("").rawText("GET", "http://127.0.0.1:\(lbPort)/", host: "demo.localhost")
                    let title = page.flatMap(Up.heading)
                    served = title != nil
                    say("""
                    the demo app is live: \(url)  (served through nginx: "\(title ?? "no answer")")
                      curl -H 'Host: demo.localhost' http://127.0.0.1:\(lbPort)/
                      kiln apps demo
                    """)
                }
                outcome = done.status == .succeeded && served ? 0 : 1
            }
        } catch {
            say("kiln up: \(error)")
            await shutdown()
            throw ExitCode(1)
        }
        if once {
            await shutdown()
            throw ExitCode(outcome)
        }
        say("""

        Kiln is running. Log in as admin (the console takes the same token), then try:
          kiln login --token-file \(registryCredentials.adminToken)
          kiln builds
          kiln build demo --tag v1 --follow     (builds, deploys a new version, moves nginx onto it)
          kiln apps demo
          kiln agents
          \(registryCredentials.loginCommand(registry: infra.registry.address))
        Press Ctrl-C to stop everything.
        """)
        await signals.wait()
        await shutdown()
    }

    /// deploy ▶ lb ▶ retire: two instances of the demo app (one per cell) behind nginx.
    static let demoPipeline: [PipelineStep] = [
        PipelineStep(plugin: "deploy", settings: ["app": .string("demo"), "port": .number(8080), "replicas": .number(1), "memoryMB": .number(256), "healthPath": .string("/health")]),
        PipelineStep(plugin: "lb", settings: ["group": .string("local"), "domain": .string("demo.localhost"), "app": .string("demo")]),
        PipelineStep(plugin: "retire", settings: ["app": .string("demo")]),
    ]

    /// The text of a page's first <h1>.
    static func heading(_ page: String) -> String? {
        guard let start = page.range(of: "<h1>"), let end = page[start.upperBound...].range(of: "</h1>") else { return nil }
        return String(page[start.upperBound..<end.lowerBound])
    }

    func waitForLBAgent(client: APIClient, process: ManagedProcess) async throws {
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline {
            if !process.isRunning {
                throw ValidationError("the lb-agent exited while starting; its log (\(process.logFile.path)) ends with:\n\(process.logTail())")
            }
            // Any answer from nginx will do (a 404 for a host it does not serve).
            if (try? await APIClient("").rawText("GET", "http://127.0.0.1:\(lbPort)/", host: "kiln-up-probe.invalid", anyStatus: true)) != nil { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw ValidationError("nginx did not answer on 127.0.0.1:\(lbPort) within 30 s; see \(process.logFile.path)")
    }

    func waitForAgents(client: APIClient, count: Int, processes: [ManagedProcess]) async throws {
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            for p in processes where !p.isRunning {
                throw ValidationError("\(p.name) exited while starting; its log (\(p.logFile.path)) ends with:\n\(p.logTail())")
            }
            if let agents = try? await client.get("/api/v1/agents", as: [AgentInfo].self), agents.count >= count { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw ValidationError("the agents did not register within 60 s; see \(processes.last?.logFile.path ?? "the logs")")
    }

    /// The etcd settings of --etcd-compaction-retention and --etcd-quota-bytes.
    var etcdMaintenance: EtcdServer.Maintenance {
        EtcdServer.Maintenance(compactionMode: .periodic, compactionRetention: etcdCompactionRetention, quotaBytes: etcdQuotaBytes)
    }

    func selfExecutable() throws -> String {
        KilnExecutable.current?.path ?? CommandLine.arguments[0]
    }
}

extension ManagedProcess {
    func waitUntilReadyHTTP(_ url: String, timeout: Double) async throws {
        let client = APIClient("")
        try await waitUntilReady(timeout: timeout) { (try? await client.raw("GET", url)) != nil }
    }
}

/// Waits for SIGINT or SIGTERM (Ctrl-C, or `kill`), which it takes over from the default.
final class SignalWaiter: Sendable {
    private let stream: AsyncStream<Int32>
    private let sources: [DispatchSourceSignal]

    init() {
        let (stream, continuation) = AsyncStream.makeStream(of: Int32.self)
        self.stream = stream
        var sources: [DispatchSourceSignal] = []
        for sig in [SIGINT, SIGTERM] {
            signal(sig, SIG_IGN)
            let s = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            s.setEventHandler { continuation.yield(sig) }
            s.resume()
            sources.append(s)
        }
        self.sources = sources
    }

    func wait() async {
        for await _ in stream { return }
    }
}
