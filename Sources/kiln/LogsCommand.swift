import ArgumentParser
import Foundation
import KilnClient
import KilnCore

struct LogsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "logs", abstract: "Print a build's log (-f: follow it live).")
    @OptionGroup var api: APIOptions
    @Argument(help: "Build id.") var id: String
    @Flag(name: [.short, .long], help: "Follow until the build ends.") var follow = false

    func run() async throws {
        let client = try api.client()
        if follow {
            try await client.followLog(id) { FileHandle.standardOutput.write(Data($0.utf8)) }
        } else {
            FileHandle.standardOutput.write(try await client.raw("GET", "/api/v1/builds/\(id)/log"))
        }
    }
}
