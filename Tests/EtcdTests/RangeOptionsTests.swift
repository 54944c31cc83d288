import Etcd
import KilnTestSupport
import Testing

@Suite("etcd range options")
struct RangeOptionsTests {
    @Test func countsKeysOnlyOrdersAndLimitsAsAsked() async throws {
        try await withEtcd { _, etcd in
            for key in ["/r/c", "/r/a", "/r/b", "/r/d", "/r0", "/q"] { try await etcd.put(key, "value of \(key)") }
            #expect(try await etcd.count(prefix: "/r/") == 4)
            #expect(try await etcd.count(prefix: "/none/") == 0)
            let counted = try await etcd.range(key: "/r/b", rangeEnd: "/r/d", options: .init(countOnly: true))
            #expect(counted.count == 2 && counted.kvs.isEmpty)

            let keys = try await etcd.range(prefix: "/r/", options: .init(limit: 2, keysOnly: true))
            #expect(keys.kvs.map(\.key) == ["/r/a", "/r/b"] && keys.kvs.allSatisfy { $0.value.isEmpty })
            #expect(keys.more && keys.count == 4)
            #expect(keys.kvs.allSatisfy { $0.modRevision > 0 })

            let newest = try await etcd.range(prefix: "/r/", options: .init(limit: 3, order: .descending))
            #expect(newest.kvs.map(\.key) == ["/r/d", "/r/c", "/r/b"])
            #expect(newest.kvs.first?.string == "value of /r/d")
            #expect(newest.more)
            let ascending = try await etcd.range(prefix: "/r/", options: .init(order: .ascending))
            #expect(ascending.kvs.map(\.key) == ["/r/a", "/r/b", "/r/c", "/r/d"] && !ascending.more)
            #expect(EtcdClient.prefixEnd("/r/") == "/r0")
        }
    }
}
