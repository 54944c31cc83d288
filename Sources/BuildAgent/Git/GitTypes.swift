import CLibGit2
import Foundation
import Synchronization

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
public struct FetchStats: Sendable, Equatable, Codable {
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
        private enum Base: String, Hashable, Sendable { case libgit2, cancelled, notFound, ambiguous, invalidURL, invalidArgument, io, refused, credential }
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
        /// The agent's fetch policy refused the server (`FetchPolicy`), or the server
        /// redirected the fetch elsewhere.
        public static let refused = Kind(.refused)
        /// The server asked for a credential the project lacks, refused the project's git
        /// credential, or its SSH host key is not pinned (unknown or changed): the message
        /// names the credential and what to check, never its secret.
        public static let credential = Kind(.credential)
        public var description: String { base.rawValue }

        /// How `kiln git-fetch` marks its error line (`[credential] git: …`), so that the
        /// agent's `GitFetcher` keeps the kind across the process boundary.
        var tag: String { "[\(base.rawValue)] " }

        /// The kind tagged at the start of `text`, removing the tag; nil (and `text` kept)
        /// without one.
        static func parseTag(_ text: inout Substring) -> Kind? {
            guard text.hasPrefix("["), let close = text.firstIndex(of: "]"),
                  let base = Base(rawValue: String(text[text.index(after: text.startIndex)..<close])) else { return nil }
            text = text[text.index(after: close)...].drop { $0 == " " }
            return Kind(base)
        }
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

    /// The description with its kind's tag first: what `kiln git-fetch` prints on failure.
    public var taggedDescription: String { kind.tag + description }
}
