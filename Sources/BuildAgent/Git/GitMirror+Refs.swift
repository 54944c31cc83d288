import CLibGit2
import Foundation
import KilnCore

extension GitMirror {
    /// At most this many refs are read from a mirror (a repository may hold a hundred thousand
    /// tags; the list published is far shorter, and peeling each costs a commit read).
    static let refsReadMax = 20_000

    /// The mirror's branches and tags with the time of the commit each points at (a ref that
    /// does not peel to a commit is left out), for ``RepositoryRefs/bounded(_:)``.
    public func refs() throws -> [RepositoryRefs.Found] {
        precondition(libgit2Initialised, "git_libgit2_init failed")
        let repo = try openExisting()
        defer { git_repository_free(repo) }
        var iterator: OpaquePointer?
        try check(git_reference_iterator_new(&iterator, repo), "list the mirror's refs")
        defer { git_reference_iterator_free(iterator) }
        var found: [RepositoryRefs.Found] = []
        var reference: OpaquePointer?
        while found.count < Self.refsReadMax, git_reference_next(&reference, iterator) == 0 {
            defer { git_reference_free(reference) }
            guard let raw = git_reference_name(reference) else { continue }
            let name = String(cString: raw)
            guard name.hasPrefix("refs/heads/") || name.hasPrefix("refs/tags/") else { continue }
            var object: OpaquePointer?
            guard git_reference_peel(&object, reference, GIT_OBJECT_COMMIT) == 0 else { continue }
            defer { git_object_free(object) }
            found.append(RepositoryRefs.Found(name: name, time: Int64(git_commit_time(object))))
        }
        return found
    }
}

/// What an agent published of each project's refs, so that a build publishes them only when
/// they changed or ``RepositoryRefs/republishEvery`` builds went by (``RepositoryRefs``).
final class PublishedRefs: Sendable {
    private struct Published: Sendable {
        var refs: [String]
        var buildsSince: Int
    }

    private let last = Locked<[String: Published]>([:])

    /// The list this build of `project` carries, or nil when the last one still stands.
    func publish(_ refs: [String], project: String) -> [String]? {
        last.withLock { all in
            let previous = all[project]
            guard RepositoryRefs.shouldPublish(refs, last: previous?.refs, buildsSince: previous?.buildsSince ?? 0) else {
                all[project]?.buildsSince += 1
                return nil
            }
            all[project] = Published(refs: refs, buildsSince: 1)
            return refs
        }
    }
}
