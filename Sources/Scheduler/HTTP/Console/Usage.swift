import Foundation
import KilnCore

/// How much the farm was used per day (UTC) over the last ``window`` days, as the admin page
/// shows it: builds, pushes, deploys and scalings, counted from the records. Pure: the console
/// reads the records of the window (builds by their time-ordered ids, each app's activity by
/// its time-ordered keys, so never the records before it) and hands them to ``count(_:)-8x0h``
/// one at a time; tested without etcd.
///
/// What counts, on the day it happened:
/// 1. a build: its creation (`createdAt`), whatever became of it;
/// 2. a push: a build that recorded a digest, on the day its push step ended (else its end,
///    else its creation);
/// 3. a deploy: an app's activity `deployed` (the deploy step of a pipeline run);
/// 4. a scaling: an app's activity `scaled` (a scaling that finished; a failed one is
///    `scaling failed` and does not count);
/// 5. anything before the window's first day or after its last is left out.
struct Usage: Sendable, Equatable {
    struct Day: Sendable, Equatable {
        /// `2026-11-26`.
        var day: String
        var builds = 0
        var pushes = 0
        var deploys = 0
        var scalings = 0
    }

    static let window = 30
    static let deployed = "deployed"
    static let scaled = "scaled"

    /// Oldest first; the last is today.
    private(set) var days: [Day]
    /// The start of the first day: what the console reads from.
    let since: Date

    init(endingAt now: Date, days: Int = Usage.window) {
        let today = (now.timeIntervalSince1970 / 86_400).rounded(.down) * 86_400
        since = Date(timeIntervalSince1970: today - Double(days - 1) * 86_400)
        self.days = (0..<days).map { i in
            Day(day: Usage.dayName(Date(timeIntervalSince1970: today - Double(days - 1 - i) * 86_400)))
        }
    }

    mutating func count(_ build: Build) {
        if let i = index(build.createdAt) { days[i].builds += 1 }
        guard build.digest != nil else { return }
        let pushed = build.steps.first { $0.name == .push }?.finishedAt ?? build.finishedAt ?? build.createdAt
        if let i = index(pushed) { days[i].pushes += 1 }
    }

    mutating func count(_ event: ActivityEvent) {
        guard let i = index(event.at) else { return }
        switch event.action {
        case Usage.deployed: days[i].deploys += 1
        case Usage.scaled: days[i].scalings += 1
        default: break
        }
    }

    // MARK: closed days

    /// The days whose counts no longer change, by name: every day but today and yesterday (a
    /// build asked for yesterday may push today; a day that ended more than a day ago is
    /// taken as closed). A view remembers them (``UsageCache``) and reads the records of the
    /// open days only.
    var closedDays: [String: Day] {
        Dictionary(days.dropLast(2).map { ($0.day, $0) }) { a, _ in a }
    }

    /// The index of the first day of the window that `closed` does not hold (`days.count`
    /// when it holds every one): records are read from there on.
    func firstOpen(in closed: [String: Day]) -> Int {
        days.firstIndex { closed[$0.day] == nil } ?? days.count
    }

    /// Where to read records from to count the days from `open` on: a day earlier, so that a
    /// build asked for the day before and pushed on an open day is read too.
    func readFrom(_ open: Int) -> Date {
        since + Double(open - 1) * 86_400
    }

    /// Takes the days before `open` from `closed` (what was counted when they were read).
    mutating func keep(_ closed: [String: Day], before open: Int) {
        for i in days.indices where i < open { if let day = closed[days[i].day] { days[i] = day } }
    }

    /// The day `date` falls on, if it is in the window.
    private func index(_ date: Date) -> Int? {
        let i = Int(((date.timeIntervalSince1970 - since.timeIntervalSince1970) / 86_400).rounded(.down))
        return days.indices.contains(i) ? i : nil
    }

    static func dayName(_ date: Date) -> String {
        // `.iso8601` is UTC: `2026-11-26T08:44:27Z`.
        String(date.formatted(.iso8601).prefix(10))
    }
}

/// The closed days of the usage window, counted once per scheduler and kept in memory (a
/// restart counts them again): an admin page view reads the records of the last two days
/// (and the day before) instead of thirty. Only the current window's days are kept.
final class UsageCache: Sendable {
    private let closed = Locked<[String: Usage.Day]>([:])

    var days: [String: Usage.Day] { closed.value }

    func remember(_ usage: Usage) {
        closed.value = usage.closedDays
    }
}
