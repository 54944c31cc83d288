import ArgumentParser
import BuildAgent
import Foundation
import KilnCore

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
        stderr (after its kind in brackets, such as [credential]) and exits with status 1.

        With --credential-stdin the project's git credential is read from standard input, \
        as JSON ({"token":{"username":…,"token":…}} or {"sshKey":{"privateKey":…,"knownHosts":…}}), \
        never from an argument or the environment, which other users of the machine can read. \
        It is given to the server only when it asks (a token over plain http:// only to a \
        server --allow-fetch-from names); an SSH server's host key must be one its \
        knownHosts lines pin.
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

    @Flag(name: .customLong("credential-stdin"), help: "Read the project's git credential (JSON) from standard input.")
    var credentialStdin = false

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
            let credential = credentialStdin ? try GitFetchCommand.readCredential() : nil
            // Only this process's HOME: libgit2 reads the pinned key's type from it (SSHHostKeyHome).
            let home = try SSHHostKeyHome.install(for: credential, url: url)
            defer { home?.remove() }
            let stats = try GitMirror(path: URL(fileURLWithPath: mirror), url: url).fetch(credential: credential, policy: try policy())
            FileHandle.standardOutput.write(try JSONEncoder().encode(stats) + Data("\n".utf8))
        } catch let error as GitError {
            // Under the operation GitFetcher reads it by (a connect's error says "connect to").
            let reported = GitError(error.kind, "fetch \(RepositoryEndpoint.redacted(url))", error.message, code: error.code)
            FileHandle.standardError.write(Data("\(reported.taggedDescription)\n".utf8))
            throw ExitCode.failure
        } catch {
            FileHandle.standardError.write(Data("\(error)\n".utf8))
            throw ExitCode.failure
        }
    }

    /// The credential on stdin: one JSON `GitCredential`, at most 1 MiB.
    static func readCredential() throws -> GitCredential {
        let data = (try? FileHandle.standardInput.read(upToCount: 1 << 20)) ?? Data()
        do {
            return try JSONDecoder().decode(GitCredential.self, from: data)
        } catch {
            // Never quote the input: it is the secret.
            throw GitError(.invalidArgument, "read the git credential", "standard input holds no git credential as JSON (\(data.count) bytes)")
        }
    }
}
