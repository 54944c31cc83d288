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
private let libgit2Initialised: Bool = git_libgit2_init() > 0

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
    /// - Parameters:
    ///   - cancel: when set, the transfer stops at the next progress report and this throws a
    ///     `GitError` whose `isCancelled` is true. A fetch blocked on a silent network is only
    ///     interrupted when data or a timeout arrives.
    ///   - progress: called on libgit2's thread (this one) as objects arrive.
    /// - Throws: `GitError` with libgit2's message.
    @discardableResult
    public func fetch(cancel: CancelFlag? = nil, progress: (@Sendable (FetchProgress) -> Void)? = nil) throws -> FetchStats {
        try GitMirror.validate(url: url)
        precondition(libgit2Initialised, "git_libgit2_init failed")
        if cancel?.isCancelled == true { throw GitError(.cancelled, "fetch \(url)", "cancelled before it started") }
        let started = ContinuousClock.now

        let lock = try FileLock(path: path.path + ".lock")
        defer { lock.unlock() }

        let repo = try openOrCreate()
        defer { git_repository_free(repo) }
        let remote = try originRemote(repo)
        defer { git_remote_free(remote) }

        let context = FetchContext(cancel: cancel, progress: progress)
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

            // Connect first so the remote's default branch can be read; git_remote_fetch then
            // reuses this connection.
            var proxy = git_proxy_options()
            git_proxy_options_init(&proxy, UInt32(GIT_PROXY_OPTIONS_VERSION))
            try check(git_remote_connect(remote, GIT_DIRECTION_FETCH, &callbacks, &proxy, nil), "connect to \(url)", context: context)
            let defaultBranch = GitMirror.defaultBranch(of: remote)

            var options = git_fetch_options()
            git_fetch_options_init(&options, UInt32(GIT_FETCH_OPTIONS_VERSION))
            options.callbacks = callbacks
            options.prune = GIT_FETCH_PRUNE
            options.update_fetchhead = 0
            // The tags refspec fetches every tag; auto-following would only add work.
            options.download_tags = GIT_REMOTE_DOWNLOAD_TAGS_NONE
            try withStrArray(GitMirror.refspecs) { refspecs in
                try check(git_remote_fetch(remote, &refspecs, &options, "kiln fetch"), "fetch \(url)", context: context)
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
                durationMs: started.duration(to: .now).milliseconds
            )
        }
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
            throw GitError(.invalidURL, "check repository URL '\(Validation.printable(url))'", error.message)
        }
    }
}

// MARK: - public value types

/// A snapshot of a fetch in progress (libgit2's indexer progress).
public struct FetchProgress: Sendable, Equatable {
    public var totalObjects: Int
    public var receivedObjects: Int
    public var indexedObjects: Int
    public var localObjects: Int
    public var totalDeltas: Int
    public var indexedDeltas: Int
    public var receivedBytes: Int

    init(_ p: git_indexer_progress) {
        totalObjects = Int(p.total_objects)
        receivedObjects = Int(p.received_objects)
        indexedObjects = Int(p.indexed_objects)
        localObjects = Int(p.local_objects)
        totalDeltas = Int(p.total_deltas)
        indexedDeltas = Int(p.indexed_deltas)
        receivedBytes = Int(p.received_bytes)
    }
}

/// What one fetch transferred: 0 received objects means the mirror was already up to date.
public struct FetchStats: Sendable, Equatable {
    public var receivedObjects: Int
    public var receivedBytes: Int
    public var indexedObjects: Int
    public var durationMs: Int

    public init(receivedObjects: Int, receivedBytes: Int, indexedObjects: Int, durationMs: Int) {
        self.receivedObjects = receivedObjects
        self.receivedBytes = receivedBytes
        self.indexedObjects = indexedObjects
        self.durationMs = durationMs
    }
}

/// A flag another thread sets to stop a running fetch (checked in libgit2's progress callbacks).
public final class CancelFlag: Sendable {
    private let flag = Atomic<Bool>(false)

    public init() {}

    public func cancel() { flag.store(true, ordering: .releasing) }

    public var isCancelled: Bool { flag.load(ordering: .acquiring) }
}

/// A failure of a git operation: what was being done, and libgit2's own message.
public struct GitError: Error, CustomStringConvertible, Sendable {
    /// Which kind of failure this is; new kinds may be added.
    public struct Kind: Hashable, Sendable, CustomStringConvertible {
        private enum Base: String, Hashable, Sendable { case libgit2, cancelled, notFound, ambiguous, invalidURL, invalidArgument, io }
        private let base: Base
        private init(_ base: Base) { self.base = base }
        /// libgit2 reported an error (network, corrupt repository, …).
        public static let libgit2 = Kind(.libgit2)
        /// The operation was stopped through its `CancelFlag`.
        public static let cancelled = Kind(.cancelled)
        /// The ref, commit or repository does not exist.
        public static let notFound = Kind(.notFound)
        /// A short name or abbreviated sha matches more than one thing.
        public static let ambiguous = Kind(.ambiguous)
        /// The repository URL was refused before any network use.
        public static let invalidURL = Kind(.invalidURL)
        /// A ref name or sha is malformed.
        public static let invalidArgument = Kind(.invalidArgument)
        /// A local file operation failed.
        public static let io = Kind(.io)
        public var description: String { base.rawValue }
    }

    public let kind: Kind
    /// What was being done, e.g. "fetch https://host/repo.git".
    public let operation: String
    /// Why it failed (libgit2's `git_error_last` message where there is one).
    public let message: String
    /// libgit2's return code, or 0 when the error did not come from libgit2.
    public let code: Int32

    public init(_ kind: Kind, _ operation: String, _ message: String, code: Int32 = 0) {
        self.kind = kind
        self.operation = operation
        self.message = message
        self.code = code
    }

    public var isCancelled: Bool { kind == .cancelled }

    public var description: String { "git: \(operation): \(message)" }
}

// MARK: - internals

/// What the C callbacks reach through their payload pointer.
private final class FetchContext {
    let cancel: CancelFlag?
    let progress: (@Sendable (FetchProgress) -> Void)?
    init(cancel: CancelFlag?, progress: (@Sendable (FetchProgress) -> Void)?) {
        self.cancel = cancel
        self.progress = progress
    }
}

/// Turns a libgit2 return code into a `GitError` carrying `git_error_last()`.
private func check(_ code: Int32, _ operation: @autoclosure () -> String, context: FetchContext? = nil) throws {
    guard code < 0 else { return }
    if context?.cancel?.isCancelled == true {
        throw GitError(.cancelled, operation(), "cancelled", code: code)
    }
    throw lastError(code, operation())
}

private func lastError(_ code: Int32, _ operation: String) -> GitError {
    var message = "libgit2 error \(code)"
    if let last = git_error_last(), let text = last.pointee.message {
        message = String(cString: text)
    }
    let kind: GitError.Kind
    switch code {
    case GIT_ENOTFOUND.rawValue: kind = .notFound
    case GIT_EAMBIGUOUS.rawValue: kind = .ambiguous
    default: kind = .libgit2
    }
    return GitError(kind, operation, message, code: code)
}

private func withStrArray<R>(_ strings: [String], _ body: (inout git_strarray) throws -> R) throws -> R {
    let pointers = strings.map { strdup($0) }
    defer { pointers.forEach { free($0) } }
    var array = pointers
    return try array.withUnsafeMutableBufferPointer { buffer in
        var strarray = git_strarray(strings: buffer.baseAddress, count: buffer.count)
        return try body(&strarray)
    }
}

extension GitMirror {
    fileprivate func openExisting() throws -> OpaquePointer {
        var repo: OpaquePointer?
        let code = git_repository_open_bare(&repo, path.path)
        if code == GIT_ENOTFOUND.rawValue {
            throw GitError(.notFound, "open mirror \(path.path)", "there is no mirror yet: fetch first")
        }
        try check(code, "open mirror \(path.path)")
        return repo!
    }

    fileprivate func openOrCreate() throws -> OpaquePointer {
        var repo: OpaquePointer?
        let fm = FileManager.default
        let exists = fm.fileExists(atPath: path.path)
        let empty = exists && ((try? fm.contentsOfDirectory(atPath: path.path).isEmpty) ?? false)
        if exists && !empty {
            try check(git_repository_open_bare(&repo, path.path), "open mirror \(path.path)")
            return repo!
        }
        do {
            try fm.createDirectory(at: path.deletingLastPathComponent(), withIntermediateDirectories: true)
        } catch {
            throw GitError(.io, "create mirror \(path.path)", error.localizedDescription)
        }
        try check(git_repository_init(&repo, path.path, 1), "create mirror \(path.path)")
        return repo!
    }

    /// The remote "origin", created or re-pointed at `url`.
    fileprivate func originRemote(_ repo: OpaquePointer) throws -> OpaquePointer {
        var remote: OpaquePointer?
        let code = git_remote_lookup(&remote, repo, "origin")
        if code == GIT_ENOTFOUND.rawValue {
            try check(git_remote_create_with_fetchspec(&remote, repo, "origin", url, GitMirror.refspecs[0]), "add remote origin \(url)")
            try check(git_remote_add_fetch(repo, "origin", GitMirror.refspecs[1]), "add the tags refspec")
            return remote!
        }
        try check(code, "read remote origin")
        let current = git_remote_url(remote).map { String(cString: $0) }
        if current == url { return remote! }
        git_remote_free(remote)
        try check(git_remote_set_url(repo, "origin", url), "set remote origin to \(url)")
        remote = nil
        try check(git_remote_lookup(&remote, repo, "origin"), "read remote origin")
        return remote!
    }

    fileprivate static func defaultBranch(of remote: OpaquePointer?) -> String? {
        var buf = git_buf()
        defer { git_buf_dispose(&buf) }
        guard git_remote_default_branch(&buf, remote) == 0, let ptr = buf.ptr else { return nil }
        let name = String(cString: ptr)
        return name.hasPrefix("refs/heads/") ? name : nil
    }

    fileprivate static func oidString(_ oid: UnsafePointer<git_oid>) -> String {
        var out = [CChar](repeating: 0, count: 40)
        git_oid_fmt(&out, oid)
        return String(decoding: out.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Finds a commit by full or abbreviated sha, peeling tag objects.
    fileprivate static func lookupCommit(_ repo: OpaquePointer, _ sha: String) throws -> (commit: OpaquePointer, sha: String) {
        let operation = "find commit \(sha)"
        guard (4...40).contains(sha.count), sha.allSatisfy(\.isHexDigit) else {
            throw GitError(.invalidArgument, operation, "a commit must be 4 to 40 hex digits")
        }
        var oid = git_oid()
        try check(git_oid_fromstrn(&oid, sha, sha.utf8.count), operation)
        var object: OpaquePointer?
        let code = git_object_lookup_prefix(&object, repo, &oid, sha.utf8.count, GIT_OBJECT_ANY)
        if code == GIT_ENOTFOUND.rawValue {
            throw GitError(.notFound, operation, "no such commit in the mirror (was it pushed, and fetched?)", code: code)
        }
        if code == GIT_EAMBIGUOUS.rawValue {
            throw GitError(.ambiguous, operation, "the abbreviated sha matches more than one object: give more digits", code: code)
        }
        try check(code, operation)
        defer { git_object_free(object) }
        var peeled: OpaquePointer?
        try check(git_object_peel(&peeled, object, GIT_OBJECT_COMMIT), "\(operation): it is not a commit")
        return (peeled!, oidString(git_object_id(peeled)))
    }

    fileprivate static func resolveRef(_ repo: OpaquePointer, _ ref: String) throws -> String {
        let operation = "resolve ref '\(ref)'"
        if ref.isEmpty || ref.hasPrefix("-") {
            throw GitError(.invalidArgument, operation, "not a ref name")
        }
        let candidates: [String]
        if ref == "HEAD" || ref.hasPrefix("refs/") {
            candidates = [ref]
        } else {
            candidates = ["refs/heads/\(ref)", "refs/tags/\(ref)"]
        }
        var found: [(name: String, sha: String)] = []
        for name in candidates {
            var valid: Int32 = 0
            guard git_reference_name_is_valid(&valid, name) == 0, valid == 1 else {
                throw GitError(.invalidArgument, operation, "'\(name)' is not a valid ref name")
            }
            var reference: OpaquePointer?
            let code = git_reference_lookup(&reference, repo, name)
            if code == GIT_ENOTFOUND.rawValue { continue }
            try check(code, operation)
            defer { git_reference_free(reference) }
            var object: OpaquePointer?
            let peelCode = git_reference_peel(&object, reference, GIT_OBJECT_COMMIT)
            if peelCode == GIT_ENOTFOUND.rawValue { continue }  // HEAD of a mirror whose default branch is gone
            try check(peelCode, "\(operation): it does not point at a commit")
            defer { git_object_free(object) }
            found.append((name, oidString(git_object_id(object))))
        }
        guard let first = found.first else {
            throw GitError(.notFound, operation, "no branch or tag named '\(ref)' in the mirror")
        }
        if found.contains(where: { $0.sha != first.sha }) {
            throw GitError(.ambiguous, operation, "both \(found.map(\.name).joined(separator: " and ")) exist and differ: give the full ref name")
        }
        return first.sha
    }
}

/// An exclusive `flock` on a file, held until `unlock()`.
private struct FileLock {
    let fd: Int32

    init(path: String) throws {
        try? FileManager.default.createDirectory(
            atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        fd = open(path, O_CREAT | O_RDWR | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw GitError(.io, "lock \(path)", String(cString: strerror(errno))) }
        while flock(fd, LOCK_EX) != 0 {
            if errno == EINTR { continue }
            let message = String(cString: strerror(errno))
            close(fd)
            throw GitError(.io, "lock \(path)", message)
        }
    }

    func unlock() {
        flock(fd, LOCK_UN)
        close(fd)
    }
}

extension Duration {
    fileprivate var milliseconds: Int {
        let (seconds, attoseconds) = components
        return Int(seconds) * 1000 + Int(attoseconds / 1_000_000_000_000_000)
    }
}
