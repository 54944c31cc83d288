import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
import Testing

// The repository's branches and tags in the console's build form: the agent's fetch
// publishes them in the build's record (the scheduler never fetches), and the project's page
// offers them, escaped, in the ref field's list. In the serialized "End to end" suite.
extension EndToEndTests {
    @Test("an agent's fetch publishes the repository's branches and tags; the build form offers them escaped")
    func fetchPublishesRepositoryRefs() async throws {
        let chromium = try Chromium.path()
        try await withFarm { farm in
            // A copy of the demo repository with more branches and tags, one named as markup
            // (a valid git ref: git refuses spaces, not '<', '>' or '"').
            let demo = farm.infra.gitRoot.appendingPathComponent("demo.git").path
            let bare = farm.infra.gitRoot.appendingPathComponent("refs-demo.git").path
            let hostile = #"x"><script>document.title='pwned'</script>"#
            _ = try run("git", ["clone", "-q", "--bare", demo, bare])
            for branch in ["release/2", "feature/login", hostile] { _ = try run("git", ["-C", bare, "branch", branch, "main"]) }
            _ = try run("git", ["-C", bare, "tag", "v2.0", "main"])

            try await farm.addProject("refs-demo", repository: farm.infra.repositoryURL("refs-demo"), buildCommand: "exit 3")
            let b = try await farm.finished(try await farm.startBuild("refs-demo").id)
            #expect(b.steps.first { $0.name == .fetch }?.status == .succeeded, "\(b.error ?? "")")
            let refs = try #require(b.repositoryRefs, "the fetch published no refs")
            #expect(Set(refs) == ["main", "release/2", "feature/login", hostile, "v2.0"], "\(refs)")

            // The agent publishes again only once they change (or every tenth build).
            let again = try await farm.finished(try await farm.startBuild("refs-demo").id)
            #expect(again.repositoryRefs == nil)
            _ = try run("git", ["-C", bare, "tag", "v2.1", "main"])
            let changed = try await farm.finished(try await farm.startBuild("refs-demo").id)
            #expect(changed.repositoryRefs.map(Set.init) == Set(refs + ["v2.1"]))

            // The project's page offers them in the ref field's list, as text: the markup did not run.
            let browser = try Browser.launch(chromium)
            defer { browser.close() }
            let tab = try await browser.attachToPage()
            _ = try await browser.logIn(farm.api, user: "admin", password: farm.registryAuth.adminToken, session: tab)
            _ = try await browser.load(farm.api + "/ui/projects/refs-demo", session: tab)
            let offered = try await browser.evaluate("Array.from(document.querySelectorAll('#refs option')).map(function(o) { return o.value; }).join('\\n')", session: tab)
            #expect(Set(offered.split(separator: "\n").map(String.init)) == Set(refs + ["v2.1"]), "\(offered)")
            #expect(try await browser.evaluate("document.title", session: tab) == "refs-demo · Kiln")
            #expect(try await browser.evaluate("String(Array.from(document.scripts).some(function(s) { return s.textContent.indexOf('pwned') >= 0; }))", session: tab) == "false")
        }
    }
}
