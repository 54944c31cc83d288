import Etcd
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
@testable import Scheduler
import Testing

/// How the scheduler judges etcd's size and alarms (``EtcdHealthState``), without etcd.
@Suite("etcd health, without etcd")
struct EtcdHealthStateTests {
    static let quota: Int64 = 100 << 20
    let t0 = Date(timeIntervalSince1970: 1_000_000)

    func member(_ endpoint: String = "http://127.0.0.1:2379", id: String = "1", db: Int64, inUse: Int64? = nil) -> EtcdLook.Member {
        EtcdLook.Member(endpoint: endpoint, status: EtcdMemberStatus(endpoint: endpoint, memberID: id, leaderID: "1", version: "3.4.23",
                                                                     dbSizeBytes: db, dbSizeInUseBytes: inUse ?? db, revision: 5),
                        quotaBytes: Self.quota)
    }

    @Test func wellUnderTheQuotaIsOKAndLogsNothing() {
        var state = EtcdHealthState()
        #expect(state.status.level == .unknown, "before the first look")
        #expect(state.observe(EtcdLook(members: [member(db: 20 << 20)], alarms: []), at: t0) == nil)
        #expect(state.status.level == .ok)
        #expect(state.status.warning == nil)
        #expect(state.status.members.first?.dbBytes == 20 << 20)
    }

    @Test func pastEightyPercentIsAWarningWithAdviceForWhyAndItIsRepeatedOnlyAfterAWhile() {
        var state = EtcdHealthState()
        // 85 MiB of a 100 MiB quota, nearly all in use: the data needs the room.
        guard case .warning(let text)? = state.observe(EtcdLook(members: [member(db: 85 << 20, inUse: 80 << 20)], alarms: []), at: t0) else {
            Issue.record("no warning logged")
            return
        }
        #expect(text.contains("85 MiB, 85 % of its quota of 100 MiB"), "\(text)")
        #expect(text.contains("retention") && text.contains("--quota-backend-bytes"))
        #expect(state.status.level == .warning)
        // The same problem on the next looks: not logged again until ten minutes passed.
        #expect(state.observe(EtcdLook(members: [member(db: 86 << 20)], alarms: []), at: t0 + 10) == nil)
        #expect(state.observe(EtcdLook(members: [member(db: 86 << 20)], alarms: []), at: t0 + 599) == nil)
        #expect(state.observe(EtcdLook(members: [member(db: 86 << 20)], alarms: []), at: t0 + 601) != nil)
        // Mostly free pages: the advice is to defragment.
        let (fragmented, _) = EtcdHealthState.assess(EtcdLook(members: [member(db: 90 << 20, inUse: 10 << 20)], alarms: []), at: t0)
        #expect(fragmented.warning?.contains("kiln etcd defrag") == true)
        // Back under: said once.
        guard case .notice(let healthy)? = state.observe(EtcdLook(members: [member(db: 30 << 20)], alarms: []), at: t0 + 700) else {
            Issue.record("no notice when healthy again")
            return
        }
        #expect(healthy.contains("30 MiB of 100 MiB"))
        #expect(state.observe(EtcdLook(members: [member(db: 30 << 20)], alarms: []), at: t0 + 710) == nil)
    }

    @Test func anAlarmIsAnErrorNamingTheMemberAndWhatToDo() {
        var state = EtcdHealthState()
        let look = EtcdLook(members: [member("http://127.0.0.1:1", id: "7", db: 101 << 20), member("http://127.0.0.1:2", id: "8", db: 40 << 20)],
                            alarms: [EtcdAlarm(memberID: "7", kind: "NOSPACE")])
        guard case .error(let text)? = state.observe(look, at: t0) else {
            Issue.record("no error logged")
            return
        }
        #expect(text.contains("NOSPACE (http://127.0.0.1:1)"), "\(text)")
        #expect(text.contains("kiln etcd alarm disarm") && text.contains("kiln etcd defrag"))
        #expect(state.status.level == .error)
        #expect(state.status.alarms == ["NOSPACE"])
        // A new problem besides the known one is logged at once.
        let worse = EtcdLook(members: look.members, alarms: [EtcdAlarm(memberID: "7", kind: "NOSPACE"), EtcdAlarm(memberID: "8", kind: "CORRUPT")])
        #expect(state.observe(worse, at: t0 + 10) != nil)
    }

    @Test func aMemberThatDoesNotAnswerIsAWarningAndNoneAnsweringIsUnknown() {
        let down = EtcdLook.Member(endpoint: "http://127.0.0.1:3", quotaBytes: Self.quota, error: "connection refused")
        let (one, _) = EtcdHealthState.assess(EtcdLook(members: [member(db: 1 << 20), down], alarms: []), at: t0)
        #expect(one.level == .warning)
        #expect(one.warning?.contains("http://127.0.0.1:3 does not answer (connection refused)") == true)
        #expect(one.members.map(\.error) == [nil, "connection refused"])
        let (none, problems) = EtcdHealthState.assess(EtcdLook(members: [down], alarms: nil), at: t0)
        #expect(none.level == .unknown)
        #expect(problems == ["no member answers"], "unread alarms are no news when no member answers")
    }

    @Test func metricsNameEveryMemberAndBothAlarms() {
        #expect(EtcdHealthState.metricLines(EtcdHealthStatus()) == "", "nothing before the first look")
        let down = EtcdLook.Member(endpoint: "http://127.0.0.1:3", quotaBytes: Self.quota, error: "refused")
        let (status, _) = EtcdHealthState.assess(EtcdLook(members: [member(db: 2048, inUse: 1024), down], alarms: [EtcdAlarm(memberID: "1", kind: "NOSPACE")]), at: t0)
        let lines = EtcdHealthState.metricLines(status).split(separator: "\n").map(String.init)
        #expect(lines.contains(#"kiln_etcd_db_bytes{endpoint="http://127.0.0.1:2379"} 2048"#))
        #expect(lines.contains(#"kiln_etcd_db_in_use_bytes{endpoint="http://127.0.0.1:2379"} 1024"#))
        #expect(!lines.contains { $0.hasPrefix(#"kiln_etcd_db_bytes{endpoint="http://127.0.0.1:3"}"#) }, "no size for a member that did not answer")
        #expect(lines.contains(#"kiln_etcd_quota_bytes{endpoint="http://127.0.0.1:3"} 104857600"#))
        #expect(lines.contains(#"kiln_etcd_member_up{endpoint="http://127.0.0.1:3"} 0"#))
        #expect(lines.contains(#"kiln_etcd_alarm{type="NOSPACE"} 1"#))
        #expect(lines.contains(#"kiln_etcd_alarm{type="CORRUPT"} 0"#))
        #expect(lines.contains("# TYPE kiln_etcd_db_bytes gauge"))
    }

    @Test func sizesInWords() {
        #expect(EtcdHealthState.bytes(900) == "900 B")
        #expect(EtcdHealthState.bytes(20 << 10) == "20 KiB")
        #expect(EtcdHealthState.bytes(1_825_361_100) == "1.7 GiB")
        #expect(EtcdHealthState.bytes(2 << 30) == "2 GiB")
        #expect(EtcdHealthState.bytes(256 << 20) == "256 MiB")
    }

    @Test func theConsoleShowsTheWarningEscaped() {
        var status = EtcdHealthStatus(level: .error, warning: "etcd raised NOSPACE <b>now</b>")
        let page = ConsolePages.agents([], etcd: status, viewer: ConsoleViewer(user: "admin", admin: true, csrf: "t")).rendered
        #expect(page.contains(#"<p class="error" id="etcd-health"><b>etcd:</b> etcd raised NOSPACE &lt;b&gt;now&lt;/b&gt;</p>"#))
        status.level = .warning
        #expect(ConsolePages.etcdWarning(status).rendered.contains(#"class="warning""#))
        status.warning = nil
        #expect(ConsolePages.etcdWarning(status).rendered.isEmpty)
    }
}

/// A scheduler over a real etcd with a small quota, filled until etcd refuses writes.
@Suite("etcd health (real etcd)", .serialized)
struct EtcdHealthTests {
    static let quota: Int64 = 16 << 20

    /// Polls the admin's `/metrics` until `line` is in it: the scheduler looks at etcd every
    /// second here, and a look has no event of its own to wait on.
    func waitForMetric(_ h: SchedulerHarness, _ line: String, timeout: Duration = .seconds(20)) async throws -> String {
        try await withTimeout(timeout, waitingFor: "\(line) in /metrics") {
            while true {
                let page = try await h.request(.GET, "/metrics").body
                if page.split(separator: "\n").contains(where: { $0 == line }) { return page }
                try await Task.sleep(for: .milliseconds(200))
            }
        }
    }

    func listing(_ h: SchedulerHarness) async throws -> AgentsListing {
        try KilnJSON.decode(AgentsListing.self, from: try await h.request(.GET, "/api/v1/agents?with=etcd").body)
    }

    @Test func aFullEtcdIsExportedShownAndCleared() async throws {
        try await withScheduler(etcd: .init(compactionMode: nil, quotaBytes: Self.quota),
                                configure: { $0.etcdHealthInterval = .seconds(1) }) { h in
            let endpoint = h.etcd.endpoint
            // etcd reports its own quota; the scheduler's default (2 GiB) does not apply.
            _ = try await waitForMetric(h, #"kiln_etcd_quota_bytes{endpoint="\#(endpoint)"} \#(Self.quota)"#)
            let first = try await waitForMetric(h, #"kiln_etcd_alarm{type="NOSPACE"} 0"#)
            #expect(first.contains(#"kiln_etcd_db_bytes{endpoint="\#(endpoint)"} "#))
            #expect(first.contains(#"kiln_etcd_member_up{endpoint="\#(endpoint)"} 1"#))
            #expect(try await listing(h).etcd?.level == .ok)
            // Older clients still get the bare list.
            _ = try KilnJSON.decode([AgentInfo].self, from: try await h.request(.GET, "/api/v1/agents").body)
            // Logged in before etcd is full: a login writes its session to etcd.
            let console = ConsoleClient(h.api)
            #expect(try await console.logIn("admin", h.adminToken).status == 303)
            #expect(try await !console.get("/ui/agents").body.contains(#"id="etcd-health""#))

            // Fill etcd until it refuses a write.
            let value = [UInt8](repeating: UInt8(ascii: "y"), count: 512 << 10)
            var refused = false
            for _ in 0..<200 where !refused {
                do { try await h.etcd.put("/fill", bytes: value) } catch EtcdError.noSpace { refused = true }
            }
            #expect(refused)
            _ = try await waitForMetric(h, #"kiln_etcd_alarm{type="NOSPACE"} 1"#)
            let full = try #require(try await listing(h).etcd)
            #expect(full.level == .error)
            #expect(full.alarms == ["NOSPACE"])
            #expect(full.warning?.contains("NOSPACE (\(endpoint))") == true, "\(full.warning ?? "")")
            // The API and the console answer though etcd refuses writes (they only read).
            let page = try await console.get("/ui/agents")
            #expect(page.status == 200 && page.body.contains(#"id="etcd-health""#) && page.body.contains("NOSPACE"), "\(page.body)")

            // An operator frees the space and disarms: the scheduler says all is well again.
            let revision = try await h.etcd.status()
            try await h.etcd.delete("/fill")
            try await h.etcd.compact(revision: revision)
            try await h.etcd.defragment(member: endpoint)
            for alarm in try await h.etcd.alarms() { try await h.etcd.disarm(alarm) }
            _ = try await waitForMetric(h, #"kiln_etcd_alarm{type="NOSPACE"} 0"#)
            #expect(try await listing(h).etcd?.level == .ok)
            try await h.etcd.put("/after", "x")
        }
    }

    @Test func pastEightyPercentTheListingWarnsBeforeEtcdRefuses() async throws {
        try await withScheduler(etcd: .init(compactionMode: nil, quotaBytes: Self.quota),
                                configure: { $0.etcdHealthInterval = .seconds(1) }) { h in
            // Grow the database in small steps until the scheduler warns; etcd must still take writes then.
            let value = [UInt8](repeating: UInt8(ascii: "z"), count: 128 << 10)
            var warned: EtcdHealthStatus?
            for i in 0..<400 where warned == nil {
                try await h.etcd.put("/grow/\(i % 4)", bytes: value)
                if let status = try await listing(h).etcd, status.level == .warning { warned = status }
                // The scheduler looks every second: the last fifth of the quota takes longer than that to fill.
                try await Task.sleep(for: .milliseconds(60))
            }
            let status = try #require(warned, "no warning before the quota")
            #expect(status.warning?.contains("% of its quota of 16 MiB") == true, "\(status.warning ?? "")")
            try await h.etcd.put("/still", "writable")
        }
    }
}
