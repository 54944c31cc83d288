import ArgumentParser
import Foundation
import KilnClient
import KilnCore

struct ProjectCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "project",
        abstract: "Add, show and list projects; set how many of their builds are kept.",
        subcommands: [Add.self, ShowProject.self, List.self, Retention.self])

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
        @Option(name: .long, help: "Git URL: http(s)://, ssh://, git://, file:// (only agents started with --allow-file-repos for its folder fetch it) or user@host:path.") var repository: String
        @Option(name: .long, help: "Image that runs the build command.") var buildImage: String
        @Option(name: .long, help: "Command run in the checkout (sh -c).") var buildCommand: String
        @Option(name: .long, help: "Dockerfile path in the repository.") var dockerfile: String = "Dockerfile"
        @Option(name: .long, help: "Build context folder in the repository.") var context: String = "."
        @Option(name: .long, help: "Branch built when a build names no ref.") var defaultBranch: String = "main"
        @Option(name: .long, help: ArgumentHelp("Labels an agent must carry to build it, comma-separated.", valueName: "a,b")) var labels: String = ""
        @Option(name: .long, help: ArgumentHelp("A newer build of a branch cancels older ones: queued (those waiting) or running (those running too).", valueName: "queued|running")) var supersede: Supersede?
        @Option(name: .long, help: ArgumentHelp("At most this many of its builds run at once; the others wait (default: no limit of its own).", valueName: "n")) var maxConcurrent: Int?
        @Option(name: .long, help: ArgumentHelp("Branches whose GitLab pushes build, comma-separated; '*' matches anything (default: the default branch).", valueName: "main,release/*")) var branches: String?
        @Option(name: .long, help: ArgumentHelp("Refs whose builds share the default branch's protected Maven cache, comma-separated; '*' matches anything. Name only refs that only trusted people can push (every other ref uses a second cache).", valueName: "release/*,refs/tags/v*")) var protectedRefs: String?
        @Option(name: .long, help: ArgumentHelp("Folders the build caches into, as container paths, comma-separated, each mounted from the project's cache on the agent; 'none': no cache (default: /root/.m2, Maven's).", valueName: "/root/.m2,/root/.gradle")) var caches: String?
        @Flag(name: .long, inversion: .prefixedNo, help: "A build whose inputs equal an earlier successful build's takes that build's image instead of compiling (docs/reuse.md); --no-reuse-builds builds every time.") var reuseBuilds = true
        @Option(name: .long, help: ArgumentHelp("Memory of its build containers, such as 2g; an agent's own limit still applies when lower (default: the agent's).", valueName: "size")) var buildMemory: String?
        @Option(name: .long, help: ArgumentHelp("CPUs its build containers may keep busy, such as 1.5 (default: the agent's).", valueName: "cpus")) var buildCpus: Double?
        @Option(name: .long, help: ArgumentHelp("Processes at once in its build containers (default: the agent's).", valueName: "n")) var buildPids: Int?
        @Option(name: .long, help: ArgumentHelp("GitLab webhook secret token (env KILN_WEBHOOK_SECRET); sealed in etcd, never shown. Without one, webhooks cannot trigger the project. Prefer --webhook-secret-file or the variable: a value on the command line stays in the shell's history.", valueName: "token")) var webhookSecret: String? = ProcessInfo.processInfo.environment["KILN_WEBHOOK_SECRET"]
        @Option(name: .long, help: ArgumentHelp("Read the GitLab webhook secret token from this file (mode 0600).", valueName: "file")) var webhookSecretFile: String?
        @Option(name: .long, help: ArgumentHelp("Post-build pipeline: a JSON file holding an array of steps, each {\"plugin\": \"deploy|lb|retire|notify\", \"settings\": {…}, \"timeoutSeconds\": n}. Checked against the plugins' settings when saved (see `kiln plugins`).", valueName: "file")) var pipeline: String?

        @Option(name: .long, help: ArgumentHelp("Keep the project's last n builds, however old (default 500; 0: keep by age only). A build goes only once it is past both this and --keep-days (`kiln project retention --help`).", valueName: "n")) var keepBuilds: Int?
        @Option(name: .long, help: ArgumentHelp("Keep every build of the last n days, however many (default 90).", valueName: "days")) var keepDays: Int?

        var project: Project {
            var p = Project(name: name, repository: repository, buildImage: buildImage, buildCommand: buildCommand,
                    dockerfile: dockerfile, context: context, defaultBranch: defaultBranch,
                    labels: labels.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty },
                    supersede: supersede, maxConcurrent: maxConcurrent,
                    branches: branches.map { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty } },
                    webhookSecret: webhookSecretFile.flatMap { try? CredentialFile.read($0) } ?? webhookSecret, pipeline: try? pipelineSteps(),
                    protectedRefs: protectedRefs.map { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty } },
                    limits: limits)
            p.reuseBuilds = reuseBuilds ? nil : false
            p.caches = caches.map { $0 == "none" ? [] : $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty } }
            if keepBuilds != nil || keepDays != nil {
                p.retention = BuildRetention(keepBuilds: keepBuilds ?? BuildRetention.defaultKeepBuilds, keepDays: keepDays ?? BuildRetention.defaultKeepDays)
            }
            return p
        }

        var limits: BuildLimits? {
            if buildMemory == nil && buildCpus == nil && buildPids == nil { return nil }
            // An unreadable size becomes 0, which validate() refuses with the field named.
            return BuildLimits(memoryBytes: buildMemory.map { BuildLimits.parseBytes($0) ?? 0 }, cpus: buildCpus, pids: buildPids)
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
            if let file = webhookSecretFile {
                do { _ = try CredentialFile.read(file) } catch { throw ValidationError("--webhook-secret-file: \(error)") }
            }
            do { try project.validate() } catch { throw ValidationError("\(error)") }
        }

        func run() async throws {
            let p = project
            let saved = try await try api.client().post("/api/v1/projects", body: p, as: Project.self)
            if api.json { Show.printJSON(saved) } else { print("project \(saved.name) saved: \(saved.repository)") }
        }
    }

    struct Retention: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show or set how many of a project's builds are kept.",
            discussion: """
            A build goes (with its log and archived log) once it is neither among the \
            project's last --keep-builds nor younger than --keep-days; never while it runs, \
            while its pipeline run waits or runs, or while a version of an app refers to it. \
            The leading scheduler prunes every 10 minutes (docs/retention.md). Without \
            options, shows the settings; an option left out keeps its value.

            Example: kiln project retention demo --keep-builds 200 --keep-days 30
            """)
        @OptionGroup var api: APIOptions
        @Argument(help: "Project name.") var name: String
        @Option(name: .long, help: ArgumentHelp("Keep the last n builds, however old (0 to 100000; 0: keep by age only).", valueName: "n")) var keepBuilds: Int?
        @Option(name: .long, help: ArgumentHelp("Keep every build of the last n days, however many (1 to 3650).", valueName: "days")) var keepDays: Int?

        func validate() throws {
            do { try BuildRetention(keepBuilds: keepBuilds ?? 0, keepDays: keepDays ?? 1).validate(field: "retention") } catch {
                throw ValidationError("\(error)".replacingOccurrences(of: "retention.keepBuilds", with: "--keep-builds").replacingOccurrences(of: "retention.keepDays", with: "--keep-days"))
            }
        }

        func run() async throws {
            let client = try api.client()
            let path = "/api/v1/projects/\(name)/retention"
            var retention = try await client.get(path, as: BuildRetention.self)
            if keepBuilds != nil || keepDays != nil {
                retention.keepBuilds = keepBuilds ?? retention.keepBuilds
                retention.keepDays = keepDays ?? retention.keepDays
                let data = try await client.raw("PUT", path, body: try KilnJSON.encoder().encode(retention))
                retention = try KilnJSON.decoder().decode(BuildRetention.self, from: data)
            }
            if api.json { Show.printJSON(retention) } else { print("project \(name) keeps \(retention.summary)") }
        }
    }

    struct ShowProject: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "show", abstract: "Show a project's settings.")
        @OptionGroup var api: APIOptions
        @Argument(help: "Project name.") var name: String
        func run() async throws {
            Show.printJSON(try await try api.client().get("/api/v1/projects/\(name)", as: Project.self))
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List projects.")
        @OptionGroup var api: APIOptions
        func run() async throws {
            let projects = try await try api.client().get("/api/v1/projects", as: [Project].self)
            if api.json { Show.printJSON(projects); return }
            for p in projects { print("\(p.name.padding(toLength: 20, withPad: " ", startingAt: 0)) \(p.repository)") }
        }
    }
}
