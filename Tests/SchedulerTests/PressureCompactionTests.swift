import Etcd
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
@testable import Scheduler
import Testing

/// When the scheduler compacts a filling etcd itself (``PressureCompaction``), and that it does.
@Suite("Compaction when etcd fills")
struct PressureCompactionTests {
    let t0 = Date(timeIntervalSince1970: 1_000_000)

    func look(inUse: Int64, quota: Int64 = 100 << 20, revision: Int64) -> EtcdLook {
        let endpoint = "http://127.0.0.1:2379"
        return EtcdLook(members: [EtcdLook.Member(endpoint: endpoint, status: EtcdMemberStatus(
            endpoint: endpoint, memberID: "1", leaderID: "1", version: "3.4.23", dbSizeBytes: inUse, dbSizeInUseBytes: inUse, revision: revision),
            quotaBytes: quota)], alarms: [])
    }

    @Test func underHalfTheQuotaNothingIsCompacted() {
        var p = PressureCompaction(threshold: 0.5, minHistory: 30)
        #expect(p.observe(look(inUse: 10 << 20, revision: 100), at: t0) == nil)
        #expect(p.observe(look(inUse: 49 << 20, revision: 900), at: t0 + 60) == nil)
    }

    @Test func pastHalfItCompactsAtTheNewestMarkOldEnoughOnceAndThenAtNewerOnes() {
        var p = PressureCompaction(threshold: 0.5, minHistory: 30)
        // Full at once, but no look is 30 s old yet: the history is kept.
        #expect(p.observe(look(inUse: 60 << 20, revision: 100), at: t0) == nil)
        #expect(p.observe(look(inUse: 70 << 20, revision: 200), at: t0 + 10) == nil)
        #expect(p.observe(look(inUse: 80 << 20, revision: 300), at: t0 + 20) == nil)
        // 35 s on: the look of t0 + 0 is the newest that is 30 s old.
        let first = p.observe(look(inUse: 85 << 20, revision: 400), at: t0 + 35)
        #expect(first?.revision == 100)
        p.compacted(at: 100)
        // Same marks: not again.
        #expect(p.observe(look(inUse: 85 << 20, revision: 400), at: t0 + 36) == nil)
        // Later, the look of t0 + 20 is old enough: history before revision 300 goes.
        #expect(p.observe(look(inUse: 85 << 20, revision: 500), at: t0 + 52)?.revision == 300)
    }

    @Test func aThresholdOfZeroNeverCompacts() {
        var p = PressureCompaction(threshold: 0, minHistory: 1)
        _ = p.observe(look(inUse: 99 << 20, revision: 100), at: t0)
        #expect(p.observe(look(inUse: 99 << 20, revision: 200), at: t0 + 60) == nil)
    }

    @Test func aMemberThatDoesNotAnswerCountsForNeither() {
        var p = PressureCompaction(threshold: 0.5, minHistory: 1)
        let down = EtcdLook(members: [EtcdLook.Member(endpoint: "http://127.0.0.1:1", status: nil, quotaBytes: 100 << 20, error: "refused")], alarms: nil)
        #expect(p.observe(down, at: t0) == nil)
        #expect(p.observe(down, at: t0 + 60) == nil)
        #expect(p.marks.isEmpty)
    }

    /// A real etcd with a 16 MiB quota and no compaction of its own: 6 MiB of history on one
    /// key puts it past a quarter; the scheduler's health check compacts it, keeping 1 s.
    @Test func theHealthCheckCompactsARealEtcdPastItsShareOfTheQuota() async throws {
        try await withEtcd(maintenance: .init(compactionMode: nil, quotaBytes: 16 << 20)) { server, etcd in
            let health = EtcdHealth(etcd: etcd, interval: .seconds(1), compactAt: 0.25, keepHistory: .seconds(1), logger: .init(label: "test"))
            let value = String(repeating: "x", count: 1 << 20)
            for _ in 0..<6 { _ = try await etcd.put("/kiln/test/big", value) }
            let marked = try await etcd.status()
            await health.check()  // the first mark: nothing is a second old yet
            #expect(await health.metricLines().contains("kiln_etcd_pressure_compactions_total 0"))
            try await Task.sleep(for: .milliseconds(1100))
            _ = try await etcd.put("/kiln/test/big", "small")
            await health.check()
            #expect(await health.metricLines().contains("kiln_etcd_pressure_compactions_total 1"))
            // etcd says the history before the mark is gone…
            await #expect(throws: EtcdError.self) { try await etcd.compact(revision: marked - 1) }
            // …and its in-use size falls back under a quarter of the quota.
            var inUse: Int64 = .max
            // (bbolt frees the pages of the compacted revisions at a later commit: keep writing.)
            for _ in 0..<50 where inUse >= 4 << 20 {
                _ = try await etcd.put("/kiln/test/small", "\(inUse)")
                inUse = try await etcd.memberStatus(of: server.endpoint).dbSizeInUseBytes
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(inUse < 4 << 20, "in use after the compaction: \(inUse) bytes")
        }
    }
}
