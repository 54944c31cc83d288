import Etcd
import KilnTestSupport
import LocalFarm
import Testing

@Suite("etcd watch")
struct WatchTests {
    @Test func putsAndDeletesWithPreviousValues() async throws {
        try await withEtcd { _, etcd in
            let start = try await etcd.status() + 1
            let events = try await consuming(etcd.watch(prefix: "/w/", fromRevision: start, prevKV: true)) { updates in
                try await etcd.put("/w/a", "1")
                try await etcd.put("/w/a", "2")
                try await etcd.put("/w0", "outside")
                try await etcd.delete("/w/a")
                try await etcd.put("/w/b", "3")
                return try await updates.events(4)
            }
            #expect(events.map(\.kind) == [.put, .put, .delete, .put])
            #expect(events.map(\.kv.key) == ["/w/a", "/w/a", "/w/a", "/w/b"])
            #expect(events.map(\.kv.string) == ["1", "2", "", "3"])
            #expect(events.map { $0.prevKV?.string } == [nil, "1", "2", nil])
            #expect(events.map(\.kv.modRevision) == [start, start + 1, start + 3, start + 4])
        }
    }

    @Test func watchOfOneKeyAndWithoutPreviousValues() async throws {
        try await withEtcd { _, etcd in
            let start = try await etcd.put("/k/x", "0")
            let update = try await consuming(etcd.watch(key: "/k/x", fromRevision: start + 1)) { updates in
                try await etcd.put("/k/xy", "not this key")
                _ = try await etcd.txn(Txn(success: [.put("/k/x", "1"), .put("/k/y", "no")]))
                return try await updates.next()
            }
            guard case .events(let events, let revision) = update else {
                Issue.record("expected events, got \(update)")
                return
            }
            #expect(events.map(\.kv.key) == ["/k/x"])
            #expect(events.first?.prevKV == nil)
            #expect(revision == start + 2)
        }
    }

    @Test func resumesAfterEtcdRestartsWithoutLosingOrRepeatingEvents() async throws {
        try await withEtcd { server, etcd in
            let start = try await etcd.status() + 1
            let events = try await consuming(etcd.watch(prefix: "/r/", fromRevision: start)) { updates in
                var events: [WatchEvent] = []
                for i in 1...3 { try await etcd.put("/r/a\(i)", "\(i)") }
                events += try await updates.events(3)

                // Graceful stop: the stream ends with an error line; the watch backs off
                // while etcd is down and these puts land before it is back.
                server.stop()
                try await server.restart()
                for i in 1...3 { try await etcd.put("/r/b\(i)", "\(i)") }
                events += try await updates.events(3)

                // A crash: the connection just drops.
                server.kill()
                try await server.restart()
                for i in 1...3 { try await etcd.put("/r/c\(i)", "\(i)") }
                try await etcd.delete("/r/a1")
                events += try await updates.events(4)

                // Nothing is delivered twice: the next update is exactly the next write.
                try await etcd.put("/r/d", "last")
                events += try await updates.events(1)
                return events
            }
            #expect(events.map(\.kv.key) == [
                "/r/a1", "/r/a2", "/r/a3", "/r/b1", "/r/b2", "/r/b3", "/r/c1", "/r/c2", "/r/c3", "/r/a1", "/r/d",
            ])
            #expect(events.last?.kind == .put)
            #expect(events[9].kind == .delete)
            #expect(events.map(\.kv.modRevision) == Array(start..<(start + 11)))
        }
    }

    @Test func startingBeforeACompactionYieldsAResetThenEvents() async throws {
        try await withEtcd { _, etcd in
            let first = try await etcd.put("/c/a", "1")
            try await etcd.put("/c/b", "1")
            try await etcd.put("/c/a", "2")
            try await etcd.delete("/c/b")
            try await etcd.put("/c/c", "1")
            try await etcd.put("/c0", "outside")
            let current = try await etcd.status()
            try await etcd.compact(revision: current)

            let (reset, events) = try await consuming(etcd.watch(prefix: "/c/", fromRevision: first)) { updates in
                let reset = try await updates.next()
                try await etcd.put("/c/d", "1")
                return (reset, try await updates.events(1))
            }
            #expect(reset == .reset(try await etcd.range(prefix: "/c/").kvs.filter { $0.key != "/c/d" }, revision: current))
            guard case .reset(let kvs, _) = reset else { return }
            #expect(kvs.map(\.key) == ["/c/a", "/c/c"])
            #expect(kvs.map(\.string) == ["2", "1"])
            #expect(events.map(\.kv.key) == ["/c/d"])
            #expect(events.first?.kv.modRevision == current + 1)
        }
    }

    @Test func resyncsWhenItsResumeRevisionWasCompactedWhileDisconnected() async throws {
        try await withEtcd { server, etcd in
            let start = try await etcd.put("/s/a", "1")
            var updates = etcd.watch(prefix: "/s/", fromRevision: start).makeAsyncIterator()
            let first = try await updates.next()
            #expect(first == .events([WatchEvent(kind: .put, kv: try #require(try await etcd.get("/s/a")))], revision: start))

            // While this iterator is not reading, etcd restarts, the range changes and its
            // history is compacted: resuming from start + 1 is impossible.
            try await server.restart()
            try await etcd.put("/s/b", "2")
            try await etcd.delete("/s/a")
            let compactedAt = try await etcd.put("/s/c", "3")
            try await etcd.compact(revision: compactedAt)

            let reset = try await updates.next()
            #expect(reset == .reset(try await etcd.range(prefix: "/s/").kvs, revision: compactedAt))
            try await etcd.put("/s/d", "4")
            guard case .events(let events, let revision) = try await updates.next() else {
                Issue.record("expected events after the reset")
                return
            }
            #expect(events.map(\.kv.key) == ["/s/d"])
            #expect(revision == compactedAt + 1)
        }
    }

    @Test(arguments: [false, true])
    func endingIterationClosesTheStream(byCancelling: Bool) async throws {
        try await withEtcd(timeout: .seconds(20)) { server, etcd in
            let start = try await etcd.put("/z/a", "1")
            let (seen, signal) = AsyncStream.makeStream(of: Void.self)
            let watcher = Task {
                for try await _ in etcd.watch(prefix: "/z/", fromRevision: start) {
                    signal.yield()
                    if !byCancelling { break }
                }
            }
            var iterator = seen.makeAsyncIterator()
            _ = await iterator.next()
            if byCancelling {
                #expect(try await openWatchers(server) == 1)
                watcher.cancel()
            }
            // Returns (rather than throwing) once cancelled; a leaked stream would hang here.
            try await watcher.value
            // etcd counts the watcher until the HTTP connection is closed.
            #expect(try await waitForWatchers(server, toBe: 0))
        }
    }

    @Test func compactedStartClosesItsFirstStream() async throws {
        try await withEtcd(timeout: .seconds(20)) { server, etcd in
            let first = try await etcd.put("/q/a", "1")
            let now = try await etcd.put("/q/a", "2")
            try await etcd.compact(revision: now)
            var updates = etcd.watch(prefix: "/q/", fromRevision: first).makeAsyncIterator()
            #expect(try await updates.next()?.revision == now)
            // The compacted stream, which etcd leaves open, was closed (the next one opens
            // only when the iterator is asked for more).
            #expect(try await waitForWatchers(server, toBe: 0))
        }
    }
}
