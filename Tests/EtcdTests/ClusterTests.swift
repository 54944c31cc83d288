import Etcd
import Foundation
import KilnTestSupport
import LocalFarm
import Testing

/// A client of a real 3-member etcd cluster on loopback whose members die under it.
@Suite("etcd cluster", .serialized)
struct ClusterTests {
    /// A fresh 3-member cluster in a temporary folder, killed afterwards.
    func withCluster(tls: EtcdServer.TLS? = nil, arguments: [String] = [],
                     _ body: @escaping @Sendable (EtcdCluster) async throws -> Void) async throws {
        let dir = try TempDir("etcd-cluster")
        let cluster = try await EtcdCluster.start(dir: dir.url, tls: tls, arguments: arguments)
        defer {
            cluster.kill()
            withExtendedLifetime(dir) {}
        }
        try await withTimeout(.seconds(90)) { try await body(cluster) }
    }

    /// Runs `body` again while it fails with a transient error, as Kiln's components do with
    /// their writes (a write whose connection broke may have been applied: the caller decides).
    func retrying<T: Sendable>(_ body: () async throws -> T) async throws -> T {
        for _ in 0..<100 {
            do { return try await body() } catch let error as EtcdError where error.isTransient {
                try await Task.sleep(for: .milliseconds(200))
            }
        }
        return try await body()
    }

    @Test func aWriteWhoseMemberIsGoneGoesToTheNextOneAtOnce() async throws {
        try await withCluster { cluster in
            // The client's first member is a follower: its death starts no election.
            let leader = try #require(await cluster.leader())
            let followers = cluster.members.filter { $0 !== leader }
            let client = EtcdClient(endpoints: followers.map(\.endpoint) + [leader.endpoint])
            try await client.put("/k/1", "a")
            #expect(client.endpoint == followers[0].endpoint)
            followers[0].kill()
            // The client's pooled connection to it closes as the process dies; a write that
            // raced that close (remoteConnectionClosed: it may have reached etcd) is not
            // repeated by design, so give the client a moment to read the close first.
            try await Task.sleep(for: .milliseconds(300))
            // A write whose connection is refused never reached etcd: it goes to the next member
            // within the same call, without the caller retrying.
            try await client.put("/k/2", "b")
            #expect(try await client.range(prefix: "/k/").kvs.map(\.string) == ["a", "b"])
            #expect(client.endpoint == followers[1].endpoint, "later calls start at the member that answered")
        }
    }

    @Test func writesAndReadsGoOnWhenTheLeaderInUseIsKilledAndQuorumComesBack() async throws {
        try await withCluster { cluster in
            let leader = try #require(await cluster.leader())
            let client = EtcdClient(endpoints: [leader.endpoint] + cluster.members.filter { $0 !== leader }.map(\.endpoint))
            try await client.put("/k/1", "a")
            leader.kill()
            // While the others elect a leader a write may answer "unavailable": Kiln's writers retry.
            try await retrying { try await client.put("/k/2", "b") }
            // A read is repeated by the client itself through the election.
            #expect(try await client.range(prefix: "/k/").kvs.map(\.string) == ["a", "b"])
            #expect(client.endpoint != leader.endpoint)
            // Two members of three gone: no quorum; a call fails, retryably.
            let second = cluster.members.first { $0.endpoint == client.endpoint }!
            second.kill()
            let error = await #expect(throws: EtcdError.self) { try await client.put("/k/3", "c") }
            #expect(error?.isTransient == true, "\(String(describing: error))")
            // The killed members come back with their data and rejoin.
            try await leader.restart()
            try await second.restart()
            try await retrying { try await client.put("/k/3", "c") }
            #expect(try await client.range(prefix: "/k/").count == 3)
        }
    }

    @Test func aWatchResumesOnAnotherMemberFromItsRevision() async throws {
        try await withCluster { cluster in
            let client = EtcdClient(endpoints: cluster.endpoints)
            let start = try await client.status() + 1
            try await consuming(client.watch(prefix: "/w/", fromRevision: start)) { updates in
                for i in 0..<5 { try await client.put("/w/\(i)", "\(i)") }
                #expect(try await updates.events(5).map(\.kv.key) == (0..<5).map { "/w/\($0)" })
                // The member the watch streams from dies; writes go on through the others.
                let dying = cluster.members.first { $0.endpoint == client.endpoint }!
                dying.kill()
                for i in 5..<15 { try await retrying { try await client.put("/w/\(i)", "\(i)") } }
                // Every change, once, in order: none lost in the switch, none repeated, no reset.
                let events = try await updates.events(10)
                #expect(events.map(\.kv.key) == (5..<15).map { "/w/\($0)" })
                #expect(client.endpoint != dying.endpoint)
            }
        }
    }

    @Test func aFollowGoesOnAcrossTheKillOfEveryMemberInTurn() async throws {
        try await withCluster { cluster in
            let client = EtcdClient(endpoints: cluster.endpoints)
            try await consuming(client.follow(prefix: "/f/")) { updates in
                guard case .reset = try await updates.next() else { Issue.record("a follow starts with a reset"); return }
                var expected: [String] = []
                for member in cluster.members {
                    member.kill()
                    let key = "/f/after-\(member.name)"
                    try await retrying { try await client.put(key, "x") }
                    expected.append(key)
                    #expect(try await updates.events(1).map(\.kv.key) == [key])
                    try await member.restart()
                }
                #expect(try await client.range(prefix: "/f/").kvs.map(\.key) == expected)
            }
        }
    }

    @Test func aLeaseKeptAliveThroughTheKillOfItsMemberKeepsItsKey() async throws {
        try await withCluster { cluster in
            // The worst member to lose: the leader, which every renewal goes to; the others
            // elect a new one (a second or two) while renewals wait. A TTL must leave room for
            // that and a renewal: Kiln's agents default to 10 s; 5 s here.
            let leader = try #require(await cluster.leader())
            let client = EtcdClient(endpoints: [leader.endpoint] + cluster.members.filter { $0 !== leader }.map(\.endpoint))
            let lease = try await client.grantLease(ttl: 5)
            try await client.put("/l/agent", "alive", lease: lease)
            let keeping = Task { try await client.keepAlive(lease, every: .seconds(1)) }
            defer { keeping.cancel() }
            leader.kill()
            // Past the TTL (a time, so a wait): the renewals went to another member.
            try await Task.sleep(for: .seconds(7))
            #expect(try await client.get("/l/agent")?.string == "alive")
            let remaining = try await client.timeToLive(lease)
            #expect((remaining ?? 0) > 0, "the lease has \(String(describing: remaining)) s left")
        }
    }

    @Test func aTokenFromOneMemberIsRenewedWhereItLapsed() async throws {
        // Verified by hand first: etcd replicates a simple token to every member, but each
        // member keeps its own TTL, so a token used only on m1 lapses on m2 and m3.
        try await withCluster(arguments: ["--auth-token-ttl", "2"]) { cluster in
            let setup = EtcdClient(endpoints: cluster.endpoints)
            let rootCredentials = EtcdCredentials(user: "root", password: "root-\(UUID().uuidString)")
            try await setup.addUser("root", password: rootCredentials.password)
            try await setup.grantRole("root", toUser: "root")
            try await setup.enableAuthentication()
            let root = EtcdClient(endpoints: cluster.endpoints, credentials: rootCredentials)
            try await root.ensureRole("u1", permissions: [.prefix("/t/", .readWrite)])
            try await root.addUser("u1", password: "pw1")
            try await root.grantRole("u1", toUser: "u1")
            let user = EtcdClient(endpoints: cluster.endpoints, credentials: EtcdCredentials(user: "u1", password: "pw1"))
            // Keep the token fresh on m1 only, past its TTL on the others.
            for i in 0..<6 {
                try await user.put("/t/\(i)", "x")
                try await Task.sleep(for: .milliseconds(500))
            }
            cluster.members[0].kill()
            try await retrying { try await user.put("/t/after", "x") }
            #expect(try await user.get("/t/after")?.string == "x")
            let denied = await #expect(throws: EtcdError.self) { try await user.put("/elsewhere", "x") }
            #expect(denied == .permissionDenied, "still u1 with its role on the other member")
        }
    }

    @Test func aClusterOverTLSWithACA() async throws {
        let dir = try TempDir("etcd-cluster-pki")
        let pki = try TestCA(dir.url)
        // etcd 3.4 with --trusted-ca-file wants a client certificate too.
        let tls = EtcdServer.TLS(certificateFile: pki.serverCertificate, keyFile: pki.serverKey, caFile: pki.ca, clientCertificateAuth: true)
        try await withCluster(tls: tls) { cluster in
            #expect(cluster.endpoints.allSatisfy { $0.hasPrefix("https://127.0.0.1:") })
            let client = EtcdClient(endpoints: cluster.endpoints, tls: EtcdTLS(caFile: pki.ca, certificateFile: pki.clientCertificate, keyFile: pki.clientKey))
            try await client.put("/tls/1", "x")
            cluster.members[0].kill()
            // The pooled connection to the killed member may fail this write once (sent, no
            // answer: maybe applied); the retry goes to the next member.
            try await retrying { try await client.put("/tls/2", "y") }
            #expect(client.endpoint != cluster.endpoints[0])
            #expect(try await client.range(prefix: "/tls/").count == 2)
            let leader = await cluster.leader(client: client)
            #expect(leader != nil && leader !== cluster.members[0])
            // The CA is checked on every member: one that does not trust it reaches none.
            let untrusting = EtcdClient(endpoints: cluster.endpoints, tls: EtcdTLS(caFile: pki.otherCA, certificateFile: pki.clientCertificate, keyFile: pki.clientKey))
            let refused = await #expect(throws: EtcdError.self) { try await untrusting.get("/tls/1") }
            #expect(refused == .unreachable)
            #expect(refused?.message.contains(cluster.endpoints[2]) == true, "every member was tried: \(String(describing: refused))")
        }
    }

    @Test func statusOfEachMemberAndTheLeader() async throws {
        try await withCluster { cluster in
            let client = EtcdClient(endpoints: cluster.endpoints)
            var statuses: [EtcdMemberStatus] = []
            for endpoint in cluster.endpoints { statuses.append(try await client.memberStatus(of: endpoint)) }
            #expect(Set(statuses.map(\.memberID)).count == 3)
            #expect(statuses.filter(\.isLeader).count == 1)
            #expect(Set(statuses.map(\.leaderID)).count == 1, "every member names the same leader")
            let leader = try #require(await cluster.leader())
            leader.kill()
            // Another member is elected; the statuses say so.
            try await withTimeout(.seconds(20), waitingFor: "a new leader") {
                while await cluster.leader() == nil { try await Task.sleep(for: .milliseconds(100)) }
            }
            #expect(await cluster.leader() !== leader)
            // A member's own status is asked of it alone: a dead one is unreachable, not answered by another.
            let dead = await #expect(throws: EtcdError.self) { try await client.memberStatus(of: leader.endpoint) }
            #expect(dead == .unreachable)
        }
    }
}
