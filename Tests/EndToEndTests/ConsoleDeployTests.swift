import Deploy
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
import Testing

/// The apps' console pages in headless Chromium against a whole farm (podman cells a and b,
/// nginx driven by an lb-agent; `Farm.swift`): a person logs in, deploys a build as a new
/// version from the app's page with a changed setting, scales it out and in from the page's
/// form while a client requests the app through nginx without pause (no request may fail),
/// retires an older version and rolls back from the page. A screenshot of each page is kept under
/// .build/test-artifacts/console.
extension EndToEndTests {
@Suite struct ConsoleDeployTests {
    typealias D = DeployPipelineTests
    static let artifacts = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent(".build/test-artifacts/console")

    @Test("in Chromium: deploy a build from the app's page (a mistyped form refused first), scale out and in from its form, retire an older version and roll back from the page, under a steady client through nginx with no failed request")
    func deployScaleAndRollBackFromTheConsole() async throws {
        let chromium = try Chromium.path()
        try await withFarm(deploy: true) { farm in
            try await farm.withDeployTargets(group: D.group) { nginx in
                // Version 1 as a push makes it: the build, then its project's pipeline. The retire
                // step keeps one older version running, for the page's retire button.
                var pipeline = D.pipeline()
                pipeline[2].settings["keep"] = .number(1)
                try await farm.saveProject(pipeline: pipeline)
                let browser = try Browser.launch(chromium)
                defer { browser.close() }
                let tab = try await browser.attachToPage()
                // The build from the project page's form, with a tag and the Maven cache off, run
                // by the farm's real agent; its page follows the log as it grows to the end.
                #expect(try await browser.logIn(farm.api, user: "admin", password: farm.registryAuth.adminToken, from: "/ui/projects/demo", session: tab)
                        == farm.api + "/ui/projects/demo")
                _ = try await browser.evaluate("document.getElementById('b-mvncache').checked = false; 'unticked'", session: tab)
                let buildPage = try await browser.submit("#build-form", fields: ["ref": "main", "tag": "from-console"], session: tab)
                let id = String(try #require(buildPage.components(separatedBy: "/ui/builds/").last))
                let first = try await browser.waitForLog(containing: "kiln: build \(id) of demo (ref main", session: tab, timeout: 300)
                let whole = try await browser.waitForLog(containing: "kiln: steps: ", session: tab, timeout: 300)
                #expect(whole.hasPrefix(first) && whole.contains("kiln: build succeeded"), "\(first)\n---\n\(whole)")
                try await screenshot(browser, tab, "build-from-form.png")
                let build = try await farm.deployed(id)
                #expect(build.tag == "from-console" && build.mvncache == false && build.trigger == "console by admin", "\(build)")
                #expect(build.deploy?.status == .succeeded, "\(build.deploy?.error ?? "")")
                try await farm.expectServing(version: 1, counts: ["a": 1, "b": 1])
                try await browser.load(farm.api + "/ui/apps", session: tab)
                #expect(try await browser.html(session: tab).contains(#"<tr id="app-demo">"#))
                try await screenshot(browser, tab, "list.png")

                // 1. Deploy the build again as version 2 with a setting changed: the form starts
                // with the live version's settings, only the environment is typed.
                try await browser.load(farm.api + "/ui/apps/demo", session: tab)
                let page = try await browser.html(session: tab)
                #expect(page.contains(#"name="port" value="8080""#) && page.contains(#"<option value="\#(build.id)">"#), "\(page)")
                try await screenshot(browser, tab, "page.png")
                // A mistyped form comes back with the problems beside the fields, nothing deployed.
                #expect(try await browser.submit("#deploy-form", fields: ["build": build.id, "port": "eighty", "healthPath": "health"], session: tab)
                        == farm.api + "/ui/apps/demo/deploy#deploy")
                let refused = try await browser.html(session: tab)
                #expect(refused.contains(#"id="error-port""#) && refused.contains(#"id="error-healthPath""#) && refused.contains(#"value="eighty""#), "\(refused)")
                try await screenshot(browser, tab, "deploy-refused.png")
                #expect(try await farm.build(build.id).deploy?.run == 1)
                try await browser.load(farm.api + "/ui/apps/demo", session: tab)
                let landed = try await browser.submit("#deploy-form", fields: ["build": build.id, "env": "KILN_GREETING=from-the-console"], session: tab)
                #expect(landed == farm.api + "/ui/apps/demo#versions")
                let second = try await farm.waitForBuild(build.id, timeout: .seconds(300)) { $0.deploy?.run == 2 && $0.deploy?.status.isFinal == true }
                #expect(second.deploy?.status == .succeeded, "\(second.deploy?.error ?? "")")
                #expect(second.deploy?.trigger == "console: deploy by admin")
                let v2 = try #require(try await farm.appStatus().app.live)
                #expect(v2.number == 2 && v2.settings.env == ["KILN_GREETING": "from-the-console"] && v2.settings.port == 8080)
                let env = try farm.cellsPodman(["inspect", "--format", "{{range .Config.Env}}{{.}} {{end}}", v2.instances[0].id])
                #expect(env.contains("KILN_GREETING=from-the-console"), "\(env)")
                try await farm.expectServing(version: 2, counts: ["a": 1, "b": 1])
                #expect(try await farm.containers(version: 1).count == 2, "the pipeline's retire step keeps version 1 running")
                try await browser.load(farm.api + "/ui/apps/demo", session: tab)
                try await screenshot(browser, tab, "app-deployed.png")

                // 2. Scale out and in from the form while a client asks nginx without pause.
                let client = SteadyPage(url: "http://\(nginx)/", host: D.domain)
                let load = Task { await client.run() }
                #expect(try await submitAndWait(browser, tab, "#scale-form", ["replicas": "2", "cell": ""]) == farm.api + "/ui/apps/demo#instances")
                try await farm.expectServing(version: 2, counts: ["a": 2, "b": 2])
                let scaled = try await browser.html(session: tab)
                #expect(scaled.contains("a: 2, b: 2") && scaled.contains(">scaled<"), "the page shows the new counts and the event")
                try await screenshot(browser, tab, "app-scaled-out.png")
                #expect(try await submitAndWait(browser, tab, "#scale-form", ["replicas": "1", "cell": "a"]) == farm.api + "/ui/apps/demo#instances")
                try await farm.expectServing(version: 2, counts: ["a": 1, "b": 2])
                try await screenshot(browser, tab, "app-scaled-in.png")

                // 3. Retire version 1 (ready, not live) from its row: out of the way, stopped.
                #expect(try await browser.html(session: tab).contains(#"id="retire-1""#))
                try await browser.submit("#retire-1", session: tab)
                let third = try await farm.waitForBuild(build.id, timeout: .seconds(300)) { $0.deploy?.run == 3 && $0.deploy?.status.isFinal == true }
                #expect(third.deploy?.status == .succeeded, "\(third.deploy?.error ?? "")")
                #expect(third.deploy?.pipeline.map(\.plugin) == ["retire"])
                #expect(try await farm.appStatus().app.version(1)?.state == .retired)
                #expect(try await farm.containers(version: 1).isEmpty)
                try await farm.expectServing(version: 2, counts: ["a": 1, "b": 2])

                // 4. Roll back to version 1 from its row: its build and settings, as version 3.
                try await browser.load(farm.api + "/ui/apps/demo", session: tab)
                try await browser.submit("#rollback-1", session: tab)
                let fourth = try await farm.waitForBuild(build.id, timeout: .seconds(300)) { $0.deploy?.run == 4 && $0.deploy?.status.isFinal == true }
                #expect(fourth.deploy?.status == .succeeded, "\(fourth.deploy?.error ?? "")")
                #expect(fourth.deploy?.trigger == "console: roll back to version 1 by admin")
                let v3 = try #require(try await farm.appStatus().app.live)
                #expect(v3.number == 3 && v3.settings.env.isEmpty)
                try await farm.expectServing(version: 3, counts: ["a": 1, "b": 1])
                #expect(try await farm.appStatus().app.version(2)?.state == .ready, "kept by the retire step")

                client.stop()
                await load.value
                let seen = client.summary
                #expect(seen.failures.isEmpty, "\(seen.failures.count) of \(seen.ok + seen.failures.count) requests failed: \(seen.failures.prefix(3))")
                #expect(seen.ok > 20, "the client kept asking: \(seen.ok) answers")

                try await browser.load(farm.api + "/ui/apps/demo", session: tab)
                let after = try await browser.html(session: tab)
                for event in ["deploy requested", "roll back requested", "retire requested", "scaled", "traffic moved", "retired"] {
                    #expect(after.contains(event), "the events show \(event)")
                }
                #expect(after.contains("<b id=\"live\">3</b>"))
                try await screenshot(browser, tab, "app-rolled-back.png")
            }
        }
    }

    /// Submits a form as a person would and waits up to `timeout` seconds for the page that
    /// answers (a scaling answers once it has ended, longer than `Browser.submit` waits).
    func submitAndWait(_ browser: Browser, _ tab: String, _ selector: String, _ fields: [String: String], timeout: Double = 300) async throws -> String {
        func quoted(_ s: String) throws -> String {
            String(String(decoding: try JSONSerialization.data(withJSONObject: [s]), as: UTF8.self).dropFirst().dropLast())
        }
        var script = "var f = document.querySelector(\(try quoted(selector)));"
        for (name, value) in fields.sorted(by: { $0.key < $1.key }) { script += " f.elements[\(try quoted(name))].value = \(try quoted(value));" }
        script += " f.querySelector('button[type=submit]').click(); 'submitted'"
        browser.clearEvents()
        _ = try await browser.evaluate(script, session: tab)
        _ = try await browser.waitForEvent("Page.loadEventFired", timeout: timeout)
        return try await browser.evaluate("location.href", session: tab)
    }

    /// A picture of the page, kept under .build/test-artifacts/console.
    func screenshot(_ browser: Browser, _ tab: String, _ name: String) async throws {
        try FileManager.default.createDirectory(at: Self.artifacts, withIntermediateDirectories: true)
        let png = Self.artifacts.appendingPathComponent("apps-" + name)
        try await browser.screenshot(to: png, session: tab)
        #expect(try Data(contentsOf: png).count > 1000)
    }
}
}
