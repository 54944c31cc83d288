import Foundation
import KilnCore
import Processes

/// Runs a mirror's fetch (the network part of a build's fetch step) in a child process,
/// `kiln git-fetch`, which does `GitMirror.fetch` with libgit2 and reports its stats as JSON.
///
/// Why a child: libgit2 1.5 has no server timeout, and a server that accepts a connection and
/// then says nothing blocks its thread in `recv` for ever, where no cancel flag is read. A
/// child can be killed: cancelling the caller (a cancel, the step's time limit, the agent's
/// shutdown) kills its process group and returns at once. What a killed fetch leaves in the
/// mirror (lock files, a half-written pack) is removed by the next fetch, under the mirror's
/// file lock (`GitMirror.removeLeftovers`).
///
/// Rules: the URL's form is checked here, before the child starts, and again by the child;
/// the fetch policy (which servers, `FetchPolicy`) is applied by the child, right before and
/// at each connection, since a name resolved here could resolve differently there. Nothing
/// secret goes on the child's command line or into its environment (both are visible in
/// `ps` and `/proc`): the project's git credential goes to the child on its stdin, as JSON,
/// and stays in its memory (an SSH deploy key too; only the public host keys are written,
/// see `SSHHostKeyHome`).
public struct GitFetcher: Sendable {
    /// The `kiln` executable whose hidden `git-fetch` subcommand does the work.
    public let executable: URL
    /// Which servers the child may fetch from.
    public let policy: FetchPolicy

    public init(executable: URL, policy: FetchPolicy = FetchPolicy()) {
        self.executable = executable
        self.policy = policy
    }

    /// The option that makes `kiln git-fetch` read the credential from its stdin.
    static let credentialOption = "--credential-stdin"

    /// The child's arguments for one fetch (never the credential itself).
    func arguments(for mirror: GitMirror, withCredential: Bool = false) -> [String] {
        ["git-fetch", "--mirror", mirror.path.path, "--url", mirror.url] + policy.arguments + (withCredential ? [GitFetcher.credentialOption] : [])
    }

    /// Fetches `mirror` in a child process and returns what it transferred.
    /// - Parameter credential: the project's git credential (`BuildSecrets.git`), or nil: handed
    ///   to the child on its stdin, used only when the server asks (`GitMirror.fetch`).
    /// - Throws: `GitError` with the child's own message when the fetch failed (kind
    ///   `credential` when the server refused or lacked the credential, or its SSH host key is
    ///   not pinned; `refused` when the fetch policy refused the server), `CancellationError`
    ///   when the caller was cancelled (the child is killed then).
    public func fetch(_ mirror: GitMirror, credential: GitCredential? = nil) async throws -> FetchStats {
        try GitMirror.validate(url: mirror.url)
        let operation = "fetch \(RepositoryEndpoint.redacted(mirror.url))"
        let input: Data?
        do {
            input = try credential.map { try JSONEncoder().encode($0) }
        } catch {
            throw GitError(.io, operation, "cannot encode the project's git credential: \(error)")
        }
        let outcome: Spawn.Outcome
        do {
            outcome = try await Spawn.runCancellable(executable.path, arguments(for: mirror, withCredential: input != nil), input: input, outputLimit: 64 * 1024)
        } catch let error as FarmError {
            throw GitError(.io, operation, "cannot start \(executable.path) git-fetch: \(error.description)")
        }
        return try GitFetcher.interpret(outcome, operation: operation)
    }

    /// The stats of a child that succeeded, or the error it reported (pure, for tests).
    static func interpret(_ outcome: Spawn.Outcome, operation: String) throws -> FetchStats {
        let stderr = String(decoding: outcome.stderr, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard outcome.status == 0 else {
            if outcome.status > 128 {
                throw GitError(.libgit2, operation, "the fetch process was killed by signal \(outcome.status - 128)\(stderr.isEmpty ? "" : ": \(stderr)")")
            }
            // The child prints the GitError's kind and description ("[credential] git: fetch
            // URL: message"), so the caller can tell a refused credential from a network error.
            var text = Substring(stderr), kind = GitError.Kind.libgit2
            if let tagged = GitError.Kind.parseTag(&text) { kind = tagged }
            let prefix = "git: \(operation): "
            let message = text.hasPrefix(prefix) ? String(text.dropFirst(prefix.count)) : String(text)
            throw GitError(kind, operation, message.isEmpty ? "the fetch process exited with status \(outcome.status)" : message)
        }
        do {
            return try JSONDecoder().decode(FetchStats.self, from: outcome.stdout)
        } catch {
            throw GitError(.io, operation, "the fetch process printed no stats (\(String(decoding: outcome.stdout.prefix(200), as: UTF8.self)))")
        }
    }
}
