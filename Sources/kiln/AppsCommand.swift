import ArgumentParser
import Deploy
import Foundation
import KilnClient
import KilnCore

struct AppsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "apps",
        abstract: "Show deployed apps; deploy, roll back, retire and scale them.",
        discussion: """
        `kiln apps [APP]` shows (the default); `kiln apps scale APP --replicas N` scales; \
        `kiln apps deploy APP BUILD`, `kiln apps rollback APP N` and `kiln apps retire APP N` ask \
        for the pipeline run that does it. \
        (An app named like a subcommand: `kiln apps show scale`.)
        """,
        subcommands: [AppsShowCommand.self, AppsScaleCommand.self, AppsDeployCommand.self, AppsRollbackCommand.self, AppsRetireCommand.self],
        defaultSubcommand: AppsShowCommand.self)
}

struct AppsShowCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "show",
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
    @Option(name: .long, help: ArgumentHelp("Keep this many versions in the app's record (1 to 100; default 10): older retired and failed ones are pruned, and builds of the versions kept stay as roll-back candidates. Refused below the number of versions that run.", valueName: "n"))
    var keepVersions: Int?

    func validate() throws {
        if keepVersions != nil && app == nil { throw ValidationError("--keep-versions needs an app: kiln apps APP --keep-versions n") }
        if let n = keepVersions, !App.keepVersionsRange.contains(n) { throw ValidationError("--keep-versions must be 1 to 100, not \(n)") }
    }

    func run() async throws {
        let client = try api.client()
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
        if let keepVersions {
            let data = try await client.raw("PUT", "/api/v1/apps/\(app)/retention", body: try KilnJSON.encoder().encode(AppRetention(keepVersions: keepVersions)))
            let answer = try KilnJSON.decoder().decode(AppRetention.self, from: data)
            let pruned = (answer.pruned ?? []).map { "v\($0)" }
            if !api.json { print("app \(app) keeps \(answer.keepVersions) versions" + (pruned.isEmpty ? "" : "; pruned " + pruned.joined(separator: ", "))) }
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
        print("app \(status.app.name)  (keeps \(status.app.effectiveKeepVersions) versions)")
        for v in status.app.versions.reversed() {
            print("  v\(v.number)  \(v.state.rawValue.uppercased())  build \(v.build)  \(v.image)\(v.tag.map { "  (tag \($0))" } ?? "")")
            let s = v.settings
            print("      \(v.cells.map { "\(s.replicas(in: $0)) in \($0)" }.joined(separator: ", ")), port \(s.port), health \(s.healthPath)\(s.cpu.map { ", \($0) CPU" } ?? "")\(s.memoryMB.map { ", \($0) MiB" } ?? "")")
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
