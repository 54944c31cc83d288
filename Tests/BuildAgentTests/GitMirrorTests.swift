import BuildAgent
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
import Testing

@Suite("GitMirror (libgit2)")
struct GitMirrorTests {
    @Test("first fetch and checkout give the files; an unchanged repo fetches nothing; a new commit fetches few objects")
    func fetchCheckoutIncremental() throws {
        let repo = try GitFixture()
        var files: [String: String] = ["README.md": "hello\n", "src/main/App.java": "class App {}\n"]
        for i in 0..<20 { files["src/data/file\(i).txt"] = "data \(i)\n" }
        let first = try repo.commit(files, message: "first")
        let mirror = repo.mirror()

        let initial = try mirror.fetch()
        #expect(initial.receivedObjects >= 24)  // a commit, 5 trees, 22 blobs
        #expect(initial.indexedObjects == initial.receivedObjects)
        #expect(try mirror.resolve(ref: "main", commit: nil) == first)

        let workspace = repo.dir.path("ws1")
        try mirror.checkout(commit: first, into: workspace)
        #expect(try String(contentsOf: workspace.appendingPathComponent("README.md"), encoding: .utf8) == "hello\n")
        #expect(FileManager.default.fileExists(atPath: workspace.appendingPathComponent("src/data/file19.txt").path))
        #expect(!FileManager.default.fileExists(atPath: workspace.appendingPathComponent(".git").path))

        let unchanged = try mirror.fetch()
        #expect(unchanged.receivedObjects == 0)

        let second = try repo.commit(["README.md": "hello again\n"], message: "second")
        let incremental = try mirror.fetch()
        #expect(incremental.receivedObjects > 0)
        #expect(incremental.receivedObjects <= 3)  // the commit, the root tree, the blob
        #expect(try mirror.resolve(ref: "main", commit: nil) == second)
        #expect(try mirror.resolve(ref: "refs/heads/main", commit: nil) == second)
        #expect(try mirror.resolve(ref: "HEAD", commit: nil) == second)

        // An older exact commit, into a fresh folder: every file is written, not only changed ones.
        let old = repo.dir.path("ws-old")
        try mirror.checkout(commit: first, into: old)
        #expect(try String(contentsOf: old.appendingPathComponent("README.md"), encoding: .utf8) == "hello\n")
        #expect(FileManager.default.fileExists(atPath: old.appendingPathComponent("src/main/App.java").path))
        #expect(try mirror.resolve(ref: "main", commit: first) == first)
        #expect(try mirror.resolve(ref: "main", commit: String(first.prefix(10))) == first)
        #expect(mirror.shortSHA(second) == String(second.prefix(7)))
    }

    @Test("tags: lightweight and annotated, short and full names, a tag object's sha peels to its commit")
    func tags() throws {
        let repo = try GitFixture()
        let tagged = try repo.commit(["a.txt": "1\n"])
        try repo.git("tag", "v1.0")
        try repo.git("tag", "-a", "v1.1", "-m", "release 1.1")
        try repo.commit(["a.txt": "2\n"])
        try repo.git("push", "--quiet", "origin", "--tags")
        let mirror = repo.mirror()
        try mirror.fetch()
        #expect(try mirror.resolve(ref: "v1.0", commit: nil) == tagged)
        #expect(try mirror.resolve(ref: "refs/tags/v1.1", commit: nil) == tagged)
        #expect(try mirror.resolve(ref: "v1.1", commit: nil) == tagged)
        let tagObject = try repo.git("rev-parse", "v1.1")
        #expect(tagObject != tagged)
        #expect(try mirror.resolve(ref: "main", commit: tagObject) == tagged)

        // A tag deleted upstream is pruned from the mirror.
        try repo.git("push", "--quiet", "origin", ":refs/tags/v1.0")
        try mirror.fetch()
        #expect(throws: GitError.self) { try mirror.resolve(ref: "v1.0", commit: nil) }
    }

    @Test("a branch and a tag of the same name that differ are refused as ambiguous")
    func ambiguousShortName() throws {
        let repo = try GitFixture()
        try repo.commit(["a.txt": "1\n"])
        try repo.git("tag", "release")
        try repo.git("push", "--quiet", "origin", "--tags")
        try repo.git("checkout", "--quiet", "-b", "release")
        try repo.commit(["a.txt": "2\n"], push: false)
        try repo.git("push", "--quiet", "origin", "refs/heads/release")
        let mirror = repo.mirror()
        try mirror.fetch()
        let error = #expect(throws: GitError.self) { try mirror.resolve(ref: "release", commit: nil) }
        #expect(error?.kind == .ambiguous)
        #expect(try mirror.resolve(ref: "refs/heads/release", commit: nil) != mirror.resolve(ref: "refs/tags/release", commit: nil))
    }

    @Test("an unknown ref, an unknown commit, a malformed sha and a missing mirror give clear errors")
    func unknownRefsAndCommits() throws {
        let repo = try GitFixture()
        try repo.commit(["a.txt": "1\n"])
        let mirror = repo.mirror()

        let missing = #expect(throws: GitError.self) { try mirror.resolve(ref: "main", commit: nil) }
        #expect(missing?.kind == .notFound)
        #expect(missing?.description.contains("fetch first") == true)

        try mirror.fetch()
        let ref = #expect(throws: GitError.self) { try mirror.resolve(ref: "no-such-branch", commit: nil) }
        #expect(ref?.kind == .notFound)
        #expect(ref?.description.contains("no-such-branch") == true)

        let commit = #expect(throws: GitError.self) {
            try mirror.resolve(ref: "main", commit: "0123456789abcdef0123456789abcdef01234567")
        }
        #expect(commit?.kind == .notFound)
        #expect(commit?.description.contains("0123456789abcdef") == true)

        let malformed = #expect(throws: GitError.self) { try mirror.resolve(ref: "main", commit: "HEAD~1") }
        #expect(malformed?.kind == .invalidArgument)
        let badRef = #expect(throws: GitError.self) { try mirror.resolve(ref: "main..x", commit: nil) }
        #expect(badRef?.kind == .invalidArgument)

        let checkout = #expect(throws: GitError.self) {
            try mirror.checkout(commit: "0123456789abcdef0123456789abcdef01234567", into: repo.dir.path("ws"))
        }
        #expect(checkout?.kind == .notFound)
    }

    @Test("hostile and unsupported URLs are refused before any network use", arguments: [
        "ext::sh -c touch% /tmp/pwned", "-uhttps://example.com/x.git", "--upload-pack=touch /tmp/x", "fd::17",
        "ftp://example.com/x.git", "/srv/git/project.git", "https://example.com/x.git\nHost: y", "git://-oProxyCommand=x/y",
        "HTTP::ext::foo", "", "user@-host:repo.git", "host::path",
    ])
    func hostileURLs(url: String) throws {
        let dir = try TempDir("git-url")
        let mirror = GitMirror(path: dir.path("m.git"), url: url)
        let error = #expect(throws: GitError.self) { try mirror.fetch() }
        #expect(error?.kind == .invalidURL)
        #expect(!FileManager.default.fileExists(atPath: dir.path("m.git").path))
    }

    /// Every URL either test list names, and those the two rules once disagreed on.
    static let urlsBothSidesCheck = [
        "ext::sh -c touch% /tmp/pwned", "-uhttps://example.com/x.git", "--upload-pack=touch /tmp/x", "fd::17", "ftp://example.com/x.git",
        "/srv/git/project.git", "git://-oProxyCommand=x/y", "HTTP::ext::foo", "", "user@-host:repo.git", "host::path", "host:-repo",
        "ssh://git@-oProxyCommand=x/repo", "file://relative/path", "just-a-name", "http:///nohost",
        "https://h/a::b", "https://h/-x", "ssh://-oProxyCommand=x@host/r", "git@host:", "user@:repo", "a@b@host:repo", "h$x:repo",
        "ssh://user@/repo", "ssh://[ext::1]/repo", "https://h/" + String(repeating: "a", count: 2048),
        "https://gitlab.example.com/group/app.git", "http://127.0.0.1:8080/app.git", "ssh://git@host:22/app.git",
        "git://127.0.0.1:9418/app.git", "file:///srv/git/app.git", "git@gitlab.example.com:group/app.git", "ssh://git@[::1]:22/app.git",
    ]

    @Test("the mirror refuses exactly what Validation.repositoryURL refuses, with its reason", arguments: GitMirrorTests.urlsBothSidesCheck)
    func sameRuleAsValidation(url: String) {
        let validation = Result { try Validation.repositoryURL(url) }
        let mirror = Result { try GitMirror.validate(url: url) }
        switch (validation, mirror) {
        case (.success, .success):
            break
        case (.failure(let v as KilnError), .failure(let m as GitError)):
            #expect(m.kind == .invalidURL)
            #expect(m.message == v.message)
        default:
            Issue.record("Validation: \(validation), GitMirror: \(mirror)")
        }
    }

    @Test("a URL the mirror once let through is refused before any network use", arguments: [
        "https://example.com/a::b", "https://example.com/-x", "ssh://-oProxyCommand=x@example.com/r",
    ])
    func onceAcceptedNowRefused(url: String) throws {
        let dir = try TempDir("git-url")
        let error = #expect(throws: GitError.self) { try GitMirror(path: dir.path("m.git"), url: url).fetch() }
        #expect(error?.kind == .invalidURL)
        #expect(!FileManager.default.fileExists(atPath: dir.path("m.git").path))
    }

    @Test("the accepted URL forms pass the check", arguments: [
        "https://gitlab.example.com/group/app.git", "http://127.0.0.1:8080/app.git", "ssh://git@host:22/app.git",
        "git://127.0.0.1:9418/app.git", "file:///srv/git/app.git", "git@gitlab.example.com:group/app.git",
        "ssh://git@[::1]:22/app.git",
    ])
    func acceptedURLs(url: String) throws {
        try GitMirror.validate(url: url)
    }

    @Test("a fetch whose flag is set before it starts is cancelled")
    func cancelBeforeFetch() throws {
        let repo = try GitFixture()
        try repo.commit(["a.txt": "1\n"])
        let flag = CancelFlag()
        flag.cancel()
        let error = #expect(throws: GitError.self) { try repo.mirror().fetch(cancel: flag) }
        #expect(error?.isCancelled == true)
        #expect(error?.description.contains("cancelled") == true)
    }

    @Test("setting the flag during the transfer stops it; the next fetch completes")
    func cancelDuringFetch() throws {
        let repo = try GitFixture()
        var files: [String: String] = [:]
        for i in 0..<400 { files["f/\(i).txt"] = String(repeating: "line \(i)\n", count: 50) }
        let sha = try repo.commit(files)
        let mirror = repo.mirror()
        let flag = CancelFlag()
        let error = #expect(throws: GitError.self) {
            try mirror.fetch(cancel: flag) { progress in
                if progress.receivedObjects > 0 { flag.cancel() }
            }
        }
        #expect(error?.isCancelled == true)
        let stats = try mirror.fetch()
        #expect(stats.receivedObjects > 400)
        #expect(try mirror.resolve(ref: "main", commit: nil) == sha)
    }

    @Test("progress is reported while objects arrive")
    func progressReports() throws {
        let repo = try GitFixture()
        try repo.commit(["a.txt": "1\n", "b.txt": "2\n"])
        let seen = Lines()
        let stats = try repo.mirror().fetch { seen.append("\($0.receivedObjects)/\($0.totalObjects)") }
        #expect(!seen.all.isEmpty)
        #expect(seen.all.last == "\(stats.receivedObjects)/\(stats.receivedObjects)")
    }

    @Test("a changed repository URL is followed: the remote is re-pointed and fetched from")
    func urlChange() throws {
        let a = try GitFixture()
        try a.commit(["a.txt": "from a\n"])
        let b = try GitFixture()
        let fromB = try b.commit(["b.txt": "from b\n"])
        let path = a.dir.path("mirrors/shared.git")
        try GitMirror(path: path, url: a.originURL).fetch()
        try GitMirror(path: path, url: b.originURL).fetch()
        #expect(try GitMirror(path: path, url: b.originURL).resolve(ref: "main", commit: nil) == fromB)
    }

    @Test("git:// through git daemon: fetch, incremental fetch, checkout")
    func gitDaemon() async throws {
        let repo = try GitFixture()
        let first = try repo.commit(["a.txt": "1\n"])
        try await repo.withDaemon { url, server in
            let mirror = GitMirror(path: repo.dir.path("mirrors/d.git"), url: url)
            // Loopback is refused unless allowed, before the mirror is made.
            let refused = #expect(throws: GitError.self) { try mirror.fetch() }
            #expect(refused?.kind == .refused && refused?.message.contains("--allow-fetch-from \(server)") == true, "\(String(describing: refused))")
            #expect(!FileManager.default.fileExists(atPath: mirror.path.path))
            let policy = try FetchPolicy(parsing: [server], denyPrivate: false)
            let stats = try mirror.fetch(policy: policy)
            #expect(stats.receivedObjects == 3)
            #expect(try mirror.resolve(ref: "main", commit: nil) == first)
            #expect(try mirror.fetch(policy: policy).receivedObjects == 0)
            let second = try repo.commit(["a.txt": "2\n"])
            #expect(try mirror.fetch(policy: policy).receivedObjects == 3)
            try mirror.checkout(commit: second, into: repo.dir.path("ws"))
            #expect(try String(contentsOf: repo.dir.path("ws/a.txt"), encoding: .utf8) == "2\n")
        }
    }

    @Test("two fetches of one mirror at once are serialised and both succeed")
    func concurrentFetches() async throws {
        let repo = try GitFixture()
        var files: [String: String] = [:]
        for i in 0..<50 { files["\(i).txt"] = "\(i)\n" }
        let sha = try repo.commit(files)
        let mirror = repo.mirror()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<2 {
                group.addTask {
                    try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, Error>) in
                        Thread.detachNewThread { c.resume(with: Result { _ = try mirror.fetch() }) }
                    }
                }
            }
            try await group.waitForAll()
        }
        #expect(try mirror.resolve(ref: "main", commit: nil) == sha)
    }
}
