/// The one wait between attempts of the Etcd module: a watch reconnecting, a follow reading
/// its prefix again. 100 ms after the first failure, doubling up to 2 s, and back to 100 ms
/// after a success. Pure: the caller sleeps.
struct Backoff: Equatable {
    static let initial: Duration = .milliseconds(100)
    static let maximum: Duration = .seconds(2)

    /// Failures since the last success.
    private(set) var failures = 0
    private var delay = Backoff.initial

    /// An attempt failed: how long to wait before the next.
    mutating func failed() -> Duration {
        failures += 1
        defer { delay = min(delay * 2, Backoff.maximum) }
        return delay
    }

    /// An attempt worked: the next failure waits the shortest time again.
    mutating func succeeded() {
        failures = 0
        delay = Backoff.initial
    }
}
