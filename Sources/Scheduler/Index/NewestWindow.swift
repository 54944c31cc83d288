import Foundation
import KilnCore
import Synchronization

/// Finds the newest `limit` keys of a range whose keys end in build ids (`/kiln/builds/{id}`,
/// `index/builds/{project}/{id}`), without asking etcd to sort: etcd 3.4 reads every key of a
/// range with its value before it sorts and cuts to a limit (`EtcdClient.RangeOptions`), so
/// "newest first with a limit" is a full scan there. Build ids begin with their creation time
/// (``BuildID``), so the keys created from a time on are one key range: this looks for a time
/// window just below the upper bound that holds more than `limit` keys and at most
/// ``maxFetch``. Each probe is one read of a window in etcd's own order with a limit of
/// ``maxFetch``, keys only: etcd loads no more values than that (it still walks its in-memory
/// index over the window), and its answer's count is the window's whole count, so a probe
/// that lands is also the fetch. Remembering the window that landed (``Hints``) keeps the
/// walk over the whole range off the hot path.
///
/// Pure: the caller performs each probe and reports what etcd said.
/// 1. ``start()`` probes the window of the hint (the span that landed last time for this
///    range, ``Hints``), else the whole range below the upper bound. A hint's window of too
///    few keys is followed by the whole range (it may be small now).
/// 2. ``probed(count:firstMs:)`` gets the window's count and the time of its oldest key, and
///    answers the next step:
///    - at most ``maxFetch`` keys, and more than `limit` or the whole range: ``Step/done``,
///      the keys read are the answer's window;
///    - more than ``maxFetch``: a narrower window; after the whole range, one that would hold
///      keys halfway between `limit` and ``maxFetch`` if they were spread evenly from the
///      oldest to the bound (one more probe for most farms), else in proportion to the counts;
///    - `limit` or fewer: a wider window.
///    Each window lies strictly between the widest one known to hold too few keys and the
///    narrowest known to hold too many (else halfway between), so the search ends. When no
///    window lies between them (they differ by a millisecond: more than ``maxFetch`` builds
///    in one), or after ``maxSteps`` probes, ``Step/fetchAll`` reads the window of too many
///    (or the last one) without a limit.
/// 3. The caller keeps the last `limit` keys of the window, newest first. There are older
///    ones if the window held more than `limit`, or is not the whole range (which then holds
///    more than ``maxFetch``).
struct NewestWindow: Sendable {
    /// A window: the keys from this time on (milliseconds since 1970), nil for the whole range.
    enum Step: Equatable, Sendable {
        /// Read the window's keys with a limit of ``maxFetch``; report with ``probed(count:firstMs:)``.
        case probe(fromMs: Int64?)
        /// The keys the last probe read are all of its window: take the newest.
        case done(fromMs: Int64?)
        /// Read every key of the window (no limit), and take the newest.
        case fetchAll(fromMs: Int64?)
    }

    let limit: Int
    /// The limit of a probe: a window of up to this many keys is read whole.
    let maxFetch: Int
    /// The time of the upper bound: the cursor's build id, or now.
    let upperMs: Int64
    static let maxSteps = 48

    /// The window's length below `upperMs`; `upperMs` or more is the whole range.
    private var span: Int64
    /// Widest span known to hold `limit` keys or fewer, narrowest known to hold more than `maxFetch`.
    private var tooFew: Int64 = 0
    private var tooMany: Int64?
    private(set) var steps = 0

    /// Whether the first probe was the hint's window.
    private var hinted: Bool

    /// `hintMs`: the span of the window that landed last time for this range (``Hints``);
    /// nil: start with the whole range.
    init(limit: Int, upperMs: Int64, hintMs: Int64? = nil) {
        self.limit = max(1, limit)
        self.maxFetch = max(4 * self.limit, 64)
        let upper = max(0, upperMs)
        self.upperMs = upper
        span = hintMs.map { max(1, min($0, upper)) } ?? upper
        hinted = hintMs != nil
    }

    /// The span to remember for this range once the window of the last step landed (nil:
    /// the whole range, which needs no hint).
    var landedSpanMs: Int64? { from == nil ? nil : span }

    /// The window's first time; nil once it reaches back to 1970 (the whole range).
    private var from: Int64? { span >= upperMs ? nil : upperMs - span }

    func start() -> Step { .probe(fromMs: from) }

    /// Whether a window of `count` keys leaves keys older than the `limit` newest of it.
    func more(count: Int, window fromMs: Int64?) -> Bool { count > limit || fromMs != nil }

    /// `count`: how many keys the window probed holds; `firstMs`: the time of its oldest.
    mutating func probed(count: Int64, firstMs: Int64?) -> Step {
        steps += 1
        let n = Int(clamping: count)
        if n <= maxFetch && (n > limit || from == nil) { return .done(fromMs: from) }
        if n > maxFetch {
            let whole = from == nil
            tooMany = span
            guard !exhausted else { return .fetchAll(fromMs: from) }
            let extent = whole ? Double(max(1, upperMs - (firstMs ?? 0))) : Double(span)
            span = next(estimate: extent * target / Double(n))
            return .probe(fromMs: from)
        }
        tooFew = span
        if hinted && steps == 1 && from != nil {
            // Fewer than last time: the range may be small now; the whole of it says.
            span = upperMs
            return .probe(fromMs: nil)
        }
        if exhausted, let tooMany {
            // The next wider window is one of too many: read it whole.
            span = tooMany
            return .fetchAll(fromMs: from)
        }
        if steps >= Self.maxSteps { return .fetchAll(fromMs: from) }
        span = next(estimate: Double(span) * (n == 0 ? 16 : max(2, target / Double(n))))
        return .probe(fromMs: from)
    }

    /// No window lies between the known ones (they differ by a millisecond), or the probes are used up.
    private var exhausted: Bool {
        steps >= Self.maxSteps || tooMany.map { $0 - tooFew <= 1 } ?? false
    }

    /// How many keys a window is aimed at: halfway between the least a probe may land on and the most.
    private var target: Double { Double(limit + 1 + maxFetch) / 2 }

    /// A span strictly between `tooFew` and `tooMany`: the estimate if it lies there, else halfway.
    private func next(estimate: Double) -> Int64 {
        let low = tooFew, high = tooMany ?? Int64.max / 4
        let e = estimate.isFinite ? Int64(min(max(estimate, 1), Double(Int64.max / 4))) : high
        if e > low && e < high { return e }
        let mid = low + (high - low) / 2
        return mid > low ? mid : low + 1
    }

    /// The window that landed last, per range: the next listing of the same range (the newest
    /// page asked again, or the next page) most often lands with one probe. Shared by every copy
    /// of a store; at most ``capacity`` ranges are remembered (then it starts afresh).
    final class Hints: Sendable {
        static let capacity = 4096
        private let spans = Mutex<[String: Int64]>([:])

        init() {}

        func span(for range: String) -> Int64? { spans.withLock { $0[range] } }

        func remember(_ span: Int64?, for range: String) {
            spans.withLock { s in
                if s.count >= Self.capacity, s[range] == nil { s.removeAll() }
                s[range] = span
            }
        }
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
