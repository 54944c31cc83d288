import Etcd
import Foundation
import KilnCore
import KilnTestSupport
@testable import Scheduler
import Testing

/// A pruned build's entry in the reuse index goes with it (docs/reuse.md); an entry a newer
/// build of the same inputs wrote stays.
@Suite("The pruner and the reuse index", .serialized)
struct PrunerReuseTests {
    static func key(_ digit: Character) -> String { "sha256:" + String(repeating: digit, count: 64) }

    /// Gives a build written by `RetentionFarm.build` the inputs `key` and its entry in the index.
    static func reusable(_ farm: RetentionFarm, _ id: String, key: String, entry: Bool = true) async throws {
        var b = try KilnJSON.decode(Build.self, from: try #require(try await farm.etcd.get(farm.keys.build(id))).value)
        b.inputs = BuildInputs(key: key, tree: String(repeating: "a", count: 40), buildImage: Self.key("b"), baseImages: [], protected: true)
        b.image = "127.0.0.1:5000/shop:\(id.suffix(7))"
        b.digest = Self.key("d")
        _ = try await farm.etcd.put(farm.keys.build(id), try KilnJSON.encode(b))
        if entry, let (k, e) = b.reuseEntry(keys: farm.keys) { _ = try await farm.etcd.put(k, try KilnJSON.encode(e)) }
    }

    @Test func aPrunedBuildsEntryGoesAndANewerOnesStays() async throws {
        try await withRetentionFarm { farm in
            try await farm.project("shop", BuildRetention(keepBuilds: 1, keepDays: 1))
            let old = try await farm.build("shop", age: 100)
            try await Self.reusable(farm, old, key: Self.key("1"))
            // Two old builds of one key: the newer wrote the entry last, and is pruned too.
            let replaced = try await farm.build("shop", age: 99)
            try await Self.reusable(farm, replaced, key: Self.key("2"))
            let newer = try await farm.build("shop", age: 98)
            try await Self.reusable(farm, newer, key: Self.key("2"))
            // The newest stays, and so does its entry, which names the same key as an old one.
            let kept = try await farm.build("shop", age: 0.5)
            try await Self.reusable(farm, kept, key: Self.key("1"))

            let report = try await farm.pruner().pass(fence: [])
            #expect(report.builds == 3, "\(report)")
            let entries = try await farm.etcd.range(prefix: farm.keys.reuseIndex).kvs
            #expect(entries.map(\.key) == [farm.keys.reuseEntry(project: "shop", key: Self.key("1"), protected: true)])
            #expect(try KilnJSON.decode(ReuseEntry.self, from: entries[0].value).build == kept)
        }
    }
}
