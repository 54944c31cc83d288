import Etcd
import Foundation
import KilnCore

/// What one look at etcd found: each member's status (or why it did not answer) with its
/// quota, and the cluster's alarms (nil if they could not be read).
struct EtcdLook: Sendable {
    struct Member: Sendable {
        var endpoint: String
        var status: EtcdMemberStatus?
        var quotaBytes: Int64
        var error: String?
    }

    var members: [Member]
    var alarms: [EtcdAlarm]?
}

/// The judgement of ``EtcdHealth``, without I/O or clock: what a look at etcd means for a
/// person, and when to say so in the log.
///
/// The rules, in order:
/// 1. A raised alarm is an error: NOSPACE stops every write of the farm; CORRUPT means a
///    member's data differs from the others'.
/// 2. A member whose database file reached 80 % of its quota is a warning (at 100 % etcd
///    raises NOSPACE). The advice depends on why: mostly free pages → defragment; mostly
///    data → compaction, retention, or a larger quota.
/// 3. A member that does not answer while another does is a warning (a cluster of three
///    survives one such loss, not two); none answering is `unknown`.
/// 4. Otherwise all is well.
/// 5. The log hears of a problem when its set of problems changes, and again every
///    `repeatEvery` while it lasts (so a long one is not a single line lost in a week of
///    logs); once when all is well again.
struct EtcdHealthState {
    static let warnFraction = 0.8
    static let repeatEvery: TimeInterval = 600

    enum LogLine: Equatable {
        case error(String)
        case warning(String)
        case notice(String)
    }

    private(set) var status = EtcdHealthStatus()
    /// The problems last logged (their kinds) and when.
    private var logged: (problems: Set<String>, at: Date)?

    /// Takes a look in and returns what to log, if anything (rule 5).
    mutating func observe(_ look: EtcdLook, at now: Date) -> LogLine? {
        let (status, problems) = Self.assess(look, at: now)
        self.status = status
        if problems.isEmpty {
            defer { logged = nil }
            return logged == nil ? nil : .notice("etcd is healthy again: \(Self.sizes(status))")
        }
        if let logged, logged.problems == problems, now.timeIntervalSince(logged.at) < Self.repeatEvery { return nil }
        logged = (problems, now)
        let text = status.warning ?? ""
        return status.level == .error ? .error(text) : .warning(text)
    }

    /// The status a look amounts to (rules 1 to 4), and the kinds of its problems.
    static func assess(_ look: EtcdLook, at now: Date) -> (EtcdHealthStatus, Set<String>) {
        var sentences: [String] = []
        var problems = Set<String>()
        var level = EtcdHealthStatus.Level.ok
        let alarms = (look.alarms ?? []).sorted { ($0.kind, $0.memberID) < ($1.kind, $1.memberID) }
        let names = Dictionary(look.members.compactMap { m in m.status.map { ($0.memberID, m.endpoint) } }) { a, _ in a }
        for kind in Set(alarms.map(\.kind)).sorted() {
            let on = alarms.filter { $0.kind == kind }.map { names[$0.memberID] ?? "member \($0.memberID)" }.joined(separator: ", ")
            problems.insert("alarm \(kind)")
            level = .error
            switch kind {
            case "NOSPACE":
                sentences.append("""
                    etcd raised NOSPACE (\(on)): its database reached the quota and it refuses every write, so no build \
                    can be queued, assigned or finished. Free space (compaction, then defragment each member in turn: \
                    kiln etcd defrag), then disarm the alarm (kiln etcd alarm disarm); docs/etcd-operations.md.
                    """)
            case "CORRUPT":
                sentences.append("etcd raised CORRUPT (\(on)): that member's data differs from the others'; replace it from a healthy member (docs/etcd-operations.md).")
            default:
                sentences.append("etcd raised the alarm \(kind) (\(on)); docs/etcd-operations.md.")
            }
        }
        for member in look.members {
            guard let s = member.status, member.quotaBytes > 0 else { continue }
            let fraction = Double(s.dbSizeBytes) / Double(member.quotaBytes)
            guard fraction >= warnFraction else { continue }
            problems.insert("near quota \(member.endpoint)")
            level = max(level, .warning)
            let free = s.dbSizeBytes > 0 && Double(s.dbSizeInUseBytes) < 0.5 * Double(s.dbSizeBytes)
            let advice = free
                ? "Most of the file is free pages: defragment the members one at a time (kiln etcd defrag)."
                : "Its data needs the room: check that compaction runs, keep fewer builds (retention), or raise etcd's --quota-backend-bytes."
            sentences.append("""
                etcd member \(member.endpoint) holds \(bytes(s.dbSizeBytes)), \(Int(fraction * 100)) % of its quota of \
                \(bytes(member.quotaBytes)) (\(bytes(s.dbSizeInUseBytes)) in use); at 100 % etcd refuses every write. \(advice)
                """)
        }
        let down = look.members.filter { $0.status == nil }
        if down.count == look.members.count {
            problems.insert("no member answers")
            level = max(level, .unknown)
            sentences.append("No etcd member answers (\(down.map { "\($0.endpoint): \($0.error ?? "no answer")" }.joined(separator: "; "))).")
        } else {
            for member in down {
                problems.insert("down \(member.endpoint)")
                level = max(level, .warning)
                sentences.append("etcd member \(member.endpoint) does not answer (\(member.error ?? "no answer")); the others carry on, but a cluster of three survives only one such loss.")
            }
        }
        if look.alarms == nil, down.count < look.members.count {
            problems.insert("alarms unread")
            level = max(level, .warning)
            sentences.append("etcd's alarms could not be read.")
        }
        let members = look.members.map { m in
            EtcdHealthStatus.Member(endpoint: m.endpoint, dbBytes: m.status?.dbSizeBytes, dbInUseBytes: m.status?.dbSizeInUseBytes,
                                    quotaBytes: m.quotaBytes, isLeader: m.status?.isLeader, error: m.error)
        }
        let status = EtcdHealthStatus(level: level, warning: sentences.isEmpty ? nil : sentences.joined(separator: " "),
                                      members: members, alarms: Array(Set(alarms.map(\.kind))).sorted(), checkedAt: now)
        return (status, problems)
    }

    /// Prometheus lines of `status` (gauges; none before the first look).
    static func metricLines(_ status: EtcdHealthStatus) -> String {
        guard status.checkedAt != nil else { return "" }
        var out = ""
        func metric(_ name: String, _ help: String) { out += "# HELP \(name) \(help)\n# TYPE \(name) gauge\n" }
        func label(_ value: String) -> String {
            value.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"").replacingOccurrences(of: "\n", with: "\\n")
        }
        let answered = status.members.filter { $0.dbBytes != nil }
        metric("kiln_etcd_db_bytes", "Size of each etcd member's database file, what its quota limits (as this scheduler last saw it).")
        for m in answered { out += "kiln_etcd_db_bytes{endpoint=\"\(label(m.endpoint))\"} \(m.dbBytes!)\n" }
        metric("kiln_etcd_db_in_use_bytes", "The part of each etcd member's database file in use; the rest is free pages that defragmentation gives back.")
        for m in answered { out += "kiln_etcd_db_in_use_bytes{endpoint=\"\(label(m.endpoint))\"} \(m.dbInUseBytes ?? 0)\n" }
        metric("kiln_etcd_quota_bytes", "Each etcd member's space quota (--quota-backend-bytes): past it etcd raises NOSPACE and refuses writes.")
        for m in status.members { out += "kiln_etcd_quota_bytes{endpoint=\"\(label(m.endpoint))\"} \(m.quotaBytes)\n" }
        metric("kiln_etcd_member_up", "1 if the etcd member answered this scheduler's last look, else 0.")
        for m in status.members { out += "kiln_etcd_member_up{endpoint=\"\(label(m.endpoint))\"} \(m.dbBytes == nil ? 0 : 1)\n" }
        metric("kiln_etcd_alarm", "1 while etcd has this alarm raised (NOSPACE: every write refused; CORRUPT: a member's data differs).")
        for type in Set(["NOSPACE", "CORRUPT"]).union(status.alarms).sorted() {
            out += "kiln_etcd_alarm{type=\"\(label(type))\"} \(status.alarms.contains(type) ? 1 : 0)\n"
        }
        return out
    }

    /// Each member's size against its quota, for a log line.
    static func sizes(_ status: EtcdHealthStatus) -> String {
        status.members.map { m in
            "\(m.endpoint) \(m.dbBytes.map(bytes) ?? "?") of \(bytes(m.quotaBytes))"
        }.joined(separator: ", ")
    }

    /// `1.7 GiB`, `512 MiB`, `20 KiB`, `900 B`.
    static func bytes(_ n: Int64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var value = Double(n)
        var unit = 0
        while value >= 1024 && unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        if unit == 0 { return "\(n) B" }
        let text = value >= 100 || value == value.rounded() ? String(Int(value.rounded())) : String(format: "%.1f", value)
        return "\(text) \(units[unit])"
    }
}
