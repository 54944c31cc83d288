import ArgumentParser
import Foundation
import KilnClient
import KilnCore

struct BuildsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "builds", abstract: "List builds, newest first, a page at a time.",
        discussion: """
            Shows the newest builds (of one project with --project). When there are older ones, the \
            last line is the command that shows the next page: the same with --cursor, the id of the \
            last build shown. Builds queued meanwhile never push a build onto the next page twice.
            """)
    @OptionGroup var api: APIOptions
    @Option(name: .long, help: "Only this project's builds.") var project: String?
    @Option(name: .long, help: ArgumentHelp("How many builds a page shows, 1 to \(BuildPage.maxLimit).", valueName: "n")) var limit: Int = 20
    @Option(name: .long, help: ArgumentHelp("Show the builds older than this one: the cursor the page before printed at its end (`X-Next-Cursor` in the API).", valueName: "cursor"))
    var cursor: String?
    @Argument(help: "Show one build in full.") var id: String?

    func validate() throws {
        guard (1...BuildPage.maxLimit).contains(limit) else {
            throw ValidationError("--limit \(limit) is out of range: a page holds 1 to \(BuildPage.maxLimit) builds; see older ones with the --cursor a page prints at its end")
        }
        if let cursor, (try? BuildPage.query(limit: nil, cursor: cursor)) == nil {
            throw ValidationError("--cursor '\(Validation.printable(cursor))' is not a cursor: copy it from the last line of `kiln builds` (a build id), or leave it out for the newest builds")
        }
    }

    func run() async throws {
        let client = try api.client()
        if let id {
            let b = try await client.get("/api/v1/builds/\(id)", as: Build.self)
            if api.json { Show.printJSON(b) } else { print(Show.summary(b)) }
            return
        }
        let page = try await client.builds(project: project, limit: limit, cursor: cursor)
        let more = page.next.map { next in
            "older builds: kiln builds\(project.map { " --project \($0)" } ?? "")\(limit != 20 ? " --limit \(limit)" : "") --cursor \(next)"
        }
        if api.json {
            Show.printJSON(page.builds)
            if let more { FileHandle.standardError.write(Data((more + "\n").utf8)) }
            return
        }
        if page.builds.isEmpty && cursor == nil && more == nil { print("no builds yet; start one with: kiln build PROJECT"); return }
        for b in page.builds {
            print([b.id, b.project, b.status.rawValue, b.ref, b.tag ?? "-", b.agent ?? "-", Show.seconds(b.durationMs), Show.steps(b)]
                .map { $0.padding(toLength: max($0.count, 10), withPad: " ", startingAt: 0) }.joined(separator: " "))
        }
        if let more { print(more) } else if cursor != nil { print("no older builds") }
    }
}
