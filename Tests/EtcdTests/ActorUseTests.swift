import Etcd
import Testing

/// A view of a prefix kept by an actor, the way the scheduler keeps its agents: checks that
/// a watch can be iterated from actor-isolated code under strict concurrency.
actor PrefixView {
    private(set) var values: [String: String] = [:]
    private(set) var revision: Int64 = 0

    func follow(_ watch: EtcdWatch, until done: @Sendable ([String: String]) -> Bool) async throws {
        for try await update in watch {
            switch update {
            case .reset(let kvs, let revision):
                values = Dictionary(uniqueKeysWithValues: kvs.map { ($0.key, $0.string) })
                self.revision = revision
            case .events(let events, let revision):
                for event in events {
                    switch event.kind {
                    case .put: values[event.kv.key] = event.kv.string
                    case .delete: values[event.kv.key] = nil
                    }
                }
                self.revision = revision
            }
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
            let view = PrefixView()
            async let following: Void = view.follow(etcd.watch(prefix: "/v/", fromRevision: first)) { $0["/v/c"] == "4" && $0["/v/b"] == nil }
            try await etcd.delete("/v/b")
            let last = try await etcd.put("/v/c", "4")
            try await following
            #expect(await view.values == ["/v/a": "3", "/v/c": "4"])
            #expect(await view.revision == last)
        }
    }
}
