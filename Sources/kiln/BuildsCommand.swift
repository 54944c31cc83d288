import ArgumentParser
import Foundation
import KilnClient
import KilnCore

struct BuildsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "builds", abstract: "List builds, newest first.")
    @OptionGroup var api: APIOptions
    @Option(name: .long, help: "Only this project's builds.") var project: String?
    @Option(name: .long, help: "How many.") var limit: Int = 20
    @Argument(help: "Show one build in full.") var id: String?

    func run() async throws {
        let client = try api.client()
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
