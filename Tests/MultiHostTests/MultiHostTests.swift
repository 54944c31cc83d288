import Etcd
import FarmHarness
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
import Testing

/// The farm with its parts on separate hosts (issue 17; docs/testing-multihost.md): one
/// ``NetnsFarm`` for the whole suite, started by ``MultiHostFarm`` (a suite trait) and
/// stopped after the last test, the tests in order. Skipped with a message where network
/// namespaces cannot be made.
@Suite(.serialized, .enabled(if: NetnsSupport.reason == nil, Comment(rawValue: NetnsSupport.skipMessage)), MultiHostFarm())
struct MultiHostTests {
    var farm: NetnsFarm { MultiHostFarm.farm! }
    var keys: Keys { farm.keys }

    /// A build requested through the API runs on a builder host, pushes to the registry by its
    /// name (TLS, the farm's CA through each host's certs.d, a token from kiln-api), and the
    /// registry holds the manifest of the record's digest.
    @Test func buildRunsOnABuilderHostAndPushesByName() async throws {
        let build = try await runBuild("hello")
        #expect(build.status == .succeeded, "\(build.error ?? "")\n\(farm.logs())")
        #expect(NetnsFarm.builderHosts.contains(build.agent ?? ""), "built by \(build.agent ?? "nobody")")
        let byDigest = try #require(build.imageByDigest, "no image by digest in the record")
        #expect(byDigest.hasPrefix("\(NetnsFarm.registryName)/hello@sha256:"), "\(byDigest)")
        #expect(try await manifestExists("hello", build.digest ?? ""), "the registry on host registry has no manifest \(build.digest ?? "")")
    }

    /// Plan §6 test 2: the builder running a build is cut off; its lease expires, the build
    /// moves to another builder host and succeeds there, nothing ran twice, and once the
    /// host is back its container is removed.
    @Test func builderCutMovesTheBuild() async throws {
        try await addProject("sleeper", buildCommand: "sleep 25")
        let id = try await requestBuild("sleeper")
        let first = try await waitForBuild(id, timeout: .seconds(240)) { $0.status == .running && $0.agent != nil && $0.attempt == 1 }
        let a = try #require(first.agent)
        // The compile step runs: the container is there on A.
        try await poll("the build container on \(a)", timeout: .seconds(120)) { !(try farm.podman(on: a, ["ps", "-q"]).isEmpty) }
        let cutAt = ContinuousClock.now
        try farm.net.cut(a)
        var healed = false
        defer { if !healed { try? farm.net.heal(a) } }
        // Lease TTL 3 s: the key goes between 2 and 3 s after the cut (plan §1); 20 s on a loaded machine.
        try await waitUntil(farm.etcd, prefix: keys.agent(a), timeout: .seconds(20)) { $0.isEmpty }
        let leaseLost = ContinuousClock.now - cutAt
        let second = try await waitForBuild(id, timeout: .seconds(120)) { $0.status == .running && $0.attempt >= 2 && $0.agent != a || $0.status.isFinal }
        #expect(second.status == .running && second.agent != a, "attempt \(second.attempt) \(second.status) on \(second.agent ?? "?")")
        // Back before A's `sleep 25` ends: its end write must be refused, and it must clean up.
        try farm.net.heal(a)
        healed = true
        let done = try await waitForBuild(id, timeout: .seconds(240)) { $0.status.isFinal }
        #expect(done.status == .succeeded, "\(done.error ?? "")\n\(farm.logs())")
        #expect(done.agent != a && done.agent != nil, "finished by \(done.agent ?? "?"), cut host \(a)")
        try await poll("\(a)'s build container removed after the heal", timeout: .seconds(90)) { try farm.podman(on: a, ["ps", "-aq"]).isEmpty }
        let check = await MultiHostFarm.history!.check()
        #expect(check.runTwice.isEmpty, "\(check.runTwice)")
        #expect(check.outcome(of: [id]).lost.isEmpty)
        #expect(try await manifestExists("sleeper", done.digest ?? ""))
        print("multi-host: \(a) cut, its lease gone after \(leaseLost); build \(id) moved to \(done.agent ?? "?") (attempt \(done.attempt))")
    }

    /// Plan §6 test 3: the leading scheduler (sched-1) is cut off; sched-2 takes the lead, a
    /// build requested from it runs and pushes (the token service is kiln-api = sched-2),
    /// and sched-1, back, follows.
    @Test func schedulerCutHandsOverTheLead() async throws {
        #expect(try await leader(asking: "sched-2") == "sched-1", "sched-1 was started first and should lead")
        let cutAt = ContinuousClock.now
        try farm.net.cut("sched-1")
        var healed = false
        defer { if !healed { try? farm.net.heal("sched-1") } }
        // --leader-ttl 2: sched-2 takes over within about 2 s; 30 s on a loaded machine.
        try await poll("sched-2 leading", timeout: .seconds(30)) { try await leader(asking: "sched-2") == "sched-2" }
        let handover = ContinuousClock.now - cutAt
        let build = try await runBuild("hello", on: "sched-2")
        #expect(build.status == .succeeded, "\(build.error ?? "")\n\(farm.logs())")
        try farm.net.heal("sched-1")
        healed = true
        try await poll("sched-1 following sched-2", timeout: .seconds(30)) {
            let r = try await farm.request("GET", "/api/v1/scheduler", on: "sched-1")
            guard r.status == 200, let s = try? KilnJSON.decode(SchedulerStatus.self, from: r.body) else { return false }
            return !s.isLeader && s.leader == "sched-2"
        }
        let check = await MultiHostFarm.history!.check()
        #expect(check.runTwice.isEmpty, "\(check.runTwice)")
        let steps = build.steps.map { "\($0.name.rawValue) \($0.durationMs ?? -1) ms" }.joined(separator: ", ")
        print("multi-host: sched-1 cut, sched-2 leading after \(handover); the build requested from sched-2 took \(build.durationMs ?? -1) ms (\(steps))")

    }

    /// The harness's own guards: a host is refused a path outside its folder, and the test
    /// process refuses an address its op link does not route (one off the machine).
    @Test func harnessGuards() throws {
        let net = farm.net
        #expect(throws: FarmError.self) {
            try NetnsFarm.checkNoSharedPath(net: net, host: "sched-1", kiln: farm.kiln, ["--data-dir", net.host("sched-2").dir.path])
        }
        #expect(throws: FarmError.self) {
            try NetnsFarm.checkNoSharedPath(net: net, host: "builder-1", kiln: farm.kiln, ["--etcd-ca=/etc/ssl/certs/ca-certificates.crt"])
        }
        try NetnsFarm.checkNoSharedPath(net: net, host: "sched-1", kiln: farm.kiln,
                                        ["--data-dir", net.host("sched-1").dir.appendingPathComponent("scheduler").path, farm.kiln, "/usr/bin/env"])
        #expect(throws: FarmError.self) { try net.checkRoute("192.0.2.1") }
        try net.checkRoute(net.host("registry").address)
        // Every builder's storage got the build image (made once, saved, loaded into the others).
        for host in NetnsFarm.builderHosts {
            #expect(try farm.podman(on: host, ["image", "exists", NetnsFarm.buildImage]).isEmpty)
        }
    }

    /// The sweep removes a run whose owner died (its namespaces with what runs in them, its
    /// blackhole route, its folder) and leaves a live run alone (this suite's farm).
    @Test func sweepRemovesOnlyRunsOfDeadOwners() throws {
        let orphan = try NetnsNetwork.create([(name: "lonely", octet: 10)])
        defer { orphan.teardown() }
        // An owner that has died: a child that ran and was reaped.
        let child = try ManagedProcess(name: "true", executable: "/bin/true", arguments: [], logFile: orphan.dir.appendingPathComponent("true.log"))
        while child.isRunning { usleep(10_000) }
        try "\(child.pid)\n".write(to: orphan.dir.appendingPathComponent("owner"), atomically: true, encoding: .utf8)
        NetnsNetwork.sweep()
        let namespaces = try #require(String(data: try Spawn.run("/usr/sbin/ip", ["netns", "list"]).output, encoding: .utf8))
        #expect(!namespaces.contains("kmh\(orphan.runID)-"), "\(namespaces)")
        #expect(namespaces.contains("kmh\(farm.net.runID)-registry"), "the live farm's namespaces must stay: \(namespaces)")
        let routes = String(decoding: try Spawn.run("/usr/sbin/ip", ["route"]).output, as: UTF8.self)
        #expect(!routes.contains("10.217.\(orphan.subnet).0/24"), "\(routes)")
        #expect(!FileManager.default.fileExists(atPath: orphan.dir.path))
        try farm.net.checkRoute(farm.net.host("registry").address)
    }

    // MARK: helpers

    func leader(asking scheduler: String) async throws -> String? {
        let r = try await farm.request("GET", "/api/v1/scheduler", on: scheduler)
        return try? KilnJSON.decode(SchedulerStatus.self, from: r.body).leader
    }

    func addProject(_ name: String, buildCommand: String) async throws {
        let repository = try farm.publish(name, files: [
            "Dockerfile": "FROM \(NetnsFarm.buildImage)\nCOPY message /message\nCMD [\"cat\", \"/message\"]\n",
            "message": "\(name) v1\n",
        ])
        let project = Project(name: name, repository: repository, buildImage: NetnsFarm.buildImage, buildCommand: buildCommand)
        let r = try await farm.request("POST", "/api/v1/projects", body: try KilnJSON.encode(project))
        #expect(r.status == 201 || r.status == 200, "\(r.body)")
    }

    func requestBuild(_ project: String, on scheduler: String = "sched-1") async throws -> String {
        let r = try await farm.request("POST", "/api/v1/projects/\(project)/builds", on: scheduler, body: try KilnJSON.encode(BuildRequest(ref: "main")))
        guard r.status == 201 else { throw FarmError("build request for \(project) answered \(r.status): \(r.body)") }
        return try KilnJSON.decode(Build.self, from: r.body).id
    }

    /// Adds `project` (if new), requests a build and waits until it has ended.
    func runBuild(_ project: String, on scheduler: String = "sched-1") async throws -> Build {
        if try await farm.request("GET", "/api/v1/projects/\(project)", on: scheduler).status == 404 {
            try await addProject(project, buildCommand: "cat message")
        }
        let id = try await requestBuild(project, on: scheduler)
        return try await waitForBuild(id, timeout: .seconds(300)) { $0.status.isFinal }
    }

    /// Waits (an etcd watch of the record) until `condition` holds; on a timeout the hosts' logs are in the error.
    @discardableResult
    func waitForBuild(_ id: String, timeout: Duration, _ condition: @escaping @Sendable (Build) -> Bool) async throws -> Build {
        let key = keys.build(id)
        let decode: @Sendable ([KeyValue]) -> Build? = { $0.first { $0.key == key }.flatMap { try? KilnJSON.decode(Build.self, from: $0.value) } }
        do {
            return decode(try await waitUntil(farm.etcd, prefix: key, timeout: timeout) { decode($0).map(condition) ?? false })!
        } catch {
            let now = try? await farm.etcd.get(key).map { try KilnJSON.decode(Build.self, from: $0.value) }
            throw FarmError("build \(id): \(error); the record: \(now.map { "\($0.status) attempt \($0.attempt) on \($0.agent ?? "-") \($0.error ?? "")" } ?? "none")\n\(farm.logs())")
        }
    }

    /// Polls `condition` every 200 ms until it holds; past `timeout` throws with the hosts' logs.
    func poll(_ what: String, timeout: Duration, _ condition: @Sendable () async throws -> Bool) async throws {
        let deadline = ContinuousClock.now + timeout
        var last: (any Error)?
        while ContinuousClock.now < deadline {
            do {
                if try await condition() { return }
            } catch { last = error }
            try await Task.sleep(for: .milliseconds(200))
        }
        throw FarmError("not within \(timeout): \(what)\(last.map { " (last error: \($0))" } ?? "")\n\(farm.logs())")
    }

    /// Whether the registry (over the op link, TLS with the farm's CA) holds `repository@digest`,
    /// asked with a pull token from sched-2's token service as admin.
    func manifestExists(_ repository: String, _ digest: String) async throws -> Bool {
        guard digest.hasPrefix("sha256:") else { return false }
        let basic = Data("admin:\(farm.adminToken)".utf8).base64EncodedString()
        let scope = "repository:\(repository):pull"
        let tokenReply = try await FarmHTTP.send("GET", "\(farm.api("sched-2"))/auth/token?service=kiln-registry&scope=\(scope)",
                                                 headers: [("Authorization", "Basic \(basic)")], client: farm.tlsClient)
        guard tokenReply.status == 200,
              let json = try JSONSerialization.jsonObject(with: Data(tokenReply.body.utf8)) as? [String: Any],
              let token = json["token"] as? String else { throw FarmError("no registry token: \(tokenReply.status) \(tokenReply.body)") }
        let address = farm.net.host("registry").address
        try farm.net.checkRoute(address)
        let accept = "application/vnd.oci.image.manifest.v1+json,application/vnd.docker.distribution.manifest.v2+json,application/vnd.oci.image.index.v1+json"
        let reply = try await FarmHTTP.send("HEAD", "https://\(address):5443/v2/\(repository)/manifests/\(digest)",
                                            headers: [("Authorization", "Bearer \(token)"), ("Accept", accept)], client: farm.tlsClient)
        return reply.status == 200
    }
}

/// The suite's one farm: started before the first test (etcd, registry, git, podman, the two
/// schedulers with sched-1 leading first, the three agents registered, the history of
/// `/kiln/` followed from the start), stopped after the last, whether the tests passed or not.
struct MultiHostFarm: SuiteTrait, TestScoping {
    nonisolated(unsafe) static var farm: NetnsFarm?
    nonisolated(unsafe) static var history: FarmHistory?

    func provideScope(for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void) async throws {
        let started = ContinuousClock.now
        let kiln = KilnExecutable.besideCurrent?.path ?? "kiln"
        let farm = try await NetnsFarm.start(kiln: kiln)
        defer { farm.stop() }
        let history = FarmHistory(keys: farm.keys)
        let follower = Task { try await history.follow(farm.etcd, prefix: farm.keys.prefix + "/", from: 1, failOnCompaction: true) }
        defer { follower.cancel() }
        do {
            try await farm.startScheduler("sched-1", options: ["--leader-ttl", "2"])
            try await poll(timeout: .seconds(60)) {
                let r = try await farm.request("GET", "/api/v1/scheduler", on: "sched-1")
                return (try? KilnJSON.decode(SchedulerStatus.self, from: r.body))?.isLeader == true
            }
            try await farm.startScheduler("sched-2", options: ["--leader-ttl", "2"])
            for host in NetnsFarm.builderHosts { try await farm.startAgent(host) }
            try await farm.waitForAgents(NetnsFarm.builderHosts)
        } catch {
            throw FarmError("the multi-host farm did not start: \(error)\n\(farm.logs())")
        }
        print("multi-host: farm up in \(ContinuousClock.now - started) (run \(farm.net.runID), 10.217.\(farm.net.subnet).0/24, \(farm.net.dir.path))")
        Self.farm = farm
        Self.history = history
        defer {
            Self.farm = nil
            Self.history = nil
        }
        try await function()
        print("multi-host: suite done in \(ContinuousClock.now - started)")
    }

    private func poll(timeout: Duration, _ condition: @Sendable () async throws -> Bool) async throws {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if (try? await condition()) == true { return }
            try await Task.sleep(for: .milliseconds(200))
        }
        throw FarmError("not within \(timeout)")
    }
}
