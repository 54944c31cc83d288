import ArgumentParser
import Foundation
import Etcd
import KilnClient
import KilnCore
import Logging

@main
struct Kiln: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kiln",
        abstract: "Kiln: a build farm for container images.",
        discussion: """
        A build turns a project's git commit into an image in a registry: fetch (libgit2 mirror \
        per project), compile (the project's build command in its build image, with its own \
        Maven cache), image (its Dockerfile), push. A scheduler assigns builds to agents by \
        consistent hashing over the agents registered in etcd, so a project keeps landing where \
        its caches are.

        Start everything on this machine and run a demo build:
          kiln up
        Then, in another terminal:
          kiln builds
          kiln build demo --follow
        """,
        version: KilnVersion.current,
        subcommands: [Up.self, SchedulerCommand.self, AgentCommand.self, ProjectCommand.self, BuildCommand.self,
                      BuildsCommand.self, ActivityCommand.self, LogsCommand.self, CancelCommand.self, AgentsCommand.self,
                      DeployCommand.self, AppsCommand.self, CellCommand.self, PluginsCommand.self, LBAgentCommand.self,
                      MachineCommand.self, GitFetchCommand.self, EtcdCommand.self, EtcdAuthCommand.self, OCIRuntimeCommand.self,
                      LoginCommand.self, UserCommand.self, TokenCommand.self, MembersCommand.self, RolesCommand.self,
                      SecretCommand.self, CredentialCommand.self, SecretsCommand.self])
}

enum KilnVersion {
    static let current = "0.1.0"
}

/// Logging for the process, to standard error, at the level of `--log-level` or `KILN_LOG_LEVEL`.
enum KilnLogging {
    static func bootstrap(_ level: String?) -> Logger {
        let l = Logger.Level(rawValue: level ?? ProcessInfo.processInfo.environment["KILN_LOG_LEVEL"] ?? "info") ?? .info
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = l
            return h
        }
        return Logger(label: "kiln")
    }
}

func env(_ name: String, _ fallback: String) -> String {
    ProcessInfo.processInfo.environment[name].flatMap { $0.isEmpty ? nil : $0 } ?? fallback
}

/// Options of the commands that talk to the scheduler's API.
struct APIOptions: ParsableArguments {
    static let apiHelp = ArgumentHelp("Scheduler API URL (env KILN_API): http:// only on this machine's loopback, https:// elsewhere (with --ca-file for a private CA).", valueName: "url")

    @Option(name: .long, help: apiHelp)
    var api: String = env("KILN_API", "http://127.0.0.1:7070")

    @Flag(name: .long, help: "Print the JSON the API returned.")
    var json = false

    @OptionGroup var ca: CAFileOption

    func validate() throws { try Self.check(api: api) }

    /// The rule of the agents' --scheduler and of etcd: the API token crosses the network
    /// only inside TLS.
    static func check(api: String) throws {
        guard let url = URL(string: api), let scheme = url.scheme?.lowercased(), scheme == "http" || scheme == "https",
              let host = url.host, !host.isEmpty, url.user == nil else {
            throw ValidationError("--api must be the scheduler's URL, such as http://127.0.0.1:7070 or https://kiln.example.com, not '\(api)'")
        }
        if scheme == "http" && !CAFileOption.isLoopback(host) {
            throw ValidationError("--api \(api) is not on this machine's loopback: plain HTTP would carry your API token across the network in clear. Use the scheduler's https:// address (kiln scheduler --tls-cert/--tls-key; docs/tls.md)")
        }
    }

    /// A client with this user's token: KILN_TOKEN, else the one `kiln login` stored for
    /// this API in ~/.config/kiln/credentials.
    func client() throws -> APIClient {
        APIClient(api, token: try CLICredentials.token(for: api), ca: try ca.trusted())
    }
}

/// `APIOptions` without `--ca-file`, for the one command whose own `--ca-file` is something
/// else (`kiln cell credential set`, the cluster's CA): the API's CA comes from KILN_CA_FILE.
struct APIOptionsCAFromEnv: ParsableArguments {
    @Option(name: .long, help: APIOptions.apiHelp)
    var api: String = env("KILN_API", "http://127.0.0.1:7070")

    func validate() throws {
        try APIOptions.check(api: api)
        _ = try CAFileOption.trusted(CAFileOption.environment)
    }

    func client() throws -> APIClient {
        APIClient(api, token: try CLICredentials.token(for: api), ca: try CAFileOption.trusted(CAFileOption.environment))
    }
}

/// Options of the commands that talk to etcd.
struct EtcdOptions: ParsableArguments {
    @Option(name: .long, help: EtcdAccessOptions.etcdHelp)
    var etcd: String = env("KILN_ETCD", "http://127.0.0.1:2379")

    @Option(name: .long, help: ArgumentHelp("Prefix of every Kiln key in etcd (env KILN_PREFIX).", valueName: "prefix"))
    var prefix: String = env("KILN_PREFIX", "/kiln")

    @Option(name: .long, help: ArgumentHelp("Log level: trace, debug, info, notice, warning, error (env KILN_LOG_LEVEL).", valueName: "level"))
    var logLevel: String?

    @OptionGroup var access: EtcdAccessOptions

    func validate() throws {
        guard prefix.hasPrefix("/") else { throw ValidationError("--prefix must start with '/', for example /kiln") }
        try access.check(endpoint: etcd)
    }

    func client(logger: Logger) throws -> EtcdClient { try access.client(endpoint: etcd, logger: logger) }
}
