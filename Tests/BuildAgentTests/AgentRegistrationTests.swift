@testable import BuildAgent
import Etcd
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
import Logging
import Testing

/// What an agent's registration says of its disk, against a real etcd.
@Suite("Agent registration with its disk")
struct AgentRegistrationTests {
    let keys = Keys()

    func withAgent(minFree: Int64, _ body: @escaping @Sendable (EtcdClient) async throws -> Void) async throws {
        try await withEtcd(timeout: .seconds(60)) { server, etcd in
            let dir = try TempDir("agent-registration")
            var config = AgentConfiguration(id: "sim-1", ttlSeconds: 4, dataDir: dir.path("agent"), etcdEndpoint: server.endpoint,
                                            simulate: SimulatedDuration(seconds: 0))
            config.minFree = minFree
            config.diskBudget = 1 << 30
            try await withAgentService(config, etcd: etcd) { try await body(etcd) }
        }
    }

    func info(_ etcd: EtcdClient) async throws -> AgentInfo {
        try KilnJSON.decode(AgentInfo.self, from: try #require(try await etcd.get(keys.agent("sim-1"))).value)
    }

    @Test func theFirstRegistrationSaysTheDiskAndTakesBuilds() async throws {
        try await withAgent(minFree: 0) { etcd in
            let disk = try #require(try await info(etcd).disk)
            #expect(disk.budget == 1 << 30 && disk.used == 0 && disk.free > 0 && disk.minFree == 0)
            #expect(disk.refusing == nil)
        }
    }

    @Test func anAgentShortOfSpaceRegistersRefusingWithTheReason() async throws {
        try await withAgent(minFree: 1 << 60) { etcd in
            let agent = try await info(etcd)
            let reason = try #require(agent.refusing)
            #expect(reason.hasPrefix("short of disk space: ") && reason.contains("--min-free"), "\(reason)")
        }
    }

    @Test func figuresAreWrittenAgainOnlyWhenTheyChangeMeaningfully() async throws {
        try await withEtcd(timeout: .seconds(60)) { _, etcd in
            let disk = AgentDisk(free: 40 << 30, budget: 10 << 30, used: 1 << 30, minFree: 5 << 30)
            let registration = AgentRegistration(info: AgentInfo(id: "a1", capacity: 1, labels: [], version: "t", disk: disk), key: keys.agent("a1"))
            // Not registered yet: nothing is written.
            #expect(await !registration.update(disk: disk, etcd: etcd))
            let lease = try await etcd.grantLease(ttl: 10)
            try await registration.register(lease: lease, etcd: etcd)
            let first = try #require(try await etcd.get(keys.agent("a1")))
            var small = disk
            small.free -= 100 << 20
            #expect(await !registration.update(disk: small, etcd: etcd))
            #expect(try await etcd.get(keys.agent("a1"))?.modRevision == first.modRevision)
            var refusing = small
            refusing.refusing = "short of disk space"
            #expect(await registration.update(disk: refusing, etcd: etcd))
            let second = try #require(try await etcd.get(keys.agent("a1")))
            #expect(second.modRevision > first.modRevision && second.createRevision == first.createRevision,
                    "the same registration (the dispatcher's assignments name its create revision)")
            #expect(try KilnJSON.decode(AgentInfo.self, from: second.value).refusing == "short of disk space")
            #expect(second.lease == lease)
            // The lease is lost: nothing is written until the agent registers again, with the latest.
            registration.leaseLost()
            var back = refusing
            back.refusing = nil
            #expect(await !registration.update(disk: back, etcd: etcd))
            try await registration.register(lease: try await etcd.grantLease(ttl: 10), etcd: etcd)
            #expect(try KilnJSON.decode(AgentInfo.self, from: try #require(try await etcd.get(keys.agent("a1"))).value).refusing == nil)
        }
    }
}
