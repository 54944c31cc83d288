import Etcd
import KilnTestSupport
import LocalFarm
import Testing

@Suite("etcd kv and txn")
struct KVTests {
    @Test func getPutAndRangeOfOneKey() async throws {
        try await withEtcd { _, etcd in
            #expect(try await etcd.get("/k/missing") == nil)
            let rev1 = try await etcd.put("/k/a", "one")
            let rev2 = try await etcd.put("/k/a", "two")
            #expect(rev2 == rev1 + 1)
            let kv = try #require(try await etcd.get("/k/a"))
            #expect(kv.key == "/k/a")
            #expect(kv.string == "two")
            #expect(kv.createRevision == rev1)
            #expect(kv.modRevision == rev2)
            #expect(kv.version == 2)
            #expect(kv.lease == 0)

            let single = try await etcd.range(key: "/k/a", rangeEnd: nil)
            #expect(single.kvs.map(\.string) == ["two"])
            #expect(single.count == 1)
            #expect(single.revision == rev2)

            // Bytes that are not UTF-8 survive the base64 round trip.
            try await etcd.put("/k/bin", bytes: [0, 0xff, 0x80, 10])
            #expect(try await etcd.get("/k/bin")?.value == [0, 0xff, 0x80, 10])
            #expect(try await etcd.status() == rev2 + 1)
        }
    }

    @Test func rangeOfAPrefixIsSortedAndExcludesNeighbours() async throws {
        try await withEtcd { _, etcd in
            let empty = try await etcd.range(prefix: "/p/")
            #expect(empty.kvs.isEmpty)
            #expect(empty.count == 0)
            #expect(empty.revision >= 1)

            for key in ["/p/c", "/p/a", "/p/b/deep", "/p0", "/p", "/o/x"] {
                try await etcd.put(key, key)
            }
            let all = try await etcd.range(prefix: "/p/")
            #expect(all.kvs.map(\.key) == ["/p/a", "/p/b/deep", "/p/c"])
            #expect(all.count == 3)
            #expect(!all.more)

            let limited = try await etcd.range(prefix: "/p/", limit: 2)
            #expect(limited.kvs.map(\.key) == ["/p/a", "/p/b/deep"])
            #expect(limited.count == 3)
            #expect(limited.more)

            let explicit = try await etcd.range(key: "/p/b", rangeEnd: "/p/d")
            #expect(explicit.kvs.map(\.key) == ["/p/b/deep", "/p/c"])
            let toEnd = try await etcd.range(key: "/p0", rangeEnd: "\0")
            #expect(toEnd.kvs.map(\.key) == ["/p0"])
        }
    }

    @Test func deleteOneKeyAndAPrefix() async throws {
        try await withEtcd { _, etcd in
            for key in ["/d/a", "/d/b", "/d/c/x", "/d0"] { try await etcd.put(key, "v") }
            #expect(try await etcd.delete("/d/a") == 1)
            #expect(try await etcd.delete("/d/a") == 0)
            #expect(try await etcd.delete(prefix: "/d/") == 2)
            #expect(try await etcd.range(prefix: "/d/").kvs.isEmpty)
            #expect(try await etcd.get("/d0")?.string == "v")
        }
    }

    @Test func txnCreateIfAbsent() async throws {
        try await withEtcd { _, etcd in
            let create = Txn(
                compare: [.createRevision("/t/lock", .equal, 0)],
                success: [.put("/t/lock", "first")],
                failure: [.get("/t/lock")]
            )
            let first = try await etcd.txn(create)
            #expect(first.succeeded)
            #expect(first.responses == [.put])

            var second = create
            second.success = [.put("/t/lock", "second")]
            let result = try await etcd.txn(second)
            #expect(!result.succeeded)
            #expect(result.revision == first.revision)
            #expect(result.responses.first?.kvs.map(\.string) == ["first"])
            #expect(try await etcd.get("/t/lock")?.string == "first")
        }
    }

    @Test func txnOnModRevisionValueAndVersion() async throws {
        try await withEtcd { _, etcd in
            let rev = try await etcd.put("/t/build", "queued")
            try await etcd.put("/t/other/1", "x")
            try await etcd.put("/t/other/2", "y")

            // Guarded by the revision we read: succeeds, and the get inside sees the txn's own write.
            let moved = try await etcd.txn(Txn(
                compare: [.modRevision("/t/build", .equal, rev), .value("/t/build", .equal, "queued")],
                success: [.put("/t/build", "assigned"), .get("/t/build"), .deletePrefix("/t/other/")],
                failure: [.get("/t/build")]
            ))
            #expect(moved.succeeded)
            #expect(moved.responses.count == 3)
            #expect(moved.responses[1].kvs.map(\.string) == ["assigned"])
            #expect(moved.responses[2] == .delete(deleted: 2))

            // The same guard again is stale now: the failure branch runs and shows the current value.
            let stale = try await etcd.txn(Txn(
                compare: [.modRevision("/t/build", .equal, rev)],
                success: [.delete("/t/build")],
                failure: [.get("/t/build")]
            ))
            #expect(!stale.succeeded)
            #expect(stale.responses.first?.kvs.first?.string == "assigned")

            let byValue = try await etcd.txn(Txn(
                compare: [.value("/t/build", .notEqual, "assigned")],
                success: [.delete("/t/build")]
            ))
            #expect(!byValue.succeeded)
            #expect(byValue.responses.isEmpty)

            let byVersion = try await etcd.txn(Txn(
                compare: [.version("/t/build", .greater, 1)],
                success: [.delete("/t/build"), .getPrefix("/t/")]
            ))
            #expect(byVersion.succeeded)
            #expect(byVersion.responses == [.delete(deleted: 1), .get(kvs: [], count: 0)])
            #expect(try await etcd.get("/t/build") == nil)
        }
    }

    @Test func errorsNameTheEndpointAndKind() async throws {
        try await withEtcd { server, etcd in
            await #expect(throws: EtcdError.compacted) {
                let rev = try await etcd.put("/e/a", "1")
                try await etcd.put("/e/a", "2")
                try await etcd.compact(revision: rev + 1)
                try await etcd.compact(revision: rev)
            }
            server.kill()
            do {
                _ = try await etcd.get("/e/a")
                Issue.record("a stopped etcd answered")
            } catch let error as EtcdError {
                #expect(error == .unreachable)
                #expect(error.description.contains(server.endpoint))
            }
        }
    }

    @Test func serverRefusesATakenPort() async throws {
        try await withEtcd { server, _ in
            let error = await #expect(throws: FarmError.self) {
                _ = try await EtcdServer.start(dataDir: server.dataDir.appendingPathExtension("second"), clientPort: server.clientPort)
            }
            #expect(error?.description.contains("port \(server.clientPort)") == true)
            #expect(error?.description.contains("in use") == true)
        }
    }
}
