import ArgumentParser
import Foundation
import KilnClient
import KilnCore

struct ActivityCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "activity",
        abstract: "A project's activity: who or what triggered which build, and how it ended.",
        discussion: "Example: kiln activity demo --limit 10")
    @OptionGroup var api: APIOptions
    @Argument(help: "Project name.") var project: String
    @Option(name: .long, help: "How many, newest first.") var limit: Int = 20

    func run() async throws {
        let entries = try await try api.client().get("/api/v1/projects/\(project)/activity?limit=\(limit)", as: [ActivityEntry].self)
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
