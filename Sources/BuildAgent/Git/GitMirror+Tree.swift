import CLibGit2
import Foundation

extension GitMirror {
    /// The id of `commit`'s tree: what its checkout holds, files and modes, by content. Two
    /// commits with the same tree check out the same files (the reuse key, `ReuseKey`).
    public func tree(of commit: String) throws -> String {
        let repo = try openExisting()
        defer { git_repository_free(repo) }
        let found = try GitMirror.lookupCommit(repo, commit)
        defer { git_commit_free(found.commit) }
        guard let oid = git_commit_tree_id(found.commit) else {
            throw GitError(.notFound, "read the tree of \(commit)", "the commit names no tree")
        }
        return GitMirror.oidString(oid)
    }
}
