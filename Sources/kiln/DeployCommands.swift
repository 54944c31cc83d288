import ArgumentParser
import Deploy
import Foundation
import KilnClient
import KilnCore
import Plugins
#if canImport(Glibc)
import Glibc
#endif

struct DeployCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "deploy",
        abstract: "Run a project's post-build pipeline again for a build that succeeded.",
        discussion: """
        The pipeline is the project's as it is now (deploy ▶ lb ▶ retire ▶ notify, as the \
        project says). Deploying an older build rolls back to its image: it becomes a new \
        version of the app, joins the load balancer once healthy, and the version it replaces \
        is retired. --follow prints the run's log and exits 0 only if the run succeeded.

        Example: kiln deploy 20261125-101500-ab12cd --follow
        """)
    @OptionGroup var api: APIOptions
    @Argument(help: "Build id (see `kiln builds --project NAME`).") var id: String
    @Flag(name: [.long, .short], help: "Follow the run's log until it ends.") var follow = false

    func validate() throws {
        guard BuildID.isValid(id) else { throw ValidationError("'\(id)' is not a build id: letters, digits and '-'") }
    }

    func run() async throws {
        let client = APIClient(api.api)
        let build = try await client.post("/api/v1/builds/\(id)/deploy", body: [String: String](), as: Build.self)
        let run = build.deploy?.run ?? 0
        if !follow {
            if api.json { Show.printJSON(build) } else { print("pipeline run \(run) of build \(id) requested; follow it with: kiln logs \(id) -f") }
            return
        }
        print("pipeline run \(run) of build \(id) requested")
        let runStarted = Locked(false)
        try await client.followLog(id) { text in
            // The build's own log came before; print this run's lines only.
            for line in text.split(separator: "\n", omittingEmptySubsequences: false) where !line.isEmpty {
                if line.hasPrefix("==> pipeline run \(run)") || runStarted.withLock({ $0 }) {
                    runStarted.withLock { $0 = true }
                    print(line)
                }
            }
        }
        let done = try await client.get("/api/v1/builds/\(id)", as: Build.self)
        print(Show.pipeline(done.deploy!).joined(separator: "\n"))
        if done.deploy?.status != .succeeded { throw ExitCode(1) }
    }
}

struct AppsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "apps",
        abstract: "Show deployed apps: versions, instances per cell with their health, and the LB domain.",
        discussion: """
        Without an app, one line per app. With one: every version (live, ready, retired, \
        failed), each instance with its cell, address and last health check, and each domain \
        with the lb-agents that serve it and whether they applied its latest config.

        Example: kiln apps demo
        """)
    @OptionGroup var api: APIOptions
    @Argument(help: "App name.") var app: String?
    @Flag(name: .long, help: "Check every running instance's health now, from this machine (discovery), instead of showing the last check the pipeline made.")
    var check = false

    func run() async throws {
        let client = APIClient(api.api)
        guard let app else {
            let apps = try await client.get("/api/v1/apps", as: [App].self)
            if api.json { Show.printJSON(apps); return }
            if apps.isEmpty { print("no apps yet: an app appears when a project's pipeline deploys it"); return }
            for a in apps {
                let live = a.live.map { "v\($0.number) live (\($0.instances.filter(\.healthy).count)/\($0.instances.count) healthy)" } ?? "no live version"
                print("\(a.name.padding(toLength: 20, withPad: " ", startingAt: 0)) \(live)  \(a.lb.map { "\($0.domain) [\($0.group)]" }.joined(separator: ", "))")
            }
            return
        }
        var status = try await client.get("/api/v1/apps/\(app)", as: AppStatus.self)
        if check {
            let cells = try await client.get("/api/v1/cells", as: [Cell].self)
            let deployers = DeployEnvironment.standardDeployers()
            for (i, v) in status.app.versions.enumerated() where [.deploying, .ready, .live, .retiring].contains(v.state) {
                status.app.versions[i].instances = await DeployEnvironment.checkInstances(app: status.app.name, version: v, cells: cells, deployers: deployers)
            }
        }
        if api.json { Show.printJSON(status); return }
        print("app \(status.app.name)")
        for v in status.app.versions.reversed() {
            print("  v\(v.number)  \(v.state.rawValue.uppercased())  build \(v.build)  \(v.image)")
            let s = v.settings
            print("      \(s.replicas) per cell in \(v.cells.joined(separator: ", ")), port \(s.port), health \(s.healthPath)\(s.cpu.map { ", \($0) CPU" } ?? "")\(s.memoryMB.map { ", \($0) MiB" } ?? "")")
            for i in v.instances.sorted(by: { ($0.cell, $0.name) < ($1.cell, $1.name) }) {
                print("      \(i.cell.padding(toLength: 8, withPad: " ", startingAt: 0)) \(i.name.padding(toLength: 28, withPad: " ", startingAt: 0)) \(i.address.padding(toLength: 22, withPad: " ", startingAt: 0)) \(i.healthy ? "healthy" : "unhealthy")  \(i.detail ?? "")")
            }
            if let e = v.error { print("      error: \(e)") }
        }
        for d in status.domains {
            print("  domain \(d.domain) [group \(d.group)] → v\(d.version.map(String.init) ?? "?"): \(d.servers.joined(separator: ", "))")
            if d.agents.isEmpty { print("      no lb-agent serves group \(d.group): start one with `kiln lb-agent --group \(d.group)`") }
            for a in d.agents {
                print("      lb-agent \(a.id) \(a.listen ?? "")  revision \(a.appliedRevision)  \(a.current ? "serves the latest config" : (a.rejected.map { "REFUSED: \($0)" } ?? "lagging"))")
            }
        }
    }
}

struct CellCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cell",
        abstract: "Add, list and remove cells: where apps run.",
        discussion: """
        A cell is one Docker Engine API endpoint (backend local: podman's service or dockerd) \
        or one Kubernetes API server (backend kubernetes). The deploy plugin runs every app in \
        all cells of its backend unless its step names them; LeEngine ran every app in at \
        least two.
        """,
        subcommands: [Add.self, List.self, Remove.self])

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Add or change a cell.",
            discussion: """
            Example: kiln cell add a --endpoint unix:///run/podman/podman.sock --ports 20000-20499
                     kiln cell add k1 --backend kubernetes --endpoint https://10.0.0.1:6443
            """)
        @OptionGroup var api: APIOptions
        @Argument(help: "Cell name: lowercase letters, digits and '-'.") var name: String
        @Option(name: .long, help: "local (Docker Engine API) or kubernetes.") var backend = "local"
        @Option(name: .long, help: ArgumentHelp("unix:///path/to/docker.sock (local) or https://host:port (kubernetes).", valueName: "url")) var endpoint: String
        @Option(name: .long, help: ArgumentHelp("Host ports the local backend publishes instances on (default 20000-29999); give cells on one machine ranges that do not overlap.", valueName: "first-last")) var ports: String?
        @Option(name: .long, help: ArgumentHelp("Address nginx reaches published ports on (default 127.0.0.1).", valueName: "host")) var advertiseHost: String?

        func cell() throws -> Cell {
            var first: Int?, last: Int?
            if let ports {
                let parts = ports.split(separator: "-")
                guard parts.count == 2, let f = Int(parts[0]), let l = Int(parts[1]) else {
                    throw ValidationError("--ports must be FIRST-LAST, for example 20000-20499, not '\(ports)'")
                }
                first = f
                last = l
            }
            let c = Cell(name: name, backend: backend, endpoint: endpoint, firstPort: first, lastPort: last, advertiseHost: advertiseHost)
            do { try c.validate() } catch { throw ValidationError("\(error)") }
            return c
        }

        func validate() throws { _ = try cell() }

        func run() async throws {
            let c = try cell()
            let data = try await APIClient(api.api).raw("PUT", "/api/v1/cells/\(c.name)", body: try KilnJSON.encoder().encode(c))
            if api.json { print(String(decoding: data, as: UTF8.self)) } else { print("cell \(c.name) saved: \(c.backend) \(c.endpoint)") }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List cells.")
        @OptionGroup var api: APIOptions
        func run() async throws {
            let cells = try await APIClient(api.api).get("/api/v1/cells", as: [Cell].self)
            if api.json { Show.printJSON(cells); return }
            if cells.isEmpty { print("no cells: add one with `kiln cell add NAME --endpoint unix:///path/to/docker.sock`") }
            for c in cells {
                print("\(c.name.padding(toLength: 12, withPad: " ", startingAt: 0)) \(c.backend.padding(toLength: 11, withPad: " ", startingAt: 0)) \(c.endpoint)\(c.backend == "local" ? "  ports \(c.ports.lowerBound)-\(c.ports.upperBound)" : "")")
            }
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove a cell. What runs there keeps running; later deploys naming it fail.")
        @OptionGroup var api: APIOptions
        @Argument(help: "Cell name.") var name: String
        func run() async throws {
            _ = try await APIClient(api.api).raw("DELETE", "/api/v1/cells/\(name)")
            print("cell \(name) removed")
        }
    }
}

struct PluginsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plugins",
        abstract: "List the post-build plugins and their settings, for a project's --pipeline file.",
        discussion: """
        A pipeline file is a JSON array of steps, run in order after a build succeeds; the \
        first failure stops it (the build stays succeeded). For example:
          [{"plugin": "deploy", "settings": {"app": "demo", "port": 8080, "replicas": 2}},
           {"plugin": "lb", "settings": {"group": "local", "domain": "demo.localhost", "app": "demo"}},
           {"plugin": "retire", "settings": {"app": "demo"}},
           {"plugin": "notify", "settings": {"url": "http://ci.example.com/kiln"}, "timeoutSeconds": 10}]
        """)

    func run() async throws {
        for p in PluginCatalog.builtIn {
            print("\(p.name): \(p.summary) (time limit \(p.defaultTimeoutSeconds) s unless the step sets timeoutSeconds)")
            for s in p.settings {
                print("  \(s.name.padding(toLength: 22, withPad: " ", startingAt: 0)) \(s.kind.rawValue.padding(toLength: 18, withPad: " ", startingAt: 0)) \(s.required ? "required" : "optional")  \(s.help)")
            }
        }
    }
}
