import Foundation

/// One line of a resource's activity feed (the "activity" tab of LeEngine's console): a build
/// (who or what triggered it, and how it ended) or another event (settings changed, a member
/// added, a version deployed, a domain moved), with who did it.
///
/// A build's line is made from its record; other events are kept under
/// `/kiln/activity/{projects,apps,groups}/{name}/` (``ActivityEvent``).
public struct ActivityEntry: Codable, Sendable, Equatable {
    public var at: Date
    /// The user who did it (for builds: who started them through the API; nil for a webhook).
    public var user: String?
    /// What happened: `build`, or an event's action (`settings changed`, `member added`, …).
    public var action: String
    /// The event's details, for people.
    public var detail: String?
    // A build's fields (nil for other events).
    public var build: String?
    /// `api by alice`, `gitlab push to main by jsmith`, `gitlab tag v1.0 by jsmith`, …
    public var trigger: String?
    public var ref: String?
    public var commit: String?
    public var tag: String?
    public var status: BuildStatus?
    public var durationMs: Int?
    /// Why it failed or was cancelled (superseded, by request, its agents died), or why it waits.
    public var note: String?

    public init(_ b: Build) {
        at = b.createdAt
        action = "build"
        build = b.id
        trigger = b.trigger ?? "api"
        if let t = b.trigger, let by = t.range(of: " by ", options: .backwards), t.hasPrefix("api") || t.hasPrefix("cli") || t.hasPrefix("kiln up") {
            user = String(t[by.upperBound...])
        }
        ref = b.ref
        commit = b.commit
        tag = b.tag
        status = b.status
        durationMs = b.durationMs
        note = b.status == .queued ? b.waiting : (b.status == .failed || b.status == .cancelled ? b.error : nil)
    }

    public init(_ e: ActivityEvent) {
        at = e.at
        user = e.user
        action = e.action
        detail = e.detail
        build = e.build
    }
}

/// An event on a resource other than a build's own record: `/kiln/activity/{kind}s/{name}/{time}-{random}`.
public struct ActivityEvent: Codable, Sendable, Equatable {
    public var at: Date
    /// Who did it: a user, or `pipeline of PROJECT` for a deploy step.
    public var user: String?
    public var action: String
    public var detail: String?
    /// The build it concerns, if any (a deploy's).
    public var build: String?

    public init(at: Date = Date(), user: String?, action: String, detail: String? = nil, build: String? = nil) {
        self.at = at
        self.user = user
        self.action = action
        self.detail = detail
        self.build = build
    }
}
