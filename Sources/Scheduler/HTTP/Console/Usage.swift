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
