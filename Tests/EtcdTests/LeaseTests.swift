import Etcd
import KilnTestSupport
import LocalFarm
import Testing

@Suite("etcd leases")
struct LeaseTests {
    @Test func grantKeepAliveTimeToLiveAndRevoke() async throws {
        try await withEtcd { _, etcd in
            let lease = try await etcd.grantLease(ttl: 30)
            #expect(lease != 0)
            let ttl = try #require(try await etcd.timeToLive(lease))
            #expect(ttl > 25 && ttl <= 30)
            #expect(try await etcd.keepAliveOnce(lease) == 30)

            try await etcd.put("/l/a", "1", lease: lease)
            _ = try await etcd.txn(Txn(success: [.put("/l/b", "2", lease: lease)]))
            try await etcd.put("/l/free", "3")
            #expect(try await etcd.get("/l/a")?.lease == lease)
            #expect(try await etcd.get("/l/b")?.lease == lease)

            try await etcd.revokeLease(lease)
            #expect(try await etcd.range(prefix: "/l/").kvs.map(\.key) == ["/l/free"])
            #expect(try await etcd.timeToLive(lease) == nil)
            await #expect(throws: EtcdError.leaseNotFound) { try await etcd.keepAliveOnce(lease) }
            await #expect(throws: EtcdError.leaseNotFound) { try await etcd.revokeLease(lease) }
            await #expect(throws: EtcdError.leaseNotFound) { try await etcd.put("/l/c", "x", lease: lease) }
        }
    }

    @Test func keysOfAnExpiredLeaseAreDeletedWithAnEvent() async throws {
        try await withEtcd { _, etcd in
            let lease = try await etcd.grantLease(ttl: 2)
            let rev = try await etcd.put("/x/agent", "alive", lease: lease)
            let events = try await consuming(etcd.watch(prefix: "/x/", fromRevision: rev)) { updates in
                try await updates.events(2)
            }
            #expect(events.map(\.kind) == [.put, .delete])
            #expect(events.map(\.kv.key) == ["/x/agent", "/x/agent"])
            #expect(try await etcd.get("/x/agent") == nil)
            #expect(try await etcd.timeToLive(lease) == nil)
        }
    }

    @Test func keepAliveHoldsALeaseUntilItIsRevoked() async throws {
        try await withEtcd { _, etcd in
            let lease = try await etcd.grantLease(ttl: 2)
            let rev = try await etcd.put("/ka/agent", "alive", lease: lease)
            let keeper = Task { try await etcd.keepAlive(lease, every: .milliseconds(500)) }
            defer { keeper.cancel() }

            // Twice the TTL passes with no event on the key: the lease was kept alive. (A sleep,
            // because the passing of time is what is tested; the watch would end it early.)
            let watcher = Task { () -> WatchUpdate? in
                for try await update in etcd.watch(key: "/ka/agent", fromRevision: rev + 1) { return update }
                return nil
            }
            try await Task.sleep(for: .milliseconds(4500))
            watcher.cancel()
            let quiet = try await watcher.value
            #expect(quiet == nil)
            #expect(try await etcd.get("/ka/agent")?.string == "alive")
            let left = try #require(try await etcd.timeToLive(lease))
            #expect(left >= 1)

            try await etcd.revokeLease(lease)
            await #expect(throws: EtcdError.leaseNotFound) { try await keeper.value }
        }
    }

    @Test func keepAliveRidesOutARestartAndGivesUpAfterTheTTL() async throws {
        try await withEtcd { server, etcd in
            let lease = try await etcd.grantLease(ttl: 3)
            try await etcd.put("/kr/agent", "alive", lease: lease)
            let keeper = Task { try await etcd.keepAlive(lease, every: .milliseconds(500)) }
            defer { keeper.cancel() }

            // Down for about a second: renewals fail, are retried, and the lease survives.
            server.stop()
            try await server.restart()
            #expect(try await etcd.get("/kr/agent")?.lease == lease)

            // Down for good: after one TTL without a renewal the keeper gives up.
            let down = ContinuousClock.now
            server.kill()
            do {
                try await keeper.value
                Issue.record("keepAlive returned without being cancelled")
            } catch let error as EtcdError {
                #expect(error == .leaseNotFound)
                #expect(error.description.contains("could not be renewed"))
            }
            let waited = ContinuousClock.now - down
            #expect(waited >= .seconds(2) && waited < .seconds(6), "gave up after \(waited)")
        }
    }

    @Test func keepAliveReturnsWhenCancelled() async throws {
        try await withEtcd { _, etcd in
            let lease = try await etcd.grantLease(ttl: 5)
            let keeper = Task { try await etcd.keepAlive(lease, every: .milliseconds(200)) }
            keeper.cancel()
            try await keeper.value
            #expect(try await etcd.timeToLive(lease) != nil)
        }
    }
}
