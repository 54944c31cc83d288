import ArgumentParser
import Foundation
import KilnCore
import Plugins

struct PluginsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plugins",
        abstract: "List the post-build plugins and their settings, for a project's --pipeline file.",
        discussion: """
        A pipeline file is a JSON array of steps, run in order after a build succeeds; the \
        first failure stops it (the build stays succeeded). For example:
          [{"plugin": "deploy", "settings": {"app": "demo", "port": 8080, "replicas": 2}},
           {"plugin": "lb", "settings": {"group": "local", "domain": "demo.localhost", "app": "demo"}},
           {"plugin": "retire", "settings": {"app": "demo"}},
           {"plugin": "notify", "settings": {"url": "http://ci.example.com/kiln"}, "timeoutSeconds": 10}]
        """)

    func run() async throws {
        for p in PluginCatalog.builtIn {
            print("\(p.name): \(p.summary) (time limit \(p.defaultTimeoutSeconds) s unless the step sets timeoutSeconds)")
            for s in p.settings {
                print("  \(s.name.padding(toLength: 22, withPad: " ", startingAt: 0)) \(s.kind.rawValue.padding(toLength: 18, withPad: " ", startingAt: 0)) \(s.required ? "required" : "optional")  \(s.help)")
            }
        }
    }
}
