import Foundation
import KilnCore

/// Slows down password guessing without locking the real user out for good.
///
/// Failures are counted per user and address together: after ``freeFailures`` failed logins
/// of one user from one address, that pair must wait 2, 4, 8 … seconds (at most
/// ``maxDelay``) after its last failure before the next try is even checked (429 with the
/// time to wait). The same user from another address is not slowed, so a flood from one place
/// cannot keep the real user out; a success clears the pair. Counts are forgotten
/// ``window`` after the last failure. Kept in memory per scheduler: a restart or another
/// scheduler starts afresh, which costs an attacker little and keeps etcd out of every login.
public final class LoginThrottle: Sendable {
    public static let freeFailures = 5
    public static let maxDelay: TimeInterval = 900
    public static let window: TimeInterval = 3600
    static let maxEntries = 10_000

    struct Entry { var failures: Int; var last: Date }
    private let entries = Locked<[String: Entry]>([:])
    private let clock: @Sendable () -> Date

    public init(clock: @escaping @Sendable () -> Date = Date.init) { self.clock = clock }

    static func key(_ user: String, _ address: String) -> String { "\(user.prefix(64))\u{0}\(address)" }

    /// Throws 429 when the pair must still wait; otherwise counts this attempt as a failure
    /// at once, before the password is checked (``succeeded(user:address:)`` takes it back), so
    /// many attempts sent together are counted together.
    public func check(user: String, address: String) throws {
        let now = clock()
        let wait: TimeInterval = entries.withLock { e in
            let key = Self.key(user, address)
            var entry = e[key].flatMap { now.timeIntervalSince($0.last) < Self.window ? $0 : nil } ?? Entry(failures: 0, last: now)
            let wait = max(0, Self.delay(after: entry.failures) - now.timeIntervalSince(entry.last))
            guard wait <= 0 else { return wait }
            entry.failures += 1
            entry.last = now
            e[key] = entry
            if e.count > Self.maxEntries {
                // Forget the oldest half: memory stays bounded under a flood of made-up names.
                let keep = e.sorted { $0.value.last > $1.value.last }.prefix(Self.maxEntries / 2)
                e = Dictionary(uniqueKeysWithValues: keep.map { ($0.key, $0.value) })
            }
            return 0
        }
        if wait > 0 {
            throw KilnError.tooManyRequests("too many failed logins for this user from your address: try again in \(Int(wait.rounded(.up))) s")
        }
    }

    /// A right password: the pair starts afresh.
    public func succeeded(user: String, address: String) {
        entries.withLock { _ = $0.removeValue(forKey: Self.key(user, address)) }
    }

    /// Seconds to wait after `failures` failures: none for the first few, then doubling.
    static func delay(after failures: Int) -> TimeInterval {
        guard failures >= freeFailures else { return 0 }
        return min(maxDelay, pow(2, Double(min(failures - freeFailures + 1, 20))))
    }
}
