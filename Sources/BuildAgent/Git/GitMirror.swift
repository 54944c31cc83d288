import CLibGit2
import Foundation
import KilnCore
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

// libgit2 must be initialised once per process before any other call; a global `let` is
// initialised lazily and exactly once (swift_once), which is what libgit2 asks for.
// It is never shut down: the mirrors live as long as the agent.
let libgit2Initialised: Bool = git_libgit2_init() > 0

/// A per-project bare mirror of a git repository, kept on the builder's disk and updated by
/// incremental fetches, from which builds check out exact commits (no `.git` in the workspace).
///
/// All work goes through libgit2 (never the `git` program). Every method **blocks** the
/// calling thread for as long as the network or the disk takes: run them on a thread of your
/// own (or a dedicated dispatch queue), never on Swift's cooperative pool.
///
/// Rules for callers:
/// - Two `fetch`es of the same mirror are serialised by a file lock beside it (`<path>.lock`),
///   so concurrent builds of one project are safe; `resolve` and `checkout` only read.
/// - The URL is checked before any network use, by the rule the API checks projects with
///   (`Validation.repositoryURL`): only http(s)://, ssh://, git://, file:// and scp-like
///   `user@host:path` are accepted; `ext::` and options hidden as `-…` are refused.
/// - A fetch connects only where its `FetchPolicy` lets it (by default nowhere on loopback,
///   link-local, metadata or this machine's own addresses), at the addresses checked, with no
///   proxy and no redirect to another server (`FetchGuard`, `GuardedStream`).
/// - Submodules and LFS objects are not fetched.
public struct GitMirror: Sendable {
    /// Where the bare repository lives (created by the first `fetch`).
    public let path: URL
    /// The repository it mirrors (the remote "origin").
    public let url: String

    /// The refspecs a mirror fetches: every branch and every tag, forced, with prune.
    public static let refspecs = ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"]

    public init(path: URL, url: String) {
        self.path = path
        self.url = url
    }

    // MARK: fetch

    /// Creates the bare repository if it is absent (remote "origin" = `url`), points origin at
    /// `url` if it changed, and fetches every branch and tag incrementally, pruning refs that
    /// are gone upstream. The mirror's HEAD follows the remote's default branch, so
    /// `resolve(ref: "HEAD", …)` gives the remote's default tip.
    ///
    /// Network use obeys `policy`: the server is resolved and checked before anything else,
    /// and every connection goes only to the addresses checked (`FetchGuard`,
    /// `GuardedStream`); HTTP redirects to another host or port fail the fetch.
    ///
    /// - Parameters:
    ///   - credential: the project's git credential, or nil. libgit2 gets it only when the
    ///     server asks, at most once (`GitCredentialRules`): an HTTPS token as Basic user and
    ///     password, an SSH deploy key from memory (never written to disk). An SSH server's
    ///     host key must be one its known_hosts lines pin for the URL's host and port: with no
    ///     pin (no SSH credential), or another key, the fetch fails. A process that fetches
    ///     from SSH servers holding several host key types should also point HOME at the pins
    ///     (`SSHHostKeyHome`), as `kiln git-fetch` does.
    ///   - policy: which servers may be fetched from; the default refuses loopback, link-local,
    ///     metadata, multicast and this machine's own addresses (not `file://`, which is the
    ///     agent's `FileRepositories` rule).
    ///   - cancel: when set, the transfer stops at the next progress report and this throws a
    ///     `GitError` whose `isCancelled` is true. A fetch blocked on a silent network is only
    ///     interrupted when data or a timeout arrives: libgit2 1.5 has no timeout of its own,
    ///     so the agent runs this in a child process it can kill (`GitFetcher`, `kiln git-fetch`).
    ///   - progress: called on libgit2's thread (this one) as objects arrive.
    /// - Throws: `GitError` with libgit2's message, of kind `refused` when the policy refused,
    ///   `credential` when the server asked for a credential the fetch lacks or refused it, or
    ///   its host key is not pinned; the message names the credential, never its secret.
    @discardableResult
    public func fetch(credential: GitCredential? = nil, policy: FetchPolicy = FetchPolicy(), cancel: CancelFlag? = nil,
                      progress: (@Sendable (FetchProgress) -> Void)? = nil) throws -> FetchStats {
        try GitMirror.validate(url: url)
        precondition(libgit2Initialised, "git_libgit2_init failed")
        let shown = RepositoryEndpoint.redacted(url)
        if cancel?.isCancelled == true { throw GitError(.cancelled, "fetch \(shown)", "cancelled before it started") }
        // Refused before the mirror is touched; GuardedStream checks again at each connection.
        if let server = RepositoryEndpoint(url: url), case .failure(let refusal) = FetchGuard.check(host: server.host, port: server.port, policy: policy) {
            throw GitError(refusal.byPolicy ? .refused : .libgit2, "fetch \(shown)", refusal.message)
        }
        precondition(GuardedStream.registered, "git_stream_register failed")
        let started = ContinuousClock.now

        let lock = try FileLock(path: path.path + ".lock")
        defer { lock.unlock() }
        // Holding the lock, no other fetch writes here: what a killed fetch left is stale.
        try removeLeftovers()

        let repo = try openOrCreate()
        defer { git_repository_free(repo) }
        let remote = try originRemote(repo)
        defer { git_remote_free(remote) }

        let fetchGuard = FetchGuard(policy: policy)
        let context = FetchContext(cancel: cancel, progress: progress, authenticator: GitAuthenticator(credential: credential, url: url, policy: policy))
        do {
            return try FetchGuard.installed(fetchGuard) {
                try transfer(repo: repo, remote: remote, context: context, started: started)
            }
        } catch let error as GitError {
            throw GitMirror.explain(error, refusal: fetchGuard.refusal, credentialFailure: context.authenticator.explanation(of: error.message), url: url)
        }
    }

    /// Connects, fetches the refspecs and moves HEAD, on this thread (whose `FetchGuard` is in
    /// force).
    private func transfer(repo: OpaquePointer, remote: OpaquePointer, context: FetchContext, started: ContinuousClock.Instant) throws -> FetchStats {
        let shown = RepositoryEndpoint.redacted(url)
        let payload = Unmanaged.passUnretained(context).toOpaque()
        return try withExtendedLifetime(context) {
            var callbacks = git_remote_callbacks()
            git_remote_init_callbacks(&callbacks, UInt32(GIT_REMOTE_CALLBACKS_VERSION))
            callbacks.payload = payload
            callbacks.transfer_progress = { stats, payload in
                guard let payload else { return 0 }
                let context = Unmanaged<FetchContext>.fromOpaque(payload).takeUnretainedValue()
                if context.cancel?.isCancelled == true { return -1 }
                if let stats, let progress = context.progress { progress(FetchProgress(stats.pointee)) }
                return 0
            }
            callbacks.sideband_progress = { _, _, payload in
                guard let payload else { return 0 }
                return Unmanaged<FetchContext>.fromOpaque(payload).takeUnretainedValue().cancel?.isCancelled == true ? -1 : 0
            }
            callbacks.remote_ready = { _, _, payload in
                guard let payload else { return 0 }
                return Unmanaged<FetchContext>.fromOpaque(payload).takeUnretainedValue().cancel?.isCancelled == true ? -1 : 0
            }
            // Always set, with or without a credential: a server that asks gets a clear "none",
            // and an SSH host key is checked against the pins, never against ~/.ssh/known_hosts.
            callbacks.credentials = GitAuthenticator.credentialsCallback
            callbacks.certificate_check = GitAuthenticator.certificateCallback

            // Connect first so the remote's default branch can be read; git_remote_fetch then
            // reuses this connection. No proxy (the options' default), and no redirect to
            // another host: a server the policy lets through must not bounce the agent to one
            // it refuses (FetchGuard also refuses another port of the same host).
            var connectOptions = git_remote_connect_options()
            git_remote_connect_options_init(&connectOptions, UInt32(GIT_REMOTE_CONNECT_OPTIONS_VERSION))
            connectOptions.callbacks = callbacks
            connectOptions.follow_redirects = GIT_REMOTE_REDIRECT_NONE
            try check(git_remote_connect_ext(remote, GIT_DIRECTION_FETCH, &connectOptions), "connect to \(shown)", context: context)
            let defaultBranch = GitMirror.defaultBranch(of: remote)

            var options = git_fetch_options()
            git_fetch_options_init(&options, UInt32(GIT_FETCH_OPTIONS_VERSION))
            options.callbacks = callbacks
            options.prune = GIT_FETCH_PRUNE
            options.update_fetchhead = 0
            options.follow_redirects = GIT_REMOTE_REDIRECT_NONE
            // The tags refspec fetches every tag; auto-following would only add work.
            options.download_tags = GIT_REMOTE_DOWNLOAD_TAGS_NONE
            try withStrArray(GitMirror.refspecs) { refspecs in
                try check(git_remote_fetch(remote, &refspecs, &options, "kiln fetch"), "fetch \(shown)", context: context)
            }
            if let defaultBranch {
                // Best effort: an empty remote, or one whose HEAD is detached, has none.
                git_repository_set_head(repo, defaultBranch)
            }

            let stats = git_remote_stats(remote)?.pointee ?? git_indexer_progress()
            return FetchStats(
                receivedObjects: Int(stats.received_objects),
                receivedBytes: Int(stats.received_bytes),
                indexedObjects: Int(stats.indexed_objects),
                durationMs: started.duration(to: .now).inMilliseconds
            )
        }
    }

    /// The error a fetch reports: the policy's refusal when it refused a connection (libgit2's
    /// own text then only says the connection failed), the credential's failure when a
    /// credential callback failed it, a plain statement for a redirect libgit2 refused, and
    /// never the URL's user information.
    static func explain(_ error: GitError, refusal: String?, credentialFailure: String? = nil, url: String) -> GitError {
        if error.isCancelled { return error }
        if let refusal { return GitError(.refused, error.operation, refusal, code: error.code) }
        if let credentialFailure { return GitError(.credential, error.operation, credentialFailure, code: error.code) }
        var message = RepositoryEndpoint.scrub(error.message, of: url)
        if let hint = GitCredentialRules.handshakeFailure(message, url: url) { return GitError(.credential, error.operation, hint, code: error.code) }
        if message.hasPrefix("cannot redirect from") || message == "unexpected redirect" {
            message = "the server answered with an HTTP redirect (libgit2: \(message)): the agent follows no redirect to another host or port. Set the project's repository to the URL the server redirects to"
            return GitError(.refused, error.operation, message, code: error.code)
        }
        return GitError(error.kind, error.operation, message, code: error.code)
    }

    /// Removes what a fetch that was killed midway left in the mirror: lock files (`*.lock`:
    /// a ref, `packed-refs`, `config`), which would make every later fetch fail, and
    /// half-written temporary files (libgit2's `*_git2_*`, git's `tmp_*`, e.g. a pack in
    /// `objects/pack/`). Call only while holding the mirror's fetch lock.
    func removeLeftovers() throws {
        let fm = FileManager.default
        guard let walker = fm.enumerator(at: path, includingPropertiesForKeys: [.isRegularFileKey], options: []) else { return }
        for case let file as URL in walker where GitMirror.isLeftover(file.lastPathComponent) {
            guard (try? file.resourceValues(forKeys: [.isRegularFileKey]))?.isRegularFile == true else { continue }
            do {
                try fm.removeItem(at: file)
            } catch {
                throw GitError(.io, "clean mirror \(path.path)", "cannot remove the leftover \(file.path) of an interrupted fetch: \(error.localizedDescription)")
            }
        }
    }

    /// Whether a file of this name in a bare repository is a lock or temporary file of an
    /// unfinished write (never a ref, object, pack or index git keeps).
    static func isLeftover(_ name: String) -> Bool {
        name.hasSuffix(".lock") || name.contains("_git2_") || name.hasPrefix("tmp_")
    }

    // MARK: resolve

    /// The full 40-hex sha of the commit to build.
    ///
    /// - With `commit` (a full or abbreviated sha, at least 4 hex digits): that commit, which
    ///   must exist in the mirror; a tag object's sha is peeled to its commit.
    /// - Without: the tip of `ref`: "HEAD" (the remote's default branch), a full ref name
    ///   ("refs/heads/main", "refs/tags/v1.0") or a short one ("main", "v1.0"). A short name
    ///   that is both a branch and a tag pointing at different commits is refused as ambiguous.
    public func resolve(ref: String, commit: String?) throws -> String {
        precondition(libgit2Initialised, "git_libgit2_init failed")
        let repo = try openExisting()
        defer { git_repository_free(repo) }
        if let commit, !commit.isEmpty {
            return try GitMirror.lookupCommit(repo, commit).sha
        }
        return try GitMirror.resolveRef(repo, ref)
    }

    // MARK: checkout

    /// Writes the tree of `commit` into `directory` (created if missing), with no `.git`.
    ///
    /// Files are forced into place; files already in `directory` that the commit does not
    /// have are left alone, so pass a new or empty directory.
    public func checkout(commit: String, into directory: URL) throws {
        precondition(libgit2Initialised, "git_libgit2_init failed")
        let repo = try openExisting()
        defer { git_repository_free(repo) }
        let found = try GitMirror.lookupCommit(repo, commit)
        defer { git_commit_free(found.commit) }
        var tree: OpaquePointer?
        try check(git_commit_tree(&tree, found.commit), "read the tree of \(found.sha)")
        defer { git_tree_free(tree) }

        do {
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        } catch {
            throw GitError(.io, "checkout \(found.sha)", "cannot create \(directory.path): \(error.localizedDescription)")
        }
        // An empty baseline makes libgit2 write every file: with the default baseline (HEAD's
        // tree) files equal in HEAD and the commit would be taken as already present.
        var emptyIndex: OpaquePointer?
        try check(git_index_new(&emptyIndex), "create an empty index")
        defer { git_index_free(emptyIndex) }

        var options = git_checkout_options()
        git_checkout_options_init(&options, UInt32(GIT_CHECKOUT_OPTIONS_VERSION))
        options.checkout_strategy = GIT_CHECKOUT_FORCE.rawValue | GIT_CHECKOUT_DONT_UPDATE_INDEX.rawValue
            | GIT_CHECKOUT_DONT_WRITE_INDEX.rawValue
        options.baseline_index = emptyIndex
        try directory.path.withCString { target in
            options.target_directory = target
            try check(git_checkout_tree(repo, tree, &options), "checkout \(found.sha) into \(directory.path)")
        }
    }

    // MARK: names

    /// The 7-character short form of a sha, as shown in logs and used as the default image tag.
    public func shortSHA(_ sha: String) -> String { GitMirror.shortSHA(sha) }

    /// The 7-character short form of a sha.
    public static func shortSHA(_ sha: String) -> String { String(sha.prefix(7)) }

    /// Checks that `url` names a transport a build agent may use: `Validation.repositoryURL`,
    /// the rule the API checks projects with (one rule, so the two cannot drift apart).
    ///
    /// Accepted: `http://`, `https://`, `ssh://`, `git://`, `file://`, and scp-like
    /// `[user@]host:path`. Refused, among others: anything starting with `-` or whose user,
    /// host or path does, git's `transport::address` form (`ext::`, `fd::`), control characters
    /// or spaces, other schemes, and plain local paths (use `file://`).
    ///
    /// - Throws: `GitError` of kind `invalidURL` with the reason.
    public static func validate(url: String) throws {
        do {
            try Validation.repositoryURL(url)
        } catch let error as KilnError {
            // Quoted as given: the API refused the same URL when the project was saved, so
            // none that reaches an agent fails here.
            throw GitError(.invalidURL, "check repository URL '\(Validation.printable(url))'", error.message)
        }
    }
}
