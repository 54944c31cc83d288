import Etcd
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
import Testing

/// The farm's etcd users against a real etcd with authentication on: each role lets its
/// component do what it does and refuses what a hostile build on that machine would try.
@Suite("LocalFarm: etcd users and roles", .serialized)
struct EtcdUsersTests {
    let keys = Keys()
    let slb = SLBKeys()

    @Test func setUpTwiceReusesWhatExistsAndKeepsFilesPrivate() async throws {
        try await withUsers { server, users in
            let first = try await users.ensure(.agent("agent-1"))
            let password = try CredentialFile.read(first.path)
            // A second `kiln up` on the same data dir.
            let again = try await EtcdUsers.enable(endpoint: server.endpoint, credentialsDir: users.credentialsDir)
            #expect(again.root == users.root)
            #expect(try await again.ensure(.agent("agent-1")) == first)
            #expect(try CredentialFile.read(first.path) == password, "an existing credential is kept")
            for file in [EtcdAccess.rootCredentialFileName, "etcd-agent.agent-1"] {
                let attributes = try FileManager.default.attributesOfItem(atPath: users.credentialsDir.appendingPathComponent(file).path)
                #expect((attributes[.posixPermissions] as? Int) == 0o600, "\(file)")
            }
            #expect(try CredentialFile.read(users.credentialsDir.appendingPathComponent("etcd-root").path).hasPrefix("root:"), "the form etcdctl --user takes")
            // A lost credential file: a new password, set on the existing user.
            try FileManager.default.removeItem(at: first)
            let agent = try await users.client(.agent("agent-1"))
            #expect(try CredentialFile.read(first.path) != password)
            try await agent.put(keys.agent("agent-1"), "{}")
            let anonymous = EtcdClient(endpoint: server.endpoint)
            await #expect(throws: EtcdError.unauthenticated) { try await anonymous.get(keys.project("demo")) }
        }
    }

    @Test func aRootFileThatEtcdRefusesSaysWhatToDo() async throws {
        try await withUsers { server, users in
            let other = try TempDir("other-credentials")
            let error = await #expect(throws: KilnError.self) { _ = try await EtcdUsers.enable(endpoint: server.endpoint, credentialsDir: other.url) }
            #expect(error?.message.contains("refuses the root credential") == true, "\(error?.message ?? "")")
            _ = users
        }
    }

    @Test func anAgentDoesItsWorkAndNothingElse() async throws {
        try await withUsers { _, users in
            let root = users.rootClient
            let agent = try await users.client(.agent("agent-1"))
            _ = try await users.ensure(.agent("agent-10"))

            // What `kiln agent` does: register under a lease, follow its tasks, write a build's
            // record and log under the task's guard, remove the task, revoke the lease.
            let lease = try await agent.grantLease(ttl: 10)
            try await agent.put(keys.agent("agent-1"), "{}", lease: lease)
            #expect(try await agent.keepAliveOnce(lease) > 0)
            let task = keys.task(agent: "agent-1", build: "b1")
            let taskRevision = try await root.put(task, "{}")
            try await root.put(keys.build("b1"), "{}")
            #expect(try await agent.range(prefix: keys.tasks(of: "agent-1")).kvs.map(\.key) == [task])
            #expect(try await agent.get(keys.build("b1")) != nil)
            let end = try await agent.txn(Txn(
                compare: [.createRevision(task, .equal, taskRevision)],
                success: [.put(keys.logChunk(build: "b1", attempt: 1, seq: 0), "{}"), .put(keys.build("b1"), "{\"done\":1}"), .delete(task)]))
            #expect(end.succeeded)
            try await agent.revokeLease(lease)

            // What a build on that agent might try with the agent's credential.
            let refused: [(String, @Sendable () async throws -> Void)] = [
                ("write a project", { try await agent.put(self.keys.project("demo"), "{}") }),
                ("read the projects", { _ = try await agent.range(prefix: self.keys.projects) }),
                ("write the queue", { try await agent.put(self.keys.queued("b2"), "{}") }),
                ("take the leader key", { try await agent.put(self.keys.leader, "me") }),
                ("write another agent's task", { try await agent.put(self.keys.task(agent: "agent-2", build: "b2"), "{}") }),
                ("write agent-10's task (a longer id)", { try await agent.put(self.keys.task(agent: "agent-10", build: "b2"), "{}") }),
                ("read another agent's tasks", { _ = try await agent.range(prefix: self.keys.tasks(of: "agent-10")) }),
                ("register as another agent", { try await agent.put(self.keys.agent("agent-10"), "{}") }),
                ("write a domain", { try await agent.put(self.slb.domain(group: "local", "demo.localhost"), "{}") }),
                ("register a machine token (a deployer's pull-any)", { try await agent.put(self.keys.machine("evil"), "{}") }),
                ("read the machine tokens", { _ = try await agent.range(prefix: self.keys.machines) }),
                ("grant itself another project's repository", { try await agent.put(self.keys.grant(agent: "agent-1", build: "b9"), "victim") }),
                ("write an app", { try await agent.put(self.keys.app("demo"), "{}") }),
                ("write a cell", { try await agent.put(self.keys.cell("a"), "{}") }),
                ("read the logs", { _ = try await agent.range(prefix: self.keys.logs) }),
                ("compare another agent's task", {
                    _ = try await agent.txn(Txn(compare: [.createRevision(self.keys.task(agent: "agent-2", build: "b2"), .equal, 0)],
                                                success: [.put(self.keys.build("b2"), "{}")]))
                }),
            ]
            for (what, attempt) in refused {
                let error = await #expect(throws: EtcdError.self, "\(what)") { try await attempt() }
                #expect(error == .permissionDenied, "\(what): \(error?.description ?? "")")
                #expect(error?.message.contains("kiln-agent.agent-1") == true, "names the user: \(error?.message ?? "")")
            }

            // A lease with another agent's key on it cannot be revoked by this agent.
            let shared = try await agent.grantLease(ttl: 10)
            try await root.put(keys.agent("agent-10"), "{}", lease: shared)
            await #expect(throws: EtcdError.permissionDenied) { try await agent.revokeLease(shared) }
            #expect(try await root.get(keys.agent("agent-10")) != nil)
        }
    }

    @Test func anLBAgentReadsItsGroupAndWritesOnlyItsReport() async throws {
        try await withUsers { _, users in
            let root = users.rootClient
            let lb = try await users.client(.lbAgent(group: "local", id: "lb-1"))
            try await root.put(slb.domain(group: "local", "demo.localhost"), "{}")
            #expect(try await lb.range(prefix: slb.domains("local")).kvs.count == 1)
            let report = slb.agent(group: "local", "lb-1")
            let lease = try await lb.grantLease(ttl: 10)
            let created = try await lb.txn(Txn(compare: [.createRevision(report, .equal, 0)], success: [.put(report, "{}", lease: lease)], failure: [.get(report)]))
            #expect(created.succeeded)
            #expect(try await lb.txn(Txn(compare: [.lease(report, .equal, lease)], success: [.put(report, "{}", lease: lease)])).succeeded)
            try await lb.revokeLease(lease)

            let refused: [(String, @Sendable () async throws -> Void)] = [
                ("write a domain of its group", { try await lb.put(self.slb.domain(group: "local", "demo.localhost"), "{}") }),
                ("write another lb-agent's report", { try await lb.put(self.slb.agent(group: "local", "lb-2"), "{}") }),
                ("read another group", { _ = try await lb.range(prefix: self.slb.domains("prod")) }),
                ("read the farm", { _ = try await lb.range(prefix: self.keys.projects) }),
            ]
            for (what, attempt) in refused {
                let error = await #expect(throws: EtcdError.self, "\(what)") { try await attempt() }
                #expect(error == .permissionDenied, "\(what): \(error?.description ?? "")")
            }
        }
    }

    @Test func theSchedulerWritesTheFarmButNoRegistration() async throws {
        try await withUsers { _, users in
            let scheduler = try await users.client(.scheduler)
            try await scheduler.put(keys.project("demo"), "{}")
            try await scheduler.put(slb.domain(group: "local", "demo.localhost"), "{}")
            let lease = try await scheduler.grantLease(ttl: 10)
            try await scheduler.put(keys.leader, "s1", lease: lease)
            try await scheduler.revokeLease(lease)
            _ = try await scheduler.range(prefix: keys.agents)
            await #expect(throws: EtcdError.permissionDenied) { try await scheduler.put(self.keys.agent("agent-1"), "{}") }
            await #expect(throws: EtcdError.permissionDenied) { try await scheduler.put("/elsewhere", "x") }
            // It reads machine tokens' hashes (the registry's token service) and writes none.
            _ = try await scheduler.range(prefix: keys.machines)
            await #expect(throws: EtcdError.permissionDenied) { try await scheduler.put(self.keys.machine("evil"), "{}") }
        }
    }

    private func withUsers(_ body: @escaping @Sendable (EtcdServer, EtcdUsers) async throws -> Void) async throws {
        let dir = try TempDir("etcd-users")
        let server = try await EtcdServer.start(dataDir: dir.path("data"))
        defer {
            server.kill()
            withExtendedLifetime(dir) {}
        }
        let users = try await EtcdUsers.enable(endpoint: server.endpoint, credentialsDir: dir.path("credentials"))
        try await withTimeout(.seconds(60)) { try await body(server, users) }
    }
}
