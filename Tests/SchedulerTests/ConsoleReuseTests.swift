import Foundation
import KilnCore
@testable import Scheduler
import Testing

/// The console's parts of build reuse (docs/reuse.md), without a server: the build page names
/// the reused build, the build form asks for a rebuild, the project form carries reuseBuilds.
struct ConsoleReuseTests {
    @Test func theBuildPageLinksTheReusedBuildAndShowsTheInputKey() {
        var b = Build(id: "b2", project: "shop", ref: "main")
        b.status = .succeeded
        b.reusedFrom = "b1"
        b.inputs = BuildInputs(key: "sha256:" + String(repeating: "0", count: 64), tree: String(repeating: "a", count: 40),
                               buildImage: "sha256:" + String(repeating: "b", count: 64), baseImages: [], protected: true)
        let page = ConsolePages.buildSummary(b, now: Date(), canceller: nil).rendered
        #expect(page.contains(#"<p id="reused">Reused the image of build <a href="/ui/builds/b1">b1</a> (same inputs; nothing compiled).</p>"#), "\(page)")
        #expect(page.contains("sha256:" + String(repeating: "0", count: 64)))
        var real = b
        real.reusedFrom = nil
        real.rebuild = true
        let realPage = ConsolePages.buildSummary(real, now: Date(), canceller: nil).rendered
        #expect(!realPage.contains(#"id="reused""#) && realPage.contains("asked for: no reuse"))
    }

    @Test func theBuildFormAsksForARebuildOnlyWhenTicked() {
        #expect(BuildForm(fields: ["ref": "main", "rebuild": "on"]).request().request.rebuild == true)
        #expect(BuildForm(fields: ["ref": "main"]).request().request.rebuild == nil)
        // The build page's rebuild button builds for real, whatever the build had asked.
        var b = Build(id: "b1", project: "shop", ref: "main")
        #expect(BuildForm.rebuild(of: b).rebuild == true)
        b.rebuild = true
        #expect(BuildForm.rebuild(of: b).rebuild == true)
        let page = ConsolePages.buildForm(BuildForm(fields: ["ref": "main", "rebuild": "on"]), project: "shop", refs: [], csrf: "t").rendered
        #expect(page.contains(#"name="rebuild" id="b-rebuild" checked"#), "\(page)")
    }

    @Test func theProjectFormKeepsReuseOnUnlessUnticked() {
        let p = Project(name: "shop", repository: "https://h/shop.git", buildImage: "a:1", buildCommand: "make")
        #expect(ProjectForm(p).read(over: p, newToken: "x").project.reuseBuilds == nil)
        var off = p
        off.reuseBuilds = false
        #expect(ProjectForm(off).read(over: off, newToken: "x").project == off)
        // An unticked box sends nothing: off.
        var form = ProjectForm(p)
        form.values["reuseBuilds"] = nil
        #expect(form.read(over: p, newToken: "x").project.reuseBuilds == false)
        // A new project's form starts ticked.
        #expect(ProjectForm.blank["reuseBuilds"] == "on")
    }
}
