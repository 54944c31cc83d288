/// The decisions of one ``EtcdFollow``, without I/O or clock: what to do next, and how long
/// to wait after a failure. Its iterator carries out `step` and reports back.
///
/// The rules, in order:
/// 1. Read the whole prefix first, and again after anything failed; the read is handed on
///    as `.reset` (the consumer replaces its view).
/// 2. After a read at revision R, watch from R + 1: nothing between the read and the watch
///    is missed or delivered twice.
/// 3. Everything the watch yields is handed on, its own `.reset` after a compaction too (the
///    watch reconnects and resyncs by itself; see ``EtcdWatch``).
/// 4. A failed read or watch waits for the ``Backoff`` before the next read. A read alone
///    does not end the backoff; a watch that delivered something does (so a prefix that can
///    be read but not watched is not read ten times a second).
struct FollowState: Equatable {
    enum Step: Equatable {
        /// Read the prefix and yield it as `.reset`.
        case read
        /// Sleep, then read.
        case wait(Duration)
        /// Iterate a watch from this revision (the one open since the last read, if any).
        case watch(fromRevision: Int64)
    }

    private(set) var step = Step.read
    private var backoff = Backoff()
    /// Failed reads and watches since the watch last delivered something.
    var failures: Int { backoff.failures }

    /// The read saw the prefix at `revision`.
    mutating func didRead(revision: Int64) {
        step = .watch(fromRevision: revision + 1)
    }

    /// The watch delivered an update (handed on as it is).
    mutating func delivered() {
        backoff.succeeded()
    }

    /// The read or the watch failed: how long to wait before reading again.
    mutating func failed() -> Duration {
        let wait = backoff.failed()
        step = .wait(wait)
        return wait
    }

    /// The wait is over.
    mutating func waited() {
        step = .read
    }
}
