import ArgumentParser
import BuildAgent
import Foundation

/// The network part of an agent's fetch, in a process of its own so that the agent can kill
/// it (libgit2 has no server timeout): `GitFetcher` starts it. Hidden from `--help`.
struct GitFetchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "git-fetch",
        abstract: "Fetch a repository into a bare mirror with libgit2 (started by kiln agent).",
        discussion: """
        Creates or updates the bare mirror DIR from URL (every branch and tag, pruned), under \
        the mirror's file lock, after removing what an interrupted fetch left there. The \
        server is checked by the agent's fetch policy before the fetch and at each connection, \
        and connected to only at the addresses checked; redirects elsewhere fail. Prints \
        the transfer's stats as one JSON object on stdout; on failure prints the reason on \
        stderr and exits with status 1.
        """,
        shouldDisplay: false)

    @Option(name: .long, help: ArgumentHelp("The bare mirror to create or update.", valueName: "dir"))
    var mirror: String

    @Option(name: .long, help: ArgumentHelp("The repository to fetch from.", valueName: "url"))
    var url: String

    @Option(name: .customLong("allow-fetch-from"), help: ArgumentHelp("A server to fetch from whatever it resolves to (kiln agent's option, passed on).", valueName: "host:port"))
    var allowFetchFrom: [String] = []

    @Flag(name: .customLong("deny-private-fetch"), help: "Refuse servers in private ranges too (kiln agent's option, passed on).")
    var denyPrivateFetch = false

    func validate() throws {
        _ = try policy()
    }

    func policy() throws -> FetchPolicy {
        do {
            return try FetchPolicy(parsing: allowFetchFrom, denyPrivate: denyPrivateFetch)
        } catch let error as FetchAllowanceError {
            throw ValidationError(error.message)
        }
    }

    func run() throws {
        do {
            let stats = try GitMirror(path: URL(fileURLWithPath: mirror), url: url).fetch(policy: try policy())
            FileHandle.standardOutput.write(try JSONEncoder().encode(stats) + Data("\n".utf8))
        } catch {
            FileHandle.standardError.write(Data("\(error)\n".utf8))
            throw ExitCode.failure
        }
    }
}
