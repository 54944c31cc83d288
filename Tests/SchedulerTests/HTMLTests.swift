import Foundation
import KilnCore
@testable import Scheduler
import Testing

/// The console's `HTML` type: a value from data interpolated into markup is escaped by
/// construction, and only the console's own assets go in unescaped.
struct HTMLTests {
    /// Opens a tag, closes an attribute of either quote, and starts an entity.
    static let hostile = #"<img src=x onerror='alert(1)'> & "x" onmouseover="alert(2)"#
    static let escaped = "&lt;img src=x onerror=&#39;alert(1)&#39;&gt; &amp; &quot;x&quot; onmouseover=&quot;alert(2)"

    @Test func escapingCoversEveryCharacterThatCanOpenMarkupOrEndAnAttribute() {
        #expect(HTML.escape("&") == "&amp;")
        #expect(HTML.escape("<") == "&lt;")
        #expect(HTML.escape(">") == "&gt;")
        #expect(HTML.escape("\"") == "&quot;")
        #expect(HTML.escape("'") == "&#39;")
        #expect(HTML.escape("&lt;") == "&amp;lt;")  // an entity in data is text, not markup
        #expect(HTML.escape(Self.hostile) == Self.escaped)
        #expect(HTML.escape("plain, é ✓ 🔥 \n\t") == "plain, é ✓ 🔥 \n\t")
    }

    @Test func anInterpolatedStringIsEscapedInTextAndInEitherAttributeQuote() {
        let value = Self.hostile
        let fragment: HTML = "<a href=\"/ui/builds/\(value)\" title='\(value)'>\(value)</a>"
        #expect(fragment.rendered == "<a href=\"/ui/builds/\(Self.escaped)\" title='\(Self.escaped)'>\(Self.escaped)</a>")
        let missing: String? = nil, present: String? = value
        let cells: HTML = "<td>\(present ?? "—")</td><td>\(missing ?? "—")</td><td>\(value.uppercased())</td>"
        #expect(cells.rendered == "<td>\(Self.escaped)</td><td>—</td><td>\(HTML.escape(value.uppercased()))</td>")
        #expect(!cells.rendered.contains("<img") && !cells.rendered.contains("<IMG"))
    }

    @Test func aFragmentGoesInOnceAndNumbersAsTheyAre() {
        let inner: HTML = "<b>\(Self.hostile)</b>"
        let outer: HTML = "<p>\(inner) \(-42) \(7)</p>"
        #expect(outer.rendered == "<p><b>\(Self.escaped)</b> -42 7</p>")
        #expect([inner, inner].joined(separator: "<br>").rendered == "<b>\(Self.escaped)</b><br><b>\(Self.escaped)</b>")
        #expect([HTML]().joined(separator: "<br>").rendered == "")
    }

    /// The rule in `HTML`'s doc comment: literals in an interpolated condition are Strings.
    @Test func conditionalMarkupIsTextUnlessTyped() {
        for bold in [true, false] {
            let untyped: HTML = "\(bold ? "<b>x</b>" : "")"
            #expect(untyped.rendered == (bold ? "&lt;b&gt;x&lt;/b&gt;" : ""))
            let typed: HTML = bold ? "<b>x</b>" : ""
            #expect(typed.rendered == (bold ? "<b>x</b>" : ""))
        }
    }

    /// Every page, with the hostile value in every field that comes from data: it never
    /// appears raw, and no attribute is broken out of.
    @Test func everyPageEscapesAHostileValueInEveryField() {
        let evil = Self.hostile
        var b = Build(id: evil, project: evil, ref: evil, commit: evil, tag: evil, trigger: evil)
        b.status = .failed
        (b.error, b.agent, b.image, b.digest, b.waiting) = (evil, evil, evil, evil, evil)
        b.steps[0] = BuildStep(name: .fetch, status: .failed, durationMs: 10, error: evil)
        var run = PipelineRun(run: 1, pipeline: [PipelineStep(plugin: evil)], trigger: evil)
        run.steps[0] = PipelineStepResult(plugin: evil, status: .failed, durationMs: 5, summary: evil, error: evil)
        b.deploy = run
        let project = Project(name: evil, repository: evil, buildImage: evil, buildCommand: evil, dockerfile: evil, context: evil,
                              defaultBranch: evil, labels: [evil], branches: [evil])
        var agent = AgentInfo(id: evil, capacity: 1, labels: [evil], version: evil)
        agent.tasks = [evil]
        // An agent writes its own refusal: the console shows it as text.
        agent.disk = AgentDisk(free: 1, budget: 2, used: 3, minFree: 4, refusing: evil)
        var version = AppVersion(number: 1, build: evil, project: evil, image: evil, backend: evil, cells: [evil], settings: DeploySettings(port: 8080), state: .live)
        version.tag = evil
        let app = App(name: evil, versions: [version], lb: [LBBinding(group: evil, domain: evil)], project: evil)
        // The viewer's name and token come from etcd too.
        let viewer = ConsoleViewer(user: evil, admin: true, csrf: evil)
        let pages = [
            ConsolePages.build(b, now: Date(), viewer: viewer, mayCancel: true),
            ConsolePages.buildSummary(b, now: Date(), canceller: viewer),
            ConsolePages.overview(projects: [project], builds: [b], apps: [app], agents: [agent], now: Date(), viewer: viewer),
            ConsolePages.project(project, builds: [b], activity: [ActivityEntry(b)], now: Date(), viewer: viewer),
            ConsolePages.agents([agent], viewer: viewer),
            ConsolePages.error(status: 400, message: evil, viewer: viewer),
            ConsolePages.login(token: evil, next: evil, user: evil, message: evil),
            ConsolePages.apps([app], viewer: viewer),
            ConsolePages.app(AppStatus(app: app, domains: [.init(group: evil, domain: evil, servers: [evil], version: 1,
                                                                  agents: [.init(id: evil, listen: evil, appliedRevision: 1, current: false, rejected: evil)])]),
                             events: [ActivityEntry(ActivityEvent(user: evil, action: evil, detail: evil, build: evil))], viewer: viewer,
                             actions: AppActions(mayDeploy: true, deployForm: DeployForm(fields: ["build": evil, "env": evil]), scaleForm: ScaleForm(fields: ["cell": evil]), builds: [b])),
        ].map(\.rendered)
        for page in pages {
            #expect(!page.contains("<img"), "\(page)")
            #expect(!page.contains("'alert(1)'") && !page.contains("\"alert(2)"))
            #expect(page.contains(Self.escaped))
        }
    }

    @Test func theAssetsAreEmbeddedWholeAndCannotEndTheirElementEarly() {
        let style = ConsoleAssets.style.rendered, script = ConsoleAssets.followScript.rendered
        #expect(style.hasPrefix("body{") && style.contains(".status.succeeded{background:#2e7d32}"))
        #expect(script.hasPrefix("(function(){") && script.hasSuffix("})();"))
        #expect(script.contains(#"'\n[the log stream stopped: '"#))
        #expect(!style.lowercased().contains("</style") && !script.lowercased().contains("</script"))
        let viewer = ConsoleViewer(user: "alice", admin: false, csrf: "token")
        let page = ConsolePages.build(Build(id: "b1", project: "p", ref: "main"), now: Date(), viewer: viewer, mayCancel: false).rendered
        #expect(page.contains("<style>\(style)</style>") && page.contains("<script>\(script)</script>"))
    }

    /// `HTML(trusted:)` takes markup unescaped: only the console's assets may use it, and
    /// nothing outside the type calls its literal initialisers by hand.
    @Test func onlyTheConsolesAssetsAreTakenUnescaped() throws {
        let sources = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Sources/Scheduler")
        var uses: [String: Int] = [:]
        let files = try #require(FileManager.default.enumerator(at: sources, includingPropertiesForKeys: nil))
        for case let file as URL in files where file.pathExtension == "swift" && file.lastPathComponent != "HTML.swift" {
            let code = try String(contentsOf: file, encoding: .utf8).split(separator: "\n")
                .filter { !$0.trimmingCharacters(in: .whitespaces).hasPrefix("//") }.joined(separator: "\n")
            for needle in ["(trusted:", "stringLiteral:", "stringInterpolation:"] {
                let n = code.components(separatedBy: needle).count - 1
                if n > 0 { uses["\(file.lastPathComponent) \(needle)", default: 0] += n }
            }
        }
        #expect(uses == ["Console.swift (trusted:": 2], "\(uses)")
    }
}
