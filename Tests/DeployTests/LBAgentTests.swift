import AsyncHTTPClient
import Deploy
import Etcd
import Foundation
import Hummingbird
import KilnCore
import KilnTestSupport
import LocalFarm
import Logging
import NIOCore
import NIOHTTP1
import Synchronization
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The lb-agent with a real etcd, real nginx and real backends (HTTP servers in this process
/// that answer their own name). Each test waits on `LBAgents.waitApplied`, then asks nginx.
@Suite("lb-agent: nginx driven from etcd", .serialized)
struct LBAgentTests {
    @Test func servesADomainMovesItAndRemovesIt() async throws {
        try await withLBFarm { farm in
            let b1 = try await farm.backend("b1"), b2 = try await farm.backend("b2")
            let agent = try await farm.startAgent("a1")

            try await farm.waitApplied(try await farm.put("demo.localhost", [b1]))
            #expect(try await agent.get("demo.localhost") == Reply(200, "b1"))
            let unknown = try await agent.get("other.localhost")
            #expect(unknown.status == 404 && unknown.body.contains("no domain named other.localhost"), "\(unknown)")

            try await farm.waitApplied(try await farm.put("demo.localhost", [b2]))
            #expect(try await agent.get("demo.localhost") == Reply(200, "b2"))

            try await farm.waitApplied(try await farm.put("demo.localhost", []))
            let empty = try await agent.get("demo.localhost")
            #expect(empty.status == 503 && empty.body.contains("demo.localhost has no upstream servers"), "\(empty)")

            try await farm.waitApplied(try await farm.delete("demo.localhost"))
            #expect(try await agent.get("demo.localhost").status == 404)
            #expect(!FileManager.default.fileExists(atPath: agent.directory.appendingPathComponent("domains/demo.localhost.conf").path))

            // Stopping the agent stops its nginx and takes its report away at once (lease revoked).
            try await agent.stop()
            #expect(try await farm.etcd.get(farm.keys.agent(group: farm.group, "a1")) == nil)
            #expect(!FreePort.isInUse(agent.port))
        }
    }

    @Test func aConfigNginxRefusesKeepsTheLastGoodOneWhileOtherDomainsUpdate() async throws {
        try await withLBFarm { farm in
            let b1 = try await farm.backend("b1"), b2 = try await farm.backend("b2")
            let agent = try await farm.startAgent("a1")
            _ = try await farm.put("one.localhost", [b1])
            try await farm.waitApplied(try await farm.put("two.localhost", [b1]))

            // One burst: a value nginx refuses for one, a good change for the other.
            _ = try await farm.put("one.localhost", [b2], settings: ["client_max_body_size": "ten"])
            let reports = try await farm.waitApplied(try await farm.put("two.localhost", [b2]))
            let reason = try #require(reports.first?.rejected["one.localhost"])
            #expect(reason.contains("client_max_body_size"), "\(reason)")
            #expect(!reason.contains("staging"), "the reason names the domain's file, not the agent's staging folder: \(reason)")
            #expect(try await agent.get("one.localhost") == Reply(200, "b1"))
            #expect(try await agent.get("two.localhost") == Reply(200, "b2"))

            // Mended: it applies, and the rejection is gone from the report. A setting that has
            // a default of the agent's replaces it (nginx refuses a directive given twice).
            let mended = try await farm.waitApplied(try await farm.put("one.localhost", [b2], settings: ["client_max_body_size": "10m", "proxy_next_upstream_tries": "5"]))
            #expect(mended.first?.rejected.isEmpty == true)
            #expect(try await agent.get("one.localhost") == Reply(200, "b2"))
        }
    }

    @Test func malformedAndHostileValuesAreRejectedWithoutReachingNginx() async throws {
        try await withLBFarm { farm in
            let b1 = try await farm.backend("b1")
            let agent = try await farm.startAgent("a1")
            try await farm.waitApplied(try await farm.put("demo.localhost", [b1]))

            let domains = farm.keys.domains(farm.group)
            let hostile: [(key: String, value: String, reason: String)] = [
                ("demo.localhost", #"{"domain":"demo.localhost","servers":[{"address":"1.2.3.4:80; include /etc/passwd"}]}"#, "server '1.2.3.4:80; include /etc/passwd' is refused"),
                ("broken.localhost", #"{"domain":"broken.localhost","servers":[{"address":"#, "not an SLBDomain in JSON"),
                ("mismatch.localhost", #"{"domain":"other.localhost","servers":[]}"#, "its key names 'mismatch.localhost'"),
                ("settings.localhost", #"{"domain":"settings.localhost","servers":[],"settings":{"client_max_body_size":"1m; include /etc/passwd"}}"#, "setting client_max_body_size"),
                ("variable.localhost", #"{"domain":"variable.localhost","servers":[],"settings":{"proxy_read_timeout":"$http_x"}}"#, "setting proxy_read_timeout"),
                ("unknown.localhost", #"{"domain":"unknown.localhost","servers":[],"settings":{"root":"/etc"}}"#, "setting 'root' is not allowed"),
                ("weight.localhost", #"{"domain":"weight.localhost","servers":[{"address":"127.0.0.1:1","weight":0}]}"#, "weight 0"),
                ("Upper.localhost", #"{"domain":"Upper.localhost","servers":[]}"#, "domain 'Upper.localhost' is refused"),
            ]
            var last: Int64 = 0
            for h in hostile { last = try await farm.etcd.put(domains + h.key, h.value) }
            let report = try #require(try await farm.waitApplied(last).first)
            for h in hostile {
                let reason = report.rejected[h.key]
                #expect(reason?.contains(h.reason) == true, "\(h.key): \(reason ?? "not rejected")")
            }
            // The good config stays; nothing hostile reached a file.
            #expect(try await agent.get("demo.localhost") == Reply(200, "b1"))
            #expect(try await agent.get("settings.localhost").status == 404)
            let files = try FileManager.default.contentsOfDirectory(atPath: agent.directory.appendingPathComponent("domains").path)
            #expect(files == ["demo.localhost.conf"])
            let text = try String(contentsOf: agent.directory.appendingPathComponent("domains/demo.localhost.conf"), encoding: .utf8)
            #expect(!text.contains("passwd"))
        }
    }

    @Test func twoAgentsOfAGroupConvergeOnTheSameRevision() async throws {
        try await withLBFarm { farm in
            let b1 = try await farm.backend("b1"), b2 = try await farm.backend("b2")
            let a1 = try await farm.startAgent("a1"), a2 = try await farm.startAgent("a2")
            _ = try await farm.put("one.localhost", [b1])
            _ = try await farm.put("two.localhost", [b1, b2], weights: [1, 3])
            _ = try await farm.put("three.localhost", [b2])
            _ = try await farm.delete("three.localhost")
            let revision = try await farm.put("one.localhost", [b2])
            let reports = try await farm.waitApplied(revision)
            #expect(reports.map(\.id) == ["a1", "a2"])
            #expect(Set(reports.map(\.appliedRevision)) == [revision], "both read up to the newest event: \(reports)")
            #expect(Set(reports.compactMap(\.listen)) == [a1.listen, a2.listen])
            for agent in [a1, a2] {
                #expect(try await agent.get("one.localhost") == Reply(200, "b2"))
                #expect(["b1", "b2"].contains(try await agent.get("two.localhost").body))
                #expect(try await agent.get("three.localhost").status == 404)
            }
        }
    }

    @Test func waitAppliedSaysWhenNoAgentServesTheGroupOrOneLags() async throws {
        try await withLBFarm { farm in
            let none = await #expect(throws: KilnError.self) {
                try await LBAgents.waitApplied(etcd: farm.etcd, keys: farm.keys, group: farm.group, revision: 1, timeout: .seconds(5))
            }
            #expect(none?.message.contains("no lb-agent serves lb group \(farm.group)") == true, "\(none?.message ?? "")")
            #expect(none?.message.contains("kiln lb-agent --group \(farm.group)") == true)

            let b1 = try await farm.backend("b1")
            _ = try await farm.startAgent("a1")
            // An agent that stopped applying: its report stays at an old revision while its
            // lease lives (written the way an agent writes it).
            let lease = try await farm.etcd.grantLease(ttl: 10)
            try await farm.etcd.put(farm.keys.agent(group: farm.group, "stuck"),
                                    try KilnJSON.encode(SLBAgentReport(id: "stuck", appliedRevision: 1, listen: "127.0.0.1:1")), lease: lease)
            let revision = try await farm.put("demo.localhost", [b1])
            // a1 applies it (under a full run's load that took more than the 1 s below once).
            try await waitUntil(farm.etcd, prefix: farm.keys.agent(group: farm.group, "a1"), timeout: .seconds(60)) { kvs in
                kvs.contains { ((try? KilnJSON.decode(SLBAgentReport.self, from: $0.value))?.appliedRevision ?? 0) >= revision }
            }
            let clock = ContinuousClock(), start = clock.now
            let lagging = await #expect(throws: KilnError.self) {
                try await LBAgents.waitApplied(etcd: farm.etcd, keys: farm.keys, group: farm.group, revision: revision, timeout: .seconds(1))
            }
            #expect(clock.now - start < .seconds(30), "waitApplied outlived its 1 s limit by far (the stuck agent never applies)")
            let message = lagging?.message ?? ""
            #expect(message.contains("stuck (applied revision 1, nginx on 127.0.0.1:1)"), "\(message)")
            #expect(!message.contains("a1"), "a1 applied; only the lagging agent is named: \(message)")

            // Once the stuck agent is gone (its lease ends), the wait is over.
            async let waited = LBAgents.waitApplied(etcd: farm.etcd, keys: farm.keys, group: farm.group, revision: revision, timeout: .seconds(10))
            try await farm.etcd.revokeLease(lease)
            #expect(try await waited.map(\.id) == ["a1"])
        }
    }

    @Test func anAgentFollowsEtcdAcrossARestartAndACompaction() async throws {
        try await withLBFarm { farm in
            let b1 = try await farm.backend("b1"), b2 = try await farm.backend("b2")
            let agent = try await farm.startAgent("a1")
            try await farm.waitApplied(try await farm.put("demo.localhost", [b1]))

            // etcd crashes. While the agent cannot reach it (the same data served on another
            // client port), the domains change and the history its watch would resume from is
            // compacted away: back on its port, the agent must read the domains again.
            farm.server.kill()
            #expect(try await agent.get("demo.localhost") == Reply(200, "b1"), "nginx serves on while etcd is down")
            let aside = try await EtcdServer.start(dataDir: farm.server.dataDir, clientPort: try FreePort.next(), peerPort: farm.server.peerPort,
                                                   logFile: farm.dir.appendingPathComponent("etcd-aside.log"))
            let elsewhere = LBFarm(server: aside, etcd: EtcdClient(endpoint: aside.endpoint, credentials: farm.users.root), users: farm.users,
                                   dir: farm.dir, started: farm.started)
            _ = try await elsewhere.put("gone.localhost", [b1])
            _ = try await elsewhere.delete("gone.localhost")
            let revision = try await elsewhere.put("demo.localhost", [b2])
            try await elsewhere.etcd.compact(revision: revision)
            aside.stop()
            try await farm.server.restart()

            let reports = try await farm.waitApplied(revision)
            #expect(reports.map(\.id) == ["a1"])
            #expect(try await agent.get("demo.localhost") == Reply(200, "b2"))
            #expect(try await agent.get("gone.localhost").status == 404)
        }
    }

    @Test func aRestartedAgentServesTheLastRunsDomainsUntilEtcdAnswers() async throws {
        try await withLBFarm { farm in
            let b1 = try await farm.backend("b1"), b2 = try await farm.backend("b2")
            let first = try await farm.startAgent("a1")
            try await farm.waitApplied(try await farm.put("demo.localhost", [b1]))
            try await first.stop()

            farm.server.kill()
            let again = try await farm.launchAgent("a1", port: first.port)
            // nginx announces nothing when it is ready: ask every 20 ms until it answers (its
            // port may take connections a moment before it serves them: once, under full load,
            // the first request was reset).
            let reply = try await withTimeout(.seconds(10), waitingFor: "nginx to answer again") {
                while true {
                    if let r = try? await again.get("demo.localhost") { return r }
                    try await Task.sleep(for: .milliseconds(20))
                }
            }
            #expect(reply == Reply(200, "b1"), "the last run's config, with etcd down")

            try await farm.server.restart()
            let revision = try await farm.put("demo.localhost", [b2])
            let key = farm.keys.agent(group: farm.group, "a1")
            try await waitUntil(farm.etcd, prefix: key) { kvs in kvs.contains { $0.key == key } }
            try await farm.waitApplied(revision)
            #expect(try await again.get("demo.localhost") == Reply(200, "b2"))
        }
    }

    @Test func aSecondAgentWithTheSameIDDoesNotOverwriteTheFirstsReport() async throws {
        try await withLBFarm { farm in
            let b1 = try await farm.backend("b1")
            let first = try await farm.startAgent("a1")
            let key = farm.keys.agent(group: farm.group, "a1")
            let firstLease = try #require(try await farm.etcd.get(key)).lease
            let twin = try await farm.launchAgent("a1", folder: "lb-a1-twin")
            try await withTimeout(.seconds(10), waitingFor: "the twin's nginx to listen") {
                while !FreePort.isInUse(twin.port) { try await Task.sleep(for: .milliseconds(20)) }
            }
            try await farm.waitApplied(try await farm.put("demo.localhost", [b1]))
            #expect(try #require(try await farm.etcd.get(key)).lease == firstLease)

            // Once the first is gone, the twin reports.
            try await first.stop()
            try await waitUntil(farm.etcd, prefix: key) { kvs in kvs.contains { $0.key == key && $0.lease != firstLease } }
            let report = try await farm.waitApplied(try await farm.put("demo.localhost", [b1]))
            #expect(report.map(\.listen) == [twin.listen])
            #expect(try await twin.get("demo.localhost") == Reply(200, "b1"))
        }
    }

    @Test func whenItsNginxDiesTheAgentEndsAndSaysWhy() async throws {
        try await withLBFarm { farm in
            let b1 = try await farm.backend("b1")
            let agent = try await farm.startAgent("a1")
            try await farm.waitApplied(try await farm.put("demo.localhost", [b1]))
            let pidText = try String(contentsOf: agent.directory.appendingPathComponent("nginx.pid"), encoding: .utf8)
            let pid = try #require(Int32(pidText.trimmingCharacters(in: .whitespacesAndNewlines)))
            kill(pid, SIGKILL)

            let error = try await agent.waitForEnd()
            let message = (error as? KilnError)?.message ?? "\(String(describing: error))"
            #expect(message.contains("nginx (pid \(pid)) exited"), "\(message)")
            // Its report is gone at once, and no orphaned worker holds the port.
            #expect(try await farm.etcd.get(farm.keys.agent(group: farm.group, "a1")) == nil)
            #expect(!FreePort.isInUse(agent.port))
        }
    }

    @Test func aSteadyClientSeesNoFailedRequestAcrossServerSwitches() async throws {
        try await withLBFarm { farm in
            var current = try await farm.backend("v0")
            let agent = try await farm.startAgent("a1")
            try await farm.waitApplied(try await farm.put("demo.localhost", [current]))

            let client = SteadyClient(url: agent.url, host: "demo.localhost")
            let load = Task { await client.run() }
            defer { client.stop() }
            current = try await switchServers(farm, agent, from: current, times: 5)
            client.stop()
            await load.value
            let seen = client.summary
            #expect(seen.failures.isEmpty, "failed requests: \(seen.failures.prefix(5))")
            // It kept asking through every switch: it saw each of the six servers answer. (How
            // many answers in all depends on the machine's load: 44 in a loaded full run.)
            #expect(seen.ok >= 12, "the client kept asking during the switches: \(seen.ok) answers")
            #expect(seen.names == Set((0...5).map { "v\($0)" }))
        }
    }
    @Test func keepAliveClientsSeeNoFailedRequestWhileServersChangeWithoutAReload() async throws {
        try await withLBFarm { farm in
            var current = try await farm.backend("v0")
            let agent = try await farm.startAgent("a1")
            try await farm.waitApplied(try await farm.put("demo.localhost", [current]))
            let main = try String(contentsOf: agent.directory.appendingPathComponent("nginx.conf"), encoding: .utf8)
            #expect(main.contains("ngx_http_lua_module.so"), "the Lua module is installed here, so the agent uses it")
            let before = try agent.nginxProcesses()
            #expect(!before.workers.isEmpty)

            // One client whose connections stay open between requests, shared by four loops.
            let http = HTTPClient(eventLoopGroupProvider: .singleton)
            let client = SteadyClient(url: agent.url, host: "demo.localhost", keepAlive: http)
            let loads = (0..<4).map { _ in Task { await client.run() } }
            current = try await switchServers(farm, agent, from: current, times: 5)
            client.stop()
            for load in loads { await load.value }
            try await http.shutdown()

            let seen = client.summary
            #expect(seen.failures.isEmpty, "\(seen.failures.count) failed requests: \(seen.failures.prefix(5))")
            #expect(seen.ok > 200, "the clients kept asking during the switches: \(seen.ok) answers")
            #expect(seen.names == Set((0...5).map { "v\($0)" }))
            let after = try agent.nginxProcesses()
            #expect(after.master == before.master && after.workers == before.workers, "no reload: \(before) then \(after)")
            // The file holds the new servers, so a reload or a restart serves the same.
            let file = try String(contentsOf: agent.directory.appendingPathComponent("domains/demo.localhost.conf"), encoding: .utf8)
            #expect(file.contains("\(current.address)=1"), "\(file)")
        }
    }

    @Test func aSettingsChangeOrANewDomainStillReloadsAndServesTheNewestServers() async throws {
        try await withLBFarm { farm in
            let b1 = try await farm.backend("b1"), b2 = try await farm.backend("b2"), b3 = try await farm.backend("b3")
            let agent = try await farm.startAgent("a1")
            try await farm.waitApplied(try await farm.put("demo.localhost", [b1]))
            let first = try agent.nginxProcesses()

            // Servers alone: no reload.
            try await farm.waitApplied(try await farm.put("demo.localhost", [b2]))
            #expect(try await agent.get("demo.localhost") == Reply(200, "b2"))
            #expect(try agent.nginxProcesses() == first)

            // Another domain added: a reload, and demo keeps the servers set without one (its
            // file's were written too, so the new workers agree).
            try await farm.waitApplied(try await farm.put("two.localhost", [b1]))
            let second = try agent.nginxProcesses()
            #expect(second.master == first.master && second.workers.isDisjoint(with: first.workers), "reloaded: \(first) then \(second)")
            #expect(try await agent.get("demo.localhost") == Reply(200, "b2"))
            #expect(try await agent.get("two.localhost") == Reply(200, "b1"))

            // Settings and servers at once: a reload that serves both.
            try await farm.waitApplied(try await farm.put("demo.localhost", [b3], settings: ["client_max_body_size": "1k"]))
            let third = try agent.nginxProcesses()
            #expect(third.master == first.master && third.workers.isDisjoint(with: second.workers), "reloaded: \(second) then \(third)")
            #expect(try await agent.get("demo.localhost") == Reply(200, "b3"))
            let big = try await httpRequest(.POST, agent.url, body: String(repeating: "x", count: 4096), headers: [("Host", "demo.localhost"), ("Connection", "close")], timeout: .seconds(10))
            #expect(big.status == 413, "the new setting applies: \(big.status)")

            // And servers alone again: no reload, weights honoured.
            try await farm.waitApplied(try await farm.put("demo.localhost", [b1, b2], weights: [1, 3], settings: ["client_max_body_size": "1k"]))
            #expect(try agent.nginxProcesses() == third)
            var names: [String: Int] = [:]
            for _ in 0..<40 { names[try await agent.get("demo.localhost").body, default: 0] += 1 }
            #expect(names.keys.sorted() == ["b1", "b2"] && names["b2"]! > names["b1"]!, "\(names)")
        }
    }

    @Test func aServerThatRefusesIsRetriedOnTheNextOneWithTheLuaBalancer() async throws {
        try await withLBFarm { farm in
            let b2 = try await farm.backend("b2")
            let agent = try await farm.startAgent("a1")
            let dead = "127.0.0.1:\(try FreePort.next())"
            let servers = [SLBServer(address: dead), SLBServer(address: b2.address)]
            try await farm.waitApplied(try await farm.etcd.put(farm.keys.domain(group: farm.group, "demo.localhost"),
                                                               try KilnJSON.encode(SLBDomain(domain: "demo.localhost", servers: servers))))
            let file = try String(contentsOf: agent.directory.appendingPathComponent("domains/demo.localhost.conf"), encoding: .utf8)
            #expect(file.contains("balancer_by_lua_block"))
            // proxy_next_upstream passes each request that meets the refusing one on to b2.
            for _ in 0..<10 { #expect(try await agent.get("demo.localhost") == Reply(200, "b2")) }
        }
    }

    @Test func withoutTheLuaModuleEveryChangeReloads() async throws {
        try await withLBFarm { farm in
            let b1 = try await farm.backend("b1"), b2 = try await farm.backend("b2")
            let empty = farm.dir.appendingPathComponent("no-modules")
            try FileManager.default.createDirectory(at: empty, withIntermediateDirectories: true)
            let agent = try await farm.startAgent("a1", nginxModules: empty)
            try await farm.waitApplied(try await farm.put("demo.localhost", [b1]))
            let main = try String(contentsOf: agent.directory.appendingPathComponent("nginx.conf"), encoding: .utf8)
            #expect(!main.contains("load_module") && !main.contains("lua"))
            let before = try agent.nginxProcesses()

            try await farm.waitApplied(try await farm.put("demo.localhost", [b2]))
            #expect(try await agent.get("demo.localhost") == Reply(200, "b2"))
            let after = try agent.nginxProcesses()
            #expect(after.master == before.master && after.workers.isDisjoint(with: before.workers), "reloaded: \(before) then \(after)")
        }
    }
}
