import Deploy
import Etcd
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
import Synchronization
import Testing

/// Scaling with every real part (docs/scaling.md): the demo app deployed in cells a and b
/// (two podman API services) behind nginx (an lb-agent), scaled out and in through
/// `POST /api/v1/apps/demo/scale` while a client requests it through nginx without pause.
extension EndToEndTests {
@Suite struct ScalingTests {
    typealias D = DeployPipelineTests

    @Test("scale out and in per cell under a steady client with no failed request; the counts per cell, the containers and nginx's servers agree; the next version keeps the counts; who may not scale and bad input are refused")
    func scaling() async throws {
        try await withFarm(deploy: true) { farm in
            try await farm.withDeployTargets(group: D.group) { nginx in
                // No replicas in the deploy step: each version takes the count of the one before.
                var pipeline = D.pipeline()
                pipeline[0].settings["replicas"] = nil
                try await farm.saveProject(pipeline: pipeline)
                let b1 = try await farm.deployed(try await farm.startBuild().id)
                #expect(b1.deploy?.status == .succeeded, "\(b1.deploy?.error ?? "")")
                let client = SteadyPage(url: "http://\(nginx)/", host: D.domain)
                let load = Task { await client.run() }

                // Out: 3 per cell. The new instances are in nginx's servers once the call returns.
                var result = try await farm.scale(ScaleRequest(replicas: 3))
                #expect(result.cells == [.init(cell: "a", before: 1, after: 3), .init(cell: "b", before: 1, after: 3)])
                #expect(result.started.count == 4 && result.stopped.isEmpty)
                try await farm.expectServing(version: 1, counts: ["a": 3, "b": 3])
                #expect(try await farm.appStatus().app.live?.settings.replicas == 3)

                // In, in cell a only: out of nginx first, then stopped (no failed request shows it).
                result = try await farm.scale(ScaleRequest(replicas: 1, cell: "a", drainSeconds: 1))
                #expect(result.cells == [.init(cell: "a", before: 3, after: 1)] && result.stopped.count == 2)
                try await farm.expectServing(version: 1, counts: ["a": 1, "b": 3])
                let settings = try #require(try await farm.appStatus().app.live?.settings)
                #expect(settings.replicas == 3 && settings.cellReplicas == ["a": 1])

                // The next version (a roll back to the same build) keeps the counts per cell.
                let back = try await farm.redeploy(b1.id)
                #expect(back.deploy?.status == .succeeded, "\(back.deploy?.error ?? "")")
                #expect(try await farm.appStatus().app.live?.number == 2)
                try await farm.expectServing(version: 2, counts: ["a": 1, "b": 3])
                #expect(try await farm.containers(version: 1).isEmpty)

                // In everywhere, to the one instance each cell had at first.
                result = try await farm.scale(ScaleRequest(replicas: 1, drainSeconds: 1))
                #expect(result.cells == [.init(cell: "a", before: 1, after: 1), .init(cell: "b", before: 3, after: 1)])
                try await farm.expectServing(version: 2, counts: ["a": 1, "b": 1])
                #expect(try await farm.appStatus().app.live?.settings.cellReplicas == nil)

                client.stop()
                await load.value
                let seen = client.summary
                #expect(seen.failures.isEmpty, "\(seen.failures.count) of \(seen.ok + seen.failures.count) requests failed: \(seen.failures.prefix(3))")
                #expect(seen.ok > 50, "the client kept asking: \(seen.ok) answers")

                // The activity feed shows each scaling, with who asked.
                let activity = try KilnJSON.decode([ActivityEntry].self, from: try await farm.request(.GET, "/api/v1/apps/demo/activity").body)
                let scaled = activity.filter { $0.action == "scaled" }
                #expect(scaled.count == 3 && scaled.allSatisfy { $0.user == "admin" }, "\(activity.map(\.action))")
                #expect(scaled.contains { $0.detail == "version 1 of demo: a 3 → 1" }, "\(scaled.map { $0.detail ?? "" })")

                try await Self.refusals(farm)
                try await farm.expectServing(version: 2, counts: ["a": 1, "b": 1])
            }
        }
    }

    /// Who may not scale, and input no app could be scaled to: refused with a status and a
    /// message, nothing changed.
    static func refusals(_ farm: Farm) async throws {
        let password = "a long enough passphrase"
        var tokens: [String: String] = [:]
        for name in ["dev", "stranger", "boss"] {
            #expect(try await farm.request(.POST, "/api/v1/users", body: try KilnJSON.encode(NewUser(name: name, password: password))).status == 201)
            let r = try await httpRequest(.POST, farm.api + "/api/v1/tokens", body: #"{"name":"cli"}"#, headers: [("Authorization", basic(name, password))])
            tokens[name] = try KilnJSON.decode(CreatedToken.self, from: r.body).token
        }
        #expect(try await farm.request(.PUT, "/api/v1/projects/demo/members/dev", body: #"{"role":"developer"}"#).status == 200)
        #expect(try await farm.request(.PUT, "/api/v1/projects/demo/members/boss", body: #"{"role":"master"}"#).status == 200)
        let body = try KilnJSON.encode(ScaleRequest(replicas: 4))
        let dev = try await farm.request(.POST, "/api/v1/apps/demo/scale", body: body, token: tokens["dev"])
        #expect(dev.status == 403 && dev.body.contains("master or above"), "\(dev.status) \(dev.body)")
        let stranger = try await farm.request(.POST, "/api/v1/apps/demo/scale", body: body, token: tokens["stranger"])
        #expect(stranger.status == 404, "an app the caller has no role on does not exist for them: \(stranger.body)")
        #expect(try await farm.request(.POST, "/api/v1/apps/demo/scale", body: body, token: nil).status == 401)

        for (bad, status, text) in [(#"{"replicas":-1}"#, 400, "0 to 100"), (#"{"replicas":101}"#, 400, "0 to 100"),
                                    (#"{"replicas":2,"cell":"nowhere"}"#, 404, "cell 'nowhere' does not exist"),
                                    (#"{"replicas":0}"#, 409, "no servers"), (#"{"cell":"a"}"#, 400, "replicas"), ("not json", 400, "JSON")] {
            let r = try await farm.request(.POST, "/api/v1/apps/demo/scale", body: bad)
            #expect(r.status == status && r.body.contains(text), "\(bad): \(r.status) \(r.body)")
        }
        let unknown = try await farm.request(.POST, "/api/v1/apps/nosuchapp/scale", body: body)
        #expect(unknown.status == 404, "\(unknown.body)")

        // Another scheduler's scaling under way (its claim in the record): 409, the claim kept.
        let key = farm.keys.app("demo")
        var record = try KilnJSON.decode(App.self, from: try #require(try await farm.etcd.get(key)).value)
        record.scaling = ScaleOperation(id: "other", version: 2, replicas: 5, cell: nil, by: "boss", startedAt: Date(), expiresAt: Date().addingTimeInterval(60))
        _ = try await farm.etcd.put(key, try KilnJSON.encode(record))
        let busy = try await farm.request(.POST, "/api/v1/apps/demo/scale", body: body, token: tokens["boss"])
        #expect(busy.status == 409 && busy.body.contains("being scaled by boss"), "\(busy.status) \(busy.body)")
        record.scaling = nil
        _ = try await farm.etcd.put(key, try KilnJSON.encode(record))
    }
}
}

extension Farm {
    /// `POST /api/v1/apps/demo/scale` as the first admin; the result, or a failure with the answer.
    func scale(_ request: ScaleRequest) async throws -> ScaleResult {
        let r = try await self.request(.POST, "/api/v1/apps/demo/scale", body: try KilnJSON.encode(request), token: registryAuth.adminToken, timeout: .seconds(300))
        guard r.status == 200 else { throw FarmError("scale \(request): \(r.status) \(r.body)") }
        return try KilnJSON.decode(ScaleResult.self, from: r.body)
    }

    /// The live version is `version`, with `counts` instances per cell, all healthy, each a
    /// running container, and nginx's domain lists exactly their addresses.
    func expectServing(version: Int, counts: [String: Int]) async throws {
        let status = try await appStatus()
        let live = try #require(status.app.live)
        #expect(live.number == version)
        #expect(Dictionary(grouping: live.instances, by: \.cell).mapValues(\.count) == counts, "\(live.instances.map(\.name))")
        #expect(live.instances.allSatisfy { $0.healthy })
        #expect(live.scalingInstances == nil)
        #expect(status.app.scaling == nil)
        let running = try await containers(version: version)
        #expect(Set(running.map(\.address)) == Set(live.instances.map(\.address)), "containers \(running.map(\.name))")
        let domain = try #require(status.domains.first)
        #expect(Set(domain.servers) == Set(live.instances.map(\.address)), "nginx's servers \(domain.servers)")
        #expect(domain.agents.allSatisfy { $0.current }, "every lb-agent applied the latest config")
        // nginx's upstream as the lb-agent wrote it: exactly these servers (its listen line aside).
        let conf = try String(contentsOf: dataDir.appendingPathComponent("lb/domains/\(EndToEndTests.DeployPipelineTests.domain).conf"), encoding: .utf8)
        let upstream = conf.split(separator: "\n").filter { !$0.contains("listen") }.joined(separator: "\n")
        let pattern = try NSRegularExpression(pattern: #"127\.0\.0\.1:[0-9]+"#)
        let found = pattern.matches(in: upstream, range: NSRange(upstream.startIndex..., in: upstream)).compactMap { Range($0.range, in: upstream).map { String(upstream[$0]) } }
        #expect(Set(found) == Set(live.instances.map(\.address)), "nginx's upstream: \(conf)")
    }
}

/// Asks nginx for the demo page without pause, each request on a fresh connection, and
/// counts the answers: a request that fails is one a scaling lost.
final class SteadyPage: Sendable {
    struct Summary {
        var ok = 0
        var failures: [String] = []
    }
    let url: String
    let host: String
    private let state = Mutex(Summary())
    private let stopped = Atomic(false)

    init(url: String, host: String) {
        self.url = url
        self.host = host
    }

    var summary: Summary { state.withLock { $0 } }
    func stop() { stopped.store(true, ordering: .relaxed) }

    func run() async {
        while !stopped.load(ordering: .relaxed) {
            do {
                let r = try await httpRequest(.GET, url, headers: [("Host", host), ("Connection", "close")], timeout: .seconds(10))
                state.withLock { s in
                    if r.status == 200 && r.body.contains("kiln-demo version") { s.ok += 1 } else { s.failures.append("\(r.status) \(r.body.prefix(200))") }
                }
            } catch {
                state.withLock { $0.failures.append("\(error)") }
            }
        }
    }
}
