import ArgumentParser
import Foundation
import KilnClient
import KilnCore

// `kiln apps deploy`, `kiln apps rollback`, `kiln apps retire`: the API's app actions
// (`POST /api/v1/apps/{app}/deploy`, `…/versions/{n}/rollback`, `…/versions/{n}/retire`), the
// same as the console's app page offers. Each asks for a pipeline run of a build and prints
// it; `kiln builds BUILD` (or the console) follows the run.

struct AppsDeployCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "deploy",
        abstract: "Deploy a build of the app's project as the app's next version.",
        discussion: """
        Runs the project's pipeline steps for this app (deploy, lb, retire) for the build, with \
        the deploy step's settings as the pipeline has them (the console's deploy form can change \
        them). Needs the deploy role on the app (kiln help roles).

        Example: kiln apps deploy demo b000mwxbtbn0-26dd6537b27e
        """)
    @OptionGroup var api: APIOptions
    @Argument(help: "App name.") var app: String
    @Argument(help: "The build to deploy: one that succeeded.") var build: String

    func validate() throws {
        do { try Validation.projectName(app, what: "app name") } catch let e as KilnError { throw ValidationError(e.message) }
    }

    func run() async throws {
        let requested = try await api.client().post("/api/v1/apps/\(app)/deploy", body: AppDeployRequest(build: build), as: Build.self)
        AppsActionOutput.print(requested, json: api.json)
    }
}

struct AppsRollbackCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rollback",
        abstract: "Roll an app back: an earlier version's build and settings as its next version.",
        discussion: """
        The version must have run and not be live (ready or retired): `kiln apps APP` lists them. \
        Needs the deploy role on the app.

        Example: kiln apps rollback demo 3
        """)
    @OptionGroup var api: APIOptions
    @OptionGroup var target: AppVersionArguments

    func run() async throws {
        let requested = try await api.client().post("/api/v1/apps/\(target.app)/versions/\(target.version)/rollback", body: nil as String?, as: Build.self)
        AppsActionOutput.print(requested, json: api.json)
    }
}

struct AppsRetireCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "retire",
        abstract: "Retire a version that is not live: out of every domain, drained, stopped.",
        discussion: """
        The live version cannot be retired: it leaves the load balancer only when another takes \
        its place (deploy or roll back). Needs the deploy role on the app.

        Example: kiln apps retire demo 2
        """)
    @OptionGroup var api: APIOptions
    @OptionGroup var target: AppVersionArguments

    func run() async throws {
        let requested = try await api.client().post("/api/v1/apps/\(target.app)/versions/\(target.version)/retire", body: nil as String?, as: Build.self)
        AppsActionOutput.print(requested, json: api.json)
    }
}

/// The app and version `kiln apps rollback` and `kiln apps retire` act on, checked before
/// anything is sent.
struct AppVersionArguments: ParsableArguments {
    @Argument(help: "App name.") var app: String
    @Argument(help: "The version: a number `kiln apps APP` lists.") var version: Int

    func validate() throws {
        do { try Validation.projectName(app, what: "app name") } catch let e as KilnError { throw ValidationError(e.message) }
        if version < 1 { throw ValidationError("a version number is 1 or more, not \(version)") }
    }
}

enum AppsActionOutput {
    static func print(_ b: Build, json: Bool) {
        if json { Show.printJSON(b); return }
        Swift.print("build \(b.id): pipeline run \(b.deploy?.run ?? 0) (\(b.deploy?.trigger ?? "")) asked for; follow it with `kiln builds \(b.id)`")
    }
}
