import Foundation
import KilnCore
import Testing

/// The branch and tag names an agent publishes for the console's build form, and what the
/// scheduler keeps of them: the repository is anyone-with-push-access's, so every name is
/// checked and the list bounded on both sides.
@Suite("repository refs")
struct RepositoryRefsTests {
    @Test func branchesAndTagsAreShortNamesNewestCommitFirst() {
        let found = [
            RepositoryRefs.Found(name: "refs/heads/main", time: 300),
            RepositoryRefs.Found(name: "refs/tags/v1.0", time: 100),
            RepositoryRefs.Found(name: "refs/heads/feature/x", time: 500),
            RepositoryRefs.Found(name: "refs/tags/v2.0", time: 300),
            // Neither a branch nor a tag: left out.
            RepositoryRefs.Found(name: "refs/notes/commits", time: 900),
            RepositoryRefs.Found(name: "refs/merge-requests/1/head", time: 900),
            RepositoryRefs.Found(name: "HEAD", time: 900),
        ]
        // Ties by name: main before v2.0.
        #expect(RepositoryRefs.bounded(found) == ["feature/x", "main", "v2.0", "v1.0"])
    }

    @Test func aTagNamedLikeABranchKeepsItsFullName() {
        let found = [RepositoryRefs.Found(name: "refs/heads/stable", time: 2), RepositoryRefs.Found(name: "refs/tags/stable", time: 1)]
        #expect(RepositoryRefs.bounded(found) == ["stable", "refs/tags/stable"])
    }

    @Test func namesThatAreNoValidRefAreLeftOut() {
        let hostile = ["refs/heads/-rf", "refs/heads/a..b", "refs/heads/with space", "refs/heads/ctl\u{7}", "refs/tags/x@{1}", "refs/heads/ok"]
        let found = hostile.enumerated().map { RepositoryRefs.Found(name: $1, time: Int64($0)) }
        #expect(RepositoryRefs.bounded(found) == ["ok"])
        // Markup is a valid ref name: kept (the console escapes it), and never more than a suggestion.
        let markup = #"x"><script>alert(1)</script>"#
        #expect(RepositoryRefs.bounded([.init(name: "refs/heads/" + markup, time: 1)]) == [markup])
    }

    @Test func theListIsBoundedByCountAndBytes() {
        let many = (0..<5000).map { RepositoryRefs.Found(name: "refs/tags/t\($0)", time: Int64($0)) }
        let kept = RepositoryRefs.bounded(many)
        #expect(kept.count == RepositoryRefs.maxCount)
        #expect(kept.first == "t4999" && kept.last == "t4800")
        // Long names: the bytes bound comes first.
        let long = (0..<100).map { RepositoryRefs.Found(name: "refs/heads/" + String(repeating: "a", count: 200) + "\($0)", time: Int64($0)) }
        let fewer = RepositoryRefs.bounded(long)
        #expect(fewer.count < 100 && fewer.count > 30)
        #expect(fewer.map(\.utf8.count).reduce(0, +) <= RepositoryRefs.maxBytes)
    }

    @Test func aReaderKeepsOnlyValidNamesOnceWithinTheBounds() {
        // An agent wrote the record: it may hold anything.
        let written = ["main", "main", "-x", "", "a b", "v1"] + (0..<300).map { "t\($0)" }
        let kept = RepositoryRefs.accepted(written)
        #expect(kept.prefix(3) == ["main", "v1", "t0"])
        #expect(kept.count == RepositoryRefs.maxCount)
    }

    @Test func anAgentPublishesWhenTheRefsChangeAndEveryTenthBuild() {
        #expect(RepositoryRefs.shouldPublish(["main"], last: nil, buildsSince: 0))
        #expect(RepositoryRefs.shouldPublish(["main", "v2"], last: ["main"], buildsSince: 1))
        #expect(!RepositoryRefs.shouldPublish(["main"], last: ["main"], buildsSince: 9))
        #expect(RepositoryRefs.shouldPublish(["main"], last: ["main"], buildsSince: 10))
    }

    @Test func theNewestBuildThatCarriesAListGivesIt() {
        var newest = Build(id: "b0000000003-000000000003", project: "p", ref: "main")
        var older = Build(id: "b0000000002-000000000002", project: "p", ref: "main")
        var oldest = Build(id: "b0000000001-000000000001", project: "p", ref: "main")
        older.repositoryRefs = ["main", "v2", "bad..ref"]
        oldest.repositoryRefs = ["main", "v1"]
        newest.repositoryRefs = nil
        #expect(RepositoryRefs.latest(in: [newest, older, oldest]) == ["main", "v2"])
        #expect(RepositoryRefs.latest(in: [newest]) == [])
    }
}
