extension EtcdServer {
    /// How etcd keeps its database bounded: auto-compaction and the space quota.
    ///
    /// Kiln compacts by time (`periodic`), not by revision count: what needs history is a
    /// watch that reconnects and resumes from its revision, and how long a connection may be
    /// gone is a time, whatever the write rate. With a retention R etcd compacts every R (up
    /// to an hour) to the revision it had R ago, so between R and 2R of history stays; a watch
    /// away longer reads its prefix again (``EtcdWatch``). Kubernetes compacts every 5 minutes
    /// for the same reason; so does Kiln by default.
    public struct Maintenance: Sendable, Equatable {
        public enum CompactionMode: String, Sendable, Equatable {
            /// `--auto-compaction-retention` is a duration (`5m`, `1h`).
            case periodic
            /// `--auto-compaction-retention` is a number of revisions (checked every 5 minutes).
            case revision
        }

        /// nil: no auto-compaction (etcd's own default; history grows until compacted by hand).
        public var compactionMode: CompactionMode?
        /// `--auto-compaction-retention`: `5m` for periodic, `10000` for revision.
        public var compactionRetention: String
        /// `--quota-backend-bytes`; nil: etcd's default of 2 GiB. Past it etcd raises the
        /// NOSPACE alarm and refuses every write until the alarm is disarmed.
        public var quotaBytes: Int64?

        public init(compactionMode: CompactionMode? = .periodic, compactionRetention: String = "5m", quotaBytes: Int64? = nil) {
            self.compactionMode = compactionMode
            self.compactionRetention = compactionRetention
            self.quotaBytes = quotaBytes
        }

        /// Periodic compaction keeping 5 minutes of history; etcd's default quota.
        public static let standard = Maintenance()

        /// etcd 3.4's default space quota, 2 GiB.
        public static let defaultQuotaBytes: Int64 = 2 << 30

        /// Refuses a retention etcd would refuse or misread, with what to write instead.
        public func validate() throws {
            guard let compactionMode else { return }
            switch compactionMode {
            case .periodic:
                guard Self.isDuration(compactionRetention) else {
                    throw FarmError("etcd compaction retention '\(compactionRetention)' is not a duration: write it as 5m, 30m or 1h (periodic mode)")
                }
            case .revision:
                guard let n = Int64(compactionRetention), n > 0 else {
                    throw FarmError("etcd compaction retention '\(compactionRetention)' is not a number of revisions: write it as 10000 (revision mode)")
                }
            }
            if let quotaBytes, quotaBytes < 16 << 20 || quotaBytes > 8 << 30 {
                throw FarmError("etcd quota of \(quotaBytes) bytes is outside 16 MiB…8 GiB, what etcd 3.4 supports well (its default is 2 GiB)")
            }
        }

        /// A Go duration of whole units, as etcd reads `--auto-compaction-retention`: `90s`,
        /// `5m`, `1h30m`; a bare number would be read as hours.
        static func isDuration(_ text: String) -> Bool {
            var digits = ""
            var units = 0
            for c in text {
                if c.isASCII && c.isNumber { digits.append(c); continue }
                guard "hms".contains(c), !digits.isEmpty else { return false }
                digits = ""
                units += 1
            }
            return digits.isEmpty && units > 0 && text.contains { $0.isNumber && $0 != "0" }
        }

        /// In words, for a start-up line: `history compacted every 5m, quota 2 GiB`.
        public var summary: String {
            let compaction = compactionMode.map { $0 == .periodic ? "history kept \(compactionRetention)" : "last \(compactionRetention) revisions kept" }
                ?? "no auto-compaction"
            let quota = quotaBytes ?? Self.defaultQuotaBytes
            return "\(compaction), quota \(quota >> 20) MiB"
        }

        /// etcd's flags for these settings.
        public var arguments: [String] {
            var arguments: [String] = []
            if let compactionMode {
                arguments += ["--auto-compaction-mode", compactionMode.rawValue, "--auto-compaction-retention", compactionRetention]
            }
            if let quotaBytes { arguments += ["--quota-backend-bytes", String(quotaBytes)] }
            return arguments
        }
    }
}
