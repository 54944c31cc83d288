import Etcd
import Foundation
import KilnCore
import Logging
import ServiceLifecycle

/// Watches etcd's size and alarms for one scheduler (every scheduler runs one, leader or
/// not, so whichever answers a person knows): every `interval` it asks each member for its
/// status (`/v3/maintenance/status`: the database's size and the part in use), the cluster
/// for its alarms (`/v3/maintenance/alarm`), and each member's `/metrics` for its quota,
/// which the status does not report. ``EtcdHealthState`` judges what it found.
///
/// What it found goes to `GET /metrics` (``metricLines()``), to `GET /api/v1/agents?with=etcd`
/// and the console's agents page (``status``), and to the log: a warning past 80 % of a
/// quota or for a member that does not answer, an error for an alarm.
///
/// None of it needs etcd's root role: status, alarms and metrics answer any client.
public actor EtcdHealth: Service {
    let etcd: EtcdClient
    /// The quota to assume for a member whose metrics do not say (`--etcd-quota-bytes`);
    /// nil: etcd's default of 2 GiB.
    let quotaBytes: Int64?
    let interval: Duration
    let logger: Logger
    private var state = EtcdHealthState()
    private var pressure: PressureCompaction
    /// Compactions this scheduler made because etcd filled (`PressureCompaction`).
    private(set) var pressureCompactions = 0

    /// - Parameters:
    ///   - compactAt: share of a member's quota in use from which this scheduler compacts
    ///     etcd's history itself, keeping `keepHistory` (0: never; `PressureCompaction`).
    public init(etcd: EtcdClient, quotaBytes: Int64? = nil, interval: Duration = .seconds(10), compactAt: Double = 0.5,
                keepHistory: Duration = .seconds(30), logger: Logger) {
        self.etcd = etcd
        self.quotaBytes = quotaBytes
        self.interval = interval
        self.logger = logger
        let history = Double(keepHistory.components.seconds) + Double(keepHistory.components.attoseconds) / 1e18
        self.pressure = PressureCompaction(threshold: compactAt, minHistory: history)
    }

    /// What the last look found (level `unknown` before the first).
    public var status: EtcdHealthStatus { state.status }

    /// The `kiln_etcd_*` gauges in Prometheus' text format, for `GET /metrics`.
    public func metricLines() -> String {
        let lines = EtcdHealthState.metricLines(state.status)
        guard !lines.isEmpty else { return lines }
        return lines + "# HELP kiln_etcd_pressure_compactions_total Compactions of etcd's history this scheduler made because a member's in-use size passed its share of the quota.\n"
            + "# TYPE kiln_etcd_pressure_compactions_total counter\nkiln_etcd_pressure_compactions_total \(pressureCompactions)\n"
    }

    public func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                await self.check()
                try? await Task.sleep(for: self.interval)
            }
        }
    }

    /// Looks at etcd once, updates ``status`` and logs what the look calls for.
    public func check() async {
        let look = await Self.look(etcd: etcd, quotaBytes: quotaBytes)
        switch state.observe(look, at: Date()) {
        case .error(let text)?: logger.error("\(text)")
        case .warning(let text)?: logger.warning("\(text)")
        case .notice(let text)?: logger.notice("\(text)")
        case nil: break
        }
        guard let (revision, member) = pressure.observe(look, at: Date()) else { return }
        let used = member.status.map { EtcdHealthState.bytes($0.dbSizeInUseBytes) } ?? "?"
        do {
            try await etcd.compact(revision: revision)
            pressure.compacted(at: revision)
            pressureCompactions += 1
            logger.notice("etcd member \(member.endpoint) has \(used) in use of its \(EtcdHealthState.bytes(member.quotaBytes)) quota: compacted its history before revision \(revision), keeping the last \(Int(pressure.minHistory)) s (etcd's own periodic compaction keeps more; see docs/etcd-operations.md)")
        } catch let error as EtcdError where error.message.contains("compacted") {
            pressure.compacted(at: revision)  // etcd, or another scheduler, compacted past it already
        } catch {
            logger.warning("etcd member \(member.endpoint) has \(used) in use of its \(EtcdHealthState.bytes(member.quotaBytes)) quota, and compacting its history before revision \(revision) failed: \(error)")
        }
    }

    /// Asks every member at once, then the alarms.
    static func look(etcd: EtcdClient, quotaBytes: Int64?) async -> EtcdLook {
        let members = await withTaskGroup(of: (Int, EtcdLook.Member).self) { group in
            for (index, endpoint) in etcd.endpoints.enumerated() {
                group.addTask {
                    do {
                        let status = try await etcd.memberStatus(of: endpoint)
                        // The member's own quota when it exports it; the option (or etcd's default) when not.
                        let reported = try? await etcd.quotaBytes(of: endpoint)
                        let quota = reported ?? quotaBytes ?? EtcdHealth.defaultQuotaBytes
                        return (index, EtcdLook.Member(endpoint: endpoint, status: status, quotaBytes: quota))
                    } catch {
                        return (index, EtcdLook.Member(endpoint: endpoint, quotaBytes: quotaBytes ?? EtcdHealth.defaultQuotaBytes,
                                                       error: (error as? EtcdError)?.message ?? "\(error)"))
                    }
                }
            }
            var all: [(Int, EtcdLook.Member)] = []
            for await member in group { all.append(member) }
            return all.sorted { $0.0 < $1.0 }.map(\.1)
        }
        let alarms = try? await etcd.alarms()
        return EtcdLook(members: members, alarms: alarms)
    }

    /// etcd 3.4's quota when `--quota-backend-bytes` is not given: 2 GiB.
    public static let defaultQuotaBytes: Int64 = 2 << 30
}
