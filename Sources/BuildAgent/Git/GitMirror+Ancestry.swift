import CLibGit2
import Foundation

extension GitMirror {
    /// Whether `commit` is the tip of `ref` in the mirror or one of its ancestors: a build
    /// that pins a commit is a build of the ref only then (see `MavenCachePlacement`).
    /// False when either cannot be found.
    public func isCommit(_ commit: String, onRef ref: String) throws -> Bool {
        let repo = try openExisting()
        defer { git_repository_free(repo) }
        guard let tip = try? GitMirror.resolveRef(repo, ref),
              let found = try? GitMirror.lookupCommit(repo, commit) else { return false }
        defer { git_commit_free(found.commit) }
        if found.sha == tip { return true }
        var tipOID = git_oid(), commitOID = git_oid()
        guard git_oid_fromstr(&tipOID, tip) == 0, git_oid_fromstr(&commitOID, found.sha) == 0 else { return false }
        return git_graph_descendant_of(repo, &tipOID, &commitOID) == 1
    }
}
