import ArgumentParser
import Foundation
import KilnClient
import KilnCore

struct CancelCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "cancel", abstract: "Cancel a build (its container is stopped).")
    @OptionGroup var api: APIOptions
    @Argument(help: "Build id.") var id: String

    func run() async throws {
        let b = try await try api.client().post("/api/v1/builds/\(id)/cancel", body: Optional<BuildRequest>.none, as: Build.self)
        print(b.status == .cancelled ? "build \(id) cancelled" : "cancel of build \(id) requested; its agent stops it now")
    }
}
