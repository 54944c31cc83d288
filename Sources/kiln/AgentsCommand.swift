import ArgumentParser
import Foundation
import KilnClient
import KilnCore

struct AgentsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "agents", abstract: "List live agents with their load.")
    @OptionGroup var api: APIOptions

    func run() async throws {
        let listing = try await api.client().get("/api/v1/agents?with=etcd", as: AgentsListing.self)
        if api.json { Show.printJSON(listing); return }
        let agents = listing.agents
        // etcd near its quota or in alarm concerns every agent: say it first.
        if let etcd = listing.etcd, let warning = etcd.warning { print("etcd \(etcd.level.rawValue.uppercased()): \(warning)\n") }
        if agents.isEmpty { print("no live agents; start one with: kiln agent --id NAME"); return }
        for a in agents {
            print("\(a.id.padding(toLength: 16, withPad: " ", startingAt: 0)) running \(a.running ?? 0)/\(a.capacity)  home of \(a.homedProjects ?? 0) projects  labels \(a.labels.isEmpty ? "-" : a.labels.joined(separator: ","))  version \(a.version)")
            if let disk = a.disk {
                print("    disk: \(disk.summary)" + (disk.refusing.map { "\n    REFUSING NEW BUILDS: \($0)" } ?? ""))
            }
        }
    }
}
