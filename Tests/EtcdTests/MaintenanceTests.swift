import Etcd
import Foundation
import KilnTestSupport
import LocalFarm
import Testing

/// etcd's compaction, quota, alarms and defragmentation, against real etcd.
@Suite("etcd maintenance", .serialized)
struct MaintenanceTests {
    @Test func theEtcdOfTheTestsAndKilnUpCompactsItsHistoryByItself() async throws {
        let dir = try TempDir("etcd-compaction")
        // The standard settings with a retention short enough to see: etcd compacts every 2 s
        // to the revision it had 2 s earlier.
        let server = try await EtcdServer.start(dataDir: dir.path("data"), maintenance: .init(compactionRetention: "2s"))
        defer { server.kill() }
        let client = EtcdClient(endpoint: server.endpoint)
        let first = try await client.put("/c/k", "old")
        try await client.put("/c/k", "new")
        // Nothing tells a client that etcd compacted: ask the history from the first write until
        // it is gone (a watch from a compacted revision reads the keys again and starts with a reset).
        try await withTimeout(.seconds(30), waitingFor: "etcd to compact revision \(first) by itself") {
            while true {
                var watch = client.watch(prefix: "/c/", fromRevision: first).makeAsyncIterator()
                if case .reset? = try await watch.next() { return }
                try await Task.sleep(for: .milliseconds(500))
            }
        }
        #expect(server.maintenance.arguments.contains("--auto-compaction-mode"))
    }

    @Test func settingsAreCheckedBeforeEtcdStarts() throws {
        #expect(EtcdServer.Maintenance.standard.arguments == ["--auto-compaction-mode", "periodic", "--auto-compaction-retention", "5m"])
        #expect(EtcdServer.Maintenance(quotaBytes: 256 << 20).arguments.suffix(2) == ["--quota-backend-bytes", "268435456"])
        #expect(EtcdServer.Maintenance(compactionMode: nil).arguments.isEmpty)
        for good in ["5m", "90s", "1h30m", "1h"] {
            #expect(throws: Never.self, "\(good)") { try EtcdServer.Maintenance(compactionRetention: good).validate() }
        }
        // A bare number is hours to etcd: 5 would keep five hours, not five minutes.
        for bad in ["5", "0m", "m", "5 m", "-5m", "5d", ""] {
            let error = #expect(throws: FarmError.self, "\(bad)") { try EtcdServer.Maintenance(compactionRetention: bad).validate() }
            #expect(error?.description.contains("5m") == true)
        }
        #expect(throws: Never.self) { try EtcdServer.Maintenance(compactionMode: .revision, compactionRetention: "10000").validate() }
        #expect(throws: FarmError.self) { try EtcdServer.Maintenance(compactionMode: .revision, compactionRetention: "5m").validate() }
        #expect(throws: FarmError.self) { try EtcdServer.Maintenance(quotaBytes: 1000).validate() }
        #expect(throws: FarmError.self) { try EtcdServer.Maintenance(quotaBytes: 64 << 30).validate() }
    }

    @Test func fullEtcdRaisesNOSPACEWhichIsReportedFreedAndDisarmed() async throws {
        let dir = try TempDir("etcd-quota")
        let quota: Int64 = 16 << 20
        let server = try await EtcdServer.start(dataDir: dir.path("data"), maintenance: .init(compactionMode: nil, quotaBytes: quota))
        defer { server.kill() }
        let client = EtcdClient(endpoint: server.endpoint)
        #expect(try await client.quotaBytes(of: server.endpoint) == quota, "etcd reports its quota in its metrics")
        #expect(try await client.alarms().isEmpty)

        // 512 KiB values on one key: every put keeps the old one in the history.
        let value = [UInt8](repeating: UInt8(ascii: "x"), count: 512 << 10)
        var refusal: EtcdError?
        for _ in 0..<200 {
            do {
                try await client.put("/fill", bytes: value)
            } catch let error as EtcdError {
                refusal = error
                break
            }
        }
        let error = try #require(refusal, "etcd took 100 MiB under a 16 MiB quota")
        #expect(error == .noSpace, "\(error)")
        #expect(!error.isTransient)
        #expect(error.message.contains("docs/etcd-operations.md"))
        let alarms = try await client.alarms()
        #expect(alarms.map(\.kind) == ["NOSPACE"])
        let status = try await client.memberStatus(of: server.endpoint)
        #expect(status.dbSizeBytes >= quota - (1 << 20), "\(status)")
        #expect(status.isLeader)
        #expect(alarms.first?.memberID == status.memberID)
        #expect(status.errors.contains { $0.contains("NOSPACE") })
        // Reads and deletes still work while the alarm is raised.
        #expect(try await client.get("/fill") != nil)

        // Free space: compact the history away, defragment, disarm; writes work again.
        let revision = try await client.status()
        try await client.delete("/fill")
        try await client.compact(revision: revision)
        try await client.defragment(member: server.endpoint)
        let after = try await client.memberStatus(of: server.endpoint)
        #expect(after.dbSizeBytes < status.dbSizeBytes / 4, "defragmentation gave the space back: \(after.dbSizeBytes) of \(status.dbSizeBytes)")
        #expect(try await client.disarm(alarms[0]).map(\.kind) == ["NOSPACE"])
        #expect(try await client.alarms().isEmpty)
        try await client.put("/after", "works")
        #expect(try await client.get("/after")?.string == "works")
    }

    @Test func defragmentationNeedsRootButStatusAndAlarmsAnswerAnyone() async throws {
        try await withAuthEtcd { server, root, user in
            let u = try await user("u1", [EtcdPermission(.readWrite, key: "/a/x")])
            #expect(try await u.memberStatus(of: server.endpoint).dbSizeBytes > 0)
            #expect(try await u.alarms().isEmpty)
            let refused = await #expect(throws: EtcdError.self) { try await u.defragment(member: server.endpoint) }
            #expect(refused == .permissionDenied, "\(String(describing: refused))")
            #expect(refused?.message.contains("root") == true)
            try await root.defragment(member: server.endpoint)
        }
    }
}
