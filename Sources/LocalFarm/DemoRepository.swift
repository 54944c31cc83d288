import Foundation

/// Publishes a folder (the demo project in `fixtures/`) as the `main` branch of a bare git
/// repository served by `GitHTTPServer`, as a developer's push to GitLab would.
///
/// Uses the git command: this stands for the developer's side, not for Kiln's fetch (which
/// is libgit2). Commit dates are fixed, so publishing the same content twice gives the same
/// commit and a second `kiln up` finds the repository unchanged.
public enum DemoRepository {
    /// Makes `bareRepository` hold `source` (minus build output) as the tip of `branch`,
    /// committing only if something changed; `edit` may change the files before the commit.
    /// Returns the tip's commit id.
    @discardableResult
    public static func publish(source: URL, bareRepository: URL, branch: String = "main", message: String = "Demo project",
                               edit: ((URL) throws -> Void)? = nil) throws -> String {
        let fm = FileManager.default
        let work = fm.temporaryDirectory.appendingPathComponent("kiln-publish-\(UUID().uuidString)")
        defer { try? fm.removeItem(at: work) }
        let env = [
            "GIT_AUTHOR_NAME": "Kiln Demo", "GIT_AUTHOR_EMAIL": "demo@kiln.invalid",
            "GIT_COMMITTER_NAME": "Kiln Demo", "GIT_COMMITTER_EMAIL": "demo@kiln.invalid",
            "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
            "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "safe.directory", "GIT_CONFIG_VALUE_0": "*",
        ]
        func git(_ args: [String], in dir: URL? = nil) throws -> String {
            let full = (dir.map { ["-C", $0.path] } ?? []) + args
            let r = try ManagedProcess.run("git", full, environment: env)
            guard r.status == 0 else { throw FarmError("git \(args.joined(separator: " ")) failed: \(r.output)") }
            return r.output.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        if !fm.fileExists(atPath: bareRepository.appendingPathComponent("HEAD").path) {
            try fm.createDirectory(at: bareRepository, withIntermediateDirectories: true)
            _ = try git(["init", "-q", "--bare", "-b", branch, bareRepository.path])
        }
        let hasBranch = (try? git(["rev-parse", "--verify", "-q", "refs/heads/\(branch)"], in: bareRepository)) != nil
        if hasBranch {
            _ = try git(["clone", "-q", "-b", branch, bareRepository.path, work.path])
        } else {
            try fm.createDirectory(at: work, withIntermediateDirectories: true)
            _ = try git(["init", "-q", "-b", branch], in: work)
        }
        // Replace the tree with the source's files.
        for item in try fm.contentsOfDirectory(atPath: work.path) where item != ".git" {
            try fm.removeItem(at: work.appendingPathComponent(item))
        }
        for item in try fm.contentsOfDirectory(atPath: source.path) where !["target", ".git"].contains(item) {
            try fm.copyItem(at: source.appendingPathComponent(item), to: work.appendingPathComponent(item))
        }
        try edit?(work)
        _ = try git(["add", "-A"], in: work)
        let changed = (try? git(["diff", "--cached", "--quiet"], in: work)) == nil
        if changed || !hasBranch {
            _ = try git(["commit", "-q", "--allow-empty", "-m", message], in: work)
            _ = try git(["push", "-q", bareRepository.path, "HEAD:refs/heads/\(branch)"], in: work)
        }
        return try git(["rev-parse", "refs/heads/\(branch)"], in: bareRepository)
    }

    /// Finds `fixtures/demo` from the current folder or the executable's, walking up.
    public static func locateFixtures() -> URL? {
        var starts = [URL(fileURLWithPath: FileManager.default.currentDirectoryPath)]
        if let exe = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") {
            starts.append(URL(fileURLWithPath: exe).deletingLastPathComponent())
        }
        for start in starts {
            var dir = start.standardizedFileURL
            for _ in 0..<8 {
                let candidate = dir.appendingPathComponent("fixtures")
                if FileManager.default.fileExists(atPath: candidate.appendingPathComponent("demo/pom.xml").path) { return candidate }
                dir = dir.deletingLastPathComponent()
            }
        }
        return nil
    }
}
