import Foundation
import KilnCore

/// Finds the newest `limit` keys of a range whose keys end in build ids (`/kiln/builds/{id}`,
/// `index/builds/{project}/{id}`), without asking etcd to sort: etcd 3.4 reads every key of a
/// range with its value before it sorts and cuts to a limit (`EtcdClient.RangeOptions`), so
/// "newest first with a limit" is a full scan there. Build ids begin with their creation time
/// (``BuildID``), so the keys created from a time on are one key range: this looks for a time
/// window just below the upper bound that holds a little more than `limit` keys, counting
/// with count-only reads (etcd's in-memory index, no value read), then reads that window.
///
/// Pure: the caller performs each step and reports what etcd said.
/// 1. ``start()`` asks to count the whole range below the upper bound (cheap: etcd's index).
/// 2. ``counted(_:)`` gets the count of the window it asked for and answers the next step:
///    - the whole range, and at most ``maxFetch`` keys: fetch it;
///    - more than ``maxFetch`` keys: a narrower window (the first one the last hour, as the
///      newest page is the one asked for most; never narrower than one millisecond);
///    - more than `limit` (up to ``maxFetch``): fetch this window;
///    - `limit` or fewer: a wider window.
///    Each window lies strictly between the widest one known to hold too few keys and the
///    narrowest known to hold too many (in proportion to the counts, else halfway), so the
///    search ends; after ``maxSteps`` counts it fetches the window it has.
/// 3. The caller reads the window's keys (ascending, etcd's own order, no sort) and keeps the
///    last `limit`, newest first. There are older ones if the window held more than `limit`
///    or is not the whole range (which then holds more than ``maxFetch``).
struct NewestWindow: Sendable {
    /// A window: the keys from this time on (milliseconds since 1970), nil for the whole range.
    enum Step: Equatable, Sendable {
        case count(fromMs: Int64?)
        case fetch(fromMs: Int64?)
    }

    let limit: Int
    /// The most keys a fetch may read (a window of up to this many is taken as it is).
    let maxFetch: Int
    /// The time of the upper bound: the cursor's build id, or now.
    let upperMs: Int64
    static let maxSteps = 48
    static let firstSpanMs: Int64 = 3_600_000

    /// The window's length below `upperMs`; `upperMs` or more is the whole range.
    private var span: Int64
    /// Widest span known to hold `limit` keys or fewer, narrowest known to hold more than `maxFetch`.
    private var tooFew: Int64 = 0
    private var tooMany: Int64?
    private(set) var steps = 0

    init(limit: Int, upperMs: Int64) {
        self.limit = max(1, limit)
        self.maxFetch = max(4 * self.limit, 64)
        self.upperMs = max(0, upperMs)
        span = self.upperMs
    }

    /// The window's first time; nil once it reaches back to 1970 (the whole range).
    private var from: Int64? { span >= upperMs ? nil : upperMs - span }

    func start() -> Step { .count(fromMs: from) }

    /// Whether a fetch of `fetched` keys (of the window of the last step) leaves older ones.
    func more(fetched: Int, window fromMs: Int64?) -> Bool { fetched > limit || fromMs != nil }

    mutating func counted(_ count: Int64) -> Step {
        steps += 1
        let n = Int(clamping: count)
        if from == nil && n <= maxFetch { return .fetch(fromMs: nil) }
        if n > maxFetch {
            tooMany = span
            guard span > 1, steps < Self.maxSteps else { return .fetch(fromMs: from) }
            let estimate = steps == 1 ? Double(Self.firstSpanMs) : Double(span) * Double(2 * limit) / Double(n)
            span = next(estimate: estimate)
            return .count(fromMs: from)
        }
        if n > limit { return .fetch(fromMs: from) }
        tooFew = span
        guard steps < Self.maxSteps else { return .fetch(fromMs: from) }
        span = next(estimate: Double(span) * (n == 0 ? 16 : max(2, Double(2 * limit) / Double(n))))
        return .count(fromMs: from)
    }

    /// A span strictly between `tooFew` and `tooMany`: the estimate if it lies there, else halfway.
    private func next(estimate: Double) -> Int64 {
        let low = tooFew, high = tooMany ?? Int64.max / 4
        let e = estimate.isFinite ? Int64(min(max(estimate, 1), Double(Int64.max / 4))) : high
        if e > low && e < high { return e }
        let mid = low + (high - low) / 2
        return mid > low ? mid : low + 1
    }

    // MARK: build ids and time

    /// The smallest id of a build created at `ms` or later (`b` and 11 base-36 digits):
    /// every id made from that millisecond on sorts at or after it, every earlier one before.
    static func firstID(atMs ms: Int64) -> String {
        var t = String(max(0, ms), radix: 36)
        while t.count < 11 { t = "0" + t }
        return "b" + t
    }

    /// The creation time of a build id (milliseconds since 1970), or nil for a string that
    /// does not begin like one.
    static func timeMs(of id: String) -> Int64? {
        let u = Array(id.utf8)
        guard u.count >= 12, u[0] == UInt8(ascii: "b") else { return nil }
        let digits = String(decoding: u[1...11], as: UTF8.self)
        guard digits.utf8.allSatisfy({ (48...57).contains($0) || (97...122).contains($0) }) else { return nil }
        return Int64(digits, radix: 36)
    }
}
