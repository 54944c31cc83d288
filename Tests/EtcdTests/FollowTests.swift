import Etcd
import KilnTestSupport
import LocalFarm
import Testing

@Suite("etcd follow")
struct FollowTests {
    @Test func yieldsTheWholePrefixThenItsChanges() async throws {
        try await withEtcd { _, etcd in
            try await etcd.put("/f/a", "1")
            try await etcd.put("/f/b", "2")
            try await etcd.put("/f0", "outside")
            let read = try await etcd.status()
            let (first, events) = try await consuming(etcd.follow(prefix: "/f/")) { updates in
                let first = try await updates.next()
                try await etcd.put("/f/c", "3")
                try await etcd.delete("/f/a")
                return (first, try await updates.events(2))
            }
            guard case .reset(let kvs, let revision) = first else {
                Issue.record("the first update is not the whole prefix: \(first)")
                return
            }
            #expect(kvs.map(\.key) == ["/f/a", "/f/b"])
            #expect(kvs.map(\.string) == ["1", "2"])
            #expect(revision == read)
            #expect(events.map(\.kind) == [.put, .delete])
            #expect(events.map(\.kv.key) == ["/f/c", "/f/a"])
            #expect(events.map(\.kv.modRevision) == [read + 1, read + 2])
        }
    }

    @Test func readsThePrefixOnceEtcdAnswers() async throws {
        try await withEtcd { server, etcd in
            let written = try await etcd.put("/u/a", "1")
            server.stop()
            let first = try await consuming(etcd.follow(prefix: "/u/")) { updates in
                // The follow reads (and fails) while etcd starts again.
                try await server.restart()
                return try await updates.next()
            }
            guard case .reset(let kvs, let revision) = first else {
                Issue.record("expected the whole prefix, got \(first)")
                return
            }
            #expect(kvs.map(\.key) == ["/u/a"])
            #expect(revision == written)
        }
    }

    @Test func aCompactionWhileDisconnectedYieldsTheWholePrefixAgain() async throws {
        try await withEtcd { server, etcd in
            try await etcd.put("/g/a", "1")
            var updates = etcd.follow(prefix: "/g/").makeAsyncIterator()
            guard case .reset(let before, _) = await updates.next() else {
                Issue.record("the first update is not the whole prefix")
                return
            }
            #expect(before.map(\.key) == ["/g/a"])
            let put = try await etcd.put("/g/b", "2")
            #expect(await updates.next()?.revision == put)

            // While this iterator is not reading, etcd restarts and history it has not seen
            // is compacted: it cannot go on from where it was.
            try await server.restart()
            try await etcd.delete("/g/a")
            let compactedAt = try await etcd.put("/g/c", "3")
            try await etcd.compact(revision: compactedAt)

            #expect(await updates.next() == .reset(try await etcd.range(prefix: "/g/").kvs, revision: compactedAt))
            let last = try await etcd.put("/g/d", "4")
            guard case .events(let events, let revision) = await updates.next() else {
                Issue.record("expected events after the reset")
                return
            }
            #expect(events.map(\.kv.key) == ["/g/d"])
            #expect(revision == last)
        }
    }

    @Test func cancellingEndsItAndClosesItsConnection() async throws {
        try await withEtcd(timeout: .seconds(20)) { server, etcd in
            let (seen, signal) = AsyncStream.makeStream(of: WatchUpdate.self)
            let follower = Task {
                for await update in etcd.follow(prefix: "/z/") { signal.yield(update) }
                signal.finish()
            }
            var updates = seen.makeAsyncIterator()
            _ = await updates.next()
            try await etcd.put("/z/a", "1")
            // An event came, so the watch is open.
            _ = await updates.next()
            #expect(try await openWatchers(server) == 1)
            follower.cancel()
            await follower.value
            #expect(await updates.next() == nil)
            // etcd counts the watcher until the HTTP connection is closed.
            #expect(try await waitForWatchers(server, toBe: 0))
        }
    }
}
