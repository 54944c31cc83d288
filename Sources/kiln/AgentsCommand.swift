import ArgumentParser
import Foundation
import KilnClient
import KilnCore

struct AgentsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "agents", abstract: "List live agents with their load.")
    @OptionGroup var api: APIOptions

    func run() async throws {
        let agents = try await try api.client().get("/api/v1/agents", as: [AgentInfo].self)
        if api.json { Show.printJSON(agents); return }
        if agents.isEmpty { print("no live agents; start one with: kiln agent --id NAME"); return }
        for a in agents {
            print("\(a.id.padding(toLength: 16, withPad: " ", startingAt: 0)) running \(a.running ?? 0)/\(a.capacity)  home of \(a.homedProjects ?? 0) projects  labels \(a.labels.isEmpty ? "-" : a.labels.joined(separator: ","))  version \(a.version)")
            if let disk = a.disk {
                print("    disk: \(disk.summary)" + (disk.refusing.map { "\n    REFUSING NEW BUILDS: \($0)" } ?? ""))
            }
        }
    }
}
