import Etcd
import KilnTestSupport
import Testing

/// A view of a prefix kept by an actor, the way the scheduler keeps its agents: checks that
/// a watch and a follow can be iterated from actor-isolated code under strict concurrency.
actor ViewOwner {
    private(set) var view = PrefixView()

    var values: [String: String] { view.kvs.mapValues(\.string) }

    func follow<Updates: AsyncSequence>(_ updates: Updates, until done: @Sendable ([String: String]) -> Bool) async throws
    where Updates.Element == WatchUpdate {
        for try await update in updates {
            view.apply(update)
            if done(values) { return }
        }
    }
}

@Suite("etcd watch in an actor")
struct ActorUseTests {
    @Test func anActorRebuildsItsViewFromAResetAndEvents() async throws {
        try await withEtcd { _, etcd in
            let first = try await etcd.put("/v/a", "1")
            try await etcd.put("/v/b", "2")
            try await etcd.compact(revision: try await etcd.put("/v/a", "3"))
            let owner = ViewOwner()
            async let following: Void = owner.follow(etcd.watch(prefix: "/v/", fromRevision: first)) { $0["/v/c"] == "4" && $0["/v/b"] == nil }
            try await etcd.delete("/v/b")
            let last = try await etcd.put("/v/c", "4")
            try await following
            #expect(await owner.values == ["/v/a": "3", "/v/c": "4"])
            #expect(await owner.view.revision == last)
        }
    }

    @Test func anActorFollowsAPrefix() async throws {
        try await withEtcd { _, etcd in
            try await etcd.put("/y/a", "1")
            let owner = ViewOwner()
            async let following: Void = owner.follow(etcd.follow(prefix: "/y/")) { $0["/y/b"] == "2" }
            let last = try await etcd.put("/y/b", "2")
            try await following
            #expect(await owner.values == ["/y/a": "1", "/y/b": "2"])
            #expect(await owner.view.revision == last)
        }
    }
}
