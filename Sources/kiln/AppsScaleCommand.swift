import ArgumentParser
import Foundation
import KilnClient
import KilnCore

struct AppsScaleCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "scale",
        abstract: "Scale an app's live version out or in: N instances per cell.",
        discussion: """
        Every cell the live version runs in gets N instances, or only the cell given with \
        --cell. Scaling in takes the instances out of the load balancer first (every lb-agent \
        of each domain's group applies it), lets them finish their requests for --drain \
        seconds, and only then stops them: unhealthy ones first, then the newest. Scaling out \
        starts instances and adds them to the load balancer only once every one passes its \
        health check; if one does not within --health-timeout, the new ones are stopped and \
        nothing changes. The version keeps the new count: the next version deployed takes it \
        unless its deploy step sets replicas. Needs the deploy role on the app (master or \
        owner, or of the project that owns it; kiln help roles). docs/scaling.md says more.

        Examples: kiln apps scale demo --replicas 3
                  kiln apps scale demo --replicas 0 --cell b
        """)
    @OptionGroup var api: APIOptions
    @Argument(help: "App name.") var app: String
    @Option(name: .long, help: ArgumentHelp("Instances per cell, 0 to \(DeploySettings.maxReplicas) (0 empties the cell; a domain always keeps one instance).", valueName: "n"))
    var replicas: Int
    @Option(name: .long, help: ArgumentHelp("Scale this cell only (default: every cell the live version runs in).", valueName: "cell"))
    var cell: String?
    @Option(name: .long, help: ArgumentHelp("Seconds instances leaving the load balancer get to finish their requests before they are stopped (0 to 300; default 2).", valueName: "seconds"))
    var drain: Int?
    @Option(name: .long, help: ArgumentHelp("Seconds new instances get to pass their health check (1 to 600; default 60).", valueName: "seconds"))
    var healthTimeout: Int?

    var request: ScaleRequest { ScaleRequest(replicas: replicas, cell: cell, drainSeconds: drain, healthTimeoutSeconds: healthTimeout) }

    func validate() throws {
        do {
            try Validation.projectName(app, what: "app name")
            try request.validate()
        } catch let e as KilnError {
            throw ValidationError(e.message.replacingOccurrences(of: "drainSeconds", with: "--drain").replacingOccurrences(of: "healthTimeoutSeconds", with: "--health-timeout"))
        }
    }

    func run() async throws {
        let client = try api.client()
        // The answer comes once the scaling has ended: lb-agents applied, drained, healthy.
        let wait = Duration.seconds(2 * 60 + (drain ?? 2) + (healthTimeout ?? 60) + 120)
        let result = try await client.post("/api/v1/apps/\(app)/scale", body: request, as: ScaleResult.self, timeout: wait)
        if api.json { Show.printJSON(result); return }
        print("scaled \(result.summary)")
        if !result.started.isEmpty { print("  started \(result.started.joined(separator: ", "))") }
        if !result.stopped.isEmpty { print("  stopped \(result.stopped.joined(separator: ", "))") }
    }
}
