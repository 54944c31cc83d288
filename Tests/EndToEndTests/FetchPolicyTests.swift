import BuildAgent
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
import Testing

// A project's repository URL aimed at the agent's own network: the agent fetches on the host,
// where etcd, the scheduler and the registry listen on loopback. In the serialized
// "End to end" suite: every farm shares the podman storage.
extension EndToEndTests {
    @Test("a repository URL on the agent's own network fails at fetch before any connection, however the address is spelled; a redirect out of an allowed server fails")
    func fetchPolicy() async throws {
        // Stands in for a service on loopback and counts the connections it gets.
        let target = try StallingServer(.silent)
        // Allowed, and silent: the control that a fetch which may connect does (and is counted).
        let allowed = try StallingServer(.silent)
        // Allowed servers that bounce the fetch: to another port of the same host, to another host.
        let bouncePort = try StallingServer(.redirect(to: "http://127.0.0.1:\(target.port)/v3/kv/range"))
        let bounceHost = try StallingServer(.redirect(to: "http://localhost:\(target.port)/x.git"))
        defer { target.stop(); allowed.stop(); bouncePort.stop(); bounceHost.stop() }
        let fetchLimit = 6
        try await withFarm(configure: { farm, id in
            farm.agentConfiguration(id, timeouts: StepTimeouts(fetch: .seconds(fetchLimit), compile: .seconds(120), image: .seconds(120), push: .seconds(60)),
                                    allowFetchFrom: [allowed, bouncePort, bounceHost].map { "127.0.0.1:\($0.port)" })
        }) { farm in
            let mirrors = farm.dataDir.appendingPathComponent("agents/agent-1/mirrors")
            func fetchFails(_ project: String, _ url: String) async throws -> (Build, String) {
                if url.contains("s3cret@") {
                    // The API refuses a password in the URL; a record saved before it did still reaches the agent.
                    let p = Project(name: project, repository: url, buildImage: Infrastructure.buildImage, buildCommand: "true")
                    try await farm.infra.etcdUsers.rootClient.put(Keys().project(project), try KilnJSON.encode(p))
                } else {
                    try await farm.addProject(project, repository: url, buildCommand: "true")
                }
                let b = try await farm.finished(try await farm.startBuild(project).id, timeout: .seconds(120))
                #expect(b.status == .failed, "\(url)")
                #expect(b.steps.first { $0.name == .fetch }?.status == .failed, "\(url)")
                #expect(b.steps.filter { $0.name != .fetch }.allSatisfy { $0.status == .skipped || $0.status == .pending }, "\(url): a step after the fetch ran")
                return (b, try await farm.log(b.id))
            }

            // 1. etcd's client port: refused with the option that would allow it, before the
            // mirror is made, i.e. before libgit2 could open a connection.
            let etcdPort = try #require(URL(string: farm.infra.etcd.endpoint)?.port)
            let (etcd, etcdLog) = try await fetchFails("etcd", "http://127.0.0.1:\(etcdPort)/v3/kv/range")
            let expected = "127.0.0.1:\(etcdPort) is refused: it resolves to 127.0.0.1, a loopback address"
            #expect(etcd.error?.contains(expected) == true, "\(etcd.error ?? "")")
            #expect(etcdLog.contains("==> fetch failed") && etcdLog.contains(expected) && etcdLog.contains("--allow-fetch-from 127.0.0.1:\(etcdPort)"), "\(etcdLog)")
            #expect(!FileManager.default.fileExists(atPath: mirrors.appendingPathComponent("etcd.git").path))

            // 2. The same machine spelled every way a resolver reads it, over every transport,
            // at a server that counts connections: none arrives. A password in the URL stays
            // out of the record and the log.
            let p = target.port
            let spellings = [
                "http://kiln:s3cret@2130706433:\(p)/x.git", "http://0x7f.1:\(p)/x.git", "https://127.1:\(p)/x.git", "git://017700000001:\(p)/x.git",
                "http://[::ffff:127.0.0.1]:\(p)/x.git", "http://localhost:\(p)/x.git", "ssh://git@0.0.0.0:\(p)/x.git", "git@[127.0.0.1:\(p)]:x.git",
            ]
            for (i, url) in spellings.enumerated() {
                let (b, log) = try await fetchFails("spelling-\(i)", url)
                #expect(b.error?.contains("is refused") == true && b.error?.contains("--allow-fetch-from") == true, "\(url): \(b.error ?? "")")
                #expect(!log.contains("s3cret") && b.error?.contains("s3cret") == false, "\(url)")
            }
            #expect(target.accepted == 0, "a refused fetch reached the server")

            // The control: an allowed server is connected to (and, silent, times the fetch out).
            let (control, _) = try await fetchFails("control", "http://127.0.0.1:\(allowed.port)/x.git")
            #expect(control.error?.contains("timed out after \(fetchLimit) s") == true, "\(control.error ?? "")")
            #expect(allowed.accepted >= 1, "the allowed fetch never connected: the count above proves nothing")

            // 3. Redirects from an allowed server: to another port of the same host (which
            // libgit2's "no redirects" would follow) and to another host.
            for (name, server, says) in [("bounce-port", bouncePort, "sent the fetch on to 127.0.0.1:\(p)"), ("bounce-host", bounceHost, "HTTP redirect")] {
                let (b, _) = try await fetchFails(name, "http://127.0.0.1:\(server.port)/x.git")
                #expect(b.error?.contains(says) == true && b.error?.contains("follows no redirect") == true, "\(name): \(b.error ?? "")")
                #expect(server.accepted >= 1, "\(name): the fetch never reached the redirecting server")
            }
            #expect(target.accepted == 0, "a redirect was followed")

            // The farm's own git server, allowed as kiln up allows it, still fetches.
            try await farm.addProject("own", buildCommand: "exit 3")
            let own = try await farm.finished(try await farm.startBuild("own").id)
            #expect(own.steps.first { $0.name == .fetch }?.status == .succeeded, "\(own.error ?? "")")
            #expect(own.error?.contains("status 3") == true, "\(own.error ?? "")")
        }
    }
}
