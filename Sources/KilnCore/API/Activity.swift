import Foundation

/// One line of a project's activity feed: who or what triggered which build, and how it
/// ended (the "activity" tab of LeEngine's console). Made from the build's record.
public struct ActivityEntry: Codable, Sendable, Equatable {
    public var at: Date
    public var build: String
    /// `api`, `gitlab push to main by jsmith`, `gitlab tag v1.0 by jsmith`, …
    public var trigger: String
    public var ref: String
    public var commit: String?
    public var tag: String?
    public var status: BuildStatus
    public var durationMs: Int?
    /// Why it failed or was cancelled (superseded, by request, its agents died), or why it waits.
    public var note: String?

    public init(_ b: Build) {
        at = b.createdAt
        build = b.id
        trigger = b.trigger ?? "api"
        ref = b.ref
        commit = b.commit
        tag = b.tag
        status = b.status
        durationMs = b.durationMs
        note = b.status == .queued ? b.waiting : (b.status == .failed || b.status == .cancelled ? b.error : nil)
    }
}
