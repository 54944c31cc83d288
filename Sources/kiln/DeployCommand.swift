import ArgumentParser
import Foundation
import KilnClient
import KilnCore

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
        let client = try api.client()
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
