import ArgumentParser
import BuildAgent
import Foundation
import KilnClient
import KilnCore
import Logging
import ServiceLifecycle
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

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
        let config = AgentConfiguration(
            id: id, capacity: capacity, labels: parsedLabels, ttlSeconds: Int64(ttl),
            dataDir: URL(fileURLWithPath: dataDir).standardizedFileURL, etcdEndpoint: etcd.etcd, keyPrefix: etcd.prefix,
            dockerSocket: dockerSocket, registry: registry, registryInsecure: insecureRegistry, mavenMirror: mavenMirror,
            compileNetwork: compileNetwork, timeouts: parsedTimeouts!, version: KilnVersion.current,
            simulate: simulate.flatMap(SimulatedDuration.init))
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

struct ProjectCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "project",
        abstract: "Add, show and list projects.",
        subcommands: [Add.self, ShowProject.self, List.self])

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Add a project (or replace its settings).",
            discussion: """
            Example:
              kiln project add demo --repository http://127.0.0.1:8082/demo.git \\
                --build-image localhost/kiln/jdk17-maven:1 --build-command 'mvn -B -q package'

            GitLab: point a project webhook (Push events, Tag push events) at
            http://SCHEDULER/hooks/gitlab with the same secret token as --webhook-secret; pushes to
            --branches build the pushed commit, tags build with the tag as image tag.
            """)
        @OptionGroup var api: APIOptions
        @Argument(help: "Project name: lowercase letters, digits and '-'.") var name: String
        @Option(name: .long, help: "Git URL: http(s)://, ssh://, git://, file:// or user@host:path.") var repository: String
        @Option(name: .long, help: "Image that runs the build command.") var buildImage: String
        @Option(name: .long, help: "Command run in the checkout (sh -c).") var buildCommand: String
        @Option(name: .long, help: "Dockerfile path in the repository.") var dockerfile: String = "Dockerfile"
        @Option(name: .long, help: "Build context folder in the repository.") var context: String = "."
        @Option(name: .long, help: "Branch built when a build names no ref.") var defaultBranch: String = "main"
        @Option(name: .long, help: ArgumentHelp("Labels an agent must carry to build it, comma-separated.", valueName: "a,b")) var labels: String = ""
        @Option(name: .long, help: ArgumentHelp("A newer build of a branch cancels older ones: queued (those waiting) or running (those running too).", valueName: "queued|running")) var supersede: Supersede?
        @Option(name: .long, help: ArgumentHelp("At most this many of its builds run at once; the others wait (default: no limit of its own).", valueName: "n")) var maxConcurrent: Int?
        @Option(name: .long, help: ArgumentHelp("Branches whose GitLab pushes build, comma-separated; '*' matches anything (default: the default branch).", valueName: "main,release/*")) var branches: String?
        @Option(name: .long, help: ArgumentHelp("GitLab webhook secret token (env KILN_WEBHOOK_SECRET); kept in etcd, never shown. Without one, webhooks cannot trigger the project.", valueName: "token")) var webhookSecret: String? = ProcessInfo.processInfo.environment["KILN_WEBHOOK_SECRET"]
        @Option(name: .long, help: ArgumentHelp("Post-build pipeline: a JSON file holding an array of steps, each {\"plugin\": \"deploy|lb|retire|notify\", \"settings\": {…}, \"timeoutSeconds\": n}. Checked against the plugins' settings when saved (see `kiln plugins`).", valueName: "file")) var pipeline: String?

        var project: Project {
            Project(name: name, repository: repository, buildImage: buildImage, buildCommand: buildCommand,
                    dockerfile: dockerfile, context: context, defaultBranch: defaultBranch,
                    labels: labels.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty },
                    supersede: supersede, maxConcurrent: maxConcurrent,
                    branches: branches.map { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty } },
                    webhookSecret: webhookSecret, pipeline: try? pipelineSteps())
        }

        func pipelineSteps() throws -> [PipelineStep]? {
            guard let pipeline else { return nil }
            guard let data = FileManager.default.contents(atPath: pipeline) else {
                throw ValidationError("--pipeline: cannot read \(pipeline)")
            }
            do {
                return try KilnJSON.decoder().decode([PipelineStep].self, from: data)
            } catch {
                throw ValidationError("--pipeline: \(pipeline) is not a JSON array of steps ({\"plugin\": …, \"settings\": {…}}): \(error)")
            }
        }

        func validate() throws {
            _ = try pipelineSteps()
            do { try project.validate() } catch { throw ValidationError("\(error)") }
        }

        func run() async throws {
            let p = project
            let saved = try await APIClient(api.api).post("/api/v1/projects", body: p, as: Project.self)
            if api.json { Show.printJSON(saved) } else { print("project \(saved.name) saved: \(saved.repository)") }
        }
    }

    struct ShowProject: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "show", abstract: "Show a project's settings.")
        @OptionGroup var api: APIOptions
        @Argument(help: "Project name.") var name: String
        func run() async throws {
            Show.printJSON(try await APIClient(api.api).get("/api/v1/projects/\(name)", as: Project.self))
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List projects.")
        @OptionGroup var api: APIOptions
        func run() async throws {
            let projects = try await APIClient(api.api).get("/api/v1/projects", as: [Project].self)
            if api.json { Show.printJSON(projects); return }
            for p in projects { print("\(p.name.padding(toLength: 20, withPad: " ", startingAt: 0)) \(p.repository)") }
        }
    }
}

struct BuildCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "build",
        abstract: "Queue a build of a project.",
        discussion: """
        Without --ref the project's default branch is built; --commit builds that exact commit. \
        The image tag is --tag, else the commit's short sha. --follow prints the live log, and \
        the project's post-build pipeline (deploy, lb, …) after it, and exits 0 if the build and \
        its pipeline succeeded, 1 if the build failed, 3 if the build succeeded but its pipeline failed.

        Example: kiln build demo --ref main --tag v1.2.0 --no-mvncache --follow
        """)
    @OptionGroup var api: APIOptions
    @Argument(help: "Project name.") var project: String
    @Option(name: .long, help: "Branch, tag or refs/… to build.") var ref: String?
    @Option(name: .long, help: "Exact commit to build (7 to 40 hex digits).") var commit: String?
    @Option(name: .long, help: "Image tag (default: the commit's short sha).") var tag: String?
    @Flag(name: .long, inversion: .prefixedNo, help: "Mount the project's Maven cache in the compile container.") var mvncache = true
    @Flag(name: [.long, .short], help: "Follow the log until the build ends.") var follow = false
    @Option(name: .long, help: "Priority, -1000 to 1000: higher goes first; within one priority, projects take turns.") var priority: Int?

    func validate() throws {
        if let priority, !(-1000...1000).contains(priority) { throw ValidationError("--priority must be between -1000 and 1000") }
        do {
            try Validation.projectName(project)
            if let ref { try Validation.ref(ref) }
            if let commit { try Validation.commit(commit) }
            if let tag { try Validation.tag(tag) }
        } catch { throw ValidationError("\(error)") }
    }

    func run() async throws {
        let client = APIClient(api.api)
        let build = try await client.post("/api/v1/projects/\(project)/builds",
                                          body: BuildRequest(ref: ref, commit: commit, tag: tag, mvncache: mvncache, trigger: "cli", priority: priority), as: Build.self)
        if !follow {
            if api.json { Show.printJSON(build) } else { print("queued build \(build.id) of \(project) (ref \(build.ref)); follow it with: kiln logs \(build.id) -f") }
            return
        }
        print("queued build \(build.id) of \(project) (ref \(build.ref))")
        let progress = ProgressLine(interactive: isatty(STDOUT_FILENO) == 1)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                try await client.followLog(build.id) { progress.write($0) }
            }
            group.addTask {
                // The running step and how long it has run, read once a second.
                while true {
                    try await Task.sleep(for: .seconds(1))
                    if let b = try? await client.get("/api/v1/builds/\(build.id)", as: Build.self) { progress.show(b) }
                }
            }
            try await group.next()
            group.cancelAll()
        }
        progress.clear()
        let done = try await client.get("/api/v1/builds/\(build.id)", as: Build.self)
        print(Show.summary(done))
        if done.status != .succeeded { throw ExitCode(1) }
        if done.deploy?.status == .failed { throw ExitCode(3) }
    }
}

struct BuildsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "builds", abstract: "List builds, newest first.")
    @OptionGroup var api: APIOptions
    @Option(name: .long, help: "Only this project's builds.") var project: String?
    @Option(name: .long, help: "How many.") var limit: Int = 20
    @Argument(help: "Show one build in full.") var id: String?

    func run() async throws {
        let client = APIClient(api.api)
        if let id {
            let b = try await client.get("/api/v1/builds/\(id)", as: Build.self)
            if api.json { Show.printJSON(b) } else { print(Show.summary(b)) }
            return
        }
        var path = "/api/v1/builds?limit=\(limit)"
        if let project { path += "&project=\(project)" }
        let builds = try await client.get(path, as: [Build].self)
        if api.json { Show.printJSON(builds); return }
        if builds.isEmpty { print("no builds yet; start one with: kiln build PROJECT"); return }
        for b in builds {
            print([b.id, b.project, b.status.rawValue, b.ref, b.tag ?? "-", b.agent ?? "-", Show.seconds(b.durationMs), Show.steps(b)]
                .map { $0.padding(toLength: max($0.count, 10), withPad: " ", startingAt: 0) }.joined(separator: " "))
        }
    }
}

struct ActivityCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "activity",
        abstract: "A project's activity: who or what triggered which build, and how it ended.",
        discussion: "Example: kiln activity demo --limit 10")
    @OptionGroup var api: APIOptions
    @Argument(help: "Project name.") var project: String
    @Option(name: .long, help: "How many, newest first.") var limit: Int = 20

    func run() async throws {
        let entries = try await APIClient(api.api).get("/api/v1/projects/\(project)/activity?limit=\(limit)", as: [ActivityEntry].self)
        if api.json { Show.printJSON(entries); return }
        if entries.isEmpty { print("no activity yet for \(project); start a build with: kiln build \(project)"); return }
        for e in entries {
            let when = KilnJSON.formatDate(e.at)
            var line = "\(when)  \(e.build)  \(e.status.rawValue.padding(toLength: 9, withPad: " ", startingAt: 0))  \(Show.seconds(e.durationMs).padding(toLength: 7, withPad: " ", startingAt: 0))  \(e.ref)"
            if let tag = e.tag { line += " → :\(tag)" }
            if let c = e.commit { line += " @\(c.prefix(8))" }
            line += "  (\(e.trigger))"
            if let note = e.note { line += "  \(note)" }
            print(line)
        }
    }
}

struct LogsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "logs", abstract: "Print a build's log (-f: follow it live).")
    @OptionGroup var api: APIOptions
    @Argument(help: "Build id.") var id: String
    @Flag(name: [.short, .long], help: "Follow until the build ends.") var follow = false

    func run() async throws {
        let client = APIClient(api.api)
        if follow {
            try await client.followLog(id) { FileHandle.standardOutput.write(Data($0.utf8)) }
        } else {
            FileHandle.standardOutput.write(try await client.raw("GET", "/api/v1/builds/\(id)/log"))
        }
    }
}

struct CancelCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "cancel", abstract: "Cancel a build (its container is stopped).")
    @OptionGroup var api: APIOptions
    @Argument(help: "Build id.") var id: String

    func run() async throws {
        let b = try await APIClient(api.api).post("/api/v1/builds/\(id)/cancel", body: Optional<BuildRequest>.none, as: Build.self)
        print(b.status == .cancelled ? "build \(id) cancelled" : "cancel of build \(id) requested; its agent stops it now")
    }
}

struct AgentsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "agents", abstract: "List live agents with their load.")
    @OptionGroup var api: APIOptions

    func run() async throws {
        let agents = try await APIClient(api.api).get("/api/v1/agents", as: [AgentInfo].self)
        if api.json { Show.printJSON(agents); return }
        if agents.isEmpty { print("no live agents; start one with: kiln agent --id NAME"); return }
        for a in agents {
            print("\(a.id.padding(toLength: 16, withPad: " ", startingAt: 0)) running \(a.running ?? 0)/\(a.capacity)  home of \(a.homedProjects ?? 0) projects  labels \(a.labels.isEmpty ? "-" : a.labels.joined(separator: ","))  version \(a.version)")
        }
    }
}

/// The line under a followed log that says which step runs and for how long. On a terminal it
/// is redrawn in place (and cleared before each piece of log); otherwise it is printed as its
/// own line every 30 s, so a CI log shows that a long step is still going.
final class ProgressLine: Sendable {
    private struct State { var shown = false; var lastPrinted: Date? }
    private let interactive: Bool
    private let state = Mutex(State())

    init(interactive: Bool) { self.interactive = interactive }

    func write(_ text: String) {
        state.withLock { s in
            if interactive && s.shown { FileHandle.standardOutput.write(Data("\r\u{1b}[K".utf8)); s.shown = false }
            FileHandle.standardOutput.write(Data(text.utf8))
        }
    }

    func show(_ b: Build) {
        guard let line = ProgressLine.describe(b, now: Date()) else { return }
        state.withLock { s in
            if interactive {
                FileHandle.standardOutput.write(Data("\r\u{1b}[K\(line)".utf8))
                s.shown = true
            } else if s.lastPrinted.map({ Date().timeIntervalSince($0) >= 30 }) ?? true {
                FileHandle.standardOutput.write(Data("\(line)\n".utf8))
                s.lastPrinted = Date()
            }
        }
    }

    func clear() {
        state.withLock { s in
            if interactive && s.shown { FileHandle.standardOutput.write(Data("\r\u{1b}[K".utf8)); s.shown = false }
        }
    }

    /// `… compile running 12 s (fetch 0.4 s done)`, or why it waits; nil once it has ended.
    static func describe(_ b: Build, now: Date) -> String? {
        switch b.status {
        case .queued:
            return "… queued \(Int(now.timeIntervalSince(b.createdAt))) s\(b.waiting.map { ": \($0)" } ?? "")"
        case .assigned:
            return "… assigned to \(b.agent ?? "an agent"), starting"
        case .running:
            let done = b.steps.filter { $0.status == .succeeded }.map { "\($0.name.rawValue) \(Show.seconds($0.durationMs))" }
            guard let step = b.steps.first(where: { $0.status == .running }) else { return "… running" }
            let elapsed = step.startedAt.map { Int(now.timeIntervalSince($0)) } ?? 0
            return "… \(step.name.rawValue) running \(elapsed) s" + (done.isEmpty ? "" : " (done: \(done.joined(separator: ", ")))")
        case .succeeded, .failed, .cancelled:
            return nil
        }
    }
}
