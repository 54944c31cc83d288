import ArgumentParser
import Foundation
import KilnClient
import KilnCore

struct ActivityCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "activity",
        abstract: "Who did what on a project, app or group: builds and how they ended, settings, members, deploys.",
        discussion: """
        Examples:
          kiln activity demo --limit 10
          kiln activity --app shop
          kiln activity --group team
        """)
    @OptionGroup var api: APIOptions
    @Argument(help: "Project name (or use --app / --group).") var project: String?
    @Option(name: .long, help: "An app's activity instead.") var app: String?
    @Option(name: .long, help: "A group's activity instead.") var group: String?
    @Option(name: .long, help: "How many, newest first.") var limit: Int = 20

    func validate() throws {
        guard [project, app, group].compactMap({ $0 }).count == 1 else { throw ValidationError("name one project, or --app NAME, or --group NAME") }
    }

    func run() async throws {
        let path = project.map { "projects/\($0)" } ?? app.map { "apps/\($0)" } ?? "groups/\(group!)"
        let entries = try await api.client().get("/api/v1/\(path)/activity?limit=\(limit)", as: [ActivityEntry].self)
        if api.json { Show.printJSON(entries); return }
        if entries.isEmpty { print("no activity yet for \(path)"); return }
        for e in entries {
            let when = KilnJSON.formatDate(e.at)
            guard let build = e.build, let status = e.status else {
                print("\(when)  \(e.action)\(e.user.map { " by \($0)" } ?? "")\(e.detail.map { ": \($0)" } ?? "")\(e.build.map { "  (build \($0))" } ?? "")")
                continue
            }
            var line = "\(when)  \(build)  \(status.rawValue.padding(toLength: 9, withPad: " ", startingAt: 0))  \(Show.seconds(e.durationMs).padding(toLength: 7, withPad: " ", startingAt: 0))  \(e.ref ?? "")"
            if let tag = e.tag { line += " → :\(tag)" }
            if let c = e.commit { line += " @\(c.prefix(8))" }
            line += "  (\(e.trigger ?? "api"))"
            if let note = e.note { line += "  \(note)" }
            print(line)
        }
    }
}
