import BuildAgent
import Foundation
import KilnCore
import KilnTestSupport
import Testing

/// The mirror's branches and tags as the agent publishes them for the console's build form
/// (`RepositoryRefs`): read with libgit2 from a real fetched mirror, with their commits' times.
@Suite("GitMirror refs")
struct GitMirrorRefsTests {
    @Test("branches and tags (lightweight and annotated) with their commits' times, newest first; names as the repository has them")
    func refsOfAMirror() throws {
        let repo = try GitFixture()
        try repo.commit(["a.txt": "1\n"])
        try repo.git("tag", "v1.0")
        // Committer dates one day apart, so the order does not depend on the clock.
        let later = repo.environment.merging(["GIT_COMMITTER_DATE": "2030-01-02T00:00:00Z", "GIT_AUTHOR_DATE": "2030-01-02T00:00:00Z"]) { $1 }
        try run("git", ["-C", repo.work.path, "checkout", "--quiet", "-b", "feature/x"], environment: later)
        try "2\n".write(to: repo.work.appendingPathComponent("a.txt"), atomically: true, encoding: .utf8)
        try run("git", ["-C", repo.work.path, "commit", "--quiet", "-am", "later"], environment: later)
        try run("git", ["-C", repo.work.path, "tag", "-a", "v2.0", "-m", "two"], environment: later)
        let hostile = #"x"><script>alert(1)</script>"#
        try repo.git("branch", hostile)
        try repo.git("push", "--quiet", "origin", "--all")
        try repo.git("push", "--quiet", "origin", "--tags")
        let mirror = repo.mirror()
        try mirror.fetch()

        let found = try mirror.refs()
        #expect(Set(found.map(\.name)) == ["refs/heads/main", "refs/heads/feature/x", "refs/heads/" + hostile, "refs/tags/v1.0", "refs/tags/v2.0"])
        let v2 = try #require(found.first { $0.name == "refs/tags/v2.0" })
        #expect(v2.time == Int64(Date(timeIntervalSince1970: 1_893_542_400).timeIntervalSince1970))
        // The annotated tag peels to the later commit; the newer commits come first.
        let published = RepositoryRefs.bounded(found)
        #expect(Set(published.prefix(3)) == ["feature/x", "v2.0", hostile], "\(published)")
        #expect(Set(published.suffix(2)) == ["main", "v1.0"])
    }
}
