import Foundation

/// Whether an agent may fetch a `file://` repository.
///
/// A repository on the agent's own disk is another way out of the build's folders: a project
/// naming `file:///var/lib/kiln/agent/mirrors/other.git` gets another project's code. So
/// `file://` is refused unless the operator allowed a folder (`kiln agent --allow-file-repos
/// DIR`), and then only for a repository inside it, after every symbolic link is followed
/// (`resolvedPath`), and never inside the agent's own data folder (mirrors, caches,
/// workspaces), even when an allowed folder contains it.
enum FileRepositories {
    /// The local path a repository URL names (`file:///srv/git/a.git` → `/srv/git/a.git`,
    /// percent-escapes decoded as libgit2 does), or nil for any other transport.
    static func localPath(of url: String) -> String? {
        guard url.lowercased().hasPrefix("file://") else { return nil }
        let rest = String(url.dropFirst("file://".count))
        return rest.removingPercentEncoding ?? rest
    }

    /// Nil when allowed, else the reason with what to do. All paths resolved (realpath).
    static func refusal(url: String, resolvedPath: String?, allowed: [String], dataDir: String) -> String? {
        let flag = "kiln agent --allow-file-repos DIR (env KILN_ALLOW_FILE_REPOS)"
        if allowed.isEmpty {
            return "file:// repositories are refused on this agent: a repository on the agent's disk could be another project's. Serve it over http(s), ssh or git, or allow its folder with \(flag)"
        }
        guard let path = resolvedPath else {
            return "the repository \(url) does not exist on this agent"
        }
        if Containment.isInside(path, dataDir) {
            return "the repository \(url) lies in the agent's own data folder (\(dataDir): mirrors, caches and workspaces of every project) and is refused"
        }
        guard allowed.contains(where: { Containment.isInside(path, $0) }) else {
            return "the repository \(url) (\(path)) is outside the folders allowed for file:// repositories (\(allowed.joined(separator: ", "))); allow its folder with \(flag)"
        }
        return nil
    }
}
